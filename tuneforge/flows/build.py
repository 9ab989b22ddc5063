"""The data build as a Prefect flow: ingest → clean → augment → split → checks → publish.

Runs on an ephemeral Prefect API by default, or on the server `PREFECT_API_URL` points at. Stage tasks
pass records in memory and are not cached here (the pipeline flow caches whole builds by their inputs).
Record lists are passed `quote`d: Prefect would otherwise walk every nested message of every record
looking for futures, which cost more than the build itself.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task, unmapped
from prefect.cache_policies import NO_CACHE
from prefect.utilities.annotations import quote
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from tuneforge.augment import AugmentConfig, AugmentResult, run_augment
from tuneforge.clean import CleanConfig, CleanResult, run_clean
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.models import load_tokenizer
from tuneforge.ingest import IngestResult, Shard, ingest_shard, merge, plan_shards
from tuneforge.publish import BuildInputs, publish
from tuneforge.publish.checks import run_checks
from tuneforge.publish.config import SplitConfig
from tuneforge.publish.split import SplitResult, split_records
from tuneforge.recipe import Recipe, load_recipe


@task(name="ingest-shard", cache_policy=NO_CACHE)
def ingest_shard_task(shard: Shard, base: Path, variables: dict[str, str]) -> IngestResult:
    return ingest_shard(shard, base, variables)


def _ingest(recipe: Recipe, base: Path) -> IngestResult:
    """Shards run on the flow's task runner (threads locally, processes on a Dask cluster)."""
    shards = plan_shards(recipe.sources, base)
    futures = ingest_shard_task.map(shards, unmapped(base), unmapped(recipe.variables))
    with Progress(TextColumn("[bold]ingest[/bold] {task.description}"), BarColumn(), MofNCompleteColumn(),
                  TimeElapsedColumn(), transient=True) as bar:
        t = bar.add_task(f"{recipe.name}: shards", total=len(shards))
        parts = []
        for f in futures:
            parts.append(f.result())
            bar.advance(t)
    return merge(parts)


@task(name="clean", cache_policy=NO_CACHE)
def clean_task(records: list[dict], cfg: CleanConfig, base: Path) -> CleanResult:
    return run_clean(records, cfg, recipe_dir=base, num_proc=os.cpu_count() or 1)


@task(name="augment", cache_policy=NO_CACHE)
def augment_task(records: list[dict], cfg: AugmentConfig, base: Path, seed: int, llm_base_url: str | None,
                 llm_model: str | None) -> AugmentResult:
    return run_augment(records, cfg, recipe_dir=base, seed=seed, llm_base_url=llm_base_url, llm_model=llm_model,
                       progress=True)


@task(name="split", cache_policy=NO_CACHE)
def split_task(records: list[dict], cfg: SplitConfig, seed: int, clusters: dict[str, str]) -> SplitResult:
    return split_records(records, cfg, seed, clusters)


@task(name="checks", cache_policy=NO_CACHE)
def checks_task(split: SplitResult, cfg: CleanConfig, base: Path) -> tuple[dict[str, Any], list[dict]]:
    return run_checks(split, cfg, base)


@task(name="publish", cache_policy=NO_CACHE)
def publish_task(out: Path, inputs: BuildInputs, tokenizer_ref: str | None) -> dict[str, Any]:
    return publish(out, inputs, load_tokenizer(tokenizer_ref) if tokenizer_ref else None)


@flow(name="tuneforge-build", log_prints=True)
def build_flow(recipe_path: str, out: str, strict: bool = False, seed: int | None = None,
               llm_base_url: str | None = None, llm_model: str | None = None,
               augment_limit: int | None = None) -> dict[str, Any]:
    """Build the dataset a recipe describes into `out`; returns the manifest."""
    log = get_run_logger()
    recipe, base = load_recipe(recipe_path)
    recipe = recipe.capped(augment_limit)
    seed = recipe.seed if seed is None else seed
    ing = _ingest(recipe, base)
    log.info("ingest: %d input records, %d records, %d rejected", sum(s["input"] for s in ing.sources.values()),
             len(ing.records), len(ing.rejects))
    cleaned = clean_task(quote(ing.records), recipe.clean, base)
    records, rejects = cleaned.kept, ing.rejects + cleaned.rejects
    stage_counts: dict[str, Any] = {"ingest": {"rejected": len(ing.rejects)}, "clean": cleaned.counts}
    failures: list[dict] = []
    extra: dict[str, Any] = {"warnings": ing.warnings}
    if recipe.augment is not None and recipe.augment.steps:
        aug = augment_task(quote(records), recipe.augment, base, seed, llm_base_url, llm_model)
        records, rejects, failures = aug.records, rejects + aug.rejects, aug.failures
        stage_counts["augment"] = aug.counts
        extra["augment_usage"] = aug.usage
    split = split_task(quote(records), recipe.split, recipe.split.seed if recipe.split.seed is not None else seed,
                       cleaned.clusters)
    checks, dropped = checks_task(quote(split), recipe.clean, base)
    extra.update(checks)
    manifest = publish_task(Path(out), quote(BuildInputs(
        recipe=recipe, recipe_path=Path(recipe_path), seed=seed, ingested=ing.records, records=records,
        rejects=rejects + dropped, source_stats=ing.sources, inputs=ing.inputs, split=split,
        stage_counts=stage_counts, extra=extra, failures=failures)), recipe.card.tokenizer)
    log.info("built %s: %s", out, manifest["counts"]["splits"])
    return manifest


def with_runner(runner: str = "local", dask_address: str | None = None, n_workers: int = 2) -> Any:
    """The build flow on a task runner: `local` (threads) or `dask` (a LocalCluster, or the scheduler at
    `dask_address`, e.g. tcp://10.0.0.5:8786)."""
    if runner == "local":
        return build_flow
    if runner != "dask":
        raise TuneforgeError(f"unknown runner {runner!r}: local or dask")
    from prefect_dask import DaskTaskRunner

    if dask_address:
        return build_flow.with_options(task_runner=DaskTaskRunner(address=dask_address))
    return build_flow.with_options(task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": n_workers, "threads_per_worker": 1, "processes": True,
                        "dashboard_address": None}))
