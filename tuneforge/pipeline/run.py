"""The train-then-eval pipeline as a plain function: build → train (stages) → evaluate → forgetting → report.

Every sub-config is loaded and validated (paths resolved against the file that names them and checked)
before the first step runs. Each step is cached on content (`pipeline/cache.py`), so a re-run with nothing
changed returns in seconds, a changed eval config re-runs only the evaluation, and an edited stage module
re-runs the steps that use it. `step` lets an orchestrator (the Prefect flow) run each step as its own task;
it adds no logic. The forgetting verdict is the gate.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import sha256_tree, write_json
from tuneforge.common.results import PipelineResult
from tuneforge.pipeline.cache import StepCache, step_key
from tuneforge.pipeline.config import Plan, plan_pipeline
from tuneforge.pipeline.exclude import build_args, build_key

log = logging.getLogger("tuneforge.pipeline")

# (step name, function, keyword arguments) -> the function's result; the default runs it in this process.
StepRunner = Callable[[str, Callable[..., dict[str, Any]], dict[str, Any]], dict[str, Any]]


def _direct(name: str, fn: Callable[..., dict[str, Any]], kwargs: dict[str, Any]) -> dict[str, Any]:
    return fn(**kwargs)


def _build(recipe: str, out: str, runner: str, dask_address: str | None, llm_base_url: str | None,
           llm_model: str | None, augment_limit: int | None, **exclude: Any) -> dict[str, Any]:
    from tuneforge.builder import build

    m = build(recipe, out, runner=runner, dask_address=dask_address,
              llm_base_url=llm_base_url, llm_model=llm_model, augment_limit=augment_limit, progress=True, **exclude)
    return {"out": out, "manifest_sha256": m["sha256"], "template": m["template"], "counts": m["counts"]}


def _train(config: Any, out: str, merge: bool, accelerate: str | None) -> dict[str, Any]:
    shutil.rmtree(out, ignore_errors=True)  # a cache miss starts the stage afresh
    if accelerate is None:
        from tuneforge.trainers import train

        return dict(train(config, out, merge=merge))
    from tuneforge.trainers.launch import launch

    return dict(launch(config, out, accelerate_config=accelerate, merge=merge))


def _evaluate(config: Any, out: str, model: str, adapter: str | None) -> dict[str, Any]:
    from tuneforge.eval import run_eval

    res = run_eval(config, out=out, model=model, adapter=adapter)
    return {"out": out, "suites": res.get("suites", {}), "heldout": (res.get("heldout") or {}).get("metrics"),
            "lineage": res.get("lineage")}


def _forgetting(config: Any, out: str, base: str, tuned: str | None, adapter: str | None,
                base_eval: str | None = None) -> dict[str, Any]:
    from tuneforge.eval import run_forgetting

    res = run_forgetting(base, tuned, adapter=adapter, out=out, config=config, base_eval=base_eval)
    return {"out": out, "forgetting": res["forgetting"], "lineage": res.get("lineage"),
            "base_lineage": res.get("base_lineage")}


def _attribute(forgetting_dir: str, out: str, method: dict[str, Any], device: str | None) -> dict[str, Any]:
    from tuneforge.attribute.run import Method, attribute

    s = attribute(forgetting_dir, out, device=device, method=Method(**method))
    return {"out": out, **{k: v for k, v in s.items() if k in ("status", "message", "lost", "records", "top", "cache")}}


def produced_lineage(trained: list[dict[str, Any]], base_model: str) -> dict[str, Any]:
    """The lineage of the model the last training stage wrote (the base model's when nothing trained)."""
    from tuneforge.common.lineage import eval_lineage, read_lineage

    if not trained:
        return eval_lineage(base_model, None)
    last = trained[-1]
    lineage = last.get("lineage") or read_lineage(last["final"])
    if lineage is None:
        raise TuneforgeError(f"{last['final']}: no lineage.json; re-run its training step (delete the folder)")
    return lineage


def check_scored(expected: dict[str, Any], step: str, result: dict[str, Any], key: str = "lineage") -> None:
    """Refuse a step that scored any model but the expected one (compared by the hashes of the weights)."""
    from tuneforge.common.lineage import describe, fingerprint

    got = result.get(key)
    if not got:
        raise TuneforgeError(f"{step}: its results record no model lineage, so what it scored is unknown; "
                             f"delete {result.get('out')} and run again")
    if fingerprint(got) != fingerprint(expected):
        raise TuneforgeError(
            f"{step} scored {describe(got['model'], got.get('adapter'))}, but the model to score is "
            f"{describe(expected['model'], expected.get('adapter'))} (weights hashes differ); refusing its results")


class _Steps:
    """Runs one step through the cache and the orchestrator's step runner."""

    def __init__(self, root: Path, runner: StepRunner) -> None:
        self.cache = StepCache(root)
        self.runner = runner
        self.ran: list[str] = []
        self.reused: list[str] = []

    def __call__(self, name: str, kind: str, fn: Callable[..., dict[str, Any]], output: Path,
                 key_parts: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        key = step_key(kind, **key_parts)
        hit = self.cache.get(name, key, output)
        if hit is not None:
            log.info("%s: reused (nothing it depends on changed)", name)
            self.reused.append(name)
            return hit
        t = time.perf_counter()
        result = self.runner(name, fn, kwargs)
        self.cache.put(name, key, result)
        self.ran.append(name)
        log.info("%s: done in %.0f s", name, time.perf_counter() - t)
        return result


def train_stages(steps: _Steps, plan: Plan, root: Path, prefix: str,
                 data_sha: str) -> tuple[str | None, str | None, str, list[dict[str, Any]]]:
    """Run the plan's training stages in order under `root/train/` (step names start with `prefix`); returns
    (tuned model, adapter or None, the last model folder's sha256, each stage's summary)."""
    tuned, adapter, model_sha, trained = plan.base_model, None, "", []
    for i, stage in enumerate(plan.train):
        config = stage.config_for(previous=trained[-1] if trained else None)
        if stage.from_previous:
            log.info("train/%s starts from train/%s's model: %s", stage.name, plan.train[i - 1].name,
                     config.base_model)
        run_dir = root / "train" / stage.name
        summary = steps(f"{prefix}train/{stage.name}", "train", _train, run_dir / "final",
                        {"config": config.model_dump(mode="json"), "data": data_sha,
                         "model": model_sha, "accelerate": stage.accelerate_sha},
                        config=config, out=str(run_dir), merge=i < len(plan.train) - 1,
                        accelerate=stage.accelerate)
        trained.append(summary)
        model_sha = sha256_tree(summary["final"])
        tuned, adapter = (config.base_model, summary["final"]) if summary["adapter"] else (summary["final"], None)
    return tuned, adapter, model_sha, trained


def run_pipeline(pipeline: str | Path, out: str | Path, *, overrides: dict[str, Any] | None = None,
                 step: StepRunner | None = None) -> PipelineResult:
    """Run a pipeline file end to end into `out` (data/, train/<stage>/, eval/, forgetting/, report.html,
    results.json); returns results.json's content. Raises TuneforgeError when the gate fails (`gate: fail`)."""
    from tuneforge.pipeline.gate import gate_decision, gate_line

    plan = plan_pipeline(pipeline, out, overrides)
    root = plan.root
    sizing = _size_forgetting(plan)
    steps = _Steps(root, step or _direct)
    excl = build_args(plan.cfg.build.exclude, Path(pipeline).parent)
    build = steps("build", "build", _build, root / "data" / "manifest.json",
                  {"recipe": plan.recipe_fingerprint, "build": plan.cfg.build.model_dump(mode="json"),
                   **build_key(excl)},
                  recipe=str(plan.recipe), out=str(root / "data"), runner=plan.cfg.build.runner,
                  dask_address=plan.cfg.build.dask_address, llm_base_url=plan.cfg.build.llm_base_url,
                  llm_model=plan.cfg.build.llm_model, augment_limit=plan.cfg.build.augment_limit, **excl)
    log.info("build: %s", build["counts"]["splits"])

    tuned, adapter, model_sha, trained = train_stages(steps, plan, root, "", build["manifest_sha256"])
    expected = produced_lineage(trained, plan.base_model) if plan.base_model is not None else None
    base_expected = base_lineage(plan.base_model) if plan.base_model is not None else None  # hashed once
    if expected is not None:
        log.info("model to evaluate: %s", expected.get("summary"))

    results: dict[str, Any] = {"pipeline": plan.cfg.name, "build": build, "train": trained, "model": expected,
                               "evaluations": {}}
    if sizing is not None:
        results["forgetting_sizing"] = sizing
    if plan.eval_config is not None and plan.base_model is not None:
        models = [("tuned", tuned, adapter, model_sha)]
        if plan.cfg.evaluate is not None and plan.cfg.evaluate.base:
            models.insert(0, ("base", plan.base_model, None, "base"))
        for name, model, adp, sha in models:
            eo = root / "eval" / name
            results["evaluations"][name] = steps(
                f"evaluate/{name}", "evaluate", _evaluate, eo / "results.json",
                {"config": plan.eval_config.model_dump(mode="json"), "model": model, "adapter": adp, "sha": sha,
                 "data": build["manifest_sha256"]},
                config=plan.eval_config, out=str(eo), model=model, adapter=adp)
            check_scored(expected if name == "tuned" else base_expected, f"evaluate/{name}",
                         results["evaluations"][name])
    gate = None
    if plan.forgetting_config is not None and plan.base_model is not None:
        fo = root / "forgetting"
        res = steps("forgetting", "forgetting", _forgetting, fo / "results.json",
                    {"config": plan.forgetting_config.model_dump(mode="json"), "base": plan.base_model,
                     "tuned": tuned, "adapter": adapter, "sha": model_sha},
                    config=plan.forgetting_config, out=str(fo), base=plan.base_model,
                    tuned=tuned, adapter=adapter)  # the adapter goes on the model its stage trained on
        assert plan.cfg.forgetting is not None and expected is not None and base_expected is not None
        check_scored(expected, "forgetting (tuned side)", res)
        check_scored(base_expected, "forgetting (base side)", res, "base_lineage")
        gate = gate_decision(res["forgetting"], plan.cfg.forgetting.gate, plan.cfg.forgetting.on_inconclusive)
        results["forgetting"] = res["forgetting"]
        results["forgetting_lineage"] = {"tuned": res["lineage"], "base": res["base_lineage"]}
        results["gate"] = gate
        if plan.cfg.attribute is not None and adapter is not None:  # before the gate fails the run: it says why
            a = plan.cfg.attribute
            method = a.model_dump(exclude={"device"})
            results["attribution"] = steps("attribute", "attribute", _attribute, root / "attribute" / "attribution.json",
                                           {"method": method, "forgetting": res["forgetting"], "sha": model_sha},
                                           forgetting_dir=str(fo), out=str(root / "attribute"), method=method,
                                           device=a.device)
    results["steps"] = {"ran": steps.ran, "reused": steps.reused}
    _report(root, results)
    if gate is not None and not gate["passed"]:
        raise TuneforgeError(f"forgetting gate failed: {gate_line(gate)} (see {root / 'report.html'})")
    if gate is not None and gate["status"] == "warn":
        log.warning("%s", gate_line(gate))
    return PipelineResult(results)


def base_lineage(base_model: str) -> dict[str, Any]:
    from tuneforge.common.lineage import eval_lineage

    return eval_lineage(base_model, None)


def _size_forgetting(plan: Plan) -> dict[str, Any] | None:
    """Before any step: what drop the forgetting check can see with the questions it was given (logged;
    a warning when it cannot conclude `no significant change` whatever training does)."""
    if plan.forgetting_config is None or plan.cfg.forgetting is None:
        return None
    from tuneforge.eval.sizing import size_forgetting, sizing_lines

    f = plan.cfg.forgetting
    sizing = size_forgetting(plan.forgetting_config, f.expected_flip_rate)
    for line in sizing_lines(sizing):
        log.info("forgetting check sizing: %s", line)
    if not sizing["can_conclude"]:
        then = {"fail": "the gate will FAIL the run unless a drop is detected or every gated suite improves",
                "warn": "the gate will warn (inconclusive)",
                "pass": "the gate will pass it anyway (on_inconclusive: pass)"}[f.on_inconclusive]
        log.warning("forgetting check is under-powered before training: it cannot conclude 'no significant "
                    "change' at its tolerance with these questions; %s. Add questions (suites, subjects, "
                    "limit) or raise the tolerance", then)
    return sizing


def _report(root: Path, results: dict[str, Any]) -> None:
    from tuneforge.pipeline.report import write_pipeline_report

    write_json(root / "results.json", results)
    write_pipeline_report(str(root), results)


__all__ = ["Plan", "StepRunner", "run_pipeline"]
