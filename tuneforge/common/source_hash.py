"""A hash of tuneforge's own source, per stage package, for cache keys: editing a stage's code re-runs what
depends on it instead of silently reusing outputs made by the old code."""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SUFFIXES = {".py", ".jinja", ".yaml", ".json"}
BUILD = ("common", "ingest", "clean", "augment", "publish", "templates", "builder", "recipe.py")


@lru_cache(maxsize=64)
def source_hash(*parts: str) -> str:
    """sha256 over the files (relative names and bytes) of the named subpackages or modules of tuneforge."""
    h = hashlib.sha256()
    for part in sorted(parts):
        p = ROOT / part
        files = [p] if p.is_file() else sorted(f for f in p.rglob("*") if f.is_file() and f.suffix in SUFFIXES
                                               and "__pycache__" not in f.parts)
        for f in files:
            h.update(f.relative_to(ROOT).as_posix().encode() + b"\0" + f.read_bytes() + b"\0")
    return h.hexdigest()
