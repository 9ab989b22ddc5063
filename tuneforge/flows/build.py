"""The data build as a Prefect flow: `tuneforge.builder.build` with its per-shard work as Prefect task runs.

The flow holds no logic: it calls the same `build` the CLI and the library call, handing it an executor that
runs each unit of work (plan a file, clean a shard, check pairs, export a shard, join an output file) as a task on the flow's task
runner: a process pool locally, or a Dask cluster through prefect-dask. Jobs travel in a `Box`, so
neither Prefect nor Dask walks them.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE
from prefect.futures import as_completed

from tuneforge.builder import build
from tuneforge.builder import tasks as work
from tuneforge.builder.executor import Executor, choose_runner

_OPTS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False, "log_prints": False}


class Box:
    """An opaque holder for a job: Prefect walks dataclasses in task arguments looking for futures, and
    Dask rebuilds Prefect's `quote` (a namedtuple) as a plain tuple; neither walks a Box."""

    __slots__ = ("job",)

    def __init__(self, job: Any) -> None:
        self.job = job

    def __getstate__(self) -> Any:
        return self.job

    def __setstate__(self, job: Any) -> None:
        self.job = job


@task(name="plan-file", **_OPTS)
def plan_file(box: Box) -> Any:
    return work.plan_task(box.job)


@task(name="clean-shard", **_OPTS)
def clean_shard(box: Box) -> Any:
    return work.clean_task(box.job)


@task(name="verify-pairs", **_OPTS)
def verify_pairs(box: Box) -> Any:
    return work.verify_task(box.job)


@task(name="export-shard", **_OPTS)
def export_shard(box: Box) -> Any:
    return work.export_task(box.job)


@task(name="join-output", **_OPTS)
def join_output(box: Box) -> Any:
    return work.join_task(box.job)


TASKS = {work.plan_task: plan_file, work.clean_task: clean_shard, work.verify_task: verify_pairs,
         work.export_task: export_shard, work.join_task: join_output}


class PrefectExecutor(Executor):
    """Runs each unit of work as a task run on the current flow's task runner."""

    name = "prefect"

    def __init__(self, workers: int = 1) -> None:
        self.workers = workers

    def map(self, fn, items, *, stage, on_done=None):  # type: ignore[override]
        t = TASKS[fn]
        futures = [t.with_options(task_run_name=f"{stage}-{i}").submit(Box(it)) for i, it in enumerate(items)]
        index = {f.task_run_id: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        for f in as_completed(futures):
            i = index[f.task_run_id]
            results[i] = f.result()
            if on_done is not None:
                on_done(i, results[i])
        return results


@flow(name="tuneforge-build", log_prints=True)
def build_flow(recipe_path: str, out: str, seed: int | None = None, llm_base_url: str | None = None,
               llm_model: str | None = None, augment_limit: int | None = None, force: bool = False,
               allow_outside: bool = False, shard_mb: float | None = None, shard_records: int | None = None,
               workers: int = 1, exclude: str | None = None, exclude_top: int | None = None,
               exclude_top_percent: float | None = None) -> dict[str, Any]:
    """Build the dataset a recipe describes into `out`; returns the manifest."""
    return build(recipe_path, out, seed=seed, llm_base_url=llm_base_url, llm_model=llm_model,
                 augment_limit=augment_limit, force=force, allow_outside=allow_outside, shard_mb=shard_mb,
                 shard_records=shard_records, executor=PrefectExecutor(workers), progress=False,
                 exclude=exclude, exclude_top=exclude_top, exclude_top_percent=exclude_top_percent)


def with_runner(runner: str = "auto", dask_address: str | None = None, workers: int | None = None) -> Any:
    """The build flow on the task runner `choose_runner` picks (the same reading as a plain build): worker
    processes, threads, one thread (serial), or Dask (a LocalCluster, or the scheduler at `dask_address`,
    e.g. tcp://10.0.0.5:8786)."""
    c = choose_runner(runner, workers, dask_address)
    if c.kind == "processes":
        from prefect.task_runners import ProcessPoolTaskRunner

        return build_flow.with_options(task_runner=ProcessPoolTaskRunner(max_workers=c.workers))
    if c.kind in ("threads", "serial"):
        from prefect.task_runners import ThreadPoolTaskRunner

        return build_flow.with_options(task_runner=ThreadPoolTaskRunner(max_workers=c.workers))
    from prefect_dask import DaskTaskRunner

    if c.address:
        return build_flow.with_options(task_runner=DaskTaskRunner(address=c.address))
    return build_flow.with_options(task_runner=DaskTaskRunner(
        cluster_kwargs={"n_workers": c.workers, "threads_per_worker": 1, "processes": True, "dashboard_address": None}))
