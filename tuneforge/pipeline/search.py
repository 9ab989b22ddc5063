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
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.io import write_json
from tuneforge.pipeline.config import PipelineConfig, deep_merge, load_pipeline, plan_pipeline
from tuneforge.pipeline.exclude import KNOB, build_args, build_key, check_search, trial_build, with_dataset
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
from tuneforge.pipeline.search_config import INT_KNOBS, SHORTHAND, KnobRange, SearchSpec, decode, encode

log = logging.getLogger("tuneforge.search")

# (trial label, the trial as a call without arguments) -> its record: how a trial is run (a Prefect subflow).
TrialRunner = Callable[[str, Callable[[], dict[str, Any]]], dict[str, Any]]

COMPLETE, PRUNED, FAILED_GATE, ERROR = "complete", "pruned", "failed_gate", "error"


# --- knobs -> pipeline overrides -------------------------------------------------------------------------

def params_hash(params: dict[str, Any]) -> str:
    blob = json.dumps(params, sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:12]


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

def _prune_config(forgetting_config: Any, prune: dict[str, Any]) -> Any:
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
    from tuneforge.eval.runner import evaluated_config, forgetting_eval_config

    cfg = forgetting_eval_config(forgetting_config)
    key = evaluated_config(cfg, base)
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()[:12]
    return cfg, key, root / "forgetting-base" / digest


def base_eval_dir(root: Path, forgetting_config: Any, base: str) -> Path:
    """The folder a trial's forgetting check reads the base's side from."""
    return _base_side(root, forgetting_config, base)[2]


def _evaluate_base_side(steps: _Steps, root: Path, forgetting_config: Any, base: str) -> None:
    """Evaluate the base for a forgetting config once, as a cached step, before any trial needs it."""
    cfg, key, d = _base_side(root, forgetting_config, base)
    steps(f"forgetting-base/{d.name}", "evaluate", _evaluate, d / "results.json", {"config": key},
          config=cfg, out=str(d), model=base, adapter=None)


def run_trial(ctx: dict[str, Any], number: int, params: dict[str, Any], step: StepRunner | None = None) -> dict[str, Any]:
    """Train, prune-check, evaluate and forgetting-check one trial (every step cached); its record."""
    from tuneforge.eval.gate import gate_decision

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
            pcfg = _prune_config(plan.forgetting_config, ctx["prune"])
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


# --- statistics for the report ----------------------------------------------------------------------------

def _jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def domain_gain(base_dir: str, tuned_dir: str, metric: str, tokenize: str, iters: int, seed: int) -> dict[str, Any]:
    """Tuned minus base on the held-out `metric`, with a paired bootstrap 95% CI over examples."""
    import numpy as np

    from tuneforge.eval.heldout import score

    b = {r["id"]: r for r in _jsonl(Path(base_dir) / "heldout_outputs.jsonl")}
    t = {r["id"]: r for r in _jsonl(Path(tuned_dir) / "heldout_outputs.jsonl")}
    ids = sorted(set(b) & set(t))
    if not ids:
        return {"metric": metric, "n": 0}

    def corpus(rows: dict[str, dict], idx: list[str]) -> float | None:
        return score([rows[i]["output"] for i in idx], [rows[i]["reference"] for i in idx], tokenize)[metric]

    base_v, tuned_v = corpus(b, ids), corpus(t, ids)
    out: dict[str, Any] = {"metric": metric, "n": len(ids), "base": base_v, "tuned": tuned_v}
    if base_v is None or tuned_v is None:
        return out
    out["gain"] = round(tuned_v - base_v, 2)
    rng = np.random.default_rng(seed)
    if metric == "bleu4":  # corpus-level: re-score resampled corpora
        gains = []
        for _ in range(min(iters, 200)):
            idx = [ids[k] for k in rng.integers(0, len(ids), len(ids))]
            gains.append(corpus(t, idx) - corpus(b, idx))  # type: ignore[operator]
        arr = np.asarray(gains)
    else:  # a mean over examples: resample the per-example differences
        def one(rows: dict[str, dict], i: str) -> float:
            v = score([rows[i]["output"]], [rows[i]["reference"]], tokenize)[metric]
            return float(v or 0.0)

        diff = np.asarray([one(t, i) - one(b, i) for i in ids]) if metric != "exact_match" else np.asarray(
            [one(t, i) - one(b, i) for i in ids if score([b[i]["output"]], [b[i]["reference"]], tokenize)[metric]
             is not None])
        if diff.size == 0:
            return out
        arr = diff[rng.integers(0, diff.size, size=(iters, diff.size))].mean(axis=1)
    lo, hi = np.quantile(arr, [0.025, 0.975])
    out["ci"] = [round(float(lo), 2), round(float(hi), 2)]
    return out


