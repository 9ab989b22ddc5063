"""Grouped, stratified, seeded split, decided on compact keys.

Everything derived from one conversation or document shares `meta.group`; duplicate clusters found by the
clean stage join their groups. Whole groups are assigned to splits, per source (stratum), so nothing leaks
from train into test and every source keeps its share. The assignment is a table group -> split computed
from (group, size, stratum) alone; each shard then looks its records up, without the others. The result
depends only on the records, the ratios and the seed. The build (`build_split`, on compact keys) and
`split_records` (on records in memory) both go through `split_table`.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.clean.dedup import Keys
from tuneforge.common.records import KINDS, SPLIT_KINDS, Record
from tuneforge.common.unionfind import UnionFind
from tuneforge.publish.config import SplitConfig

SPLITS = ("train", "validation", "test")


class GroupUnion(UnionFind):
    """Union-find over 64-bit group codes; the smaller code is the root, so roots do not depend on order."""

    def roots(self, codes: np.ndarray) -> np.ndarray:
        """The root of every code (vectorised for codes that were never joined)."""
        if not self.parent:
            return codes
        out = codes.copy()
        for i in np.flatnonzero(np.isin(codes, np.fromiter(self.parent, dtype=np.uint64))):
            out[i] = self.find(int(codes[i]))
        return out


_MIX1 = np.uint64(0xBF58476D1CE4E5B9)  # splitmix64's finaliser: spreads a 64-bit code over all 64 bits
_MIX2 = np.uint64(0x94D049BB133111EB)


def _order_keys(seed: int, stratum: str, groups: np.ndarray) -> np.ndarray:
    """A seeded pseudo-random 64-bit key per group, in NumPy: sorting a million groups by it takes 16 bytes
    a group, where hashing each in Python took ~150 (and the time of a million sha256 calls)."""
    salt = np.uint64(int.from_bytes(hashlib.sha256(f"{seed}\x1f{stratum}".encode()).digest()[:8], "big"))
    with np.errstate(over="ignore"):
        z = groups.astype(np.uint64) ^ salt
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


@dataclass
class Assignment:
    """group code -> split (0 train, 1 validation, 2 test), as two sorted arrays for lookups."""

    groups: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.uint64))
    splits: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.int8))
    notes: list[str] = field(default_factory=list)

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        pos = np.searchsorted(self.groups, codes)
        pos = np.minimum(pos, max(0, len(self.groups) - 1))
        found = (len(self.groups) > 0) & (self.groups[pos] == codes) if len(self.groups) else np.zeros(len(codes), bool)
        return np.where(found, self.splits[pos] if len(self.splits) else -1, -1).astype(np.int8)


def assign_groups(groups: np.ndarray, sizes: np.ndarray, strata: np.ndarray, names: list[str], cfg: SplitConfig,
                  seed: int) -> Assignment:
    """Assign each root group (with its record count and stratum, an index into `names`) to a split.

    Per stratum, groups are ordered by a seeded hash of their id, and each takes the split whose share of
    the stratum its midpoint falls in (records in hash order: the first 80% train, the next 10% validation,
    the rest test). Shares are exact up to one group, and the order never depends on the other groups, so
    when a corpus grows only groups near a boundary change split: a nightly build does not reshuffle its
    test set. A stratum smaller than `small_source` records goes to train whole (policy `train`)."""
    bounds = np.cumsum([cfg.ratios[s] for s in SPLITS])
    out = np.zeros(len(groups), dtype=np.int8)
    notes: list[str] = []
    strata = np.asarray(strata, dtype=np.int64)
    for code in sorted(set(np.unique(strata).tolist()), key=lambda c: names[c]):
        stratum = names[code]
        ks = np.flatnonzero(strata == code)
        ks = ks[np.lexsort((groups[ks], _order_keys(seed, stratum, groups[ks])))]  # by key, ties by group
        n = int(sizes[ks].sum())
        if n < cfg.small_source and cfg.small_source_policy == "train":
            out[ks] = 0
            notes.append(f"source {stratum!r} has {n} records (< {cfg.small_source}): all in train")
            continue
        mid = (np.cumsum(sizes[ks]) - sizes[ks] / 2) / n
        out[ks] = np.minimum(np.searchsorted(bounds, mid, side="right"), 2)
        if len(ks) < 10:
            notes.append(f"source {stratum!r} has only {len(ks)} groups: its split shares are coarse")
    order = np.argsort(groups, kind="stable")
    return Assignment(groups[order], out[order], notes)


@dataclass
class SplitTable:
    """The build's split table: the assignment of root groups, and which group codes a duplicate cluster
    joined to which root. The build saves it once; every export shard loads it and looks its records up."""

    assignment: Assignment
    children: np.ndarray  # joined group codes, sorted
    roots: np.ndarray  # the root of each

    def lookup(self, codes: np.ndarray) -> np.ndarray:
        """The split of each group code (-1 for a group that never reached the split)."""
        return self.assignment.lookup(self.root(codes))

    def root(self, codes: np.ndarray) -> np.ndarray:
        if len(self.children):
            pos = np.minimum(np.searchsorted(self.children, codes), len(self.children) - 1)
            codes = np.where(self.children[pos] == codes, self.roots[pos], codes)
        return codes

    def digest(self) -> str:
        h = hashlib.sha256()
        for a in (self.assignment.groups, self.assignment.splits, self.children, self.roots):
            h.update(a.tobytes())
        return h.hexdigest()

    def save(self, path: Path) -> None:
        tmp = path.with_suffix(".tmp.npz")
        np.savez(tmp, groups=self.assignment.groups, splits=self.assignment.splits, children=self.children,
                 roots=self.roots)
        tmp.replace(path)

    @classmethod
    def load(cls, path: str | Path) -> SplitTable:
        z = np.load(path)
        return cls(Assignment(z["groups"], z["splits"]), z["children"], z["roots"])


def split_table(codes: np.ndarray, positions: np.ndarray, union: GroupUnion,
                strata_at: Callable[[np.ndarray], tuple[list[str], np.ndarray]], cfg: SplitConfig,
                seed: int) -> SplitTable:
    """The split of every record that reaches it: `codes` are their group codes, `positions` their places in
    build order, `union` the groups that duplicate clusters joined. A root group's stratum is that of its first
    record: `strata_at(positions)` gives the stratum names and each position's index into them."""
    roots = union.roots(codes)
    order = np.lexsort((positions, roots))
    roots, pos = roots[order], positions[order]
    uniq, first, counts = np.unique(roots, return_index=True, return_counts=True)
    if cfg.stratify:
        names, strata = strata_at(pos[first])
    else:
        names, strata = ["all"], np.zeros(len(uniq), dtype=np.int64)
    table = assign_groups(uniq, counts, strata, names, cfg, seed)
    children = np.fromiter(union.parent, dtype=np.uint64, count=len(union.parent))
    croots = np.array([union.find(int(c)) for c in children], dtype=np.uint64)
    o = np.argsort(children)
    return SplitTable(table, children[o], croots[o])


