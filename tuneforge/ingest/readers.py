"""File readers: one part of a file (a byte range, a row range, or the whole file) to raw items with their
exact line and index, or to `Bad` items that say why.

A reader never raises on bad data inside a file: a malformed line or row becomes a `Bad` item naming its line.
Only a file that cannot be read at all (missing, unknown encoding) raises `SourceError`. Lines are split on
`\\n` alone (a raw U+2028 or U+0085 inside a JSON string is text, not a line break).
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import decimal
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig

SUFFIX_TYPES = {".json": "json", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv", ".tsv": "tsv",
                ".parquet": "parquet", ".txt": "text", ".md": "text", ".text": "text"}
ARROW_MARKERS = ("dataset_dict.json", "state.json")
csv.field_size_limit(sys.maxsize)  # our own max_record_bytes bounds a row; the csv module's 128 KiB must not


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


@dataclass(frozen=True)
class Part:
    """What one shard reads of one file. `start`/`end` are bytes (JSONL, text, CSV, JSON arrays) or rows
    (Parquet, saved datasets); `first_line`/`first_index` number the part's first item as in the whole file."""

    path: str
    rel: str
    file_type: str
    encoding: str
    start: int = 0
    end: int | None = None
    first_line: int = 1
    first_index: int = 0
    whole: bool = True
    header: tuple[str, ...] | None = None
    split: str | None = None  # a saved DatasetDict's split
    format: str | None = None  # the source format of this file (detected or from the recipe)
    last: bool = True  # the part that reaches the end of the file


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


