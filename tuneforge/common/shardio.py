"""Shard files: Arrow IPC tables and JSON-lines parts under a build's work folder, and a `done.json` written
last (atomically, synced) that marks a unit of work complete and records the size of every file in it.

A unit's files are written straight into its fresh folder, not each through a synced temporary file: until
`done.json` exists nothing in the folder counts, so a killed worker leaves nothing that looks finished, and a
file that a power cut left short (the kernel had not written it yet) no longer matches the size `done.json`
recorded, so the unit is redone. One sync a unit instead of one a file: at 200k records, 20 shards and about
ten files a shard, the per-file syncs cost about 3 s of a 24 s build here.

It lives in `common/`, not with the build's runtime in `builder/`, because a stage writes shard files too:
`publish/write.py` joins the parts into the published files."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pyarrow as pa

from tuneforge.common.io import atomic_open, dumps

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
    """An Arrow IPC file in a unit's folder (see the module docstring for why not through a temporary file)."""
    with open(path, "wb") as f, pa.ipc.new_file(f, table.schema) as w:
        w.write_table(table)


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """A memory-mapped table (only the columns asked for are touched)."""
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()  # the map lives as long as its buffers
    return table.select(columns) if columns else table


def json_bytes(obj: Any) -> bytes:
    """`json_line(obj)` as UTF-8 bytes, made without the str round trip (the export's hot path)."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):  # a lone surrogate, an integer beyond 64 bits
        return json_line(obj).encode("utf-8")


def column_list(table: pa.Table, name: str) -> list:
    """A column as a Python list (nulls as None): through NumPy, about three times faster than `to_pylist`
    for strings."""
    return table.column(name).combine_chunks().to_numpy(zero_copy_only=False).tolist()


def column_numbers(table: pa.Table, name: str) -> np.ndarray:
    """An integer or fixed-size binary column without nulls as a read-only NumPy view of its buffer (binary:
    one row of bytes each). `to_numpy` would give the same, but any conversion makes pyarrow import pandas
    first (0.15 s a process; the build's main process needs no other)."""
    return numbers(table.column(name).combine_chunks(), name)


def numbers(arr: pa.Array, what: str = "array") -> np.ndarray:
    """`column_numbers` of one array."""
    if arr.null_count:
        raise ValueError(f"{what} has nulls")
    fixed = pa.types.is_fixed_size_binary(arr.type)
    if not fixed and not pa.types.is_integer(arr.type):
        raise TypeError(f"{what} is {arr.type}, not integers")
    w = arr.type.byte_width if fixed else 1
    dtype = np.dtype(np.uint8) if fixed else np.dtype(str(arr.type))
    if not len(arr):
        return np.empty((0, w) if fixed else 0, dtype)
    flat = np.frombuffer(arr.buffers()[1], dtype=dtype)[arr.offset * w:(arr.offset + len(arr)) * w]
    return flat.reshape(len(arr), w) if fixed else flat


def column_bytes(table: pa.Table, name: str) -> list:
    """A string column as a list of UTF-8 bytes (nulls as None): for values that go straight to a parser."""
    return column_list(table.select([name]).cast(pa.schema([(name, pa.large_binary())])), name)


def write_lines(path: Path, lines: list[str] | list[bytes]) -> int:
    """Lines (str or UTF-8 bytes, one kind per call), each ended by a newline, into a unit's `path`."""
    with open(path, "wb") as f:
        if lines:
            if isinstance(lines[0], str):
                f.write("\n".join(lines).encode("utf-8"))  # type: ignore[arg-type]
            else:
                f.write(b"\n".join(lines))  # type: ignore[arg-type]
            f.write(b"\n")
    return len(lines)


def done(unit: Path) -> dict[str, Any] | None:
    """The summary of a finished unit of work, or None if it never finished."""
    p = unit / DONE
    if not p.is_file():
        return None
    try:
        summary = json.loads(p.read_text(encoding="utf-8"))
        sizes = summary.pop("_files")
        if any((unit / name).stat().st_size != size for name, size in sizes.items()):
            return None  # a file the kernel never finished writing before a crash: redo the unit
    except (OSError, KeyError, AttributeError, json.JSONDecodeError):
        return None
    return summary


def finish(unit: Path, summary: dict[str, Any]) -> dict[str, Any]:
    """Mark a unit complete: its summary and the size of each of its files, in one synced `done.json`."""
    sizes = {p.name: p.stat().st_size for p in sorted(unit.iterdir()) if p.is_file() and p.name != DONE}
    with atomic_open(unit / DONE) as f:  # compact: a summary can carry a shard's length sample (15k numbers)
        f.write(dumps({**summary, "_files": sizes}))
    return summary


def fresh(unit: Path) -> Path:
    """An empty folder for a unit of work (whatever an interrupted attempt left is removed)."""
    if unit.exists():
        shutil.rmtree(unit)
    unit.mkdir(parents=True)
    return unit


def copy_into(dst: Any, src: Path, chunk: int = 1 << 22) -> None:
    """Append a file's bytes to an open binary file, in the kernel where it can (copy_file_range)."""
    with open(src, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if hasattr(os, "copy_file_range") and size:
            dst.flush()
            out, off = dst.fileno(), 0
            try:
                while off < size:
                    n = os.copy_file_range(f.fileno(), out, size - off, off)
                    if n == 0:
                        break
                    off += n
                if off == size:
                    os.lseek(out, 0, os.SEEK_END)
                    return
            except OSError:
                pass
            # not supported here (or cut short): continue from where the kernel stopped
            f.seek(off)
            os.lseek(out, 0, os.SEEK_END)
        shutil.copyfileobj(f, dst, chunk)


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    elif path.exists() or path.is_symlink():
        os.unlink(path)
