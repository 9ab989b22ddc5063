"""Exact (normalised hash) and near (MinHash LSH) deduplication; the first record of a cluster is kept.

Near duplicates are found by LSH at a slightly lower threshold and confirmed on the exact Jaccard of the
two n-gram sets, so a reported pair really is above the recipe's threshold. Records derived from one input
(same `meta.group`, e.g. ranked pairs sharing a prompt) are never near-duplicates of each other.
"""

from __future__ import annotations

import hashlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from tuneforge.clean.config import DedupConfig
from tuneforge.clean.minhash import Index, jaccard, key_text, shingles, signatures
from tuneforge.common.records import Record, record_texts


@dataclass
class Duplicate:
    index: int
    of: int
    method: str
    similarity: float


@dataclass
class DedupResult:
    dups: dict[int, Duplicate] = field(default_factory=dict)

    def representative(self, i: int) -> int:
        while i in self.dups:
            i = self.dups[i].of
        return i


def _exact_key(rec: Record, key: str) -> str:
    return hashlib.sha1(f"{rec['kind']}\x1e{key}".encode()).hexdigest()


def near_pairs(keys: list[str], sigs: np.ndarray, index: Index, threshold: float, n: int,
               allowed: list[int], compatible=None) -> dict[int, tuple[int, float]]:
    """Stream records in order: each is a duplicate of the first earlier kept one at or above threshold."""
    found: dict[int, tuple[int, float]] = {}
    cache: dict[int, set[str]] = {}
    floor = index.candidate_threshold - 0.15
    for i in allowed:
        match = None
        cands = index.query(sigs[i])
        if cands:
            mine = shingles(keys[i], n)
            for j in cands:
                if compatible is not None and not compatible(i, j):
                    continue
                if float(np.mean(sigs[i] == sigs[j])) < floor:
                    continue
                theirs = cache.get(j)
                if theirs is None:
                    theirs = cache[j] = shingles(keys[j], n)
                sim = jaccard(mine, theirs)
                if sim >= threshold:
                    match = (j, sim)
                    break
        if match is None:
            index.insert(i, sigs[i])
        else:
            found[i] = match
    return found


def deduplicate(records: list[Record], cfg: DedupConfig, pool: ProcessPoolExecutor | None = None) -> DedupResult:
    """Find duplicates among `records` (all of a cleanable kind); indices refer to that list."""
    res = DedupResult()
    keys = [key_text(record_texts(r)) for r in records]
    alive = list(range(len(records)))
    if cfg.exact:
        first: dict[str, int] = {}
        alive = []
        for i, (rec, key) in enumerate(zip(records, keys, strict=True)):
            h = _exact_key(rec, key)
            if h in first:
                res.dups[i] = Duplicate(i, first[h], "exact", 1.0)
            else:
                first[h] = i
                alive.append(i)
    if cfg.near and len(alive) > 1:
        sub = [keys[i] for i in alive]
        sigs_sub = signatures(sub, cfg.ngram, cfg.num_perm, cfg.seed, pool)
        sigs = np.zeros((len(records), cfg.num_perm), dtype=np.uint32)
        sigs[alive] = sigs_sub
        index = Index(cfg.threshold, cfg.candidate_margin, cfg.num_perm)

        def compatible(i: int, j: int) -> bool:
            a, b = records[i], records[j]
            ga = a["meta"].get("group")
            return a["kind"] == b["kind"] and (ga is None or ga != b["meta"].get("group"))

        for i, (j, sim) in near_pairs(keys, sigs, index, cfg.threshold, cfg.ngram, alive, compatible).items():
            res.dups[i] = Duplicate(i, j, "minhash", sim)
    return res
