"""Shard files: Arrow IPC tables and JSON-lines parts under a build's work folder, each written atomically
(a killed worker leaves no half file), and a `done.json` written last that marks a unit of work complete."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from tuneforge.common.io import atomic_open, dumps, write_json

DONE = "done.json"


def json_line(obj: Any) -> str:
    """One JSON line, UTF-8 safe: text with a lone surrogate (which UTF-8 cannot hold) is written escaped."""
    line = dumps(obj)
    try:
        line.encode("utf-8")
    except UnicodeEncodeError:
        line = json.dumps(obj, ensure_ascii=True, sort_keys=True, separators=(",", ":"))
    return line


def write_table(path: Path, table: pa.Table) -> None:
    with atomic_open(path, "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A memory-mapped table (only the columns asked for are touched)."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # the map lives as long as its buffers
    return table.select(columns) if columns else table


def write_lines(path: Path, lines: list[str]) -> int:
    with atomic_open(path) as f:
        for line in lines:
            f.write(line + "\n")
    return len(lines)


def done(unit: Path) -> dict[str, Any] | None:
    """The summary of a finished unit of work, or None if it never finished."""
    p = unit / DONE
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def finish(unit: Path, summary: dict[str, Any]) -> dict[str, Any]:
    write_json(unit / DONE, summary)
    return summary


def fresh(unit: Path) -> Path:
    """An empty folder for a unit of work (whatever an interrupted attempt left is removed)."""
    if unit.exists():
        shutil.rmtree(unit)
    unit.mkdir(parents=True)
    return unit


def copy_into(dst, src: Path, chunk: int = 1 << 22) -> None:
    """Append a file's bytes to an open binary file."""
    with open(src, "rb") as f:
        shutil.copyfileobj(f, dst, chunk)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        os.unlink(path)