def general_change(forgetting_dir: str, iters: int = 2000) -> dict[str, Any]:
    """Accuracy change (points) over every general question pooled, tuned vs base, with the paired bootstrap
    95% CI (`tuneforge.eval.stats`), plus each suite's own delta and CI from the forgetting block."""
    from tuneforge.eval.stats import compare_paired

    root = Path(forgetting_dir)
    res = json.loads((root / "results.json").read_text(encoding="utf-8")) if (root / "results.json").is_file() else {}
    base_dir = Path(res.get("base_eval") or root / "base")
    b = {(r["suite"], r["uid"]): r for r in _jsonl(base_dir / "predictions.jsonl") if r.get("correct") is not None}
    t = {(r["suite"], r["uid"]): r for r in _jsonl(root / "tuned" / "predictions.jsonl") if r.get("correct") is not None}
    keys = sorted(set(b) & set(t))
    out: dict[str, Any] = {"n": len(keys)}
    if keys:
        r = compare_paired([bool(b[k]["correct"]) for k in keys], [bool(t[k]["correct"]) for k in keys], iters=iters)
        out.update(change=round(r.delta, 2), ci=[round(r.ci_low, 2), round(r.ci_high, 2)], lost=r.lost,
                   gained=r.gained, p_value=round(r.p_value, 4))
    out["suites"] = {n: {k: s.get(k) for k in ("delta", "ci_low", "ci_high", "p_value", "verdict", "n")}
                     for n, s in ((res.get("forgetting") or {}).get("suites") or {}).items()}
    return out


# --- the search --------------------------------------------------------------------------------------------

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

    if isinstance(spec.grid, dict):
        return optuna.samplers.GridSampler({k: [encode(v) for v in vals] for k, vals in spec.grid.items()},
                                           seed=spec.seed)
    if spec.sampler == "random":
        return optuna.samplers.RandomSampler(seed=spec.seed)
    if hasattr(optuna.trial.Trial, "set_constraint"):  # Optuna 5: constraints are set on the trial (`_tell`)
        return optuna.samplers.TPESampler(seed=spec.seed)
    return optuna.samplers.TPESampler(seed=spec.seed, constraints_func=lambda t: t.user_attrs.get("constraint", (1.0,)))


def _previous_points(root: Path, space: dict[str, Any]) -> list[dict[str, Any]]:
    """Points an earlier search in this folder tried that still fit the space, in their order (so that a
    re-run or a widened search revisits them first, through the cache)."""
    f = root / "results.json"
    try:
        old = json.loads(f.read_text(encoding="utf-8")).get("trials") or []
    except (OSError, json.JSONDecodeError):
        return []
    return [t["params"] for t in old if isinstance(t.get("params"), dict) and _fits(t["params"], space)]


def _gpu_count() -> int:
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


_GPU: dict[str, str] = {}


def _pin_gpu(queue: Any) -> None:
    """Process-pool initializer: this worker sees one GPU."""
    os.environ["CUDA_VISIBLE_DEVICES"] = _GPU["id"] = str(queue.get())


