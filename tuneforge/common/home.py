"""Where tuneforge keeps state between runs (caches, converted models)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any


def tuneforge_home() -> Path:
    """`$TUNEFORGE_HOME`, or `~/.cache/tuneforge`; created on first use."""
    home = Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")
    home.mkdir(parents=True, exist_ok=True)
    return home


def remembered(name: str, key: str | None, compute: Callable[[], Any]) -> Any:
    """A JSON value kept in `$TUNEFORGE_HOME/cache/NAME.json` under `key`, computed once per key: for answers
    whose import alone costs seconds (datasketch's LSH bands, TRL's config fields), in every process that asks.
    The key names every version the answer depends on; `key` None: computed, not kept. An unreadable or
    unwritable cache only costs the computation."""
    from tuneforge.common.io import write_json

    path = tuneforge_home() / "cache" / f"{name}.json"
    try:
        known = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        known = {}
    if key is not None and key in known:
        return known[key]
    value = compute()
    if key is not None:
        known[key] = value
        with contextlib.suppress(OSError):
            write_json(path, known)
    return value
