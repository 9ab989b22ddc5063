"""What a search's trials add up to: each trial's domain gain and general change with paired bootstrap 95%
CIs, the Pareto front over the two, the chosen trial and why every other one lost (results.json's `trials`).

Apart from the driver (`search.py`) because it only reads what the trials wrote (their held-out outputs and
forgetting predictions); it runs no step and can be checked on synthetic trials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tuneforge.pipeline.config import PipelineConfig
from tuneforge.pipeline.search_config import SearchSpec
from tuneforge.pipeline.search_trial import COMPLETE, PRUNED

if TYPE_CHECKING:
    from tuneforge.pipeline.run import _Steps


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


def summarize(cfg: PipelineConfig, spec: SearchSpec, plan: Any, build: dict[str, Any], base_eval: dict[str, Any],
              base_eo: str, records: list[dict[str, Any]], steps: _Steps, study: Any) -> dict[str, Any]:
    """results.json's content (`final` is filled in by the driver once it has linked the chosen model)."""
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
    pareto(trials)
    for t in trials:
        t["chosen"] = t is chosen
        t["why"] = why(t, chosen, metric)
    ran = steps.ran + [s for t in records for s in (t.get("steps") or {}).get("ran", [])]
    reused = steps.reused + [s for t in records for s in (t.get("steps") or {}).get("reused", [])]
    return {"pipeline": cfg.name, "kind": "search",
            "search": {**spec.model_dump(mode="json"), "budget": spec.budget(),
                       "sampler_used": type(study.sampler).__name__, "objective_metric": metric},
            "build": build, "base": {"heldout": base_eval.get("heldout"), "dir": base_eo},
            "trials": trials, "chosen": None if chosen is None else
            {"number": chosen["number"], "hash": chosen["hash"], "params": chosen["params"]},
            "final": None, "steps": {"ran": ran, "reused": reused}}


def pareto(trials: list[dict[str, Any]]) -> None:
    """Mark the trials no other trial beats on both domain gain and general change (pruned ones have no
    domain number and are left out)."""
    pts = [(t, t["domain"]["gain"], t["general"]["change"]) for t in trials
           if (t.get("domain") or {}).get("gain") is not None and (t.get("general") or {}).get("change") is not None]
    for t, d, g in pts:
        t["pareto"] = not any((d2 >= d and g2 >= g) and (d2 > d or g2 > g) for _, d2, g2 in pts)


def why(t: dict[str, Any], chosen: dict[str, Any] | None, metric: str) -> str:
    """The line the report gives a trial: why it was chosen, or why not."""
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
