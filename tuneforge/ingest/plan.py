"""Planning: every source file into parts of about `target_bytes` or `target_records`, with exact line and
index numbers at each cut, its sha256 and its encoding, in one streaming pass (memory does not grow with the
file).

JSONL and line text cut at line starts, paragraph text at blank lines, JSON arrays between top-level
elements, CSV between rows (quoted newlines included), Parquet between row groups, saved datasets between
rows. Small files are one part. The cuts depend only on the file and the targets, never on the machine.
"""

from __future__ import annotations

import codecs
import contextlib
import csv
import hashlib
import io
import json
import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.readers import Part, file_type

CHUNK = 8 << 20


@dataclass(frozen=True)
class Sharding:
    """How big a unit of work is: a byte-cut file (JSON lines, text) is cut into equal parts of at most about
    `target_bytes`, at the first cut point after each multiple of that share; CSV, Parquet and saved datasets
    after `target_records` rows."""

    target_bytes: int = 8 << 20
    target_records: int = 20_000


@dataclass
class FilePlan:
    path: str
    rel: str
    sha256: str | None
    size: int
    file_type: str
    encoding: str
    parts: list[Part] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    stamp: tuple[int, ...] | None = None  # (size, mtime, ctime, inode) when hashed: see `unchanged`


def _stamp(path: Path) -> tuple[int, ...]:
    st = path.stat()
    return (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)


def unchanged(plan: FilePlan) -> None:
    """The file is still the one the plan hashed; a source written to during the build is an error naming it,
    because the records would come from bytes its manifest hash does not cover (a grown file, a half-written
    last line). Size, modification and change times: a rewrite cannot hide from the change time."""
    if plan.stamp is None:
        return
    path = Path(plan.path)
    try:
        now = _stamp(path)
    except OSError as e:
        raise SourceError(f"{plan.rel}: disappeared during the build ({e.strerror or e}); re-run once it is "
                          f"back") from None
    if now != plan.stamp:
        grew = f" (it was {plan.stamp[0]:,} bytes, now {now[0]:,})" if now[0] != plan.stamp[0] else ""
        raise SourceError(f"{plan.rel}: changed while the build read it{grew}; re-run once it is written "
                          f"completely (or build from a copy)")


def _check_codec(enc: str, path: Path) -> None:
    try:
        codecs.lookup(enc)
    except LookupError:
        raise SourceError(f"{path}: unknown encoding {enc!r} in the recipe") from None


def _utf8_valid(data: bytes) -> bool:
    """Strict UTF-8 (no surrogates, overlongs or code points past U+10FFFF, like Python's decoder), checked
    by Arrow's validator without building a str: 0.04 s for 245 MB of Chinese JSON lines, decoding 0.37 s.
    A small buffer (a small file) is decoded: Arrow's fixed cost is larger there."""
    if len(data) < 1 << 16:
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return False
        return True
    arr = pa.Array.from_buffers(pa.large_binary(), 1, [None, pa.py_buffer(np.array([0, len(data)], np.int64)),
                                                        pa.py_buffer(data)])
    try:
        arr.cast(pa.large_string())
    except pa.ArrowInvalid:
        return False
    return True


def _complete(buf: bytes) -> int:
    """Where the last character that may still continue in the next chunk starts (len(buf) if none does)."""
    k = len(buf)
    while k > max(0, len(buf) - 3) and (buf[k - 1] & 0xC0) == 0x80:
        k -= 1
    return k - 1 if k > 0 and buf[k - 1] >= 0xC0 else len(buf)


