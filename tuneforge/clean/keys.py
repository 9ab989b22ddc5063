"""Compact keys computed once per record, on the shard's worker: a 128-bit exact-duplicate hash and the LSH
band hashes of its MinHash signature. The global dedup, the split and the leakage check work on these keys
alone, never on the records."""

from __future__ import annotations

import hashlib
from functools import lru_cache

import numpy as np

from tuneforge.clean.config import DedupConfig
from tuneforge.clean.minhash import key_text, signatures
from tuneforge.common.records import Record, texts_of

_P = np.uint64(0x100000001B3)  # FNV-64 prime: combines a band's rows into one 64-bit value
_M1 = np.uint64(0xFF51AFD7ED558CCD)  # MurmurHash3's fmix64 constants spread the combined value
_M2 = np.uint64(0xC4CEB9FE1A85EC53)


def exact_key(rec: Record, key: str | None = None) -> bytes:
    """16 bytes that are equal for records of one kind whose text is equal after case folding and with
    whitespace and punctuation removed."""
    key = key_text(texts_of(rec)) if key is None else key
    return hashlib.sha1(f"{rec['kind']}\x1e{key}".encode("utf-8", "surrogatepass")).digest()[:16]


@lru_cache(maxsize=16)
def lsh_params(threshold: float, margin: float, num_perm: int) -> tuple[int, int]:
    """(bands, rows) that datasketch's MinHashLSH would choose for the candidate threshold
    `threshold - margin` (false positives and negatives weighed equally); candidates are checked exactly.

    datasketch finds them by numerical integration (importing it costs seconds, in every build worker), so
    the answer is kept in $TUNEFORGE_HOME, keyed by the arguments and datasketch's version."""
    from importlib.metadata import version

    from tuneforge.common.home import remembered

    def compute() -> list[int]:
        from datasketch import MinHashLSH

        lsh = MinHashLSH(threshold=max(0.05, threshold - margin), num_perm=num_perm)
        return [lsh.b, lsh.r]

    key = f"{threshold}:{margin}:{num_perm}:datasketch-{version('datasketch')}"
    return tuple(remembered("lsh_params", key, compute))  # type: ignore[return-value]


def band_hashes(keys: list[str], cfg: DedupConfig) -> np.ndarray:
    """(len(keys), bands) uint64: each band's `rows` MinHash values folded into one 64-bit value."""
    b, r = lsh_params(cfg.threshold, cfg.candidate_margin, cfg.num_perm)
    if not keys:
        return np.empty((0, b), dtype=np.uint64)
    sigs = signatures(keys, cfg.ngram, cfg.num_perm, cfg.seed).astype(np.uint64)
    out = np.empty((len(keys), b), dtype=np.uint64)
    with np.errstate(over="ignore"):
        for k in range(b):
            h = np.zeros(len(keys), dtype=np.uint64)
            for j in range(k * r, (k + 1) * r):
                h = h * _P + sigs[:, j]
            h ^= h >> np.uint64(33)
            h *= _M1
            h ^= h >> np.uint64(33)
            h *= _M2
            h ^= h >> np.uint64(33)
            out[:, k] = h
    return out
