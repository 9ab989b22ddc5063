"""Global deduplication from compact keys: exact duplicates by their 128-bit hash, near duplicates by LSH
band buckets -> candidate pairs -> an exact Jaccard check -> union-find over record positions.

Positions are global (the order records were read in), and every rule is stated in that order: the first
record of an exact group and the smallest position of a near-duplicate cluster are kept. So the result is
the same however the records were sharded or on which machine each key was computed.

Records derived from one input (same group: ranked pairs sharing a prompt) are never duplicates of each
other, and records of different kinds are never duplicates (a conversation and a preference pair that share
text are both kept; the leakage check still sees them).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import numpy as np

from tuneforge.clean.minhash import jaccard, shingles
from tuneforge.common.unionfind import UnionFind

BUCKET_CAP = 32  # a record is paired with at most this many earlier members of one band bucket


@dataclass
class Keys:
    """The compact keys of every record, in global order. `alive` marks records that dedup may consider
    (kept by the filters, of a cleanable kind)."""

    kind: np.ndarray  # int8 code of the record kind
    group: np.ndarray  # uint64 group id
    exact: np.ndarray  # (n, 2) uint64: the exact-duplicate hash
    alive: np.ndarray  # bool
    bands: np.ndarray | None = None  # (n, bands) uint64, when near-dedup or leakage is on


@dataclass
class Duplicate:
    index: int
    of: int  # the kept representative of its cluster
    matched: int  # the record it was found similar to
    method: str  # exact | minhash
    similarity: float


@dataclass
class DedupResult:
    dups: dict[int, Duplicate] = field(default_factory=dict)
    pairs: np.ndarray = field(default_factory=lambda: np.empty((0, 2), dtype=np.int64))  # verified candidates
    similarity: np.ndarray = field(default_factory=lambda: np.empty(0, dtype=np.float32))
    candidates: int = 0


def exact_duplicates(keys: Keys) -> dict[int, Duplicate]:
    """Every alive record whose exact hash an earlier alive record already has."""
    idx = np.flatnonzero(keys.alive)
    if len(idx) < 2:
        return {}
    view = np.ascontiguousarray(keys.exact[idx]).view(np.dtype((np.void, 16))).ravel()
    _, first, inverse = np.unique(view, return_index=True, return_inverse=True)
    rep = idx[first[inverse]]
    dup = np.flatnonzero(rep != idx)
    return {int(idx[k]): Duplicate(int(idx[k]), int(rep[k]), int(rep[k]), "exact", 1.0) for k in dup}


def candidate_pairs(bands: np.ndarray, group: np.ndarray, mask: np.ndarray, cap: int = BUCKET_CAP) -> np.ndarray:
    """(m, 2) [earlier, later] positions sharing a band bucket, of different groups, both in `mask`;
    unique and sorted by (later, earlier)."""
    idx = np.flatnonzero(mask)
    if len(idx) < 2:
        return np.empty((0, 2), dtype=np.int64)
    found = []
    for b in range(bands.shape[1]):
        col = bands[idx, b]
        order = np.argsort(col, kind="stable")  # equal values keep increasing position
        sv = col[order]
        same = np.flatnonzero(sv[1:] == sv[:-1])
        if not len(same):
            continue
        # Runs of equal values: start where the previous differs.
        starts = np.flatnonzero(np.r_[True, sv[1:] != sv[:-1]])
        ends = np.r_[starts[1:], len(sv)]
        multi = np.flatnonzero(ends - starts > 1)
        for s, e in zip(starts[multi], ends[multi], strict=True):
            members = idx[order[s:e]]
            for t in range(1, len(members)):
                lo = max(0, t - cap)
                found.append(np.stack([members[lo:t], np.full(t - lo, members[t])], axis=1))
    if not found:
        return np.empty((0, 2), dtype=np.int64)
    pairs = np.concatenate(found).astype(np.int64)
    pairs = np.unique(pairs[group[pairs[:, 0]] != group[pairs[:, 1]]], axis=0)
    return pairs[np.lexsort((pairs[:, 0], pairs[:, 1]))]


def verify(pairs: np.ndarray, text_of: Callable[[int], str], n: int) -> np.ndarray:
    """The exact Jaccard of character n-gram sets for every pair (float32)."""
    cache: dict[int, set[str]] = {}

    def grams(i: int) -> set[str]:
        g = cache.get(i)
        if g is None:
            g = cache[i] = shingles(text_of(i), n)
        return g

    return np.array([jaccard(grams(int(a)), grams(int(b))) for a, b in pairs], dtype=np.float32)


def near_duplicates(keys: Keys, pairs: np.ndarray, sims: np.ndarray, threshold: float,
                    exclude: Iterable[int] = ()) -> dict[int, Duplicate]:
    """Clusters (union-find) of same-kind pairs at or above `threshold`; every member but the first is a
    duplicate of it, except members of the first's own group (records derived from one input, such as
    ranked pairs sharing a prompt, are never duplicates of each other)."""
    gone = set(exclude)
    ok = (sims >= threshold) & (keys.kind[pairs[:, 0]] == keys.kind[pairs[:, 1]]) if len(pairs) else np.zeros(0, bool)
    uf = UnionFind()
    partner: dict[int, tuple[int, float]] = {}  # the earliest record each was confirmed similar to
    for (a, b), sim in zip(pairs[ok], sims[ok], strict=True):
        a, b = int(a), int(b)
        if a in gone or b in gone:
            continue
        uf.union(a, b)
        for x, y in ((a, b), (b, a)):
            if x not in partner or y < partner[x][0]:
                partner[x] = (y, float(sim))
    out: dict[int, Duplicate] = {}
    for b in sorted(uf.parent):
        root = uf.find(b)
        if root != b and keys.group[b] != keys.group[root]:
            j, sim = partner[b]
            out[b] = Duplicate(b, root, j, "minhash", sim)
    return out


def deduplicate(keys: Keys, exact: bool, near: bool, threshold: float, text_of: Callable[[int], str] | None,
                ngram: int, verify_pairs: Callable[[np.ndarray], np.ndarray] | None = None) -> DedupResult:
    """Exact, then near duplicates among what exact dedup kept. `verify_pairs` computes Jaccard for
    candidate pairs (sharded runs spread it over workers); by default `verify` with `text_of`."""
    res = DedupResult()
    if exact:
        res.dups.update(exact_duplicates(keys))
    if keys.bands is None:
        return res
    mask = keys.alive.copy()
    if res.dups:
        mask[list(res.dups)] = False
    pairs = candidate_pairs(keys.bands, keys.group, mask)
    res.candidates = len(pairs)
    if verify_pairs is not None:
        sims = verify_pairs(pairs)
    else:
        assert text_of is not None
        sims = verify(pairs, text_of, ngram)
    res.pairs, res.similarity = pairs, sims
    if near:
        found = near_duplicates(keys, pairs, sims, threshold)
        # An exact group whose kept record is itself a near duplicate joins that cluster: its members point
        # at the record the cluster keeps, never at a removed one.
        for d in res.dups.values():
            if d.of in found:
                d.of = found[d.of].of
        res.dups.update(found)
    return res
