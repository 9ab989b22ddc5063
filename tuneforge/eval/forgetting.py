"""The forgetting check: the tuned model's benchmark answers paired with its base's, question by question.

Apart from `runner.py` (one model's evaluation) because it is a second job built on it: two evaluations, the
paired statistics, the gate's inputs, and reuse of a base evaluation already on disk.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_json, write_jsonl
from tuneforge.common.lineage import eval_lineage, fingerprint
from tuneforge.eval.config import EvalConfig, SuiteConfig, check_model_paths, check_paths, load_config
from tuneforge.eval.progress import message
from tuneforge.eval.runner import Progress, run_eval
from tuneforge.eval.stats import (
    FORGETTING,
    IMPROVED,
    INCONCLUSIVE,
    NO_CHANGE,
    compare_paired,
    holm,
    inconclusive_note,
)


def _flips(base_rows: dict[str, dict], tuned_rows: dict[str, dict], uids: list[str]) -> list[dict]:
    return [{"uid": u, "subject": base_rows[u]["subject"], "answer": base_rows[u]["answer"],
             "base": base_rows[u]["pred"], "tuned": tuned_rows[u]["pred"]}
            for u in uids if base_rows[u]["correct"] and not tuned_rows[u]["correct"]]


def _group_compare(b: dict, t: dict, uids: list[str], key: str, kw: dict) -> dict[str, dict]:
    """Per subject or category: paired comparison with Holm-adjusted p-values (within the suite)."""
    groups = sorted({b[u][key] for u in uids})
    if not groups:
        return {}
    raw = {}
    for g in groups:
        gu = [u for u in uids if b[u][key] == g]
        raw[g] = ([b[u]["correct"] for u in gu], [t[u]["correct"] for u in gu])
    p = {g: compare_paired(*raw[g], **{**kw, "power": None}).p_value for g in groups}
    adj = dict(zip(groups, holm([p[g] for g in groups]), strict=True))
    out = {}
    for g in groups:
        r = compare_paired(*raw[g], **kw, p_value=adj[g]).as_dict()
        r["p_raw"] = round(p[g], 4)
        r["p_holm"] = round(adj[g], 4)
        if r["verdict"] == INCONCLUSIVE:
            r["note"] = inconclusive_note(r)
        out[g] = r
    return out


def forgetting_block(base: dict, tuned: dict, base_rows: list[dict], tuned_rows: list[dict],
                     fc: Any, tiers: dict[str, str] | None = None) -> dict:
    """Per suite, category and subject: delta, bootstrap CI, McNemar p (Holm across a suite's categories
    and subjects), the minimum detectable effect, verdict and the flipped questions; suites grouped in
    gate tiers (`critical`, `supporting`, `advisory`) with their own tolerances."""
    tiers = tiers or {}
    power = getattr(fc, "power", 0.8)
    suites: dict[str, Any] = {}
    for name in tuned["suites"]:
        b = {r["uid"]: r for r in base_rows if r["suite"] == name and r["correct"] is not None}
        t = {r["uid"]: r for r in tuned_rows if r["suite"] == name and r["correct"] is not None}
        uids = sorted(set(b) & set(t))
        if not uids:
            continue
        tier = tiers.get(name, "critical")
        tol = fc.tier_tolerance(tier) if hasattr(fc, "tier_tolerance") else fc.tolerance
        kw = {"tolerance": tol, "alpha": fc.alpha, "iters": fc.bootstrap, "seed": fc.seed, "power": power}
        overall = compare_paired([b[u]["correct"] for u in uids], [t[u]["correct"] for u in uids], **kw).as_dict()
        if overall["verdict"] == INCONCLUSIVE:
            overall["note"] = inconclusive_note(overall)
        kw_groups = {**kw, "iters": min(fc.bootstrap, 2000)}
        suites[name] = {**overall, "tier": tier,
                        "gates": fc.tier_gates(tier) if hasattr(fc, "tier_gates") else True,
                        "categories": _group_compare(b, t, uids, "category", kw_groups),
                        "subjects": _group_compare(b, t, uids, "subject", kw_groups),
                        "flips": _flips(b, t, uids)}
    gating = [s["verdict"] for s in suites.values() if s["gates"]]
    verdicts = [s["verdict"] for s in suites.values()]
    overall_verdict = (FORGETTING if FORGETTING in gating else INCONCLUSIVE if INCONCLUSIVE in gating
                       else IMPROVED if IMPROVED in verdicts else NO_CHANGE)
    tier_block = {}
    for tier in ("critical", "supporting", "advisory"):
        names = [n for n, s in suites.items() if s["tier"] == tier]
        if not names:
            continue
        tv = [suites[n]["verdict"] for n in names]
        tier_block[tier] = {"suites": names, "tolerance": suites[names[0]]["tolerance"],
                            "gates": suites[names[0]]["gates"],
                            "verdict": next((v for v in (FORGETTING, INCONCLUSIVE, IMPROVED) if v in tv), NO_CHANGE)}
    block: dict[str, Any] = {
        "base": base["model"], "base_adapter": base.get("adapter"), "tolerance": fc.tolerance, "alpha": fc.alpha,
        "power": power, "bootstrap": fc.bootstrap, "suites": suites, "tiers": tier_block,
        "mde": {n: s["mde"] for n, s in suites.items()},
        "verdict": overall_verdict,
    }
    if "perplexity" in base and "perplexity" in tuned:
        bp, tp = base["perplexity"]["perplexity"], tuned["perplexity"]["perplexity"]
        change = 100.0 * (tp - bp) / bp
        block["perplexity"] = {"base": bp, "tuned": tp, "change_pct": round(change, 2),
                               "tolerance_pct": fc.perplexity_tolerance_pct,
                               "verdict": FORGETTING if change > fc.perplexity_tolerance_pct else NO_CHANGE}
    return block


def forgetting_eval_config(config: str | Path | dict | EvalConfig | None = None, suites: list[str] | None = None,
                           **overrides: Any) -> EvalConfig:
    """The evaluation both sides of a forgetting check run: the general suites, perplexity on (its default
    corpus unless set), held-out generation only when a judge compares it."""
    cfg = load_config(config, **overrides)
    if suites:
        cfg.suites = [SuiteConfig(benchmark=s) for s in suites]
    if not cfg.suites:
        raise TuneforgeError("forgetting needs general suites: --suites ceval,cmmlu or `suites:` in the config")
    if cfg.perplexity is None:
        from tuneforge.eval.config import PerplexityConfig

        cfg.perplexity = PerplexityConfig()
    if cfg.judge is None:
        cfg.heldout = None  # held-out generation only feeds the judge here
    return cfg


def _without_thresholds(config: dict) -> dict:
    """A dumped eval config minus the forgetting thresholds: they only read an evaluation's outputs."""
    return {k: v for k, v in config.items() if k != "forgetting"}


