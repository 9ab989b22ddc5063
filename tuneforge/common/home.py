"""Where tuneforge keeps state between runs (caches, converted models)."""

from __future__ import annotations

import os
from pathlib import Path


def tuneforge_home() -> Path:
    """`$TUNEFORGE_HOME`, or `~/.cache/tuneforge`; created on first use."""
    home = Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")
    home.mkdir(parents=True, exist_ok=True)
    return home
