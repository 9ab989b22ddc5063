"""Grouped, stratified, seeded split.

Everything derived from one conversation or document shares `meta.group`; near-duplicate clusters from the
clean stage join their groups. Whole groups are assigned to splits, per source (stratum), so nothing leaks
from train into test and every source keeps its share. The result depends only on the records, the
ratios and the seed.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from tuneforge.common.records import SPLIT_KINDS, Record
from tuneforge.publish.config import SplitConfig

SPLITS = ("train", "validation", "test")


class _UnionFind:
    def __init__(self) -> None:
        self.parent: dict[str, str] = {}

    def find(self, x: str) -> str:
        self.parent.setdefault(x, x)
        root = x
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[x] != root:
            self.parent[x], x = root, self.parent[x]
        return root

    def union(self, a: str, b: str) -> None:
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            # The smaller id wins so the representative does not depend on visiting order.
            lo, hi = sorted((ra, rb))
            self.parent[hi] = lo


@dataclass
class SplitResult:
    splits: dict[str, list[Record]]
    notes: list[str] = field(default_factory=list)
    group_of: dict[str, str] = field(default_factory=dict)  # record id -> final group


def _order_key(seed: int, stratum: str, group: str) -> str:
    return hashlib.sha256(f"{seed}\x1f{stratum}\x1f{group}".encode()).hexdigest()


def split_records(records: list[Record], cfg: SplitConfig, seed: int,
                  clusters: dict[str, str] | None = None) -> SplitResult:
    """Assign every splittable record to train/validation/test (kb rows are not split)."""
    recs = [r for r in records if r["kind"] in SPLIT_KINDS]
    uf = _UnionFind()
    for r in recs:
        uf.find(r["meta"]["group"])
    # Records in one duplicate cluster (exact or near) must not straddle splits.
    by_cluster: dict[str, str] = {}
    for r in recs:
        c = (clusters or {}).get(r["id"])
        if c is not None:
            if c in by_cluster:
                uf.union(by_cluster[c], r["meta"]["group"])
            else:
                by_cluster[c] = r["meta"]["group"]
    groups: dict[str, list[int]] = {}
    for i, r in enumerate(recs):
        groups.setdefault(uf.find(r["meta"]["group"]), []).append(i)
    strata: dict[str, list[str]] = {}
    for g, idx in groups.items():
        stratum = recs[idx[0]]["meta"]["source"] if cfg.stratify else "all"
        strata.setdefault(stratum, []).append(g)

    assign: dict[str, str] = {}
    notes: list[str] = []
    ratios = [cfg.ratios[s] for s in SPLITS]
    for stratum in sorted(strata):
        gs = sorted(strata[stratum], key=lambda g: _order_key(seed, stratum, g))
        n = sum(len(groups[g]) for g in gs)
        if n < cfg.small_source and cfg.small_source_policy == "train":
            for g in gs:
                assign[g] = "train"
            notes.append(f"source {stratum!r} has {n} records (< {cfg.small_source}): all in train")
            continue
        counts = [0, 0, 0]
        targets = [r * n for r in ratios]
        for g in gs:
            size = len(groups[g])
            # The split furthest below its target, relative to its target, takes the group.
            best = max(range(3), key=lambda k: ((targets[k] - counts[k]) / targets[k] if targets[k] > 0 else -1e9,
                                                -k))
            counts[best] += size
            assign[g] = SPLITS[best]
        if len(gs) < 10:
            notes.append(f"source {stratum!r} has only {len(gs)} groups: its split shares are coarse")
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    group_of = {}
    for r in recs:
        g = uf.find(r["meta"]["group"])
        out[assign[g]].append(r)
        group_of[r["id"]] = g
    return SplitResult(out, notes, group_of)
