"""Hyperparameter search over a pipeline (issue 17): `tuneforge run` on a pipeline with a `search:` block.

The build runs once (OUT/data). Each trial is the pipeline's training stages with the trial's knob values
(`search_config.py`), then a cheap forgetting check on a subset of the critical suites (`search.prune`: a
trial whose gate already fails there is pruned), then the held-out evaluation and the full forgetting check.
Every step goes through the pipeline's content-keyed cache (`_Steps`, `cache.py`) under a name that carries
a hash of the trial's parameters (OUT/trials/<hash>/...), so a re-run, or a widened search that revisits a
point, repeats nothing already done. Optuna chooses the points (seeded TPE with the gate as its constraint,
or a random sampler, or a plain grid). The chosen trial is the best held-out metric among trials that pass
the gate; its model is linked at OUT/final, and OUT/results.json / OUT/report.html show every trial.

Under Prefect each trial is a subflow (its steps are tasks); with several GPUs, trials run concurrently, one
per GPU, each in its own process (CUDA_VISIBLE_DEVICES pinned), else serially in this process.

This module is the driver (Optuna's ask and tell, the base's steps, the loop, OUT/final); one trial is
`search_trial.py`, the GPU worker pool `search_pool.py`, the statistics and the choice `search_stats.py`, the
HTML report `search_report.py`.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.io import write_json
from tuneforge.pipeline.config import load_pipeline, plan_pipeline
from tuneforge.pipeline.exclude import build_args, build_key, check_search, trial_build
from tuneforge.pipeline.run import StepRunner, _build, _direct, _evaluate, _Steps
from tuneforge.pipeline.search_config import INT_KNOBS, KnobRange, SearchSpec, decode, encode
from tuneforge.pipeline.search_pool import GPUPool, gpu_count
from tuneforge.pipeline.search_stats import domain_gain, general_change, summarize
from tuneforge.pipeline.search_trial import (
    COMPLETE,
    ERROR,
    PRUNED,
    TrialRunner,
    evaluate_base_side,
    params_hash,
    prune_config,
    run_trial,
    trial_label,
    trial_overrides,
)

log = logging.getLogger("tuneforge.search")


def _suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name, knob in sorted(space.items()):
        if isinstance(knob, KnobRange):
            if name.split(".")[-1] in INT_KNOBS:
                params[name] = trial.suggest_int(name, int(knob.low), int(knob.high), log=knob.log,
                                                 step=int(knob.step or 1))
            else:
                params[name] = trial.suggest_float(name, knob.low, knob.high, log=knob.log, step=knob.step)
        else:
            params[name] = decode(trial.suggest_categorical(name, [encode(v) for v in knob]))
    return params


def _fits(params: dict[str, Any], space: dict[str, Any]) -> bool:
    if set(params) != set(space):
        return False
    for name, knob in space.items():
        v = params[name]
        if isinstance(knob, KnobRange):
            if not isinstance(v, (int, float)) or not knob.low <= v <= knob.high:
                return False
        elif encode(v) not in [encode(x) for x in knob]:
            return False
    return True


def _sampler(spec: SearchSpec) -> Any:
    import optuna

    if spec.grid is not None or spec.sampler == "random":  # a grid's points are all enqueued (`spec.points`)
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if hasattr(optuna.trial.Trial, "set_constraint"):  # Optuna 5: constraints are set on the trial (`_tell`)
        return optuna.samplers.TPESampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, constraints_func=lambda t: t.user_attrs.get("constraint", (1.0,)))


def make_study(spec: SearchSpec, space: dict[str, Any], name: str, root: Path) -> Any:
    """The Optuna study the ask/tell loop draws from: a grid's points enqueued in order, or the knobs' sampler
    with an earlier search's points in this folder first."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=_sampler(spec), study_name=name)
    for p in spec.points() or []:
        study.enqueue_trial({k: encode(p.get(k)) for k in space})
    for p in _previous_points(root, space) if spec.knobs else []:
        study.enqueue_trial({k: encode(v) for k, v in p.items()}, skip_if_exists=True)
    return study


