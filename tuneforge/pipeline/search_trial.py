"""One trial of a pipeline search (`search.py` drives the trials): its knob values as pipeline overrides,
then its steps (train, the cheap prune check, held-out evaluation, the full forgetting check), each through the
pipeline's content-keyed cache under OUT/trials/<hash of the params>/, and its record.

A trial is a unit that runs alone (in this process, a Prefect subflow or a worker process with its own GPU),
so everything it needs comes in `ctx` and its record is all it returns.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import RecipeError
from tuneforge.common.io import write_json
from tuneforge.pipeline.config import PipelineConfig, deep_merge, load_pipeline, plan_pipeline
from tuneforge.pipeline.exclude import KNOB, trial_build, with_dataset
from tuneforge.pipeline.run import (
    StepRunner,
    _build,
    _direct,
    _evaluate,
    _forgetting,
    _Steps,
    check_scored,
    produced_lineage,
    train_stages,
)
from tuneforge.pipeline.search_config import SHORTHAND

log = logging.getLogger("tuneforge.search")

# (trial label, the trial as a call without arguments) -> its record: how a trial is run (a Prefect subflow).
TrialRunner = Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]]

COMPLETE, PRUNED, FAILED_GATE, ERROR = "complete", "pruned", "failed_gate", "error"


# --- knobs -> pipeline overrides -------------------------------------------------------------------------

def params_hash(params: dict[str, Any]) -> str:
    """A trial's name (its folder OUT/trials/<hash>): the same knob values give the same hash."""
    blob = json.dumps(params, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


def trial_label(number: int, params: dict[str, Any]) -> str:
    """A trial's name where it runs as a unit of its own (a Prefect subflow)."""
    return f"trial-{number}-{params_hash(params)}"


def _shorthand(stage_set: dict[str, Any], knob: str, value: Any, replay_dataset: str | None) -> dict[str, Any]:
    """The stage's `set:` with one shorthand knob applied."""
    if knob == "learning_rate":
        return deep_merge(stage_set, {"args": {"learning_rate": float(value)}})
    if knob == "lora_r":
        return deep_merge(stage_set, {"lora": {"r": int(value)}})
    if knob == "max_steps":
        return deep_merge(stage_set, {"args": {"max_steps": int(value)}})
    if knob == "num_train_epochs":  # max_steps would win over epochs in transformers
        return deep_merge(stage_set, {"args": {"num_train_epochs": float(value), "max_steps": -1}})
    if knob == "replay_ratio":
        if not value:
            return {**stage_set, "replay": None}
        replay: dict[str, Any] = {"ratio": float(value)}
        if replay_dataset:
            replay["dataset"] = replay_dataset
        return deep_merge(stage_set, {"replay": replay})
    raise RecipeError(f"search: unknown knob {knob!r}")


def _dotted(path: str, value: Any) -> dict[str, Any]:
    out: Any = value
    for part in reversed(path.split(".")):
        out = {part: out}
    return out


def trial_overrides(cfg: PipelineConfig, params: dict[str, Any], replay_dataset: str | None = None) -> dict[str, Any]:
    """The pipeline overrides (deep-merged by `plan_pipeline`) that one trial's knob values stand for."""
    stages = {s.name: s.model_dump(mode="json") for s in cfg.train}
    order = [s.name for s in cfg.train]
    if params.get("order") is not None:
        order = [n.strip() for n in str(params["order"]).replace(",", ">").split(">") if n.strip()]
        unknown = [n for n in order if n not in stages]
        if unknown or not order:
            raise RecipeError(f"search: order {params['order']!r} names {', '.join(unknown) or 'no'} stage(s); "
                              f"the pipeline's train stages are {', '.join(stages)}")
    train = [copy.deepcopy(stages[n]) for n in order]
    if train:
        train[0]["from_previous"] = False  # the first stage of an order starts from the base model
    over: dict[str, Any] = {}
    for knob, value in sorted(params.items()):
        if knob in ("order", KNOB) or value is None:  # KNOB: the trial's build (pipeline/exclude.py)
            continue
        stage, _, short = knob.partition(".")
        if knob in SHORTHAND:
            for st in train:
                st["set"] = _shorthand(st.get("set") or {}, knob, value, replay_dataset)
        elif short in SHORTHAND and stage in stages:
            for st in train:
                if st["name"] == stage:
                    st["set"] = _shorthand(st.get("set") or {}, short, value, replay_dataset)
        elif "." in knob:
            over = deep_merge(over, _dotted(knob, value))
        else:
            raise RecipeError(f"search: knob {knob!r} is none of {', '.join(SHORTHAND)}, order, "
                              "<stage>.<knob> or a dotted path into the pipeline (forgetting.tolerance)")
    if "train" in over:
        raise RecipeError("search: use the shorthand knobs or <stage>.<knob> for training, not train.*")
    over["train"] = train
    return over


# --- one trial --------------------------------------------------------------------------------------------

def prune_config(forgetting_config: Any, prune: dict[str, Any]) -> Any:
    """The forgetting config cut to the prune check: the named suites, at most `limit` questions each."""
    suites = []
    for sc in forgetting_config.suites:
        name = sc.name or sc.benchmark.split(":", 1)[0]
        if prune.get("suites") and name not in prune["suites"] and sc.benchmark not in prune["suites"]:
            continue
        suites.append(sc.model_copy(update={"limit": min(sc.limit or prune["limit"], prune["limit"])}))
    if not suites:
        raise RecipeError(f"search.prune.suites {prune.get('suites')} names none of the forgetting suites "
                          f"({', '.join(s.name or s.benchmark for s in forgetting_config.suites)})")
    update: dict[str, Any] = {"suites": suites}
    if forgetting_config.perplexity is not None:
        pc = forgetting_config.perplexity
        update["perplexity"] = pc.model_copy(update={"limit": min(pc.limit or prune["limit"], prune["limit"])})
    return forgetting_config.model_copy(update=update)


def _base_side(root: Path, forgetting_config: Any, base: str) -> tuple[Any, dict[str, Any], Path]:
    """The base model's side of a forgetting check in one search: the eval config it runs, what decides its
    outputs, and its folder (one per distinct evaluation: the full check, the prune check), shared by every
    trial, so the base is evaluated once."""
    from tuneforge.eval.forgetting import evaluated_config, forgetting_eval_config

    cfg = forgetting_eval_config(forgetting_config)
    key = evaluated_config(cfg, base)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return cfg, key, root / "forgetting-base" / digest


def base_eval_dir(root: Path, forgetting_config: Any, base: str) -> Path:
    """The folder a trial's forgetting check reads the base's side from."""
    return _base_side(root, forgetting_config, base)[2]


def evaluate_base_side(steps: _Steps, root: Path, forgetting_config: Any, base: str) -> None:
    """Evaluate the base for a forgetting config once, as a cached step, before any trial needs it."""
    cfg, key, d = _base_side(root, forgetting_config, base)
    steps(f"forgetting-base/{d.name}", "evaluate", _evaluate, d / "results.json", {"config": key},
          config=cfg, out=str(d), model=base, adapter=None)


def run_trial(ctx: dict[str, Any], number: int, params: dict[str, Any], step: StepRunner | None = None) -> dict[str, Any]:
    """Train, prune-check, evaluate and forgetting-check one trial (every step cached); its record."""
    from tuneforge.pipeline.gate import gate_decision

    h = params_hash(params)
    cfg, _ = load_pipeline(ctx["pipeline"], ctx["overrides"])
    plan = plan_pipeline(ctx["pipeline"], ctx["out"],
                         deep_merge(ctx["overrides"] or {}, trial_overrides(cfg, params, ctx["replay_dataset"])))
    root = plan.root
    tdir = root / "trials" / h
    steps = _Steps(root, step or _direct)
    t0 = time.perf_counter()
    rec: dict[str, Any] = {"number": number, "hash": h, "params": params, "dir": str(tdir)}
    write_json(tdir / "trial.json", {"hash": h, "params": params})
    try:
        data = trial_build(steps, plan, ctx["pipeline"], params, _build)  # None: the shared build
        plan = with_dataset(plan, data)
        tuned, adapter, model_sha, trained = train_stages(steps, plan, tdir, f"trials/{h}/",
                                                          data["manifest_sha256"] if data else ctx["data_sha"])
        rec["final"] = trained[-1]["final"] if trained else None
        rec["train"] = [{k: s.get(k) for k in ("final", "adapter", "merged", "metrics") if k in s} for s in trained]
        tuned_arg = tuned  # the model the last stage trained on (its adapter goes on it)
        expected = produced_lineage(trained, plan.base_model)
        fkey = {"base": plan.base_model, "tuned": tuned, "adapter": adapter, "sha": model_sha}
        if ctx["prune"] and plan.forgetting_config is not None:
            pcfg = prune_config(plan.forgetting_config, ctx["prune"])
            po = tdir / "prune"
            pres = steps(f"trials/{h}/prune", "forgetting", _forgetting, po / "results.json",
                         {"config": pcfg.model_dump(mode="json"), **fkey},
                         config=pcfg, out=str(po), base=plan.base_model, tuned=tuned_arg, adapter=adapter,
                         base_eval=str(base_eval_dir(root, pcfg, plan.base_model)))
            pgate = gate_decision(pres["forgetting"], "fail", "pass")  # prunes only on a detected drop
            check_scored(expected, f"trial {h}: prune check", pres)
            rec["prune"] = {"gate": pgate, "dir": str(po)}
            if not pgate["passed"]:
                rec.update(state=PRUNED, reason="pruned at the cheap forgetting check: " + "; ".join(pgate["reasons"]),
                           gate=pgate, forgetting_dir=str(po))
                return _finish(rec, steps, t0)
        if plan.eval_config is not None:
            eo = tdir / "eval"
            ev = steps(f"trials/{h}/evaluate", "evaluate", _evaluate, eo / "results.json",
                       {"config": plan.eval_config.model_dump(mode="json"), "model": tuned, "adapter": adapter,
                        "sha": model_sha, "data": ctx["data_sha"]},
                       config=plan.eval_config, out=str(eo), model=tuned, adapter=adapter)
            check_scored(expected, f"trial {h}: evaluate", ev)
            rec["heldout"] = ev.get("heldout")
            rec["eval_dir"] = str(eo)
        if plan.forgetting_config is not None:
            fo = tdir / "forgetting"
            fres = steps(f"trials/{h}/forgetting", "forgetting", _forgetting, fo / "results.json",
                         {"config": plan.forgetting_config.model_dump(mode="json"), **fkey},
                         config=plan.forgetting_config, out=str(fo), base=plan.base_model, tuned=tuned_arg,
                         adapter=adapter, base_eval=str(base_eval_dir(root, plan.forgetting_config, plan.base_model)))
            assert plan.cfg.forgetting is not None
            check_scored(expected, f"trial {h}: forgetting", fres)
            rec["gate"] = gate_decision(fres["forgetting"], plan.cfg.forgetting.gate, plan.cfg.forgetting.on_inconclusive)
            # the search's constraint is "no detected drop": an under-powered trial is not excluded for it
            rec["constraint"] = gate_decision(fres["forgetting"], "fail", "pass")
            rec["forgetting_dir"] = str(fo)
            rec["forgetting_verdict"] = fres["forgetting"].get("verdict")
            if not rec["constraint"]["passed"]:
                rec.update(state=FAILED_GATE, reason="failed the forgetting gate: " +
                           "; ".join(rec["constraint"]["reasons"]))
                return _finish(rec, steps, t0)
        rec["state"] = COMPLETE
    except Exception as e:
        log.exception("trial %d (%s) failed", number, h)
        rec.update(state=ERROR, reason=f"{type(e).__name__}: {e}")
    return _finish(rec, steps, t0)


def _finish(rec: dict[str, Any], steps: _Steps, t0: float) -> dict[str, Any]:
    rec["steps"] = {"ran": list(steps.ran), "reused": list(steps.reused)}
    rec["seconds"] = round(time.perf_counter() - t0, 1)
    write_json(Path(rec["dir"]) / "record.json", rec)
    return rec
