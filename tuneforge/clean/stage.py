"""The clean stage: normalise, scrub PII, filter, deduplicate; everything dropped is kept as a reject row.

`kb` rows pass through untouched. Records are copied, never mutated, so a reject's `raw` is the record exactly
as it came from ingest.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.clean import minhash
from tuneforge.clean.config import CleanConfig
from tuneforge.clean.dedup import deduplicate
from tuneforge.clean.filters import Filters
from tuneforge.clean.normalize import normalize_text
from tuneforge.clean.pii import scrub
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.records import KINDS, Record, reject_record

STAGE = "clean"
_MESSAGE_FIELDS = ("messages", "prompt", "chosen", "rejected", "completion")


@dataclass
class CleanResult:
    kept: list[Record]
    rejects: list[dict]
    counts: dict[str, Any]
    clusters: dict[str, str] = field(default_factory=dict)


def _clean_record(rec: Record, cfg: CleanConfig) -> tuple[Record, bool, dict[str, int]]:
    """A cleaned copy, whether normalisation changed it, and the PII replaced in it."""
    pii: dict[str, int] = {}
    changed = False

    def fix(text: str) -> str:
        nonlocal changed
        out = normalize_text(text, cfg.normalize)
        changed = changed or out != text
        return scrub(out, cfg.pii, pii) if cfg.pii is not None else out

    new = dict(rec)
    for f in _MESSAGE_FIELDS:
        if f in rec:
            new[f] = [{**m, "content": fix(m["content"])} for m in rec[f]]
    if "text" in rec:
        new["text"] = fix(rec["text"])
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


def _prepare(rec: Record, cfg: CleanConfig, filters: Filters) -> tuple[Record, bool, dict[str, int], str | None]:
    new, changed, pii = _clean_record(rec, cfg)
    return new, changed, pii, filters.check(new)


_WORKER: dict[str, Any] = {}


def _prepare_chunk(args: tuple[list[Record], str, str]) -> list[tuple[Record, bool, dict[str, int], str | None]]:
    """Worker side: the config travels as JSON and its filters are built once per process."""
    records, cfg_json, recipe_dir = args
    if _WORKER.get("key") != (cfg_json, recipe_dir):
        cfg = CleanConfig.model_validate_json(cfg_json)
        _WORKER.update(key=(cfg_json, recipe_dir), cfg=cfg, filters=Filters(cfg.filters, Path(recipe_dir)))
    return [_prepare(r, _WORKER["cfg"], _WORKER["filters"]) for r in records]


def run_clean(records: list[Record], cfg: CleanConfig, recipe_dir: Path | str = Path("."),
              num_proc: int = 1) -> CleanResult:
    """Clean `records` (same order out, minus the dropped); `num_proc` worker processes share the work."""
    counts: dict[str, Any] = {"input": len(records), "kept": 0, "passthrough": 0, "normalised": 0,
                              "filters": {}, "pii": {}, "deduplicated": {"exact": 0, "near": 0}}
    if not cfg.enabled:
        counts["kept"] = counts["passthrough"] = len(records)
        return CleanResult(list(records), [], counts, {})
    for rec in records:
        if rec.get("kind") not in KINDS:
            raise TuneforgeError(f"clean: record {rec.get('id')!r} has unknown kind {rec.get('kind')!r}")
    filters = Filters(cfg.filters, Path(recipe_dir))  # fails early on a bad badwords file or pattern
    todo = [i for i, r in enumerate(records) if r["kind"] != "kb"]
    with minhash.worker_pool(num_proc, len(todo)) as pool:
        if pool is None:
            prepared = [_prepare(records[i], cfg, filters) for i in todo]
        else:
            cfg_json, where = cfg.model_dump_json(), str(recipe_dir)
            step = minhash.CHUNK
            chunks = [([records[i] for i in todo[k:k + step]], cfg_json, where) for k in range(0, len(todo), step)]
            prepared = [row for part in pool.map(_prepare_chunk, chunks) for row in part]

        slots: list[Record | None] = list(records)
        drop: dict[int, dict] = {}
        counts["passthrough"] = len(records) - len(todo)
        for i, (new, changed, pii, reason) in zip(todo, prepared, strict=True):
            counts["normalised"] += changed
            for k, n in pii.items():
                counts["pii"][k] = counts["pii"].get(k, 0) + n
            if reason is not None:
                key = reason.split(":", 1)[0]
                counts["filters"][key] = counts["filters"].get(key, 0) + 1
                drop[i] = reject_record(records[i], reason, stage=STAGE)
                slots[i] = None
            else:
                slots[i] = new

        live = [i for i in todo if slots[i] is not None]
        found = deduplicate([slots[i] for i in live], cfg.dedup, pool)
    clusters: dict[str, str] = {}
    for d in sorted(found.dups.values(), key=lambda d: d.index):
        i = live[d.index]
        keep = slots[live[found.representative(d.index)]]
        counts["deduplicated"]["exact" if d.method == "exact" else "near"] += 1
        drop[i] = reject_record(records[i], "deduplicated", stage=STAGE, duplicate_of=keep["id"],
                                method=d.method, similarity=round(d.similarity, 4))
        clusters[records[i]["id"]] = keep["id"]
        clusters[keep["id"]] = keep["id"]
    kept = [r for i, r in enumerate(slots) if i not in drop and r is not None]
    counts["kept"] = len(kept)
    counts["filters"] = dict(sorted(counts["filters"].items()))
    counts["pii"] = dict(sorted(counts["pii"].items()))
    rejects = [drop[i] for i in sorted(drop)]
    return CleanResult(kept, rejects, counts, dict(sorted(clusters.items())))
