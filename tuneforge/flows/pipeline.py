"""The train-then-eval pipeline as a Prefect flow: build → train (stages) → evaluate → forgetting → report.

Each step is a task cached on its inputs (`INPUTS + TASK_SOURCE`, with content hashes of the recipe and
its input files, the configs, and the model folders as inputs), so a re-run with nothing changed returns
in seconds and a changed eval config re-runs only the evaluation. A step whose output folder has gone
missing is recomputed (`refresh_cache`). The forgetting verdict is the gate.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.cache_policies import INPUTS, NO_CACHE, TASK_SOURCE

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import sha256_tree, write_json
from tuneforge.flows.artifacts import publish_build, publish_eval, publish_train
from tuneforge.flows.pipeline_config import (
    eval_config,
    forgetting_config,
    load_pipeline,
    train_config,
)
from tuneforge.recipe import fingerprint

CACHED: dict[str, Any] = {"cache_policy": INPUTS + TASK_SOURCE, "persist_result": True}


@task(name="build", **CACHED)
def build_task(recipe: str, out: str, fingerprint: str, runner: str, dask_address: str | None,
               llm_base_url: str | None, llm_model: str | None, augment_limit: int | None) -> dict[str, Any]:
    from tuneforge.build import build

    m = build(recipe, out, runner="auto" if runner == "local" else runner, dask_address=dask_address,
              llm_base_url=llm_base_url, llm_model=llm_model, augment_limit=augment_limit, progress=True)
    return {"out": out, "manifest_sha256": m["sha256"], "template": m["template"], "counts": m["counts"]}


@task(name="train", **CACHED)
def train_task(config: dict[str, Any], out: str, inputs_sha: str, merge: bool,
               accelerate: str | None = None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)  # a cache miss starts the stage afresh
    if accelerate is None:
        from tuneforge.trainers import train

        return train(config, out, merge=merge)
    from tuneforge.trainers.launch import launch

    return launch(config, out, accelerate_config=accelerate, merge=merge)


@task(name="evaluate", **CACHED)
def eval_task(config: dict[str, Any], out: str, model: str, adapter: str | None, model_sha: str) -> dict[str, Any]:
    from tuneforge.eval import run_eval

    res = run_eval(config, out=out, model=model, adapter=adapter)
    return {"out": out, "suites": res.get("suites", {}), "heldout": (res.get("heldout") or {}).get("metrics")}


@task(name="forgetting", **CACHED)
def forgetting_task(config: dict[str, Any], out: str, base: str, tuned: str | None, adapter: str | None,
                    model_sha: str) -> dict[str, Any]:
    from tuneforge.eval import run_forgetting

    res = run_forgetting(base, tuned, adapter=adapter, out=out, config=config)
    return {"out": out, "forgetting": res["forgetting"]}


@task(name="report", cache_policy=NO_CACHE)
def report_task(out: str, summary: dict[str, Any]) -> dict[str, Any]:
    from tuneforge.eval.pipeline_report import write_pipeline_report

    write_json(Path(out) / "results.json", summary)
    write_pipeline_report(out, summary)
    return summary


def _refresh(marker: Path) -> bool:
    return not marker.exists()


@flow(name="tuneforge-pipeline", log_prints=True)
def pipeline_flow(pipeline: str, out: str, overrides: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run a pipeline file end to end into `out`; returns results.json's content. Fails on the gate."""
    log = get_run_logger()
    cfg, base = load_pipeline(pipeline, overrides)
    root = Path(out).resolve()
    recipe = str((base / cfg.build.recipe).resolve())
    data_dir = root / "data"
    build = build_task.with_options(refresh_cache=_refresh(data_dir / "manifest.json"))(
        recipe, str(data_dir), fingerprint(recipe), cfg.build.runner, cfg.build.dask_address,
        cfg.build.llm_base_url, cfg.build.llm_model, cfg.build.augment_limit)
    publish_build(data_dir)
    log.info("build: %s", build["counts"]["splits"])

    base_model, tuned, adapter, model_sha, trained = None, None, None, "", []
    for i, step in enumerate(cfg.train):
        tc = train_config(step, base, data_dir, trained[-1] if trained else None)
        base_model = base_model or tc["base_model"]
        run_dir = root / "train" / step.name
        is_last = i == len(cfg.train) - 1
        inputs_sha = build["manifest_sha256"] + model_sha
        accel = str((base / step.accelerate).resolve()) if step.accelerate else None
        summary = train_task.with_options(refresh_cache=_refresh(run_dir / "final"))(
            tc, str(run_dir), inputs_sha, merge=not is_last, accelerate=accel)
        trained.append(summary)
        model_sha = sha256_tree(summary["final"])
        publish_train(step.name, run_dir)
        if summary["adapter"]:
            tuned, adapter = tc["base_model"], summary["final"]
        else:
            tuned, adapter = summary["final"], None
    results: dict[str, Any] = {"pipeline": cfg.name, "build": build, "train": trained, "evaluations": {}}
    if cfg.evaluate is not None and base_model is not None:
        ec = eval_config(cfg, base, data_dir)
        models = [("tuned", tuned, adapter, model_sha)]
        if cfg.evaluate.base:
            models.insert(0, ("base", base_model, None, ""))
        for name, model, adp, sha in models:
            eo = root / "eval" / name
            res = eval_task.with_options(refresh_cache=_refresh(eo / "results.json"))(ec, str(eo), model, adp, sha)
            results["evaluations"][name] = res
            publish_eval(name, eo)
    gate = None
    if cfg.forgetting is not None and base_model is not None:
        fc = forgetting_config(cfg, base)
        fo = root / "forgetting"
        res = forgetting_task.with_options(refresh_cache=_refresh(fo / "results.json"))(
            fc, str(fo), base_model, tuned if adapter is None else None, adapter, model_sha)
        publish_eval("forgetting", fo)
        from tuneforge.eval.gate import gate_decision

        gate = gate_decision(res["forgetting"], cfg.forgetting.gate)
        results["forgetting"] = res["forgetting"]
        results["gate"] = gate
    final = report_task(str(root), results)
    if gate is not None and not gate["passed"]:
        raise TuneforgeError("forgetting gate failed: " + "; ".join(gate["reasons"]) +
                             f" (see {root / 'report.html'})")
    if gate is not None and gate["verdict"] == "forgetting":
        log.warning("forgetting detected (gate is 'warn'): %s", "; ".join(gate["reasons"]))
    return final