def evaluated_config(cfg: EvalConfig, model: str) -> dict:
    """What decides an evaluation's outputs: the config with its model, minus the forgetting thresholds."""
    return _without_thresholds(load_config(cfg, model=model, adapter=None).model_dump(mode="json"))


def _reusable_base(folder: Path, cfg: EvalConfig, base: str) -> dict | None:
    """The base model's finished evaluation in `folder` when it ran exactly this config; else None."""
    try:
        res = json.loads((folder / "results.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    done = _without_thresholds(res.get("config") or {})
    if done != evaluated_config(cfg, base) or not (folder / "predictions.jsonl").is_file():
        return None
    if fingerprint(res.get("lineage") or {"model": []}) != fingerprint(eval_lineage(base, None)):
        return None  # the same path now holds other weights
    return res


def run_forgetting(base: str, tuned: str | None = None, *, out: str | Path, adapter: str | None = None,
                   config: str | Path | dict | EvalConfig | None = None, suites: list[str] | None = None,
                   progress: Progress = None, base_eval: str | Path | None = None, **overrides: Any) -> dict:
    """Evaluate base and tuned on the same questions; results.json gets the `forgetting` block and verdict.

    `base_eval`: a folder for the base model's side, shared by many checks of one base (a search's trials):
    when it already holds the base's evaluation under this same config it is read, not run again; else the
    base is evaluated into it. Without it the base is evaluated into OUT/base every time (its weights may
    have changed under the same path)."""
    if tuned is None and adapter is None:
        raise TuneforgeError("forgetting needs --tuned MODEL and/or --adapter PATH")
    cfg = forgetting_eval_config(config, suites, **overrides)
    check_model_paths(base, None)
    check_model_paths(tuned or base, adapter)  # both sides, before the base's evaluation runs
    check_paths(cfg)
    out = Path(out)
    base_dir = Path(base_eval) if base_eval is not None else out / "base"
    base_res = _reusable_base(base_dir, cfg, base) if base_eval is not None else None
    if base_res is None:
        message(progress, f"base: {base}")
        base_res = run_eval(cfg, out=base_dir, model=base, report=False, progress=progress)
    else:
        message(progress, f"base: {base} (its evaluation in {base_dir} reused)")
    message(progress, f"tuned: {tuned or base} + {adapter or 'no adapter'}")
    tuned_res = run_eval(cfg, out=out / "tuned", model=tuned or base, adapter=adapter, report=False,
                         progress=progress)
    from tuneforge.common.io import read_jsonl

    base_rows, tuned_rows = read_jsonl(base_dir / "predictions.jsonl"), read_jsonl(out / "tuned" / "predictions.jsonl")
    results = dict(tuned_res)
    results["base_eval"] = str(base_dir)
    results["base_lineage"] = base_res.get("lineage")
    tiers = {n: s.get("tier", "critical") for n, s in tuned_res["suites"].items()}
    results["forgetting"] = forgetting_block(base_res, tuned_res, base_rows, tuned_rows, cfg.forgetting, tiers)
    results["base_suites"] = base_res["suites"]
    if "perplexity" in base_res:
        results["base_perplexity"] = base_res["perplexity"]
    if cfg.judge is not None and cfg.heldout is not None:
        from tuneforge.eval.judge import judge_win_rate

        results["judge"] = judge_win_rate(read_jsonl(base_dir / "heldout_outputs.jsonl"),
                                          read_jsonl(out / "tuned" / "heldout_outputs.jsonl"), cfg.judge,
                                          progress=progress)
        results["base_heldout"] = {k: v for k, v in base_res.get("heldout", {}).items() if k != "examples"}
    write_json(out / "results.json", results)
    write_jsonl(out / "predictions.jsonl", tuned_rows)
    from tuneforge.eval.report import write_reports

    write_reports(out, results, tuned_rows)
    return results
