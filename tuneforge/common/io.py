"""Atomic writes and content hashes: a killed run never leaves a half-written file behind."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import orjson


def dumps(obj: Any) -> str:
    """One canonical JSON form (UTF-8, sorted keys, compact) so equal content gives equal bytes. orjson
    writes it several times faster; what it cannot write (integers beyond 64 bits, lone surrogates) the
    standard library writes in the same layout."""
    try:
        return orjson.dumps(obj, option=orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return json.dumps(obj, ensure_ascii=False, sort_keys=True, separators=(",", ":"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@contextlib.contextmanager
def atomic_open(path: str | Path, mode: str = "w", encoding: str | None = "utf-8") -> Iterator[Any]:
    """Write to a temporary file beside `path`, fsync, then rename over it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        kwargs = {} if "b" in mode else {"encoding": encoding, "newline": "\n"}
        with open(tmp, mode, **kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: str | Path, text: str) -> None:
    with atomic_open(path) as f:
        f.write(text)


def write_json(path: str | Path, obj: Any) -> None:
    with atomic_open(path) as f:
        f.write(json.dumps(obj, ensure_ascii=False, indent=2, sort_keys=True) + "\n")


def write_jsonl(path: str | Path, rows: Iterable[Any]) -> int:
    n = 0
    with atomic_open(path) as f:
        for row in rows:
            f.write(dumps(row) + "\n")
            n += 1
    return n


def read_jsonl(path: str | Path) -> list[Any]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


@contextlib.contextmanager
def atomic_dir(path: str | Path) -> Iterator[Path]:
    """Build a directory under a temporary name, then swap it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
    try:
        yield tmp
        old = None
        if path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_tree(path: str | Path) -> str:
    """One hash over a folder's files (relative names and contents), for cache keys on model folders."""
    root = Path(path)
    h = hashlib.sha256()
    for f in sorted(p for p in root.rglob("*") if p.is_file()):
        h.update(f.relative_to(root).as_posix().encode() + b"\0" + sha256_file(f).encode())
    return h.hexdigest()


def read_json_file(path: str | Path, missing: str) -> Any:
    """The JSON in `path`; a missing file raises TuneforgeError(missing), and bad JSON names the file."""
    from tuneforge.common.errors import TuneforgeError

    p = Path(path)
    if not p.is_file():
        raise TuneforgeError(missing)
    try:
        return json.loads(p.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise TuneforgeError(f"{p}: not valid JSON: {e}") from None


_STDLIB = "\x1e"  # leads a work-file value that orjson cannot read back as written
_STDLIB_BYTES = _STDLIB.encode()


def pack(obj: Any) -> str:
    """Compact JSON for tuneforge's own work files (orjson: several times faster than `json`); published
    files use `dumps`, whose byte format is the documented one. What orjson cannot write (integers beyond
    64 bits, lone surrogates) the standard library writes, marked so `unpack` reads it back the same way:
    orjson would read a long integer back as a float."""
    try:
        return orjson.dumps(obj).decode("utf-8")
    except (TypeError, orjson.JSONEncodeError):
        return _STDLIB + json.dumps(obj, ensure_ascii=False, separators=(",", ":"))


def pack_bytes(obj: Any) -> bytes:
    """`pack(obj)` as UTF-8 bytes, for an Arrow string column: no decode here and no encode in Arrow."""
    try:
        return orjson.dumps(obj)
    except (TypeError, orjson.JSONEncodeError):
        return (_STDLIB + json.dumps(obj, ensure_ascii=False, separators=(",", ":"))).encode("utf-8", "surrogatepass")


def unpack(text: str | bytes) -> Any:
    """What `pack` or `pack_bytes` wrote (str or UTF-8 bytes)."""
    if text[:1] in (_STDLIB, _STDLIB_BYTES):
        return json.loads(text[1:])
    return orjson.loads(text)
