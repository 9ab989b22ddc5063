"""File readers: one part of a file (a byte range, a row range, or the whole file) to raw items with their
exact line and index, or to `Bad` items that say why. `read` picks the reader by file type; the JSON readers
are `json_readers.py`, what a part is and the byte access readers share `parts.py`.

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
from collections.abc import Iterator
from typing import Any

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.json_readers import read_json, read_jsonl
from tuneforge.ingest.parts import Bad, Item, Part, csv_row_kind, decode_part, read_part_bytes, too_big


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


def read(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    kind = part.file_type
    if kind == "arrow":
        yield from _read_arrow(part)
    elif kind == "parquet":
        yield from _read_parquet(part)
    elif kind == "jsonl":
        yield from read_jsonl(part, cfg)
    elif kind == "json":
        yield from read_json(part, cfg)
    elif kind in ("csv", "tsv"):
        yield from _read_csv(part, cfg, "\t" if kind == "tsv" else ",")
    else:
        yield from _read_text(part, cfg)


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
    text = decode_part(read_part_bytes(part), part)
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
        what = csv_row_kind(row, header, cfg)
        if what == "blank":
            continue
        if what == "header":
            header = [h.strip() for h in row]
            continue
        if header is None:
            raise SourceError(f"{part.path}: csv_header is false but csv_columns is not set")
        size = sum(len(c) for c in row)
        if reason := too_big(size, cfg):
            yield Bad(reason, delimiter.join(row)[:2000] + "…", line=start, index=index)
        elif len(row) != len(header):
            yield Bad(f"expected {len(header)} fields ({', '.join(header)}), got {len(row)}",
                      delimiter.join(row), line=start, index=index)
        else:
            yield Item(dict(zip(header, row, strict=True)), line=start, index=index)
        index += 1


def _read_text(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    text = decode_part(read_part_bytes(part), part)
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
