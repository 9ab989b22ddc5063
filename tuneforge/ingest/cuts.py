"""Where each file type is cut into parts of about the targets `Sharding` gives: JSONL and line text at line
starts, paragraph text at blank lines, JSON arrays between top-level elements, CSV between rows (quoted
newlines included), Parquet between row groups, saved datasets between rows. Apart from `plan.py` (which hashes
a file and picks its encoding) because each layout's cutting is its own small parser."""

from __future__ import annotations

import codecs
import csv
import re
from dataclasses import dataclass
from pathlib import Path

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.parts import Part, csv_row_kind
from tuneforge.ingest.scan import CHUNK, Scan


@dataclass(frozen=True)
class Sharding:
    """How big a unit of work is: a byte-cut file (JSON lines, text) is cut into equal parts of at most about
    `target_bytes`, at the first cut point after each multiple of that share; CSV, Parquet and saved datasets
    after `target_records` rows."""

    target_bytes: int = 8 << 20
    target_records: int = 20_000


def byte_parts(path: str, rel: str, kind: str, enc: str, scan: Scan) -> list[Part]:
    starts = [(0, 0), *scan.cuts]
    parts = []
    for k, (start, nl) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else None
        parts.append(Part(path, rel, kind, enc, start=start, end=end, first_line=nl + 1, whole=len(starts) == 1,
                          last=end is None))
    return parts


_JSON_TOKEN = re.compile(rb'"(?:[^"\\\n]|\\.)*"|"|[\[\]{},\n]')


def _json_array_cuts(path: Path, target: int) -> tuple[int, list[tuple[int, int, int]]] | None:
    """(offset after the opening '[', [(cut offset, newlines before, element index), ...]) for a top-level
    JSON array, cutting after a top-level comma past each `target` bytes; None if the file is not one.

    A JSON string cannot hold a raw newline, so the file is scanned in blocks that end at a newline and no
    string spans two blocks; a stray quote (an unterminated string) gives up, and the file is read whole.
    """
    depth = 0
    start = None
    cuts: list[tuple[int, int, int]] = []
    newlines = commas = 0
    offset = 0
    next_cut = target
    carry = b""
    with open(path, "rb") as f:
        while True:
            chunk = f.read(CHUNK)
            block = carry + chunk
            if not block:
                break
            if chunk:
                cut = block.rfind(b"\n")
                if cut < 0:
                    if len(block) > 8 * CHUNK:
                        return None  # one enormous line: not worth cutting
                    carry = block
                    continue
                block, carry = block[:cut + 1], block[cut + 1:]
            else:
                carry = b""
            for m in _JSON_TOKEN.finditer(block):
                c = m.group()[:1]
                if c == b'"':
                    if len(m.group()) == 1:
                        return None
                elif c == b"\n":
                    newlines += 1
                elif c in b"[{":
                    if depth == 0:
                        if c != b"[" or start is not None:
                            return None
                        start = offset + m.end()
                    depth += 1
                elif c in b"]}":
                    depth -= 1
                    if depth < 0:
                        return None
                elif depth == 1:  # a top-level comma
                    commas += 1
                    at = offset + m.end()
                    if at >= next_cut:
                        cuts.append((at, newlines, commas))
                        next_cut = at + target
            offset += len(block)
            if not chunk:
                break
    if start is None or depth != 0:
        return None
    return start, cuts


def json_parts(path: Path, rel: str, enc: str, scan: Scan, s: Sharding) -> list[Part]:
    whole = [Part(str(path), rel, "json", enc)]
    if scan.size <= s.target_bytes or enc not in ("utf-8", "utf-8-sig"):
        return whole
    found = _json_array_cuts(path, s.target_bytes)
    if found is None or not found[1]:
        return whole
    first, cuts = found
    with open(path, "rb") as f:
        nl_first = f.read(first).count(b"\n")
    bounds = [(first, nl_first, 0), *cuts]
    parts = []
    for k, (start, nl, index) in enumerate(bounds):
        end = bounds[k + 1][0] if k + 1 < len(bounds) else None
        parts.append(Part(str(path), rel, "json", enc, start=start, end=end, first_line=nl + 1, first_index=index,
                          whole=False, last=end is None))
    return parts


def csv_parts(path: Path, rel: str, kind: str, enc: str, cfg: SourceConfig, scan: Scan, s: Sharding) -> list[Part]:
    """Cut between rows, replaying exactly how the reader counts lines, headers, blank rows and indices."""
    if scan.size <= s.target_bytes:
        return [Part(str(path), rel, kind, enc)]
    real = "utf-8" if enc in ("utf-8-sig", "utf-16") else enc.split("|")[0]
    consumed = [0, 0]  # bytes, lines

    def lines():
        with open(path, "rb") as f:
            first = True
            for raw in f:
                consumed[0] += len(raw)
                consumed[1] += 1
                if first and raw.startswith(codecs.BOM_UTF8):
                    raw = raw[3:]
                first = False
                yield raw.decode(real, "replace")

    reader = csv.reader(lines(), delimiter="\t" if kind == "tsv" else ",")
    header = cfg.csv_columns
    cuts: list[tuple[int, int, int]] = []
    index = 0
    while True:
        at = (consumed[0], consumed[1])
        if index and index % s.target_records == 0 and (not cuts or cuts[-1][2] != index) and header is not None:
            cuts.append((at[0], at[1], index))
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error:
            index += 1
            continue
        what = csv_row_kind(row, header, cfg)
        if what == "header":
            header = [h.strip() for h in row]
        if what == "record":
            index += 1
    hdr = tuple(header) if header else None
    bounds = [(0, 0, 0), *[c for c in cuts if c[0] < scan.size]]
    parts = []
    for k, (start, nl, idx) in enumerate(bounds):
        end = bounds[k + 1][0] if k + 1 < len(bounds) else None
        parts.append(Part(str(path), rel, kind, enc, start=start, end=end, first_line=nl + 1, first_index=idx,
                          whole=len(bounds) == 1, header=hdr if k else None, last=end is None))
    return parts


def parquet_parts(path: Path, rel: str, s: Sharding) -> list[Part]:
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(path).metadata
    except (OSError, ValueError) as e:
        raise SourceError(f"{path}: not a readable Parquet file: {e}") from None
    parts, start, rows, first = [], 0, 0, 0
    for g in range(meta.num_row_groups):
        rows += meta.row_group(g).num_rows
        if rows - first >= s.target_records or g == meta.num_row_groups - 1:
            parts.append(Part(str(path), rel, "parquet", "binary", start=start, end=g + 1, first_index=first,
                              whole=False))
            start, first = g + 1, rows
    return parts or [Part(str(path), rel, "parquet", "binary")]


def arrow_parts(path: Path, rel: str, s: Sharding) -> list[Part]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except Exception as e:  # datasets raises several types for a folder it cannot read
        raise SourceError(f"{path}: not a dataset saved with save_to_disk: {e}") from None
    splits = ds.items() if isinstance(ds, datasets.DatasetDict) else [(None, ds)]
    parts = []
    for name, d in splits:
        n = len(d)
        for start in range(0, max(n, 1), s.target_records):
            parts.append(Part(str(path), rel, "arrow", "binary", start=start, end=min(n, start + s.target_records),
                              first_index=start, whole=False, split=name))
    return parts
