"""The clean stage: normalise, scrub PII, filter (per record, on any worker), then deduplicate (globally, on
compact keys). Everything dropped is kept as a reject row; `kb` rows pass through untouched.

`clean_shard` is the stage's per-shard function, the one a build's clean task calls on each shard (the task
only reads the shard and writes what this returns); `Cleaner` is its per-record part, which the build's
augment step also runs on generated text. `run_clean` is the whole stage over an in-memory list: one
`clean_shard`, then the same global `deduplicate` the build runs.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.clean.config import CleanConfig
from tuneforge.clean.custom import user_filters, user_normalizers
from tuneforge.clean.dedup import Keys, deduplicate
from tuneforge.clean.filters import builtin_filters, first_failure, speaker_marker
from tuneforge.clean.keys import band_hashes, exact_key
from tuneforge.clean.minhash import key_texts
from tuneforge.clean.normalize import normalize_text
from tuneforge.clean.pii import scrub
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.records import KINDS, Record, map_texts, reject_record, texts_of

STAGE = "clean"
KIND_CODES = {k: i for i, k in enumerate(KINDS)}


class Cleaner:
    """Normalises, scrubs and filters one record at a time; `counts` says what it did."""

    def __init__(self, cfg: CleanConfig, recipe_dir: Path | str = Path(".")) -> None:
        self.cfg = cfg
        # Ours in their fixed order, then the user's in recipe order; made here, so a bad badwords file, pattern
        # or user op fails before the first record.
        self.filters = [*builtin_filters(cfg.filters, Path(recipe_dir)), *user_filters(cfg)]
        self.normalizers = user_normalizers(cfg)
        self.counts: dict[str, Any] = {"input": 0, "kept": 0, "passthrough": 0, "normalised": 0, "filters": {},
                                       "pii": {}, "flagged": {}}

    def __call__(self, rec: Record) -> tuple[Record, str | None, bool]:
        """(the cleaned record, or the record unchanged for a pass-through kind; the filter's reason or None;
        whether cleaning changed its text)."""
        c = self.counts
        c["input"] += 1
        kind = rec.get("kind")
        if kind not in KINDS:
            raise TuneforgeError(f"clean: record {rec.get('id')!r} has unknown kind {kind!r}")
        if not self.cfg.enabled or not KINDS[kind].cleaned:
            c["passthrough"] += 1
            c["kept"] += 1
            return rec, None, False
        new, changed, pii = self._clean(rec)
        c["normalised"] += changed
        for k, n in pii.items():
            c["pii"][k] = c["pii"].get(k, 0) + n
        # A prompt is filtered once it is answered (its length, language... are those of the conversation).
        reason = None if kind == "prompt" else first_failure(self.filters, new)
        if reason is not None:
            key = reason.split(":", 1)[0]
            c["filters"][key] = c["filters"].get(key, 0) + 1
            return rec, reason, changed
        c["kept"] += 1
        if self.cfg.filters.speaker_markers == "flag" and (found := speaker_marker(new)):
            key = found.split(":", 1)[0]  # kept (it may be a real line of a dialogue), counted and marked
            c["flagged"][key] = c["flagged"].get(key, 0) + 1
            new["meta"] = {**new["meta"], "flags": [*new["meta"].get("flags", []), found]}
        return new, None, changed or bool(pii)

    def _clean(self, rec: Record) -> tuple[Record, bool, dict[str, int]]:
        cfg = self.cfg
        pii: dict[str, int] = {}
        changed = False

        def fix(text: str) -> str:
            nonlocal changed
            out = normalize_text(text, cfg.normalize)
            for norm in self.normalizers:
                out = norm(out)
            changed = changed or out != text
            return scrub(out, cfg.pii, pii) if cfg.pii is not None else out

        new = map_texts(rec, fix)
        meta = dict(rec["meta"])
        ops = list(meta.get("ops") or [])
        if changed:
            ops.append("clean:normalize")
        if pii:
            ops.append("clean:pii")
            meta["pii"] = dict(sorted(pii.items()))
        meta["ops"] = ops
        new["meta"] = meta
        return new, changed, pii

    def summary(self) -> dict[str, Any]:
        c = dict(self.counts)
        c["filters"] = dict(sorted(c["filters"].items()))
        c["pii"] = dict(sorted(c["pii"].items()))
        c["flagged"] = dict(sorted(c["flagged"].items()))
        return c


def merge_counts(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """Sum per-shard clean counts."""
    out: dict[str, Any] = {"input": 0, "kept": 0, "passthrough": 0, "normalised": 0, "filters": {}, "pii": {},
                           "flagged": {}, "deduplicated": {"exact": 0, "near": 0}}
    for p in parts:
        for k in ("input", "kept", "passthrough", "normalised"):
            out[k] += p.get(k, 0)
        for k in ("filters", "pii", "flagged"):
            for name, n in p.get(k, {}).items():
                out[k][name] = out[k].get(name, 0) + n
    for k in ("filters", "pii", "flagged"):
        out[k] = dict(sorted(out[k].items()))
    return out


def group_code(group: str) -> int:
    """A group id (16 hex digits) as an unsigned 64-bit integer, preserving order."""
    try:
        return int(group, 16) if len(group) == 16 else int.from_bytes(hashlib.sha1(group.encode()).digest()[:8], "big")
    except ValueError:
        return int.from_bytes(hashlib.sha1(group.encode()).digest()[:8], "big")


def record_keys(records: list[Record], cfg: CleanConfig) -> tuple[Keys, list[str]]:
    """The compact keys of `records` (and their dedup texts), as a shard task computes them."""
    n = len(records)
    split = [KINDS[r["kind"]].cleaned for r in records]
    keyed = iter(key_texts([texts_of(r) for r, s in zip(records, split, strict=True) if s]))
    keys_text = [next(keyed) if s else "" for s in split]
    zero = bytes(16)
    exact = np.frombuffer(b"".join(exact_key(r, k) if s else zero
                                   for r, k, s in zip(records, keys_text, split, strict=True)),
                          dtype=np.uint64).reshape(n, 2).copy()
    keys = Keys(kind=np.array([KIND_CODES[r["kind"]] for r in records], dtype=np.int8),
                group=np.array([group_code(r["meta"]["group"]) for r in records], dtype=np.uint64),
                exact=exact, alive=np.array(split, dtype=bool))
    d = cfg.dedup
    if d.near or cfg.check_leakage:
        keys.bands = band_hashes(keys_text, d)
    return keys, keys_text


@dataclass
class CleanedShard:
    """What `clean_shard` made of one shard: the kept records (cleaned) with each one's input sequence number
    and, where cleaning changed it, the record as read; the filters' reject rows by sequence number; the kept
    records' dedup keys and texts; the counts."""

    kept: list[Record]
    seqs: list[int]
    originals: list[Record | None]
    rejects: list[tuple[int, dict]]
    keys: Keys
    texts: list[str]
    counts: dict[str, Any]


