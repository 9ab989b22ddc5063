"""Leakage check after the split: near-duplicate pairs that straddle train/validation/test.

Dedup removes near-duplicates before the split and its clusters keep what survives in one split, so this
report should be empty; it is computed independently (all records of all splits in one LSH index) to prove it.
"""

from __future__ import annotations

from typing import Any

from tuneforge.clean.config import CleanConfig
from tuneforge.clean.minhash import Index, jaccard, key_text, shingles, signatures, worker_pool
from tuneforge.common.records import Record, record_texts


def leakage_report(splits: dict[str, list[Record]], cfg: CleanConfig, num_proc: int = 1) -> dict[str, Any]:
    d = cfg.dedup
    owners: list[tuple[str, Record]] = [(name, rec) for name in sorted(splits) for rec in splits[name]
                                        if rec.get("kind") != "kb"]
    keys = [key_text(record_texts(rec)) for _, rec in owners]
    with worker_pool(num_proc, len(keys)) as pool:
        sigs = signatures(keys, d.ngram, d.num_perm, d.seed, pool)
    index = Index(d.threshold, d.candidate_margin, d.num_perm)
    pairs: list[dict[str, Any]] = []
    cache: dict[int, set[str]] = {}

    def grams(i: int) -> set[str]:
        if i not in cache:
            cache[i] = shingles(keys[i], d.ngram)
        return cache[i]

    for i, (split, rec) in enumerate(owners):
        for j in index.query(sigs[i]):
            other_split, other = owners[j]
            if other_split == split:
                continue
            sim = jaccard(grams(i), grams(j))
            if sim >= d.threshold:
                pairs.append({"a": other["id"], "a_split": other_split, "b": rec["id"], "b_split": split,
                              "jaccard": round(sim, 4)})
        index.insert(i, sigs[i])
    return {"threshold": d.threshold, "checked": len(owners), "pairs": pairs, "n": len(pairs)}
