"""File readers: bytes on disk to raw items with their position, or to rejects with a reason.

A reader never raises on bad data inside a file: a malformed line or row becomes a `Bad` item that names its
line. Only a file that cannot be read at all (missing, unknown encoding) raises `SourceError`.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.encoding import decode, decode_lines

SUFFIX_TYPES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
                ".parquet": "parquet", ".txt": "text", ".md": "text", ".text": "text"}
ARROW_MARKERS = ("dataset_dict.json", "state.json")


@dataclass(slots=True)
class Item:
    data: Any
    line: int | None = None
    index: int | None = None
    key: str | None = None


@dataclass(slots=True)
class Bad:
    reason: str
    raw: Any
    line: int | None = None
    index: int | None = None


@dataclass(slots=True)
class FileInfo:
    encoding: str | None = None
    empty: bool = False


def file_type(path: Path, cfg: SourceConfig) -> str:
    if cfg.file_type != "auto":
        return cfg.file_type
    if path.is_dir() and any((path / m).exists() for m in ARROW_MARKERS):
        return "arrow"
    t = SUFFIX_TYPES.get(path.suffix.lower())
    if t is None:
        raise SourceError(f"{path}: unknown file type {path.suffix!r}; set `file_type:` for this source "
                          f"(one of {sorted(set(SUFFIX_TYPES.values()) | {'arrow'})})")
    return t


def read(path: Path, cfg: SourceConfig, info: FileInfo) -> Iterator[Item | Bad]:
    kind = file_type(path, cfg)
    if kind == "arrow":
        yield from _read_arrow(path)
        return
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None
    if not data.strip():
        info.empty = True
        return
    if kind == "parquet":
        yield from _read_parquet(path)
    elif kind == "jsonl":
        yield from _read_jsonl(data, path, cfg, info)
    elif kind == "json":
        yield from _read_json(data, path, cfg, info)
    elif kind in ("csv", "tsv"):
        yield from _read_csv(data, path, cfg, info, "\t" if kind == "tsv" else ",")
    else:
        yield from _read_text(data, path, cfg, info)


def _too_big(size: int, cfg: SourceConfig) -> str | None:
    if size > cfg.max_record_bytes:
        return f"record is {size:,} bytes, over max_record_bytes ({cfg.max_record_bytes:,})"
    return None


def _read_jsonl(data: bytes, path: Path, cfg: SourceConfig, info: FileInfo) -> Iterator[Item | Bad]:
    lines, info.encoding = decode_lines(data, cfg.encoding, str(path))
    for n, line in enumerate(lines, start=1):
        if line is None:
            yield Bad(f"line is not valid text in the file's encoding ({cfg.encoding})", None, line=n)
            continue
        if not line.strip():
            continue
        if reason := _too_big(len(line.encode("utf-8")), cfg):
            yield Bad(reason, line, line=n)
            continue
        try:
            yield Item(json.loads(line), line=n)
        except json.JSONDecodeError as e:
            yield Bad(f"malformed JSON: {e.msg} at column {e.colno}", line, line=n)


def _line_of(text: str, pos: int, cache: list[int]) -> int:
    """1-based line of offset `pos`; `cache` = [last_pos, last_line] makes forward scans linear."""
    last_pos, last_line = cache
    line = last_line + text.count("\n", last_pos, pos)
    cache[0], cache[1] = pos, line
    return line


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


def _read_json(data: bytes, path: Path, cfg: SourceConfig, info: FileInfo) -> Iterator[Item | Bad]:
    text, info.encoding = decode(data, cfg.encoding, str(path))
    dec = json.JSONDecoder()
    pos = _skip_ws(text, 0)
    cache = [0, 1]
    if text.startswith("[", pos):
        yield from _stream_array(text, pos + 1, dec, cfg, cache)
        return
    try:
        obj, end = dec.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        yield Bad(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}; nothing in this file could "
                  f"be read", text, line=e.lineno)
        return
    if _skip_ws(text, end) < len(text):
        # Several values one after another: the file is JSON Lines with a .json name (e.g. AdvertiseGen).
        yield from _read_jsonl(data, path, cfg, info)
        return
    field = cfg.options.get("json_field")
    if field is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(field), list):
            raise SourceError(f"{path}: options.json_field={field!r} but the file has no list under that key")
        for i, item in enumerate(obj[field]):
            yield Item(item, index=i)
    elif isinstance(obj, dict) and len(obj) > 1 and all(isinstance(v, dict) for v in obj.values()):
        # A mapping of id -> record (CrossWOZ dialogues): each value is a record, its key kept as provenance.
        for i, (k, v) in enumerate(obj.items()):
            yield Item(v, index=i, key=str(k))
    else:
        yield Item(obj, line=_line_of(text, pos, cache), index=0)


def _stream_array(text: str, pos: int, dec: json.JSONDecoder, cfg: SourceConfig, cache: list[int]) -> Iterator[Item | Bad]:
    """Decode array elements one by one so a damaged tail loses only itself, with its line named."""
    i = 0
    n = len(text)
    while True:
        pos = _skip_ws(text, pos)
        if pos >= n:
            yield Bad("truncated JSON: the array is not closed", "", line=_line_of(text, pos, cache), index=i)
            return
        if text[pos] == "]":
            return
        start = pos
        try:
            obj, end = dec.raw_decode(text, pos)
        except json.JSONDecodeError as e:
            line = _line_of(text, start, cache)
            yield Bad(f"malformed JSON in array element {i}: {e.msg} at line {e.lineno} column {e.colno}; "
                      f"the rest of the file ({n - start:,} characters) could not be read", text[start:],
                      line=line, index=i)
            return
        line = _line_of(text, start, cache)
        if reason := _too_big(end - start, cfg):
            yield Bad(reason, text[start:end], line=line, index=i)
        else:
            yield Item(obj, line=line, index=i)
        i += 1
        pos = _skip_ws(text, end)
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] == "]":
            return
        else:
            yield Bad(f"malformed JSON after array element {i - 1}: expected ',' or ']'", text[pos:],
                      line=_line_of(text, pos, cache), index=i)
            return


def _read_csv(data: bytes, path: Path, cfg: SourceConfig, info: FileInfo, delimiter: str) -> Iterator[Item | Bad]:
    text, info.encoding = decode(data, cfg.encoding, str(path))
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
    header: list[str] | None = cfg.csv_columns
    prev_line = 0
    index = 0
    try:
        for row in reader:
            start, prev_line = prev_line + 1, reader.line_num
            if not row or all(not c.strip() for c in row):
                continue
            if header is None and cfg.csv_header:
                header = [h.strip() for h in row]
                continue
            if header is None:
                raise SourceError(f"{path}: csv_header is false but csv_columns is not set")
            if len(row) != len(header):
                yield Bad(f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}",
                          delimiter.join(row), line=start, index=index)
            else:
                yield Item(dict(zip(header, row, strict=True)), line=start, index=index)
            index += 1
    except csv.Error as e:
        yield Bad(f"malformed CSV: {e}", text.splitlines()[prev_line:prev_line + 1], line=prev_line + 1, index=index)


def _read_text(data: bytes, path: Path, cfg: SourceConfig, info: FileInfo) -> Iterator[Item | Bad]:
    text, info.encoding = decode(data, cfg.encoding, str(path))
    if cfg.text_unit == "file":
        yield Item({"text": text.strip()}, line=1, index=0)
        return
    lines = text.splitlines()
    if cfg.text_unit == "line":
        for n, line in enumerate(lines, start=1):
            if line.strip():
                yield Item({"text": line.strip()}, line=n)
        return
    block: list[str] = []
    start = 1
    for n, line in enumerate([*lines, ""], start=1):
        if line.strip():
            if not block:
                start = n
            block.append(line.rstrip())
        elif block:
            yield Item({"text": "\n".join(block).strip()}, line=start)
            block = []


def _read_parquet(path: Path) -> Iterator[Item | Bad]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except Exception as e:  # pyarrow raises several types for a damaged file
        raise SourceError(f"{path}: not a readable Parquet file: {e}") from None
    for i, row in enumerate(table.to_pylist()):
        yield Item(row, index=i)


def _read_arrow(path: Path) -> Iterator[Item | Bad]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:
        raise SourceError(f"{path}: not a dataset saved with save_to_disk: {e}") from None
    parts = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    for split, part in parts:
        for i, row in enumerate(part):
            yield Item(row, index=i, key=split)