def _previous_points(root: Path, space: dict[str, Any]) -> list[dict[str, Any]]:
    """Points an earlier search in this folder tried that still fit the space, in their order (so that a
    re-run or a widened search revisits them first, through the cache)."""
    f = root / "results.json"
    try:
        old = json.loads(f.read_text(encoding="utf-8")).get("trials") or []
    except (OSError, json.JSONDecodeError):
        return []
    return [t["params"] for t in old if isinstance(t.get("params"), dict) and _fits(t["params"], space)]


def run_search(pipeline: str | Path, out: str | Path, *, overrides: dict[str, Any] | None = None,
               step: StepRunner | None = None, trial: TrialRunner | None = None,
               gpus: int | None = None) -> dict[str, Any]:
    """Run the pipeline's `search:`; returns results.json's content (every trial under `trials`, the chosen
    one under `chosen`). Raises TuneforgeError when no trial passes the forgetting gate (after writing the
    report). `step` runs each step (a Prefect task), `trial` each trial (a Prefect subflow); `gpus` overrides
    torch.cuda.device_count() (trials run concurrently, one a GPU, when it is more than one)."""
    from tuneforge.common.extras import require

    require("a pipeline search", "search", "train", "eval")

    t_start = time.perf_counter()
    cfg, base_dir = load_pipeline(pipeline, overrides)
    if cfg.search is None:
        raise RecipeError(f"{pipeline}: no `search:` block (use run_pipeline)")
    spec = cfg.search
    if cfg.evaluate is None or cfg.evaluate.heldout is None:
        raise RecipeError("search: the objective is a held-out metric, so the pipeline needs evaluate.heldout")
    if cfg.forgetting is None:
        raise RecipeError("search: the constraint is the forgetting gate, so the pipeline needs `forgetting:`")
    if not cfg.train:
        raise RecipeError("search: the pipeline has no train stages to search over")
    plan = plan_pipeline(pipeline, out, overrides)  # every sub-config checked before the first step
    space = spec.space()
    for p in [dict.fromkeys(space, None)] + [{k: (v[0] if isinstance(v, list) else v.low) for k, v in space.items()}]:
        trial_overrides(cfg, p)  # a misspelt knob fails here, not in trial 1
    check_search(cfg, base_dir)
    root = plan.root
    steps = _Steps(root, step or _direct)
    excl = build_args(cfg.build.exclude, base_dir)
    build = steps("build", "build", _build, root / "data" / "manifest.json",
                  {"recipe": plan.recipe_fingerprint, "build": plan.cfg.build.model_dump(mode="json"),
                   **build_key(excl)},
                  recipe=str(plan.recipe), out=str(root / "data"), runner=plan.cfg.build.runner,
                  dask_address=plan.cfg.build.dask_address, llm_base_url=plan.cfg.build.llm_base_url,
                  llm_model=plan.cfg.build.llm_model, augment_limit=plan.cfg.build.augment_limit, **excl)
    assert plan.eval_config is not None and plan.base_model is not None
    base_eo = root / "eval" / "base"
    base_eval = steps("evaluate/base", "evaluate", _evaluate, base_eo / "results.json",
                      {"config": plan.eval_config.model_dump(mode="json"), "model": plan.base_model, "adapter": None,
                       "sha": "base", "data": build["manifest_sha256"]},
                      config=plan.eval_config, out=str(base_eo), model=plan.base_model, adapter=None)
    assert plan.forgetting_config is not None
    evaluate_base_side(steps, root, plan.forgetting_config, plan.base_model)
    if spec.prune:
        evaluate_base_side(steps, root, prune_config(plan.forgetting_config, spec.prune.model_dump()),
                           plan.base_model)
    replay = str((base_dir / spec.replay_dataset).resolve()) if spec.replay_dataset else None
    ctx = {"pipeline": str(Path(pipeline).resolve()), "out": str(root), "overrides": overrides or {},
           "data_sha": build["manifest_sha256"], "replay_dataset": replay,
           "prune": spec.prune.model_dump() if spec.prune else None}

    study = make_study(spec, space, cfg.name, root)
    budget = spec.budget()
    workers = gpus if gpus is not None else gpu_count()
    records: list[dict[str, Any]] = []
    pool = GPUPool(workers) if workers > 1 else None
    try:
        while len(records) < budget:
            batch = [study.ask() for _ in range(min(max(workers, 1), budget - len(records)))]
            points = [(t.number, _suggest(t, space)) for t in batch]
            for number, params in points:
                log.info("trial %d: %s", number, params)
                trial_build(steps, plan, ctx["pipeline"], params, _build)  # here, not in two GPU workers at once
            if pool is not None:
                done = pool.run(ctx, points, trial)
            else:
                done = []
                for n, p in points:
                    one = _caller(ctx, n, p, step)
                    done.append(trial(trial_label(n, p), one) if trial else one())
            for t, rec in zip(batch, done, strict=True):
                _tell(study, t, rec, spec.objective.metric)
                records.append(rec)
    finally:
        if pool is not None:
            pool.shutdown()
    results = summarize(cfg, spec, plan, build, base_eval, str(base_eo), records, steps, study)
    chosen = next((t for t in results["trials"] if t["chosen"]), None)
    if chosen is not None and chosen.get("final"):
        results["final"] = link_final(root, Path(chosen["final"]))
    results["seconds"] = round(time.perf_counter() - t_start, 1)
    from tuneforge.pipeline.search_report import write_search_report

    write_json(root / "results.json", results)
    write_search_report(root, results)
    if results["chosen"] is None:
        raise TuneforgeError("search: no trial passed the forgetting gate (" +
                             "; ".join(f"trial {r['number']}: {r['state']}" for r in records) +
                             f"); see {root / 'report.html'}")
    return results


