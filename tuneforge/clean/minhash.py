"""MinHash signatures of character n-grams (so Chinese works without a word segmenter), in parallel.

Signatures are datasketch MinHash values (fixed seed, affine32 scheme) of a fixed 32-bit hash of each n-gram,
so the same text gives the same signature in any process on any machine. Workers come from a fork server, not a
fork of the caller, because the build may run inside a threaded Prefect task.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from functools import lru_cache
from multiprocessing import get_context
from typing import Any

import numpy as np

_STRIP = re.compile(r"[\W_]+")
SCHEME = "affine32"
CHUNK = 2000


def key_text(texts: list[str]) -> str:
    """The text dedup compares: case-folded, without whitespace or punctuation."""
    joined = "\n".join(texts)
    return _STRIP.sub("", joined.casefold()) or joined


@lru_cache(maxsize=1)
def _alnum() -> np.ndarray:
    """Per code point: what `_STRIP` keeps (`str.isalnum`, the test `\\w` makes, less `_`). NumPy's `isalnum`
    asks the interpreter's own Unicode tables, over every code point at once: 0.014 s a process here, where a
    `str.isalnum` loop took 0.07 (every worker builds it once)."""
    return np.strings.isalnum(np.arange(0x110000, dtype=np.uint32).view("U1"))


def key_texts(groups: list[list[str]]) -> list[str]:
    """`key_text` of each group of texts, the characters of a whole shard filtered in one array operation (the
    regex spends about 33 ns a character; this, about 3)."""
    folded = ["\n".join(t).casefold() for t in groups]
    if not folded:
        return []
    cps = np.frombuffer("".join(folded).encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    kept_at = np.flatnonzero(_alnum()[cps])
    kept = cps[kept_at].tobytes().decode("utf-32-le")  # no surrogate is alphanumeric: what is left is valid
    bounds = np.concatenate(([0], np.cumsum(np.fromiter(map(len, folded), dtype=np.int64, count=len(folded)))))
    at = np.searchsorted(kept_at, bounds).tolist()  # kept characters before each text's start
    return [kept[a:b] or "\n".join(g) for a, b, g in zip(at[:-1], at[1:], groups, strict=True)]


def shingles(text: str, n: int) -> set[str]:
    if len(text) <= n:
        return {text}
    return {text[i:i + n] for i in range(len(text) - n + 1)}


def jaccard(a: set[str], b: set[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


_BASE = np.uint64(1099511628211)  # FNV-64 prime: the polynomial base of the n-gram hash
_MASK32 = np.uint64(0xFFFFFFFF)
_BATCH_WINDOWS = 1 << 13  # windows per block: a 4 MiB permutations x windows matrix at 128 permutations


def shingle_hash(s: str) -> int:
    """The 32-bit hash of one n-gram, as `_window_hashes` computes it for every n-gram of a text at once."""
    h = 0
    for ch in s:
        h = (h * int(_BASE) + ord(ch)) & 0xFFFFFFFFFFFFFFFF
    return (h ^ (h >> 32)) & 0xFFFFFFFF


def _window_hashes(cps: np.ndarray, n: int) -> np.ndarray:
    """`shingle_hash` of every n-character window of a code-point array (uint64 arithmetic wraps mod 2^64)."""
    h = np.zeros(len(cps) - n + 1, dtype=np.uint64)
    for k in range(n):
        h = h * _BASE + cps[k:len(cps) - n + 1 + k]
    return ((h ^ (h >> np.uint64(32))) & _MASK32).astype(np.uint32)


def _fmix32(h: np.ndarray) -> np.ndarray:
    """MurmurHash3's 32-bit finalizer, the pre-mix datasketch's affine32 scheme applies to each input hash."""
    h = h ^ (h >> np.uint32(16))
    h = h * np.uint32(0x85EBCA6B)
    h = h ^ (h >> np.uint32(13))
    h = h * np.uint32(0xC2B2AE35)
    return h ^ (h >> np.uint32(16))


def base_minhash(num_perm: int, seed: int) -> Any:
    """datasketch's own MinHash with our n-gram hash: what `signatures` must equal (tests compare them)."""
    from datasketch import MinHash  # datasketch imports scipy: only when it is needed

    return MinHash(num_perm=num_perm, seed=seed, hashfunc=shingle_hash, scheme=SCHEME)


