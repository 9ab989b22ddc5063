"""The augment stage of a sharded build: choose over the whole corpus, send only the chosen records.

Selection is planned on compact columns (id, kind, source) over every shard: the seeded draw and each step's
`limit` are applied to the whole corpus, exactly as an in-memory run would. Only the chosen records (and the
knowledge-base rows, which operators read as reference) are loaded and handed to `run_augment`, which talks to
one endpoint with one cache and one in-flight window. What comes back (rewritten, created and dropped records)
is written per shard for the export step. Memory holds the chosen records, never the corpus.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.augment import AugmentConfig, run_augment
from tuneforge.augment.ops import OPERATORS
from tuneforge.augment.select import draw, input_only
from tuneforge.clean.dedup import Keys
from tuneforge.clean.stage import KIND_CODES, group_code
from tuneforge.common.io import atomic_open, dumps, unpack
from tuneforge.common.shardio import json_line, read_table


def augment_shards(cfg: AugmentConfig, recipe_dir: Path, units: list[str], offsets: np.ndarray, keys: Keys,
                   dedup: Any, seed: int, workdir: Path, llm_base_url: str | None, llm_model: str | None,
                   progress: bool, sources: list[str] | None = None) -> dict[str, Any]:
    n = len(keys.kind)
    usable = np.ones(n, dtype=bool)
    if dedup.dups:
        usable[list(dedup.dups)] = False
    ids = [read_table(Path(u) / "records.arrow", ["id"]).column("id").to_pylist() for u in units]
    flat_ids = [i for part in ids for i in part]
    shard_of = np.searchsorted(offsets, np.arange(n), side="right") - 1 if n else np.empty(0, np.int64)
    src = sources or [_source_of(u) for u in units]
    kb = KIND_CODES["kb"]
    chosen: set[int] = set(np.flatnonzero(usable & (keys.kind == kb)).tolist())
    preselected: dict[str, set[str]] = {}
    for step in cfg.steps:
        op = OPERATORS[step.op]
        kinds = [KIND_CODES[k] for k in (step.select.kinds or op.default_kinds) if k in KIND_CODES]
        mask = usable & np.isin(keys.kind, kinds)
        if step.select.sources:
            ok = np.array([src[s] in step.select.sources for s in range(len(units))], dtype=bool)
            mask &= ok[shard_of] if n else mask
        cand = np.flatnonzero(mask)
        draws = np.array([draw(seed, step.name, flat_ids[i]) for i in cand])
        keep = cand[draws < step.select.p] if len(cand) else cand
        kept_draws = draws[draws < step.select.p] if len(cand) else draws
        if input_only(step):
            if step.limit is not None and len(keep) > step.limit:
                keep = keep[np.lexsort((keep, kept_draws))[:step.limit]]
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
    for rec in res.records:
        rid = rec["id"]
        if rid in by_id:
            seen.add(rid)
            pos, orig = by_id[rid]
            if dumps(rec) != dumps(orig):
                per_shard.setdefault(int(shard_of[pos]), []).append({"action": "replace", "id": rid, "record": rec})
            continue
        parent = rec["meta"].get("derived_from")
        root = root_of.get(parent, parent)
        root_of[rid] = root
        pos = by_id[root][0]
        s = int(shard_of[pos])
        per_shard.setdefault(s, []).append({"action": "create", "root": root, "record": rec})
        generated[s] = generated.get(s, 0) + 1
        if rec["kind"] != "kb":
            created_groups.append((pos, group_code(rec["meta"]["group"])))
    dropped_positions = []
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
            "net_records": len(created_groups) - dropped_kinds}


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