def build_split(keys: Keys, dups: dict[int, Any], augment: dict[str, Any], offsets: np.ndarray,
                sources: list[str], cfg: SplitConfig, seed: int) -> SplitTable:
    """The build's split table, from compact keys alone. A record reaches the split if its kind is split (or
    it is a prompt the `answer` step answered) and neither dedup (`dups`) nor augment dropped it; records augment
    created join at their input's position. A duplicate joins its cluster's group; a group's stratum is the
    source of the shard (`sources`, from `offsets`) of its first record."""
    alive = np.isin(keys.kind, [i for i, k in enumerate(KINDS.values()) if k.split])
    alive[augment.get("answered_positions", [])] = True  # prompts the `answer` step made conversations
    if dups:
        alive[list(dups)] = False
    for pos in augment.get("dropped_positions", []):
        alive[pos] = False
    uf = GroupUnion()
    for d in dups.values():
        uf.union(int(keys.group[d.index]), int(keys.group[d.of]))
    codes = [keys.group[alive]]
    positions = [np.flatnonzero(alive)]
    for pos, code in augment.get("created_groups", []):
        codes.append(np.array([code], dtype=np.uint64))
        positions.append(np.array([pos]))
    names = sorted(set(sources))
    of_shard = np.array([names.index(s) for s in sources], dtype=np.int64)

    def strata_at(pos: np.ndarray) -> tuple[list[str], np.ndarray]:
        return names, of_shard[np.searchsorted(offsets, pos, side="right") - 1]

    return split_table(np.concatenate(codes), np.concatenate(positions), uf, strata_at, cfg, seed)


@dataclass
class SplitResult:
    splits: dict[str, list[Record]]
    notes: list[str] = field(default_factory=list)
    group_of: dict[str, str] = field(default_factory=dict)  # record id -> final group


def split_records(records: list[Record], cfg: SplitConfig, seed: int,
                  clusters: dict[str, str] | None = None) -> SplitResult:
    """Records (kb rows are not split) to train/validation/test through `split_table`, the build's own rule;
    `clusters` (record id -> cluster) joins groups as the build's duplicate clusters do."""
    from tuneforge.clean.stage import group_code

    recs = [r for r in records if r["kind"] in SPLIT_KINDS]
    codes = np.array([group_code(r["meta"]["group"]) for r in recs], dtype=np.uint64)
    uf = GroupUnion()
    first_of_cluster: dict[str, int] = {}
    for i, r in enumerate(recs):
        c = (clusters or {}).get(r["id"])
        if c is not None:
            if c in first_of_cluster:
                uf.union(int(codes[first_of_cluster[c]]), int(codes[i]))
            else:
                first_of_cluster[c] = i

    def strata_at(pos: np.ndarray) -> tuple[list[str], np.ndarray]:
        names = sorted({r["meta"]["source"] for r in recs})
        code_of = {name: i for i, name in enumerate(names)}
        return names, np.array([code_of[recs[i]["meta"]["source"]] for i in pos], np.int64)

    table = split_table(codes, np.arange(len(recs)), uf, strata_at, cfg, seed)
    where = table.lookup(codes)
    out: dict[str, list[Record]] = {s: [] for s in SPLITS}
    group_of = {}
    for r, s, g in zip(recs, where, table.root(codes), strict=True):
        out[SPLITS[s]].append(r)
        group_of[r["id"]] = f"{int(g):016x}"
    return SplitResult(out, table.assignment.notes, group_of)