@lru_cache(maxsize=8)
def permutations(num_perm: int, seed: int) -> np.ndarray:
    """datasketch's MinHash permutation parameters (2, num_perm) for this seed. Importing datasketch costs
    seconds in every build worker, so they are kept in $TUNEFORGE_HOME, keyed by datasketch's version."""
    from importlib.metadata import version

    from tuneforge.common.home import tuneforge_home

    path = tuneforge_home() / "cache" / f"minhash-{SCHEME}-{num_perm}-{seed}-datasketch-{version('datasketch')}.npy"
    with contextlib.suppress(OSError, ValueError):
        return np.load(path)
    perms = np.asarray(base_minhash(num_perm, seed).permutations)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        with open(tmp, "wb") as f:
            np.save(f, perms)
        os.replace(tmp, path)  # atomic: a concurrent worker reads the old file or the whole new one
    return perms


def _chunk_signatures(args: tuple[list[str], int, int, int]) -> np.ndarray:
    """datasketch MinHash values (affine32) for each text, with the permutations applied to many texts at once.

    Equal, value for value, to `MinHash(num_perm, seed, hashfunc=shingle_hash).update_batch(shingles(t, n))`
    (a test checks it); batching only removes the per-text Python overhead. The n-gram hashes of the whole chunk
    are computed over one concatenated code-point array, keeping only windows inside one text.
    """
    texts, n, num_perm, seed = args
    a, b = permutations(num_perm, seed)
    lengths = np.fromiter((len(t) for t in texts), dtype=np.int64, count=len(texts))
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1]))
    short = lengths <= n
    counts = np.where(short, 1, lengths - n + 1)
    win_starts = np.concatenate(([0], np.cumsum(counts)[:-1]))
    total = int(counts.sum())
    cps = np.frombuffer("".join(texts).encode("utf-32-le", "surrogatepass"), dtype=np.uint32).astype(np.uint64)
    if len(cps) >= n:
        pos = np.arange(total, dtype=np.int64) + np.repeat(starts - win_starts, counts)
        pos = np.minimum(pos, len(cps) - n)  # only short texts' placeholders can point past the end
        hv = _window_hashes(cps, n)[pos]
    else:
        hv = np.zeros(total, dtype=np.uint32)
    for k in np.flatnonzero(short):
        hv[win_starts[k]] = shingle_hash(texts[k])
    hv = _fmix32(hv)
    out = np.empty((len(texts), num_perm), dtype=np.uint32)
    ends = win_starts + counts
    a, b = a.astype(np.uint32)[:, None], b.astype(np.uint32)[:, None]
    # Permutations x windows, so each text's minimum is a reduction along contiguous memory (five times faster
    # than along rows), in one buffer reused for every block (a fresh 4 MiB array costs its page faults).
    buf = np.empty(num_perm * _BATCH_WINDOWS, dtype=np.uint32)
    i = 0
    while i < len(texts):
        j = max(i + 1, int(np.searchsorted(ends, win_starts[i] + _BATCH_WINDOWS, side="right")))
        m = int(ends[j - 1] - win_starts[i])
        block = buf[:num_perm * m].reshape(num_perm, m) if m <= _BATCH_WINDOWS else np.empty((num_perm, m), np.uint32)
        np.multiply(a, hv[None, win_starts[i]:ends[j - 1]], out=block)
        block += b
        out[i:j] = np.minimum.reduceat(block, win_starts[i:j] - win_starts[i], axis=1).T
        i = j
    return out


@contextlib.contextmanager
def worker_pool(num_proc: int, items: int) -> Iterator[ProcessPoolExecutor | None]:
    """Worker processes for the clean stage, or None when one process will do (small input, num_proc 1)."""
    if num_proc <= 1 or items <= CHUNK:
        yield None
        return
    ctx = get_context("forkserver")
    ctx.set_forkserver_preload(["tuneforge.clean.stage"])
    with ProcessPoolExecutor(max_workers=num_proc, mp_context=ctx) as pool:
        yield pool


def signatures(texts: list[str], n: int, num_perm: int, seed: int,
               pool: ProcessPoolExecutor | None = None) -> np.ndarray:
    """One row of `num_perm` uint32 MinHash values per text; chunks go to `pool` when there is one."""
    if not texts:
        return np.empty((0, num_perm), dtype=np.uint32)
    step = CHUNK
    chunks = [(texts[i:i + step], n, num_perm, seed) for i in range(0, len(texts), step)]
    if pool is None or len(chunks) == 1:
        return np.concatenate([_chunk_signatures(c) for c in chunks])
    return np.concatenate(list(pool.map(_chunk_signatures, chunks)))
