"""Leakage check after the split: near-duplicate pairs that straddle train/validation/test.

Dedup removes near duplicates before the split, and everything derived from one input shares a split, so
this report should be empty; it proves it from the candidate pairs dedup already verified (its MinHash
signatures are not computed again): pairs of records that both survived, at or above the threshold, in
different splits. Pairs of different kinds (a conversation and a preference pair sharing text) are among them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from tuneforge.clean.config import CleanConfig
from tuneforge.clean.dedup import candidate_pairs, verify
from tuneforge.common.records import Record

SPLIT_NAMES = ("train", "validation", "test")


def leaking_pairs(pairs: np.ndarray, sims: np.ndarray, split_code: np.ndarray, threshold: float) -> np.ndarray:
    """Indices into `pairs` of verified pairs at or above threshold whose two records are in different splits
    (`split_code` per position: 0/1/2, or -1 for a record that did not reach the splits)."""
    if not len(pairs):
        return np.empty(0, dtype=np.int64)
    a, b = split_code[pairs[:, 0]], split_code[pairs[:, 1]]
    return np.flatnonzero((sims >= threshold) & (a >= 0) & (b >= 0) & (a != b))


def report(pairs: np.ndarray, sims: np.ndarray, split_code: np.ndarray, ids: Any, cfg: CleanConfig,
           checked: int) -> dict[str, Any]:
    """The manifest's `leakage` entry; `ids(i)` gives the record id at a position."""
    hits = leaking_pairs(pairs, sims, split_code, cfg.dedup.threshold)
    rows = [{"a": ids(int(pairs[k, 0])), "a_split": SPLIT_NAMES[split_code[pairs[k, 0]]],
             "b": ids(int(pairs[k, 1])), "b_split": SPLIT_NAMES[split_code[pairs[k, 1]]],
             "jaccard": round(float(sims[k]), 4)} for k in hits]
    return {"threshold": cfg.dedup.threshold, "checked": checked, "candidates": len(pairs), "pairs": rows,
            "n": len(rows)}


def leakage_report(splits: dict[str, list[Record]], cfg: CleanConfig, num_proc: int = 1) -> dict[str, Any]:
    """The check over in-memory splits (library use): keys, candidates and exact Jaccard as the build does."""
    from tuneforge.clean.stage import record_keys

    owners = [(SPLIT_NAMES.index(name), rec) for name in SPLIT_NAMES for rec in splits.get(name, [])
              if rec.get("kind") != "kb"]
    records = [r for _, r in owners]
    forced = cfg.model_copy(update={"leakage": True})
    keys, texts = record_keys(records, forced)
    assert keys.bands is not None
    pairs = candidate_pairs(keys.bands, keys.group, keys.alive)
    sims = verify(pairs, texts.__getitem__, cfg.dedup.ngram)
    codes = np.array([s for s, _ in owners], dtype=np.int8)
    return report(pairs, sims, codes, lambda i: records[i]["id"], cfg, len(records))