def json_safe(value: Any) -> Any:
    """Parquet and Arrow values as JSON: bytes as UTF-8 text (or `base64:` text), dates as ISO strings."""
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (bytes, bytearray, memoryview)):
        b = bytes(value)
        try:
            return b.decode("utf-8")
        except UnicodeDecodeError:
            return "base64:" + base64.b64encode(b).decode("ascii")
    if isinstance(value, (_dt.date, _dt.datetime, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, float) and value != value:  # NaN is not JSON
        return None
    return value


def _read_bytes(part: Part) -> bytes:
    try:
        with open(part.path, "rb") as f:
            f.seek(part.start)
            return f.read() if part.end is None else f.read(part.end - part.start)
    except OSError as e:
        raise SourceError(f"{part.path}: cannot read: {e.strerror or e}") from None


def _decode(data: bytes, part: Part) -> str:
    """Decode a whole part (JSON, CSV, text) in the file's encoding, named when it fails."""
    enc = part.encoding.split("|", 1)[0]
    if enc == "utf-8-sig" and part.start != 0:
        enc = "utf-8"
    try:
        return data.decode(enc)
    except UnicodeDecodeError as e:
        raise SourceError(f"{part.path}: not valid {enc} at byte {part.start + e.start}: {e.reason}; set "
                          f"`encoding:` for this source in the recipe") from None


def _lines(part: Part) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes without the line break) for every line of a byte-range part."""
    data = _read_bytes(part)
    if part.start == 0 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    n = part.first_line
    for raw in data.split(b"\n"):
        yield n, raw[:-1] if raw.endswith(b"\r") else raw
        n += 1


def _line_text(raw: bytes, part: Part) -> str | None:
    enc = part.encoding.split("|", 1)[0]
    if enc == "utf-8-sig":
        enc = "utf-8"
    try:
        return raw.decode(enc)
    except UnicodeDecodeError:
        return None


def read(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    kind = part.file_type
    if kind == "arrow":
        yield from _read_arrow(part)
    elif kind == "parquet":
        yield from _read_parquet(part)
    elif kind == "jsonl":
        yield from _read_jsonl(part, cfg)
    elif kind == "json":
        yield from _read_json(part, cfg)
    elif kind in ("csv", "tsv"):
        yield from _read_csv(part, cfg, "\t" if kind == "tsv" else ",")
    else:
        yield from _read_text(part, cfg)


def _too_big(size: int, cfg: SourceConfig) -> str | None:
    if size > cfg.max_record_bytes:
        return f"record is {size:,} bytes, over max_record_bytes ({cfg.max_record_bytes:,})"
    return None


def parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, reason): malformed JSON, nesting too deep, or a number too long to hold."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"malformed JSON: {e.msg} at column {e.colno}"
    except RecursionError:
        return None, "malformed JSON: nested too deeply to read"
    except ValueError as e:  # an integer of more than 4300 digits
        return None, f"malformed JSON: {e}"


_SLOW = object()


def _exact_fast(raw: bytes) -> Any:
    """A UTF-8 line parsed by orjson (about twice as fast as `json` with the decode), or `_SLOW` where its
    answer could differ from `json.loads`: any error (json has its own messages, and reads NaN, lone
    surrogate escapes and 1e400) and any float (orjson reads an integer beyond 64 bits as one)."""
    try:
        value = orjson.loads(raw)
        return _SLOW if _has_float(value) else value
    except (orjson.JSONDecodeError, RecursionError):
        return _SLOW


def _has_float(v: Any) -> bool:
    t = type(v)
    if t is dict:
        v = v.values()
    elif t is not list:
        return t is float
    for x in v:
        tx = type(x)
        if tx is str:
            continue
        if tx is float or ((tx is dict or tx is list) and _has_float(x)):
            return True
    return False


def _read_jsonl(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    utf8 = part.encoding.split("|", 1)[0] in ("utf-8", "utf-8-sig")
    for n, raw in _lines(part):
        if not raw.strip():
            continue
        if reason := _too_big(len(raw), cfg):
            yield Bad(reason, raw[:2000].decode("utf-8", "replace") + "…", line=n)
            continue
        if utf8 and (value := _exact_fast(raw)) is not _SLOW:
            yield Item(value, line=n)
            continue
        line = _line_text(raw, part)
        if line is None:
            yield Bad(f"line is not valid text in the file's encoding ({part.encoding.split('|')[0]})",
                      raw.decode("utf-8", "replace"), line=n)
            continue
        value, reason = parse_json(line)
        yield Bad(reason, line, line=n) if reason else Item(value, line=n)


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _LineCounter:
    """1-based line of an offset in `text`, for forward scans in linear time."""

    def __init__(self, text: str, first_line: int) -> None:
        self.text, self.pos, self.line = text, 0, first_line

    def __call__(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def _read_json(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    text = _decode(_read_bytes(part), part)
    if part.start == 0 and text.startswith("\ufeff"):
        text = text[1:]
    dec = json.JSONDecoder()
    line_of = _LineCounter(text, part.first_line)
    if not part.whole:  # a range of array elements, found by the planner
        yield from _stream_array(text, 0, dec, cfg, line_of, part.first_index, part.last)
        return
    pos = _skip_ws(text, 0)
    if text.startswith("[", pos):
        yield from _stream_array(text, pos + 1, dec, cfg, line_of, 0, True)
        return
    try:
        obj, end = dec.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        yield Bad(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}; nothing in this file could "
                  f"be read", text, line=e.lineno)
        return
    except (RecursionError, ValueError) as e:
        yield Bad(f"malformed JSON: {'nested too deeply' if isinstance(e, RecursionError) else e}; nothing in "
                  f"this file could be read", text, line=1)
        return
    if _skip_ws(text, end) < len(text):
        # Several values one after another: the file is JSON Lines with a .json name (e.g. AdvertiseGen).
        yield from _read_jsonl(part, cfg)
        return
    field = cfg.options.get("json_field")
    if field is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(field), list):
            raise SourceError(f"{part.path}: options.json_field={field!r} but the file has no list under that key")
        for i, item in enumerate(obj[field]):
            yield Item(item, index=i)
    elif isinstance(obj, dict) and len(obj) > 1 and all(isinstance(v, dict) for v in obj.values()):
        # A mapping of id -> record (CrossWOZ dialogues): each value is a record, its key kept as provenance.
        for i, (k, v) in enumerate(obj.items()):
            yield Item(v, index=i, key=str(k))
    else:
        yield Item(obj, line=line_of(pos), index=0)


def _stream_array(text: str, pos: int, dec: json.JSONDecoder, cfg: SourceConfig, line_of: _LineCounter,
                  first_index: int, last: bool) -> Iterator[Item | Bad]:
    """Decode array elements one by one so a damaged tail loses only itself, with its line named."""
    i = first_index
    n = len(text)
    while True:
        pos = _skip_ws(text, pos)
        if pos >= n:
            if last:
                yield Bad("truncated JSON: the array is not closed", "", line=line_of(pos), index=i)
            return
        if text[pos] == "]":
            return
        start = pos
        try:
            obj, end = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError, ValueError) as e:
            what = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else (
                "nested too deeply" if isinstance(e, RecursionError) else str(e))
            yield Bad(f"malformed JSON in array element {i}: {what}; the rest of the file "
                      f"({n - start:,} characters) could not be read", text[start:], line=line_of(start), index=i)
            return
        line = line_of(start)
        if reason := _too_big(end - start, cfg):
            yield Bad(reason, text[start:start + 2000] + "…", line=line, index=i)
        else:
            yield Item(obj, line=line, index=i)
        i += 1
        pos = _skip_ws(text, end)
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] == "]":
            return
        elif pos < n or last:
            yield Bad(f"malformed JSON after array element {i - 1}: expected ',' or ']'", text[pos:],
                      line=line_of(pos), index=i)
            return


class _CountingLines:
    """Lines of a text for `csv.reader`, counting the lines handed out so each row's first line is known."""

    def __init__(self, text: str) -> None:
        self.it = iter(io.StringIO(text, newline=""))
        self.taken = 0

    def __iter__(self) -> _CountingLines:
        return self

    def __next__(self) -> str:
        line = next(self.it)
        self.taken += 1
        return line


