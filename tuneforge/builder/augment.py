"""The augment stage of a sharded build: choose over the whole corpus, send only the chosen records.

Selection is planned on compact columns (id, kind, source) over every shard: the seeded draw and each step's
`limit` are applied to the whole corpus by the augment stage's own rule (`augment/select.py` `sample`), exactly
as an in-memory run would. Only the chosen records (and the
knowledge-base rows, which operators read as reference) are loaded and handed to `run_augment`, which talks to
one endpoint with one cache and one in-flight window. What comes back (rewritten, created and dropped records)
is written per shard for the export step. Memory holds the chosen records, never the corpus.

Generated text passes the clean stage's own per-record code (normalisation, PII scrub, filters: `Cleaner`) and
exact and near dedup against the corpus, with reasons of its own (`generated_too_short: ...`,
`generated_duplicate`, `generated_near_duplicate`). A
`prompt` the `answer` step did not answer is a reject (`unanswered: ...`), never a record without a reply.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.augment import AugmentConfig, run_augment
from tuneforge.augment.ops import OPERATORS
from tuneforge.augment.select import input_only, sample, takes_from
from tuneforge.clean.config import CleanConfig
from tuneforge.clean.dedup import Keys
from tuneforge.clean.keys import band_hashes, exact_key
from tuneforge.clean.minhash import jaccard, key_texts, shingles
from tuneforge.clean.stage import KIND_CODES, Cleaner, group_code
from tuneforge.common.io import atomic_open, dumps, unpack
from tuneforge.common.records import KINDS, Record, reject_record, texts_of
from tuneforge.common.shardio import json_line, read_table


def augment_shards(cfg: AugmentConfig, recipe_dir: Path, units: list[str], offsets: np.ndarray, keys: Keys,
                   dedup: Any, seed: int, workdir: Path, llm_base_url: str | None, llm_model: str | None,
                   progress: bool, sources: list[str] | None = None, clean: CleanConfig | None = None,
                   excluded: list[int] | None = None) -> dict[str, Any]:
    n = len(keys.kind)
    usable = np.ones(n, dtype=bool)
    if dedup.dups:
        usable[list(dedup.dups)] = False
    if excluded:  # records an exclusion drops are no step's input (nothing is made from them)
        usable[excluded] = False
    ids = [read_table(Path(u) / "records.arrow", ["id"]).column("id").to_pylist() for u in units]
    flat_ids = [i for part in ids for i in part]
    shard_of = np.searchsorted(offsets, np.arange(n), side="right") - 1 if n else np.empty(0, np.int64)
    src = sources or [_source_of(u) for u in units]
    kb = KIND_CODES["kb"]
    chosen: set[int] = set(np.flatnonzero(usable & (keys.kind == kb)).tolist())
    preselected: dict[str, set[str]] = {}
    for step in cfg.steps:
        kinds, step_sources = takes_from(step, OPERATORS[step.op].default_kinds)
        mask = usable & np.isin(keys.kind, [KIND_CODES[k] for k in kinds if k in KIND_CODES])
        if step_sources is not None:
            ok = np.array([src[s] in step_sources for s in range(len(units))], dtype=bool)
            mask &= ok[shard_of] if n else mask
        cand = np.flatnonzero(mask)
        # A step that also takes created records gets its `limit` in run_augment, among those too.
        keep = cand[sample(step, seed, [flat_ids[i] for i in cand], limit=input_only(step))]
        if input_only(step):
            preselected[step.name] = {flat_ids[i] for i in keep}
        chosen.update(keep.tolist())
    positions = sorted(chosen)
    records = _load(units, offsets, positions)
    by_id = {r["id"]: (p, r) for p, r in zip(positions, records, strict=True)}
    res = run_augment(records, cfg, recipe_dir=recipe_dir, seed=seed, llm_base_url=llm_base_url,
                      llm_model=llm_model, progress=progress, preselected=preselected)
    per_shard: dict[int, list[dict]] = {}
    root_of: dict[str, str] = {}
    created_groups: list[tuple[int, int]] = []
    generated: dict[int, int] = {}
    seen: set[str] = set()
    dropped_positions: list[int] = []
    answered: list[int] = []
    check = _Generated(clean or CleanConfig(), recipe_dir, keys, usable,
                       lambda positions: _load(units, offsets, positions))
    failed = {f["record_id"]: f for f in res.failures}
    for rec in res.records:
        rid = rec["id"]
        if rid in by_id:
            seen.add(rid)
            pos, orig = by_id[rid]
            s = int(shard_of[pos])
            why = _unanswered(rec, failed.get(rid)) if rec["kind"] == "prompt" else None
            if why is None and dumps(rec) != dumps(orig):
                rec, why = check(rec, pos)
            if why is not None:
                dropped_positions.append(pos)
                per_shard.setdefault(s, []).append({"action": "drop", "id": rid,
                                                    "reject": reject_record(rec, why, stage="augment", **_step(rec))})
            elif dumps(rec) != dumps(orig):
                if orig["kind"] == "prompt":
                    answered.append(pos)
                per_shard.setdefault(s, []).append({"action": "replace", "id": rid, "record": rec})
            continue
        parent = rec["meta"].get("derived_from")
        root = root_of.get(parent, parent)
        root_of[rid] = root
        pos = by_id[root][0]
        s = int(shard_of[pos])
        rec, why = check(rec, None)
        if why is not None:  # the input record stays; only what was made from it is rejected
            per_shard.setdefault(s, []).append({"action": "reject", "root": root, "id": rid,
                                                "reject": reject_record(rec, why, stage="augment", **_step(rec))})
            continue
        per_shard.setdefault(s, []).append({"action": "create", "root": root, "record": rec})
        generated[s] = generated.get(s, 0) + 1
        if rec["kind"] != "kb":
            created_groups.append((pos, group_code(rec["meta"]["group"])))
    for row in res.rejects:
        rid = row.get("id")
        if rid in by_id and rid not in seen:
            pos = by_id[rid][0]
            dropped_positions.append(pos)
            per_shard.setdefault(int(shard_of[pos]), []).append({"action": "drop", "id": rid, "reject": row})
    files: dict[int, str] = {}
    workdir.mkdir(parents=True, exist_ok=True)
    for s, rows in sorted(per_shard.items()):
        lines = [json_line(r) for r in rows]
        name = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogatepass")).hexdigest()[:24] + ".jsonl"
        path = workdir / name
        if not path.is_file():
            with atomic_open(path) as f:
                f.write("\n".join(lines) + "\n")
        files[s] = str(path)
    dropped_kinds = sum(1 for p in dropped_positions if keys.kind[p] != kb)
    return {"files": files, "counts": res.counts, "usage": res.usage, "failures": res.failures,
            "generated": generated, "dropped_positions": dropped_positions, "created_groups": created_groups,
            "net_records": len(created_groups) - dropped_kinds, "answered_positions": answered,
            "clean": check.summary()}


def _step(rec: Record) -> dict[str, Any]:
    ops = [o for o in rec["meta"].get("ops") or [] if isinstance(o, dict)]
    return {"step": ops[-1]["step"]} if ops else {}


def _unanswered(rec: Record, failure: dict | None) -> str:
    if failure is not None:
        return f"unanswered: step {failure['step']!r} failed: {failure['reason']}"
    return "unanswered: no `answer` step answered this prompt"


class _Generated:
    """The clean stage's per-record code on generated text, then exact and near dedup against the corpus and
    against what was generated before it (first in build order kept), as ingested text gets them.

    Near duplicates are found as the build finds them: records sharing an LSH band (the corpus' band hashes,
    sorted once a band on first use) are candidates, and a candidate at or above the threshold on its exact
    Jaccard is a duplicate. Records of the generated record's own group (its origin, what else was made from
    it) are never its duplicates, as in the build's near dedup: a rewrite may stay close to what it rewrote."""

    def __init__(self, cfg: CleanConfig, recipe_dir: Path, keys: Keys, usable: np.ndarray,
                 load: Callable[[list[int]], list[dict]] | None = None) -> None:
        self.cfg = cfg
        self.cleaner = Cleaner(cfg, recipe_dir)
        self.keys = keys
        self.corpus: np.ndarray | None = None  # the corpus' exact keys, sorted, built on first use
        self.usable = usable
        self.load = load
        self.seen: dict[bytes, str] = {}
        self.rejected: dict[str, int] = {}
        self.band_index: list[tuple[np.ndarray, np.ndarray]] | None = None  # per band: sorted hashes, positions
        self.made: list[tuple[np.ndarray, set[str], int, str]] = []  # generated so far: bands, grams, group, id

    def __call__(self, rec: Record, pos: int | None) -> tuple[Record, str | None]:
        new, reason, _ = self.cleaner(rec)
        if reason is not None:
            return self._count(rec, f"generated_{reason}")
        if not (self.cfg.enabled and KINDS[new["kind"]].cleaned):
            return new, None
        text = key_texts([texts_of(new)])[0]
        if self.cfg.dedup.exact:
            key = exact_key(new, text)
            if key in self.seen or self._in_corpus(key, pos):
                return self._count(new, "generated_duplicate: the same text as a record already in the dataset")
            self.seen[key] = new["id"]
        if self.cfg.dedup.near and self.keys.bands is not None and self.load is not None:
            near = self._near(new, text)
            if near is not None:
                return self._count(new, f"generated_near_duplicate: {near}")
        return new, None

    def _near(self, rec: Record, text: str) -> str | None:
        """What `rec` nearly repeats (the corpus first, then earlier generated records), or None."""
        d = self.cfg.dedup
        bands = band_hashes([text], d)[0]
        grams = shingles(text, d.ngram)
        group = group_code(rec["meta"]["group"])
        kind = KIND_CODES[rec["kind"]]
        cands = [p for p in self._candidates(bands) if self.keys.group[p] != group and self.keys.kind[p] == kind]
        for cand in self.load(cands[:64]) if cands else []:  # more candidates for one text are rare
            other = key_texts([texts_of(cand)])[0]
            sim = jaccard(grams, shingles(other, d.ngram))
            if sim >= d.threshold:
                return f"Jaccard {sim:.2f} with record {cand['id']} (threshold {d.threshold:g})"
        for b, g, grp, rid in self.made:
            if grp != group and (b == bands).any() and (sim := jaccard(grams, g)) >= d.threshold:
                return f"Jaccard {sim:.2f} with generated record {rid} (threshold {d.threshold:g})"
        self.made.append((bands, grams, group, rec["id"]))
        return None

    def _candidates(self, bands: np.ndarray) -> list[int]:
        if self.band_index is None:
            live = np.flatnonzero(self.usable & self.keys.alive)
            self.band_index = []
            for b in range(self.keys.bands.shape[1]):
                col = self.keys.bands[live, b]
                order = np.argsort(col, kind="stable")
                self.band_index.append((col[order], live[order]))
        found: set[int] = set()
        for b, (hashes, positions) in enumerate(self.band_index):
            lo, hi = np.searchsorted(hashes, bands[b], "left"), np.searchsorted(hashes, bands[b], "right")
            found.update(positions[lo:hi].tolist())
        return sorted(found)

    def _in_corpus(self, key: bytes, pos: int | None) -> bool:
        if pos is not None and key == self.keys.exact[pos].tobytes():
            return False  # its own text, unchanged (a rewrite that repeated it)
        if self.corpus is None:
            mask = self.usable & self.keys.alive
            self.corpus = np.sort(np.ascontiguousarray(self.keys.exact[mask]).view(np.dtype((np.void, 16))).ravel())
        probe = np.frombuffer(key, dtype=np.dtype((np.void, 16)))
        i = int(np.searchsorted(self.corpus, probe[0]))
        return i < len(self.corpus) and self.corpus[i] == probe[0]

    def _count(self, rec: Record, reason: str) -> tuple[Record, str]:
        k = reason.split(":", 1)[0]
        self.rejected[k] = self.rejected.get(k, 0) + 1
        return rec, reason

    def summary(self) -> dict[str, Any]:
        return {**self.cleaner.summary(), "rejected": dict(sorted(self.rejected.items()))}


def _load(units: list[str], offsets: np.ndarray, positions: list[int]) -> list[dict]:
    if not positions:
        return []
    pos = np.asarray(positions)
    shard_of = np.searchsorted(offsets, pos, side="right") - 1
    out: list[dict] = []
    for s in np.unique(shard_of):
        mine = pos[shard_of == s]
        col = read_table(Path(units[s]) / "records.arrow", ["record"]).column("record")
        out += [unpack(v) for v in col.take(mine - offsets[s]).to_pylist()]
    return out


def _source_of(unit: str) -> str:
    summary = json.loads((Path(unit) / "done.json").read_text(encoding="utf-8"))
    return summary["source"]