def _caller(ctx: dict[str, Any], number: int, params: dict[str, Any], step: StepRunner | None
            ) -> Callable[[], dict[str, Any]]:
    """The trial as a call without parameters (a Prefect subflow then has none to serialize)."""
    def trial() -> dict[str, Any]:
        return run_trial(ctx, number, params, step)

    return trial


def _tell(study: Any, t: Any, rec: dict[str, Any], metric: str) -> None:
    from optuna.trial import TrialState

    value = (rec.get("heldout") or {}).get(metric)
    feasible = rec.get("state") == COMPLETE
    t.set_user_attr("constraint", (-1.0 if feasible else 1.0,))  # <= 0: feasible (the gate passes)
    if hasattr(t, "set_constraint"):
        t.set_constraint("forgetting_gate", -1.0 if feasible else 1.0)
    t.set_user_attr("hash", rec["hash"])
    t.set_user_attr("state", rec.get("state"))
    if rec.get("state") == PRUNED:
        study.tell(t, state=TrialState.PRUNED)
    elif rec.get("state") == ERROR or value is None:
        study.tell(t, state=TrialState.FAIL)
    else:
        study.tell(t, float(value))


def link_final(root: Path, final: Path) -> str:
    """OUT/final: a relative symlink to the chosen trial's final model (a copy where links are refused)."""
    import shutil

    link = root / "final"
    if link.is_symlink() or link.is_file():
        link.unlink()
    elif link.is_dir():
        shutil.rmtree(link)
    try:
        link.symlink_to(os.path.relpath(final, root), target_is_directory=True)
    except OSError:
        shutil.copytree(final, link)
    return str(link)


# domain_gain, general_change: their home until the split (search_stats.py); kept importable from here
__all__ = ["domain_gain", "general_change", "params_hash", "run_search", "run_trial", "trial_overrides"]
