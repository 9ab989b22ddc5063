"""The pipeline as a Prefect flow: `run_pipeline` with each step run as a Prefect task (visible in the UI,
with the build's, training's and evaluations' tables as artifacts). Caching is the pipeline's own
(content-keyed, `tuneforge/pipeline/cache.py`), so Prefect's task cache is off."""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.cache_policies import NO_CACHE

from tuneforge.flows.artifacts import publish_build, publish_eval, publish_train
from tuneforge.pipeline import run_pipeline

PUBLISH: dict[str, Callable[[str, dict[str, Any]], None]] = {
    "build": lambda name, res: publish_build(Path(res["out"])),
    "data-exclude": lambda name, res: publish_build(Path(res["out"])),  # a search trial's build (its knob)
    "train": lambda name, res: publish_train(name.split("/", 1)[1], Path(res["run_dir"])),
    "evaluate": lambda name, res: publish_eval(name.split("/", 1)[1], Path(res["out"])),
    "forgetting": lambda name, res: publish_eval("forgetting", Path(res["out"])),
}


def reporting_progress(fn: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    """The step with the evaluations' progress lines (counts, rate) sent to its task run's log."""

    @functools.wraps(fn)
    def run(**kwargs: Any) -> dict[str, Any]:
        from prefect import get_run_logger

        from tuneforge.eval.progress import reporting

        with reporting(get_run_logger().info):
            return fn(**kwargs)

    return run


def prefect_step(name: str, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """Run one pipeline step as a Prefect task, then publish its artifacts."""
    result = task(reporting_progress(fn), name=name, cache_policy=NO_CACHE, persist_result=False)(**kwargs)
    PUBLISH[name.split("/", 1)[0]](name, result)
    return result


@flow(name="tuneforge-pipeline", log_prints=True)
def pipeline_flow(pipeline: str, out: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a pipeline file end to end into `out`; returns results.json's content. Fails on the gate."""
    return dict(run_pipeline(pipeline, out, overrides=overrides, step=prefect_step))


# The search (issue 17) as a flow; each trial a subflow, each of its steps a task.
def search_step(name: str, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A search step as a Prefect task: `trials/<hash>/<step>` publishes as the pipeline's `<step>` would."""
    result = task(reporting_progress(fn), name=name, cache_policy=NO_CACHE, persist_result=False)(**kwargs)
    inner = name.split("/", 2)[2] if name.startswith("trials/") else name  # train/sft, evaluate, prune...
    publish = PUBLISH.get(inner.split("/", 1)[0])
    if publish is not None:
        publish(inner if "/" in inner else f"{inner}/trial-{name.split('/')[1]}", result)
    return result


def trial_subflow(label: str, fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    return flow(fn, name="tuneforge-search-trial", flow_run_name=label, log_prints=True)()


@flow(name="tuneforge-search", log_prints=True)
def search_flow(pipeline: str, out: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a pipeline's `search:` into `out`; returns results.json's content."""
    from tuneforge.pipeline.search import run_search

    return run_search(pipeline, out, overrides=overrides, step=search_step, trial=trial_subflow)