class _Scan:
    """One pass over a file: sha256, size, UTF-8 validity, and cut points at the first occurrence of `delim`
    after each multiple of `target` bytes (the cut is just after it), with the number of `\\n` before each cut."""

    def __init__(self, path: Path, target: int | None, delim: bytes | None) -> None:
        self.sha = hashlib.sha256()
        self.size = 0
        self.utf8 = True
        self.cuts: list[tuple[int, int]] = []  # (byte offset, newlines before it)
        self.head = b""  # the first bytes (a BOM?)
        self.content: bool | None = None  # anything but whitespace and a BOM (known when one chunk held it all)
        pending = b""  # the start of a character cut by the chunk boundary
        newlines = 0
        tail = b""
        next_cut = target if target else None
        # The hash runs on a thread of its own (hashlib lets go of the GIL), beside the UTF-8 check and the
        # cuts: a third of the pass, and a single big file's plan is one task while the other workers wait.
        with open(path, "rb") as f, contextlib.ExitStack() as stack:
            hashed = None
            hasher = None  # started at the second chunk: a small file is hashed inline (a thread costs more)
            while chunk := f.read(CHUNK):
                if hashed is not None:
                    hashed.result()  # chunks reach the hash in order
                if self.size == 0:
                    self.head = chunk[:4]
                if hasher is None and self.size == 0 and len(chunk) < CHUNK:
                    self.sha.update(chunk)
                    self.content = bool(chunk.replace(codecs.BOM_UTF8, b"").strip())
                else:
                    hasher = hasher or stack.enter_context(ThreadPoolExecutor(1))
                    hashed = hasher.submit(self.sha.update, chunk)
                if self.utf8:
                    buf = pending + chunk if pending else chunk
                    cut = _complete(buf)
                    self.utf8 = _utf8_valid(buf[:cut])  # a whole-bytes slice is the same object, not a copy
                    pending = buf[cut:]
                if delim is not None and next_cut is not None:
                    buf = tail + chunk
                    base = self.size - len(tail)
                    pos = max(0, next_cut - base - len(delim) + 1)
                    while next_cut is not None:
                        i = buf.find(delim, pos)
                        if i < 0:
                            break
                        cut = base + i + len(delim)
                        if cut < next_cut:
                            pos = i + 1
                            continue
                        self.cuts.append((cut, newlines + buf.count(b"\n", len(tail), i + len(delim))))
                        next_cut = (cut // target + 1) * target  # multiples of target: no drift
                        pos = max(i + len(delim), next_cut - base - len(delim) + 1)
                    tail = buf[-(len(delim) - 1):] if len(delim) > 1 else b""
                newlines += chunk.count(b"\n")
                self.size += len(chunk)
            if self.utf8 and pending:
                self.utf8 = _utf8_valid(pending)
            if hashed is not None:
                hashed.result()
        self.cuts = [c for c in self.cuts if c[0] < self.size]


def _whole_file_decodes(path: Path, enc: str) -> bool:
    dec = codecs.getincrementaldecoder(enc)("strict")
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                dec.decode(chunk)
        dec.decode(b"", final=True)
        return True
    except UnicodeDecodeError:
        return False


def _encoding(path: Path, cfg: SourceConfig, scan: _Scan, kind: str) -> str:
    """The file's encoding; `utf-8|mixed` when only some lines are not UTF-8 (those lines are rejected)."""
    if cfg.encoding != "auto":
        _check_codec(cfg.encoding, path)
        bad = _first_error(path, cfg.encoding)
        if bad is None:
            return cfg.encoding
        if kind == "jsonl" and _mostly_decodes(path, cfg.encoding):
            return f"{cfg.encoding}|mixed"
        raise SourceError(f"{path}: not valid {cfg.encoding} at byte {bad[0]}: {bad[1]}; check `encoding:` for this "
                          f"source in the recipe")
    head = scan.head
    if head.startswith(codecs.BOM_UTF8):
        return "utf-8-sig" if scan.utf8 else _fallback(path, kind)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        return "utf-16"
    return "utf-8" if scan.utf8 else _fallback(path, kind)


def _first_error(path: Path, enc: str) -> tuple[int, str] | None:
    """(byte offset, reason) of the first byte that is not valid `enc`, or None."""
    dec = codecs.getincrementaldecoder(enc)("strict")
    done = 0
    try:
        with open(path, "rb") as f:
            while chunk := f.read(CHUNK):
                try:
                    dec.decode(chunk)
                except UnicodeDecodeError as e:
                    return done + e.start, e.reason
                done += len(chunk)
        dec.decode(b"", final=True)
    except UnicodeDecodeError as e:
        return done + e.start, e.reason
    return None


def _mostly_decodes(path: Path, enc: str) -> bool:
    """Do at least half the lines decode? (A few damaged lines are rejected; a wrong encoding is an error.)"""
    bad = total = 0
    with open(path, "rb") as f:
        for raw in f:
            total += 1
            try:
                raw.decode(enc)
            except UnicodeDecodeError:
                bad += 1
    return bad * 2 <= total


def _fallback(path: Path, kind: str) -> str:
    if _whole_file_decodes(path, "gb18030"):
        return "gb18030"
    if kind == "jsonl" and _mostly_decodes(path, "utf-8"):
        return "utf-8|mixed"
    raise SourceError(f"{path}: neither UTF-8 nor GB18030; set `encoding:` for this source in the recipe")


def _byte_parts(path: str, rel: str, kind: str, enc: str, scan: _Scan) -> list[Part]:
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


def _json_parts(path: Path, rel: str, enc: str, scan: _Scan, s: Sharding) -> list[Part]:
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


def _csv_parts(path: Path, rel: str, kind: str, enc: str, cfg: SourceConfig, scan: _Scan, s: Sharding) -> list[Part]:
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
        if not row or all(not c.strip() for c in row):
            continue
        if header is None and cfg.csv_header:
            header = [h.strip() for h in row]
            continue
        index += 1
    hdr = tuple(header) if header else None
    bounds = [(0, 0, 0), *[c for c in cuts if c[0] < scan.size]]
    parts = []
    for k, (start, nl, idx) in enumerate(bounds):
        end = bounds[k + 1][0] if k + 1 < len(bounds) else None
        parts.append(Part(str(path), rel, kind, enc, start=start, end=end, first_line=nl + 1, first_index=idx,
                          whole=len(bounds) == 1, header=hdr if k else None, last=end is None))
    return parts


def _parquet_parts(path: Path, rel: str, s: Sharding) -> list[Part]:
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


def _arrow_parts(path: Path, rel: str, s: Sharding) -> list[Part]:
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


def plan_file(path: Path, rel: str, cfg: SourceConfig, sharding: Sharding) -> FilePlan:
    """Hash and cut one file (or saved-dataset folder) of a source."""
    kind = file_type(path, cfg)
    if kind == "json" and cfg.file_type == "auto" and path.is_file() and _looks_like_jsonl(path):
        kind = "jsonl"  # JSON Lines with a .json name (AdvertiseGen): read and cut it line by line
    if kind == "arrow":
        from tuneforge.common.io import sha256_tree

        return FilePlan(str(path), rel, sha256_tree(path), 0, kind, "binary", _arrow_parts(path, rel, sharding))
    if not path.is_file():
        raise SourceError(f"{path}: not a file")
    delim = None
    if kind == "jsonl" or (kind == "text" and cfg.text_unit == "line"):
        delim = b"\n"
    elif kind == "text" and cfg.text_unit == "paragraph":
        delim = b"\n\n"
    try:
        stamp = _stamp(path)
        scan = _Scan(path, _even_share(stamp[0], sharding.target_bytes), delim)
    except OSError as e:
        raise SourceError(f"{path}: cannot read: {e.strerror or e}") from None
    plan = FilePlan(str(path), rel, scan.sha.hexdigest(), scan.size, kind, "binary", stamp=stamp)
    if scan.size != stamp[0]:
        raise SourceError(f"{rel}: changed while the build read it (it was {stamp[0]:,} bytes, "
                          f"{scan.size:,} were read); re-run once it is written completely (or build from a copy)")
    unchanged(plan)
    if scan.size == 0 or (kind != "parquet" and not (_has_content(path) if scan.content is None else scan.content)):
        plan.warnings.append("empty")
        return plan
    if kind == "parquet":
        plan.parts = _parquet_parts(path, rel, sharding)
        return plan
    enc = plan.encoding = _encoding(path, cfg, scan, kind)
    if enc == "utf-16":
        plan.parts = [Part(str(path), rel, kind, enc)]
    elif delim is not None:
        plan.parts = _byte_parts(str(path), rel, kind, enc, scan)
    elif kind == "json":
        plan.parts = _json_parts(path, rel, enc, scan, sharding)
    elif kind in ("csv", "tsv"):
        plan.parts = _csv_parts(path, rel, kind, enc, cfg, scan, sharding)
    else:
        plan.parts = [Part(str(path), rel, kind, enc)]
    return plan


def _even_share(size: int, target: int) -> int:
    """The fewest parts of at most `target` bytes, made equal: cut after every `target` bytes, a 163 MB file
    at 8 MiB is 19 whole parts and a half, and the worker with the half part waits at the end of every stage
    (0.24 s of a 200k-record build's clean stage on two workers)."""
    parts = max(1, -(-size // max(1, target)))
    return -(-size // parts)


def _looks_like_jsonl(path: Path) -> bool:
    """Two complete JSON objects on the first two non-empty lines."""
    with open(path, "rb") as f:
        head = f.read(1 << 20)
    lines = [ln for ln in head.removeprefix(codecs.BOM_UTF8).split(b"\n")[:-1] if ln.strip()][:2]
    if len(lines) < 2 or not lines[0].lstrip().startswith(b"{"):
        return False
    try:
        return all(isinstance(json.loads(ln), dict) for ln in lines)
    except ValueError:
        return False


def _has_content(path: Path) -> bool:
    """Anything but whitespace (and a BOM) in the file."""
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            if chunk.replace(codecs.BOM_UTF8, b"").strip():
                return True
    return False


def read_text_sample(path: Path, limit: int = 1 << 16) -> str:
    """The first bytes of a file as text, for messages."""
    with open(path, "rb") as f:
        return io.TextIOWrapper(io.BytesIO(f.read(limit)), encoding="utf-8", errors="replace").read()
