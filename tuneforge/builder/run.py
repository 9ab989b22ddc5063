"""`build`: a recipe's corpora to a split, cleaned, augmented, exported dataset, shard by shard.

plan (per file) -> clean (per shard) -> dedup (global, on compact keys; pair checks per shard) -> augment
(the records a step chose, through one endpoint) -> split table (global, on group keys) -> export (per
shard) -> write (join the parts) -> commit into OUT. Per-shard work goes to the executor; what stays in this
process is compact: keys, counts, tables of groups. Plain Python: a Prefect flow can wrap it unchanged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.builder.executor import Executor, importing_main_script, make_executor
from tuneforge.builder.outdir import MANIFEST, OutputDir, kill_point
from tuneforge.builder.progress import BuildProgress
from tuneforge.builder.tasks import (
    CleanJob,
    ExportJob,
    JoinJob,
    VerifyJob,
    clean_task,
    export_task,
    input_size,
    join_task,
    plan_batches,
    plan_task,
    verify_task,
)
from tuneforge.clean.custom import input_digests
from tuneforge.clean.dedup import Keys, deduplicate
from tuneforge.clean.exclude import Exclusion, by_shard, from_flags, load_exclusion, locate, unmatched
from tuneforge.common.errors import StrictError, TuneforgeError, disk_full
from tuneforge.common.io import dumps, write_json, write_text
from tuneforge.common.records import KINDS
from tuneforge.common.results import BuildResult
from tuneforge.common.shardio import column_numbers, numbers, read_table
from tuneforge.common.source_hash import BUILD, source_hash
from tuneforge.ingest import Sharding, plan_files, rel_path, shards_of
from tuneforge.ingest.plan import unchanged
from tuneforge.publish.layout import finish_layout, layout
from tuneforge.publish.shard import LEAK, ShardSpec, dedup_rejects, sample_below
from tuneforge.publish.split import build_split
from tuneforge.publish.summary import BuildFacts, make_card, make_manifest
from tuneforge.recipe import Recipe, load_recipe

log = logging.getLogger("tuneforge.builder")
PRELOAD = ("tuneforge.builder.tasks", "pandas")


def _preload() -> tuple[str, ...]:
    """What the fork server imports once, before it forks the workers (each would import it on its own): the
    tasks; pandas, which pyarrow imports on a process's first conversion (0.15 s here; skipped if missing);
    and tuneforge's CLI when it started this process, because every worker imports the caller's main module."""
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    cli = "tuneforge.cli" in sys.modules or getattr(spec, "name", None) == "tuneforge.cli"
    return PRELOAD + (("tuneforge.cli",) if cli else ())


@dataclass
class BuildOptions:
    """How a build runs (never what it produces: the same recipe and inputs give the same bytes)."""

    seed: int | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    augment_limit: int | None = None
    force: bool = False
    allow_outside: bool = False
    sharding: Sharding = field(default_factory=Sharding)
    progress: bool = True
    exclude_file: str | None = None  # --exclude FILE --exclude-top K | --exclude-top-percent P (over the recipe's)
    exclude_top: int | None = None
    exclude_top_percent: float | None = None


def _key(*parts: Any) -> str:
    return hashlib.sha256("\x1f".join(p if isinstance(p, str) else dumps(p) for p in parts).encode()).hexdigest()[:24]


class Build:
    """One build of one recipe into one output folder."""

    def __init__(self, recipe_path: str | Path, out: str | Path, opts: BuildOptions, executor: Executor) -> None:
        self.recipe_path = Path(recipe_path)
        recipe, self.base = load_recipe(self.recipe_path)
        self.recipe: Recipe = recipe.capped(opts.augment_limit)
        self.recipe = self.recipe.model_copy(update={"card": self.recipe.card.usable()})
        self.opts = opts
        self.exclusion = self._exclusion()  # a bad exclusion file fails here, before any work
        self.seed = self.recipe.seed if opts.seed is None else opts.seed
        self.ex = executor
        self.out = OutputDir(out, self.recipe_path, force=opts.force)
        self.code = source_hash(*BUILD)
        self.used: set[str] = set()
        self.timings: dict[str, float] = {}

    # ------------------------------------------------------------ the stages
    def run(self) -> dict[str, Any]:
        t0 = time.monotonic()
        jobs = plan_files(self.recipe.sources, self.base, self.opts.sharding, self.opts.allow_outside)
        folders = [q for src in self.recipe.sources
                   for q in ((self.base / x) for x in ([src.path] if isinstance(src.path, str) else src.path))
                   if q.is_dir()]  # a source folder: an OUT inside it would be read as input next time
        self.out.check([Path(j.path) for j in jobs] + folders)
        sizes = [input_size(Path(j.path)) for j in jobs]
        self.ex.expect(sum(sizes))
        self.out.claim()
        try:
            with BuildProgress(self.opts.progress) as bar:
                self.bar = bar
                batches = plan_batches(jobs, sizes, self.opts.sharding.target_bytes)
                plans = [p for batch in self._map("plan", plan_task, batches, lambda p: 0) for p in batch]
                self._shas = {p.path: p.sha256 for p in plans}
                shards = shards_of([(j.source, p) for j, p in zip(jobs, plans, strict=True)], self.opts.sharding)
                cleaned = self._clean(shards)
                self._unchanged(plans)  # every source byte is read by now
                keys, offsets, ids = self._keys(cleaned)
                self.excluded = locate(self.exclusion, ids) if self.exclusion else {}
                dedup = self._dedup(keys, cleaned, offsets)
                augment = self._augment(cleaned, offsets, keys, dedup)
                groups_file, notes = self._split(keys, offsets, dedup, augment, cleaned)
                exported = self._export(cleaned, offsets, dedup, augment, groups_file, keys)
            facts = BuildFacts(self.recipe, self.recipe_path, self.base, self.seed, jobs, plans, cleaned, exported,
                               dedup, augment, notes, keys, ids, lambda: self._leak(exported), self.exclusion,
                               self.excluded)
            manifest = self._publish(facts, shards)
            self.out.prune(self.used)
        except BaseException as e:
            self.out.discard(full=disk_full(e))
            raise
        finally:
            self.out.release()
        self.timings["total"] = round(time.monotonic() - t0, 3)
        log.info("built %s in %.1f s", self.out.out, self.timings["total"])
        return manifest

    def _exclusion(self) -> Exclusion | None:
        o = self.opts
        cfg = from_flags(o.exclude_file, o.exclude_top, o.exclude_top_percent, self.base, self.recipe.exclude)
        self.recipe = self.recipe.model_copy(update={"exclude": cfg})
        return load_exclusion(cfg, self.base) if cfg is not None else None

    def _map(self, stage: str, fn: Any, items: list, records_of: Any) -> list:
        t = time.monotonic()
        self.bar.stage(stage, len(items))
        out = self.ex.map(fn, items, stage=stage, on_done=lambda i, r: self.bar.advance(stage, records_of(r)))
        self.timings[stage] = round(time.monotonic() - t, 3)
        self.timings.setdefault("reused", {})[stage] = sum(1 for r in out if isinstance(r, dict) and r.get("cached"))
        return out

    def _unit(self, stage: str, key: str) -> str:
        self.used.add(f"{stage}/{key}")
        return str(self.out.work / stage / key)

    def _clean(self, shards: list) -> list[dict[str, Any]]:
        r = self.recipe
        read = input_digests(r.clean, self.base)  # user modules' files, the badwords list (their params: r.clean)
        jobs = []
        for sh in shards:
            key = _key(self.code, [p.__dict__ for p in sh.parts], sh.source.model_dump(mode="json"),
                       r.clean.model_dump(mode="json"), r.variables, [self._sha(p.path) for p in sh.parts],
                       *read)
            jobs.append(CleanJob(sh, r.clean, str(self.base), dict(r.variables), self._unit("clean", key), key))
        return self._map("clean", clean_task, jobs, lambda s: s["input"])

    @staticmethod
    def _unchanged(plans: list) -> None:
        for p in plans:
            unchanged(p)

    def _sha(self, path: str) -> str:
        return self._shas[path]

    def _keys(self, cleaned: list[dict[str, Any]]) -> tuple[Keys, np.ndarray, list[Any]]:
        """The compact keys of every kept record, in global order (read column by column from the shards)."""
        kinds, groups, exact, bands, ids = [], [], [], [], []
        for s in cleaned:
            cols = ["kind", "group", "exact", "id"] + (["bands"] if s["bands"] else [])
            t = read_table(Path(self._clean_unit(s)) / "records.arrow", cols)
            kinds.append(column_numbers(t, "kind"))
            groups.append(column_numbers(t, "group"))
            exact.append(column_numbers(t, "exact").view(np.uint64))  # 16 bytes a row: two uint64
            if s["bands"]:
                bands.append(numbers(t.column("bands").combine_chunks().flatten(), "bands").reshape(-1, s["bands"]))
            ids.append(t.column("id"))
        sizes = np.array([len(k) for k in kinds], dtype=np.int64)
        offsets = np.concatenate(([0], np.cumsum(sizes)[:-1])) if len(sizes) else np.zeros(0, np.int64)
        kind = np.concatenate(kinds) if kinds else np.empty(0, np.int8)
        cleaned_codes = [i for i, k in enumerate(KINDS.values()) if k.cleaned]
        keys = Keys(kind=kind, group=np.concatenate(groups) if groups else np.empty(0, np.uint64),
                    exact=np.concatenate(exact) if exact else np.empty((0, 2), np.uint64),
                    alive=np.isin(kind, cleaned_codes),
                    bands=np.concatenate(bands) if bands and len(bands) == len(kinds) else None)
        return keys, offsets, ids

    def _clean_unit(self, summary: dict[str, Any]) -> str:
        return str(self.out.work / "clean" / summary["key"])

    def _dedup(self, keys: Keys, cleaned: list[dict[str, Any]], offsets: np.ndarray) -> Any:
        d = self.recipe.clean.dedup
        units = tuple(self._clean_unit(s) for s in cleaned)
        offs = tuple(int(o) for o in offsets)
        t = time.monotonic()

        def verify_pairs(pairs: np.ndarray) -> np.ndarray:
            if not len(pairs):
                return np.empty(0, dtype=np.float32)
            shard_of = np.searchsorted(offsets, pairs[:, 1], side="right") - 1
            jobs = [VerifyJob(pairs[shard_of == s], units, offs, d.ngram) for s in np.unique(shard_of)]
            sims = self._map("verify", verify_task, jobs, len)
            out = np.empty(len(pairs), dtype=np.float32)
            for s, part in zip(np.unique(shard_of), sims, strict=True):
                out[shard_of == s] = part
            return out

        enabled = self.recipe.clean.enabled
        res = deduplicate(keys, enabled and d.exact, enabled and d.near, d.threshold, None, d.ngram, verify_pairs)
        self.timings["dedup"] = round(time.monotonic() - t, 3)
        return res

    # ------------------------------------------------------------ augment
    def _augment(self, cleaned: list[dict[str, Any]], offsets: np.ndarray, keys: Keys, dedup: Any) -> dict[str, Any]:
        cfg = self.recipe.augment
        if cfg is None or not cfg.steps:
            return {"files": {}, "counts": {}, "usage": None, "failures": [], "generated": {}, "deltas": {}}
        from tuneforge.builder.augment import augment_shards  # the LLM client: only when there are steps
        t = time.monotonic()
        units = [self._clean_unit(s) for s in cleaned]
        res = augment_shards(cfg, self.base, units, offsets, keys, dedup, self.seed, self.out.work / "augment",
                             self.opts.llm_base_url, self.opts.llm_model, self.opts.progress,
                             [s["source"] for s in cleaned], self.recipe.clean, excluded=list(self.excluded))
        for f in res["files"].values():
            self.used.add(f"augment/{Path(f).name}")
        self.timings["augment"] = round(time.monotonic() - t, 3)
        return res

    # ------------------------------------------------------------ split
    def _split(self, keys: Keys, offsets: np.ndarray, dedup: Any, augment: dict[str, Any],
               cleaned: list[dict[str, Any]]) -> tuple[str, list[str]]:
        """The group -> split table, from the groups of every record that reaches the split."""
        t = time.monotonic()
        split_seed = self.recipe.split.seed if self.recipe.split.seed is not None else self.seed
        table = build_split(keys, dedup.dups, augment, offsets, [c["source"] for c in cleaned], self.recipe.split,
                            split_seed)
        key = _key(self.code, table.digest())
        path = self.out.work / "split" / f"{key}.npz"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file():
            table.save(path)
        self.used.add(f"split/{path.name}")
        self.split_key = key
        self.timings["split"] = round(time.monotonic() - t, 3)
        return str(path), table.assignment.notes

    # ------------------------------------------------------------ export
    def _export(self, cleaned: list[dict[str, Any]], offsets: np.ndarray, dedup: Any,
                augment: dict[str, Any], groups_file: str, keys: Keys) -> list[dict[str, Any]]:
        r = self.recipe
        ids_needed = {d.of for d in dedup.dups.values()} | {d.matched for d in dedup.dups.values()}
        id_at = self._ids_at(cleaned, offsets, ids_needed)
        per_shard = dedup_rejects(dedup.dups, offsets, id_at)
        excl = by_shard(self.excluded, offsets)
        made = unmatched(self.exclusion, self.excluded) if self.exclusion and augment["files"] else {}
        total = int(keys.alive.sum()) - len(dedup.dups) + int(augment.get("net_records", 0)) \
            - sum(p not in dedup.dups for p in self.excluded)
        below = sample_below(total, r.card.max_stat_records)
        jobs = []
        for s, c in enumerate(cleaned):
            aug = augment["files"].get(s)
            key = _key(self.code, c["key"], per_shard.get(s, {}), self._digest(aug), self.split_key,
                       list(r.formats), r.clean.contamination.model_dump(mode="json"), r.card.model_dump(mode="json"),
                       below, *((excl.get(s, {}), made) if self.exclusion else ()))
            spec = ShardSpec(per_shard.get(s, {}), aug, groups_file, tuple(r.formats), r.clean, str(self.base),
                             below, r.card.tokenizer, excl.get(s, {}), made)
            jobs.append(ExportJob(s, c["source"], self._clean_unit(c), self._unit("export", key), key, spec))
        return self._map("export", export_task, jobs, lambda e: e["kept"] + e["deduplicated"] + e["rejected_records"])

    @staticmethod
    def _digest(path: str | None) -> str:
        if path is None:
            return ""
        return hashlib.sha256(Path(path).read_bytes()).hexdigest()

    def _ids_at(self, cleaned: list[dict[str, Any]], offsets: np.ndarray, positions: set[int]) -> dict[int, str]:
        out: dict[int, str] = {}
        if not positions:
            return out
        pos = np.array(sorted(positions))
        shard_of = np.searchsorted(offsets, pos, side="right") - 1
        for s in np.unique(shard_of):
            mine = pos[shard_of == s]
            col = read_table(Path(self._clean_unit(cleaned[s])) / "records.arrow", ["id"]).column("id")
            for p, v in zip(mine, col.take(mine - offsets[s]).to_pylist(), strict=True):
                out[int(p)] = v
        return out

    # ------------------------------------------------------------ publish
    def _publish(self, facts: BuildFacts, shards: list) -> dict[str, Any]:
        """Join every shard's parts into the staged version (the layout and the manifest are publish's), then
        switch it in."""
        kill_point("publish")
        t = time.monotonic()
        stage = self.out.staging
        units = [Path(self.out.work / "export" / e["key"]) for e in facts.exported]
        lay = layout(stage, units, facts.exported, self.recipe.formats)
        joins = [JoinJob(str(j.target), tuple(str(p) for p in j.parts), j.kind) for j in lay.joins]
        for j in joins:  # the folders first: workers on other hosts see the same (shared) staging folder
            Path(j.target if j.kind else Path(j.target).parent).mkdir(parents=True, exist_ok=True)
        self._map("publish", join_task, joins, lambda res: res["rows"])
        finish_layout(stage, lay, facts.augment["failures"])
        self.timings["shards"] = len(shards)
        manifest = make_manifest(facts, lay.by_kind, lay.datasets, lay.exports)
        write_json(stage / MANIFEST, manifest)
        write_text(stage / "README.md", make_card(facts, manifest, stage))
        self._unchanged(facts.plans)  # export re-reads no source, but a late change still fails before the switch
        kill_point("staged")
        self.out.commit([*lay.names, MANIFEST, "README.md"])
        self.timings["publish"] = round(time.monotonic() - t, 3)
        return manifest

    def _leak(self, exported: list[dict[str, Any]]) -> np.ndarray:
        """Every record's split code (-1: none), from the export units."""
        if not exported:
            return np.empty(0, np.int8)
        return np.concatenate([np.load(Path(self.out.work / "export" / e["key"]) / LEAK) for e in exported])