def _run_trial_in_worker(ctx: dict[str, Any], number: int, params: dict[str, Any]) -> dict[str, Any]:
    rec = run_trial(ctx, number, params)
    rec["gpu"] = _GPU.get("id")
    return rec


def run_search(pipeline: str | Path, out: str | Path, *, overrides: dict[str, Any] | None = None,
               step: StepRunner | None = None, trial: TrialRunner | None = None,
               gpus: int | None = None) -> dict[str, Any]:
    """Run the pipeline's `search:`; returns results.json's content (every trial under `trials`, the chosen
    one under `chosen`). Raises TuneforgeError when no trial passes the forgetting gate (after writing the
    report). `step` runs each step (a Prefect task), `trial` each trial (a Prefect subflow); `gpus` overrides
    torch.cuda.device_count() (trials run concurrently, one a GPU, when it is more than one)."""
    from tuneforge.common.extras import require

    require("a pipeline search", "search", "train", "eval")
    import optuna

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
    _evaluate_base_side(steps, root, plan.forgetting_config, plan.base_model)
    if spec.prune:
        _evaluate_base_side(steps, root, _prune_config(plan.forgetting_config, spec.prune.model_dump()),
                            plan.base_model)
    replay = str((base_dir / spec.replay_dataset).resolve()) if spec.replay_dataset else None
    ctx = {"pipeline": str(Path(pipeline).resolve()), "out": str(root), "overrides": overrides or {},
           "data_sha": build["manifest_sha256"], "replay_dataset": replay,
           "prune": spec.prune.model_dump() if spec.prune else None}

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize", sampler=_sampler(spec), study_name=cfg.name)
    for p in spec.points() or []:
        study.enqueue_trial({k: encode(p.get(k)) for k in space})
    if not isinstance(spec.grid, dict):
        for p in _previous_points(root, space) if spec.knobs else []:
            study.enqueue_trial({k: encode(v) for k, v in p.items()}, skip_if_exists=True)
    budget = spec.budget()
    workers = gpus if gpus is not None else _gpu_count()
    records: list[dict[str, Any]] = []
    pool = None
    if workers > 1:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        mpc = mp.get_context("spawn")
        queue = mpc.Queue()
        for g in range(workers):
            queue.put(g)
        pool = ProcessPoolExecutor(max_workers=workers, mp_context=mpc, initializer=_pin_gpu, initargs=(queue,))
        log.info("search: %d GPUs, trials run %d at a time", workers, workers)
    try:
        while len(records) < budget:
            batch = [study.ask() for _ in range(min(max(workers, 1), budget - len(records)))]
            points = [(t.number, _suggest(t, space)) for t in batch]
            for number, params in points:
                log.info("trial %d: %s", number, params)
                trial_build(steps, plan, ctx["pipeline"], params, _build)  # here, not in two GPU workers at once
            if pool is not None:
                futures = [pool.submit(_run_trial_in_worker, ctx, n, p) for n, p in points]
                labels = [f"trial-{n}-{params_hash(p)}" for n, p in points]
                if trial is not None:  # each trial's wait is a subflow of its own (threads, so they overlap)
                    from concurrent.futures import ThreadPoolExecutor

                    with ThreadPoolExecutor(len(futures)) as tp:
                        done = list(tp.map(lambda lf: trial(lf[0], _waiter(lf[1])), zip(labels, futures, strict=True)))
                else:
                    done = [f.result() for f in futures]
            else:
                done = []
                for n, p in points:
                    one = _caller(ctx, n, p, step)
                    done.append(trial(f"trial-{n}-{params_hash(p)}", one) if trial else one())
            for t, rec in zip(batch, done, strict=True):
                _tell(study, t, rec, spec.objective.metric)
                records.append(rec)
    finally:
        if pool is not None:
            pool.shutdown()
    results = _summarize(cfg, spec, plan, build, base_eval, str(base_eo), records, steps, study)
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


