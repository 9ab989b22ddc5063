"""The one streaming pass over a source file at planning: sha256, size, UTF-8 validity and the byte cut points
(memory does not grow with the file). Apart from `plan.py` because it is the planner's hot loop (a third of a
big file's plan is its hash) and the part the tests drive chunk by chunk."""

from __future__ import annotations

import codecs
import contextlib
import hashlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa

CHUNK = 8 << 20


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


class Scan:
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
