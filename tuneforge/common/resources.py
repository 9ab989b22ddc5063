"""What tuneforge ships (domain recipes and samples, benchmark samples, pipelines, configs), found as package
data so a wheel installed anywhere has them, not only a clone."""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path

from tuneforge.common.errors import TuneforgeError

ASSETS = Path(str(files("tuneforge") / "assets"))


def asset(*parts: str) -> Path:
    """The shipped file or folder `tuneforge/assets/<parts...>` (datasets/, pipelines/, configs/)."""
    path = ASSETS.joinpath(*parts)
    if not path.exists():
        raise TuneforgeError(f"shipped file {'/'.join(parts)} not found in the installed package ({path}); "
                             f"reinstall tuneforge")
    return path