def _read_csv(part: Part, cfg: SourceConfig, delimiter: str) -> Iterator[Item | Bad]:
    text = _decode(_read_bytes(part), part)
    if part.start == 0 and text.startswith("\ufeff"):
        text = text[1:]
    src = _CountingLines(text)
    reader = csv.reader(src, delimiter=delimiter)
    header: list[str] | None = list(part.header) if part.header else cfg.csv_columns
    index = part.first_index
    while True:
        start = part.first_line + src.taken
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            yield Bad(f"malformed CSV: {e}", None, line=start, index=index)
            index += 1
            continue
        if not row or all(not c.strip() for c in row):
            continue
        if header is None and cfg.csv_header:
            header = [h.strip() for h in row]
            continue
        if header is None:
            raise SourceError(f"{part.path}: csv_header is false but csv_columns is not set")
        size = sum(len(c) for c in row)
        if reason := _too_big(size, cfg):
            yield Bad(reason, delimiter.join(row)[:2000] + "…", line=start, index=index)
        elif len(row) != len(header):
            yield Bad(f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}",
                      delimiter.join(row), line=start, index=index)
        else:
            yield Item(dict(zip(header, row, strict=True)), line=start, index=index)
        index += 1


def _read_text(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    text = _decode(_read_bytes(part), part)
    if part.start == 0 and text.startswith("\ufeff"):
        text = text[1:]
    if cfg.text_unit == "file":
        if text.strip():
            yield Item({"text": text.strip()}, line=1, index=0)
        return
    lines = [ln[:-1] if ln.endswith("\r") else ln for ln in text.split("\n")]
    if cfg.text_unit == "line":
        for n, line in enumerate(lines, start=part.first_line):
            if line.strip():
                yield Item({"text": line.strip()}, line=n)
        return
    block: list[str] = []
    start = part.first_line
    for n, line in enumerate([*lines, ""], start=part.first_line):
        if line.strip():
            if not block:
                start = n
            block.append(line.rstrip())
        elif block:
            yield Item({"text": "\n".join(block).strip()}, line=start)
            block = []


def _read_parquet(part: Part) -> Iterator[Item | Bad]:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(part.path)
        groups = range(pf.num_row_groups) if part.whole else range(part.start, part.end or pf.num_row_groups)
        i = part.first_index
        for g in groups:
            for row in pf.read_row_group(g).to_pylist():
                yield Item(json_safe(row), index=i)
                i += 1
    except (OSError, ValueError) as e:  # pyarrow raises ArrowInvalid (a ValueError) or OSError for a damaged file
        raise SourceError(f"{part.path}: not a readable Parquet file: {e}") from None


def _read_arrow(part: Part) -> Iterator[Item | Bad]:
    import datasets

    try:
        ds = datasets.load_from_disk(part.path)
    except Exception as e:  # datasets raises several types for a folder it cannot read
        raise SourceError(f"{part.path}: not a dataset saved with save_to_disk: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        ds = ds[part.split]
    stop = len(ds) if part.end is None else part.end
    for i, row in enumerate(ds.select(range(part.start, stop)), start=part.start):
        yield Item(json_safe(dict(row)), index=i, key=part.split)