def build(recipe: str | Path, out: str | Path, *, seed: int | None = None, strict: bool = False,
          llm_base_url: str | None = None, llm_model: str | None = None, augment_limit: int | None = None,
          runner: str = "auto", workers: int | None = None, dask_address: str | None = None,
          executor: Executor | None = None, shard_mb: float | None = None, shard_records: int | None = None,
          force: bool = False, allow_outside: bool = False, progress: bool = False,
          exclude: str | Path | None = None, exclude_top: int | None = None,
          exclude_top_percent: float | None = None) -> BuildResult:
    """Build the dataset `recipe` describes into `out`; returns the manifest (also `out/manifest.json`).

    `strict`: raise StrictError (after writing the output) when an augment step failed every item it selected,
    or when any input record was rejected.
    Work runs on `executor`, or where `runner`, `workers` and `dask_address` say (`builder/executor.py`
    `choose_runner`: `auto` worker processes, one a core, in-process for small inputs; `processes`, `threads`,
    `serial`, or `dask`: a LocalCluster, or the scheduler at `dask_address`). The output is the same bytes
    whichever runs it and however large the shards are. `exclude` (a ranked attribution.jsonl, relative to the
    working directory) with `exclude_top` or `exclude_top_percent` drops its highest-ranked records (over the
    recipe's `exclude:`; docs/clean.md).
    """
    if importing_main_script():
        raise TuneforgeError("tuneforge.build was called while a worker process imported your script: put the "
                             "call under `if __name__ == \"__main__\":`")
    sharding = Sharding(target_bytes=int(shard_mb * (1 << 20)) if shard_mb else Sharding.target_bytes,
                        target_records=shard_records or Sharding.target_records)
    opts = BuildOptions(seed=seed, llm_base_url=llm_base_url, llm_model=llm_model,
                        augment_limit=augment_limit, force=force, allow_outside=allow_outside, sharding=sharding,
                        progress=progress, exclude_file=None if exclude is None else str(exclude),
                        exclude_top=exclude_top, exclude_top_percent=exclude_top_percent)
    own = executor is None
    ex = executor or make_executor(runner, workers, dask_address, _preload())
    try:
        b = Build(recipe, out, opts, ex)
        manifest = b.run()
    finally:
        if own:
            ex.close()
    timings = {"timings": b.timings, "executor": ex.describe()}
    write_json(b.out.mark / "timings.json", timings)
    if strict:  # what `tuneforge build --strict` checks (exit 2 for a failed step, else 1 for rejects)
        from tuneforge.augment.run import failed_step_warnings

        if failed := failed_step_warnings(manifest):
            raise StrictError(f"strict: {'; '.join(failed)}; the output was written")
        if rejected := manifest["counts"]["rejected"]:
            raise StrictError(f"strict: {rejected} input records rejected; the output was written, the reasons are "
                              f"in {Path(out) / 'rejects.jsonl'}")
    return BuildResult(manifest)


__all__ = ["Build", "BuildOptions", "build", "json", "rel_path"]