def clean_shard(inputs: Iterable[tuple[int, list[Record]]], cfg: CleanConfig,
                recipe_dir: Path | str = Path(".")) -> CleanedShard:
    """Clean one shard: `inputs` are (sequence number, records read from that input) in input order."""
    cleaner = Cleaner(cfg, recipe_dir)
    kept: list[Record] = []
    seqs: list[int] = []
    originals: list[Record | None] = []
    rejects: list[tuple[int, dict]] = []
    for seq, records in inputs:
        for rec in records:
            new, reason, changed = cleaner(rec)
            if reason is not None:
                rejects.append((seq, reject_record(rec, reason, stage=STAGE)))
                continue
            kept.append(new)
            seqs.append(seq)
            originals.append(rec if changed else None)
    keys, texts = record_keys(kept, cfg)
    return CleanedShard(kept, seqs, originals, rejects, keys, texts, cleaner.summary())


@dataclass
class CleanResult:
    kept: list[Record]
    rejects: list[dict]
    counts: dict[str, Any]
    clusters: dict[str, str] = field(default_factory=dict)


def run_clean(records: list[Record], cfg: CleanConfig, recipe_dir: Path | str = Path("."),
              num_proc: int = 1) -> CleanResult:
    """Clean `records` in memory (same order out, minus the dropped): the build's per-shard code over one
    shard, then its global dedup. `num_proc` is accepted for callers of the earlier API; the sharded build is
    what spreads work over cores."""
    shard = clean_shard(((i, [r]) for i, r in enumerate(records)), cfg, recipe_dir)
    cleaned = shard.kept
    rejects = list(shard.rejects)
    counts = merge_counts([shard.counts])
    if not cfg.enabled:
        return CleanResult(cleaned, [], counts, {})
    found = deduplicate(shard.keys, cfg.dedup.exact, cfg.dedup.near, cfg.dedup.threshold, shard.texts.__getitem__,
                        cfg.dedup.ngram)
    clusters: dict[str, str] = {}
    for d in sorted(found.dups.values(), key=lambda d: d.index):
        keep = cleaned[d.of]
        counts["deduplicated"]["exact" if d.method == "exact" else "near"] += 1
        seq = shard.seqs[d.index]
        rejects.append((seq, reject_record(records[seq], "deduplicated", stage=STAGE, duplicate_of=keep["id"],
                                           method=d.method, similarity=round(d.similarity, 4))))
        clusters[cleaned[d.index]["id"]] = keep["id"]
        clusters[keep["id"]] = keep["id"]
    kept = [r for i, r in enumerate(cleaned) if i not in found.dups]
    counts["kept"] = len(kept)
    rejects.sort(key=lambda t: t[0])
    return CleanResult(kept, [r for _, r in rejects], counts, dict(sorted(clusters.items())))
