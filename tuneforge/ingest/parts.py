"""What one shard reads of one file (`Part`), what a reader yields (`Item`, `Bad`), a file's type, and the
byte access every reader shares (a part's bytes, its lines, their decoding, the size cap). Below both the
readers and the planner, which cuts files into these parts."""

from __future__ import annotations

import csv
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig

csv.field_size_limit(sys.maxsize)  # our own max_record_bytes bounds a row; the csv module's 128 KiB must not


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


def read_part_bytes(part: Part) -> bytes:
    try:
        with open(part.path, "rb") as f:
            f.seek(part.start)
            return f.read() if part.end is None else f.read(part.end - part.start)
    except OSError as e:
        raise SourceError(f"{part.path}: cannot read: {e.strerror or e}") from None


def decode_part(data: bytes, part: Part) -> str:
    """Decode a whole part (JSON, CSV, text) in the file's encoding, named when it fails."""
    enc = part.encoding.split("|", 1)[0]
    if enc == "utf-8-sig" and part.start != 0:
        enc = "utf-8"
    try:
        return data.decode(enc)
    except UnicodeDecodeError as e:
        raise SourceError(f"{part.path}: not valid {enc} at byte {part.start + e.start}: {e.reason}; set "
                          f"`encoding:` for this source in the recipe") from None


def part_lines(part: Part) -> Iterator[tuple[int, bytes]]:
    """(line number, raw bytes without the line break) for every line of a byte-range part."""
    data = read_part_bytes(part)
    if part.start == 0 and data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    n = part.first_line
    for raw in data.split(b"\n"):
        yield n, raw[:-1] if raw.endswith(b"\r") else raw
        n += 1


def line_text(raw: bytes, part: Part) -> str | None:
    enc = part.encoding.split("|", 1)[0]
    if enc == "utf-8-sig":
        enc = "utf-8"
    try:
        return raw.decode(enc)
    except UnicodeDecodeError:
        return None


def too_big(size: int, cfg: SourceConfig) -> str | None:
    if size > cfg.max_record_bytes:
        return f"record is {size:,} bytes, over max_record_bytes ({cfg.max_record_bytes:,})"
    return None


def csv_row_kind(row: list[str], header: list[str] | None, cfg: SourceConfig) -> str:
    """What a CSV row is to ingest, one rule for the planner's cuts and the reader's records: "blank" (skipped),
    "header" (the first other row, where the file has one and no header is known yet), or "record"."""
    if not row or all(not c.strip() for c in row):
        return "blank"
    return "header" if header is None and cfg.csv_header else "record"