def _waiter(future: Any) -> Callable[[], dict[str, Any]]:
    def trial() -> dict[str, Any]:
        return future.result()

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


def _summarize(cfg: PipelineConfig, spec: SearchSpec, plan: Any, build: dict[str, Any], base_eval: dict[str, Any],
               base_eo: str, records: list[dict[str, Any]], steps: _Steps, study: Any) -> dict[str, Any]:
    metric = spec.objective.metric
    tokenize = plan.eval_config.heldout.tokenize if plan.eval_config.heldout else "char"
    trials = []
    for rec in records:
        row: dict[str, Any] = {k: rec.get(k) for k in ("number", "hash", "params", "state", "reason", "dir",
                                                      "final", "seconds", "gpu") if rec.get(k) is not None}
        if rec.get("eval_dir"):
            row["domain"] = domain_gain(base_eo, rec["eval_dir"], metric, tokenize, spec.bootstrap, spec.seed)
        if rec.get("forgetting_dir"):
            row["general"] = general_change(rec["forgetting_dir"])
            row["general"]["from"] = "prune check" if rec.get("state") == PRUNED else "full forgetting check"
        row["gate"] = rec.get("gate")
        row["prune"] = rec.get("prune")
        row["steps"] = rec.get("steps")
        trials.append(row)
    ok = [t for t in trials if t["state"] == COMPLETE and (t.get("domain") or {}).get("tuned") is not None]
    chosen = max(ok, key=lambda t: (t["domain"]["tuned"], (t.get("general") or {}).get("change", 0.0),
                                    -t["number"])) if ok else None
    _pareto(trials)
    for t in trials:
        t["chosen"] = t is chosen
        t["why"] = _why(t, chosen, metric)
    ran = steps.ran + [s for t in records for s in (t.get("steps") or {}).get("ran", [])]
    reused = steps.reused + [s for t in records for s in (t.get("steps") or {}).get("reused", [])]
    final = None
    if chosen is not None and chosen.get("final"):
        final = _link_final(plan.root, Path(chosen["final"]))
    return {"pipeline": cfg.name, "kind": "search",
            "search": {**spec.model_dump(mode="json"), "budget": spec.budget(),
                       "sampler_used": type(study.sampler).__name__, "objective_metric": metric},
            "build": build, "base": {"heldout": base_eval.get("heldout"), "dir": base_eo},
            "trials": trials, "chosen": None if chosen is None else
            {"number": chosen["number"], "hash": chosen["hash"], "params": chosen["params"]},
            "final": final, "steps": {"ran": ran, "reused": reused}}


def _pareto(trials: list[dict[str, Any]]) -> None:
    """Mark the trials no other trial beats on both domain gain and general change (pruned ones have no
    domain number and are left out)."""
    pts = [(t, t["domain"]["gain"], t["general"]["change"]) for t in trials
           if (t.get("domain") or {}).get("gain") is not None and (t.get("general") or {}).get("change") is not None]
    for t, d, g in pts:
        t["pareto"] = not any((d2 >= d and g2 >= g) and (d2 > d or g2 > g) for _, d2, g2 in pts)


def _why(t: dict[str, Any], chosen: dict[str, Any] | None, metric: str) -> str:
    if t["state"] != COMPLETE:
        return t.get("reason") or t["state"]
    if chosen is None:
        return "no trial chosen"
    if t is chosen:
        return f"best held-out {metric} among the trials that pass the forgetting gate"
    mine, best = t["domain"].get("tuned"), chosen["domain"].get("tuned")
    if mine is None:
        return f"no held-out {metric}"
    if mine < best:
        return f"held-out {metric} {mine:g} below the chosen trial's {best:g}"
    return (f"held-out {metric} ties the chosen trial's ({best:g}); the chosen one lost less general accuracy "
            "or came first")


def _link_final(root: Path, final: Path) -> str:
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


__all__ = ["domain_gain", "general_change", "params_hash", "run_search", "run_trial", "trial_overrides"]
