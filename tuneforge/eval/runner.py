"""`run_eval` and `run_forgetting`: the public entry points the CLI and the Prefect flows call."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_json, write_jsonl
from tuneforge.eval.config import EvalConfig, SuiteConfig, load_config
from tuneforge.eval.models import LoadedModel, load_for_eval, pick_device
from tuneforge.eval.scoring import submission, summarize
from tuneforge.eval.stats import FORGETTING, IMPROVED, NO_CHANGE, compare_paired
from tuneforge.eval.suites import Suite, load_suite

Progress = Callable[[str], None] | None


def _suites(cfg: EvalConfig) -> list[tuple[SuiteConfig, Suite]]:
    out, names = [], set()
    for sc in cfg.suites:
        suite = load_suite(sc.benchmark, subjects=sc.subjects, split=sc.split, columns=sc.columns, style=sc.style,
                           strict_subjects=sc.strict_subjects)
        if sc.name:
            suite.name = sc.name
        if suite.name in names:
            raise TuneforgeError(f"two suites named {suite.name!r}; give one a `name:`")
        names.add(suite.name)
        out.append((sc, suite))
    return out


def _score_mcq(cfg: EvalConfig, lm: LoadedModel | None, out: Path, progress: Progress) -> tuple[list[dict], dict]:
    suites = _suites(cfg)
    rows: list[dict] = []
    timing: dict[str, Any] = {"engine": cfg.engine, "questions": 0, "seconds": 0.0}
    if cfg.engine == "lm-eval":
        from tuneforge.common.models import resolve_model
        from tuneforge.eval.lmeval import run_lm_eval

        for sc, suite in suites:
            r, st = run_lm_eval(resolve_model(cfg.model), [suite], k=sc.shots if suite.shots_split else 0,
                                limit=sc.limit, workdir=out,
                                adapter=cfg.adapter, device=pick_device(cfg.device), dtype=cfg.dtype,
                                batch_size=cfg.batch_size, chat=cfg.chat)
            for row in r:
                row["suite"] = suite.name
            rows += r
            timing["questions"] += st["questions"]
            timing["seconds"] += st["seconds"]
    else:
        from tuneforge.eval.native import NativeEngine
        from tuneforge.eval.prompts import chat_renderer

        assert lm is not None
        chat = chat_renderer(lm.tokenizer, cfg.chat_template) if cfg.chat else None
        eng = NativeEngine(lm.model, lm.tokenizer, lm.device, batch_size=cfg.batch_size,
                           max_batch_tokens=cfg.max_batch_tokens, chat=chat)
        for sc, suite in suites:
            rows += eng.score_suite(suite, sc.shots, sc.limit, progress)
        timing.update({k: eng.stats[k] for k in ("questions", "seconds", "forward_tokens", "cached_tokens")})
    timing["questions_per_s"] = round(timing["questions"] / timing["seconds"], 3) if timing["seconds"] else None
    timing["seconds"] = round(timing["seconds"], 3)
    layouts = {s.name: (s, sc) for sc, s in suites}
    summary = {}
    for name, (suite, sc) in layouts.items():
        srows = [r for r in rows if r["suite"] == name]
        summary[name] = {**summarize(srows, suite.bench.layout), "split": suite.split,
                         "shots": sc.shots if suite.shots_split else 0,
                         "layout": suite.bench.layout, "limit": sc.limit}
        if suite.split == "test" and suite.bench.layout == "ceval":
            write_json(out / f"submission_{name}.json", submission(srows))
            summary[name]["submission"] = f"submission_{name}.json"
    return rows, {"suites": summary, "timing": timing}


def run_eval(config: str | Path | dict | EvalConfig | None = None, *, out: str | Path, model: str | None = None,
             adapter: str | None = None, progress: Progress = None, report: bool = True,
             **overrides: Any) -> dict:
    """Evaluate one model on the configured suites (and held-out data, perplexity); writes results.json,
    predictions.jsonl, report.html and report.md under `out`, and returns the results dict."""
    cfg = load_config(config, model=model, adapter=adapter, **overrides)
    if not cfg.model:
        raise TuneforgeError("no model: pass --model (embedded:smollm2, a local folder or a hub id)")
    if not cfg.suites and not cfg.heldout and not cfg.perplexity:
        raise TuneforgeError("nothing to evaluate: name suites (--benchmark) or held-out data in the config")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    needs_model = cfg.engine == "native" or cfg.heldout or cfg.perplexity
    lm = load_for_eval(cfg.model, cfg.adapter, cfg.device, cfg.dtype) if needs_model else None
    results: dict[str, Any] = {"model": cfg.model, "adapter": cfg.adapter, "engine": cfg.engine, "suites": {}}
    rows: list[dict] = []
    if cfg.suites:
        rows, mcq = _score_mcq(cfg, lm, out, progress)
        results.update(mcq)
        write_jsonl(out / "predictions.jsonl", rows)
    if cfg.perplexity:
        from tuneforge.eval.perplexity import load_texts, perplexity

        assert lm is not None
        pc = cfg.perplexity
        results["perplexity"] = {**perplexity(lm.model, lm.tokenizer, load_texts(pc.corpus, pc.limit), lm.device,
                                              pc.max_length), "corpus": pc.corpus or "shipped general_text"}
    if cfg.heldout:
        from tuneforge.eval.heldout import run_heldout

        assert lm is not None
        results["heldout"] = run_heldout(lm, cfg.heldout, out)
    results["config"] = cfg.model_dump(mode="json")
    results["seconds"] = round(time.perf_counter() - t0, 2)
    write_json(out / "results.json", results)
    if report:
        from tuneforge.eval.report import write_reports

        write_reports(out, results, rows)
    return results


def _flips(base_rows: dict[str, dict], tuned_rows: dict[str, dict], uids: list[str]) -> list[dict]:
    return [{"uid": u, "subject": base_rows[u]["subject"], "answer": base_rows[u]["answer"],
             "base": base_rows[u]["pred"], "tuned": tuned_rows[u]["pred"]}
            for u in uids if base_rows[u]["correct"] and not tuned_rows[u]["correct"]]


def forgetting_block(base: dict, tuned: dict, base_rows: list[dict], tuned_rows: list[dict],
                     fc: Any) -> dict:
    """Per suite and category: delta, bootstrap CI, McNemar p, verdict and the flipped questions."""
    suites: dict[str, Any] = {}
    for name in tuned["suites"]:
        b = {r["uid"]: r for r in base_rows if r["suite"] == name and r["correct"] is not None}
        t = {r["uid"]: r for r in tuned_rows if r["suite"] == name and r["correct"] is not None}
        uids = sorted(set(b) & set(t))
        if not uids:
            continue
        kw = {"tolerance": fc.tolerance, "alpha": fc.alpha, "iters": fc.bootstrap, "seed": fc.seed}
        overall = compare_paired([b[u]["correct"] for u in uids], [t[u]["correct"] for u in uids], **kw)
        cats = {}
        for cat in sorted({b[u]["category"] for u in uids}):
            cu = [u for u in uids if b[u]["category"] == cat]
            cats[cat] = compare_paired([b[u]["correct"] for u in cu], [t[u]["correct"] for u in cu], **kw).as_dict()
        suites[name] = {**overall.as_dict(), "categories": cats, "flips": _flips(b, t, uids)}
    verdicts = [s["verdict"] for s in suites.values()]
    block: dict[str, Any] = {
        "base": base["model"], "base_adapter": base.get("adapter"), "tolerance": fc.tolerance, "alpha": fc.alpha,
        "bootstrap": fc.bootstrap, "suites": suites,
        "verdict": FORGETTING if FORGETTING in verdicts else IMPROVED if IMPROVED in verdicts else NO_CHANGE,
    }
    if "perplexity" in base and "perplexity" in tuned:
        bp, tp = base["perplexity"]["perplexity"], tuned["perplexity"]["perplexity"]
        change = 100.0 * (tp - bp) / bp
        block["perplexity"] = {"base": bp, "tuned": tp, "change_pct": round(change, 2),
                               "tolerance_pct": fc.perplexity_tolerance_pct,
                               "verdict": FORGETTING if change > fc.perplexity_tolerance_pct else NO_CHANGE}
    return block


def run_forgetting(base: str, tuned: str | None = None, *, out: str | Path, adapter: str | None = None,
                   config: str | Path | dict | EvalConfig | None = None, suites: list[str] | None = None,
                   progress: Progress = None, **overrides: Any) -> dict:
    """Evaluate base and tuned on the same questions; results.json gets the `forgetting` block and verdict."""
    if tuned is None and adapter is None:
        raise TuneforgeError("forgetting needs --tuned MODEL and/or --adapter PATH")
    cfg = load_config(config, **overrides)
    if suites:
        cfg.suites = [SuiteConfig(benchmark=s) for s in suites]
    if not cfg.suites:
        raise TuneforgeError("forgetting needs general suites: --suites ceval,cmmlu or `suites:` in the config")
    if cfg.perplexity is None:
        from tuneforge.eval.config import PerplexityConfig

        cfg.perplexity = PerplexityConfig()
    cfg.heldout = None
    out = Path(out)
    if progress:
        progress(f"base: {base}")
    base_res = run_eval(cfg, out=out / "base", model=base, report=False, progress=progress)
    if progress:
        progress(f"tuned: {tuned or base} + {adapter or 'no adapter'}")
    tuned_res = run_eval(cfg, out=out / "tuned", model=tuned or base, adapter=adapter, report=False,
                         progress=progress)
    from tuneforge.common.io import read_jsonl

    base_rows, tuned_rows = read_jsonl(out / "base" / "predictions.jsonl"), read_jsonl(out / "tuned" / "predictions.jsonl")
    results = dict(tuned_res)
    results["forgetting"] = forgetting_block(base_res, tuned_res, base_rows, tuned_rows, cfg.forgetting)
    results["base_suites"] = base_res["suites"]
    if "perplexity" in base_res:
        results["base_perplexity"] = base_res["perplexity"]
    write_json(out / "results.json", results)
    write_jsonl(out / "predictions.jsonl", tuned_rows)
    from tuneforge.eval.report import write_reports

    write_reports(out, results, tuned_rows)
    return results
