"""`tuneforge new-domain`: a new domain folder from the commented template the package ships. It is no
stage and no Prefect flow (it copies files), so it lives at the top beside the recipe; `tuneforge.cli` calls it."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.resources import asset


def new_domain(name: str, root: Path) -> tuple[Path, Path]:
    """Copy the template to `root/datasets/<name>/` and its pipeline to `root/pipelines/<name>.yaml`, with
    `__DOMAIN__` replaced by `name`; returns both paths. Refuses a bad name or an existing folder."""
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise TuneforgeError("a domain name is lower-case letters, digits and underscores, starting with a letter")
    template = asset("datasets", "_template")
    target = root / "datasets" / name
    if target.exists():
        raise TuneforgeError(f"{target} already exists")
    # The pipeline names configs beside the recipe, so the new domain works outside a tuneforge clone.
    shutil.copytree(template, target)
    for f in target.rglob("*"):
        if f.is_file() and f.suffix in (".yaml", ".md", ".jinja"):
            f.write_text(f.read_text(encoding="utf-8").replace("__DOMAIN__", name), encoding="utf-8")
    pipe = root / "pipelines" / f"{name}.yaml"
    pipe.parent.mkdir(parents=True, exist_ok=True)
    shutil.move(str(target / "pipeline.yaml"), pipe)
    return target, pipe
