"""`run_eval` and `run_forgetting`: the public entry points the CLI and the Prefect flows call."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_json, write_jsonl
from tuneforge.common.lineage import eval_lineage, fingerprint
from tuneforge.eval.config import EvalConfig, SuiteConfig, check_model_paths, check_paths, load_config
from tuneforge.eval.models import LoadedModel, load_for_eval, pick_device
from tuneforge.eval.progress import Counter, message
from tuneforge.eval.scoring import submission, summarize
from tuneforge.eval.stats import (
    FORGETTING,
    IMPROVED,
    INCONCLUSIVE,
    NO_CHANGE,
    compare_paired,
    holm,
    inconclusive_note,
)
from tuneforge.eval.suites import Suite, check_scorable, load_suite, suite_rejects

Progress = Callable[[str], None] | None
log = logging.getLogger("tuneforge.eval")
# per generate-mode suite and held-out run: outputs that ran out of new tokens, prompts over the model's context
GENERATION_COUNTS = ("cut_at_max_new_tokens", "over_context")
# Half precision on CUDA re-scores in float32 every question whose top-two letter margin is under SAFETY x the
# largest half-precision error seen so far (in units of u |h| max|w_a - w_b|), the rule calibrating itself on the
# first CALIBRATE questions (scored both ways) and on every re-scored one (`native.NativeEngine._settle`). Chosen on
# C-Eval val, held out on CMMLU test, MMLU val and a random-weight 1.5B shape (benchmarks/RESULTS.md, eval dtype).
RESCORE_CALIBRATE, RESCORE_SAFETY = 32, 2.0


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


def _check_suites(cfg: EvalConfig, suites: list[tuple[SuiteConfig, Suite]], out: Path) -> dict[str, int]:
    """Rows kept out of each suite go to OUT/rejects.jsonl (file, line, reason); a suite with nothing to score
    is an error. Returns rejected rows per suite."""
    rows = [r for sc, s in suites for r in suite_rejects(s, sc.shots)]
    write_jsonl(out / "rejects.jsonl", rows)
    for sc, s in suites:
        check_scorable(s, [r for r in rows if r["suite"] == s.name], limit=sc.limit, engine=cfg.engine,
                       mode=_mode(cfg, sc))
    return {s.name: sum(r["suite"] == s.name for r in rows) for _, s in suites}


def _mode(cfg: EvalConfig, sc: SuiteConfig) -> str:
    return sc.mode or cfg.mode


def _question_key(rows: list[dict]) -> str:
    """A fingerprint of which questions a suite scored (compare ranks only runs that share them)."""
    import hashlib

    return hashlib.sha256("\n".join(sorted(str(r["uid"]) for r in rows)).encode()).hexdigest()[:16]


def _n_questions(suite: Suite, limit: int | None) -> int:
    return sum(len(suite.items(s, limit)) for s in suite.subjects)


def chance_level(suite: Suite, limit: int | None) -> float | None:
    """Accuracy (%) of guessing uniformly: the mean over the scored questions of 1 / number of options."""
    opts = [len(it.options) for s in suite.subjects for it in suite.items(s, limit) if it.options]
    return round(100.0 * sum(1 / k for k in opts) / len(opts), 2) if opts else None


def _generation_template(tokenizer: Any, name: str | None) -> tuple[Callable[[list[dict]], str] | None, list[str]]:
    """The chat renderer and stop strings for generate mode; no renderer for a tokenizer without a chat
    template and no template named (the completion layout is used)."""
    if not name and not getattr(tokenizer, "chat_template", None):
        return None, [t for t in (tokenizer.eos_token,) if t]
    from tuneforge.templates import get_template

    name = name or "tokenizer"
    tpl = get_template(name, tokenizer=tokenizer) if name == "tokenizer" else get_template(name)
    render = lambda msgs: tpl.render(msgs, add_generation_prompt=True)  # noqa: E731
    return render, list(dict.fromkeys([*tpl.stop_strings, *_end_of_turn(tpl, tokenizer)]))


def _end_of_turn(tpl: Any, tokenizer: Any) -> list[str]:
    """The marker the template writes after an assistant reply (`<|im_end|>`, `<|eot_id|>`), when it is one
    of the tokenizer's special tokens: the tokenizer's EOS alone does not end a chat turn for every model."""
    probe = "tuneforge-probe-reply"
    try:
        text = tpl.render([{"role": "user", "content": "q"}, {"role": "assistant", "content": probe}])
    except Exception:
        return []
    after = text[text.find(probe) + len(probe):] if probe in text else ""
    specials = sorted((t for t in getattr(tokenizer, "all_special_tokens", []) or [] if t), key=len, reverse=True)
    specials += [t.content if hasattr(t, "content") else str(t)
                 for t in (getattr(tokenizer, "added_tokens_decoder", {}) or {}).values()]
    head = after.lstrip()
    return [next(t for t in specials if head.startswith(t))] if any(head.startswith(t) for t in specials) else []


def _score_mcq(cfg: EvalConfig, lm: LoadedModel | None, out: Path, progress: Progress,
               suites: list[tuple[SuiteConfig, Suite]] | None = None) -> tuple[list[dict], dict]:
    suites = suites if suites is not None else _suites(cfg)
    rows: list[dict] = []
    timing: dict[str, Any] = {"engine": cfg.engine, "questions": 0, "seconds": 0.0}
    if cfg.engine == "lm-eval":
        if any(_mode(cfg, sc) == "generate" for sc, _ in suites):
            raise TuneforgeError("mode: generate runs on the native engine (engine: native)")
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
        assert lm is not None
        gen_counts: dict[str, dict[str, int]] = {}
        logit_suites = [(sc, s) for sc, s in suites if _mode(cfg, sc) == "logits"]
        gen_suites = [(sc, s) for sc, s in suites if _mode(cfg, sc) == "generate"]
        if logit_suites:
            from tuneforge.eval.native import NativeEngine
            from tuneforge.eval.prompts import chat_renderer

            chat = chat_renderer(lm.tokenizer, cfg.chat_template) if cfg.chat else None
            fp32 = None
            half = str(lm.model.dtype) in ("torch.bfloat16", "torch.float16")
            margin, calibrate = cfg.rescore_margin, 0  # an explicit margin is a fixed one; 0 turns re-scoring off
            if margin is None:
                margin = 0.0
                calibrate = RESCORE_CALIBRATE if half and str(lm.device).startswith("cuda") else 0
            if (margin > 0 or calibrate > 0) and half:
                fp32 = load_for_eval(cfg.model, cfg.adapter, cfg.device, "float32").model
            eng = NativeEngine(lm.model, lm.tokenizer, lm.device, batch_size=cfg.batch_size,
                               max_batch_tokens=cfg.max_batch_tokens, chat=chat, prefix_cache=cfg.prefix_cache,
                               rescore_model=fp32, rescore_margin=margin, calibrate=calibrate,
                               safety=RESCORE_SAFETY)
            for sc, suite in logit_suites:
                with Counter(f"{suite.name} (logits)", _n_questions(suite, sc.limit), "questions",
                             progress) as bar:
                    for subject in suite.subjects:  # one subject at a time: the bar moves as they finish
                        done = eng.score_subject(suite, subject, sc.shots, sc.limit)
                        rows += done
                        bar.advance(len(done))
            timing.update({k: eng.stats[k] for k in ("forward_tokens", "cached_tokens", "rescored", "float32_direct")})
            timing.update(eng.describe())  # dtype, prefix cache, attention path, the re-scoring rule in force
            timing["questions"] += eng.stats["questions"]
            timing["seconds"] += eng.stats["seconds"]
        if gen_suites:
            from tuneforge.eval.generate import GenerativeEngine

            render, stops = _generation_template(lm.tokenizer, cfg.chat_template)
            geng = GenerativeEngine(lm.model, lm.tokenizer, lm.device, gen=cfg.generation, render=render,
                                    stops=stops)
            for sc, suite in gen_suites:
                cot = cfg.generation.cot if sc.cot is None else sc.cot
                before = {k: geng.stats.get(k, 0) for k in GENERATION_COUNTS}
                with Counter(f"{suite.name} (generate)", _n_questions(suite, sc.limit), "questions",
                             progress) as bar:
                    rows += geng.score_suite(suite, sc.shots if suite.shots_split else 0, sc.limit, cot,
                                             on_batch=bar.advance)
                gen_counts[suite.name] = {k: geng.stats.get(k, 0) - before[k] for k in GENERATION_COUNTS}
            timing["questions"] += geng.stats["questions"]
            timing["seconds"] += geng.stats["seconds"]
            timing["generate_questions"] = geng.stats["questions"]
    timing["questions_per_s"] = round(timing["questions"] / timing["seconds"], 3) if timing["seconds"] else None
    timing["seconds"] = round(timing["seconds"], 3)
    if cfg.engine != "native":
        gen_counts = {}
    layouts = {s.name: (s, sc) for sc, s in suites}
    summary = {}
    for name, (suite, sc) in layouts.items():
        srows = [r for r in rows if r["suite"] == name]
        summary[name] = {**summarize(srows, suite.bench.layout), "split": suite.split,
                         "shots": sc.shots if suite.shots_split else 0,
                         "layout": suite.bench.layout, "limit": sc.limit, "tier": sc.tier,
                         "mode": _mode(cfg, sc) if cfg.engine == "native" else "logits",
                         "questions": _question_key(srows)}
        summary[name]["chance"] = chance_level(suite, sc.limit)
        if summary[name]["mode"] == "generate":
            summary[name]["cot"] = cfg.generation.cot if sc.cot is None else sc.cot
            summary[name].update(gen_counts.get(name, {}))
        elif cfg.engine == "native":  # prompts longer than the model's context, scored but counted
            summary[name]["over_context"] = sum(1 for r in srows if r.get("over_context"))
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
    check_paths(cfg)
    check_model_paths(cfg.model, cfg.adapter)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    suites_loaded = _suites(cfg) if cfg.suites else []  # every suite file is read before the model loads
    rejects = _check_suites(cfg, suites_loaded, out)
    # Which weights are scored, checked before anything loads: an adapter on other weights is refused.
    lineage = eval_lineage(cfg.model, cfg.adapter)
    needs_model = cfg.engine == "native" or cfg.heldout or cfg.perplexity
    lm = load_for_eval(cfg.model, cfg.adapter, cfg.device, cfg.dtype) if needs_model else None
    results: dict[str, Any] = {"model": cfg.model, "adapter": cfg.adapter, "lineage": lineage, "engine": cfg.engine,
                               "suites": {}}
    rows: list[dict] = []
    if cfg.suites:
        rows, mcq = _score_mcq(cfg, lm, out, progress, suites_loaded)
        for name, block in mcq["suites"].items():  # n counts what was scored; rejected rows are apart
            block["rejected"] = rejects.get(name, 0)
        results.update(mcq)
        write_jsonl(out / "predictions.jsonl", rows)
        for name, sr in mcq["suites"].items():
            cut = "".join(f", {sr[k]} {k.replace('_', ' ')}" for k in GENERATION_COUNTS if sr.get(k))
            log.info("%s: accuracy %s on %s questions (chance %s)%s", name, sr["accuracy"], sr["n"],
                     sr.get("chance"), cut)
    if cfg.perplexity:
        from tuneforge.eval.perplexity import load_texts, perplexity

        assert lm is not None
        pc = cfg.perplexity
        texts = load_texts(pc.corpus, pc.limit)
        with Counter("perplexity", len(texts), "documents", progress) as bar:
            ppl = perplexity(lm.model, lm.tokenizer, texts, lm.device, pc.max_length, on_document=bar.advance)
        results["perplexity"] = {**ppl, "corpus": pc.corpus or "shipped general_text"}
        log.info("perplexity %s on %s tokens of %s documents (%s truncated at max_length %s, %s skipped: "
                 "under 2 tokens)", ppl["perplexity"], ppl["tokens"], ppl["documents"], ppl["truncated"],
                 pc.max_length, ppl["skipped"])
    if cfg.heldout:
        from tuneforge.eval.heldout import run_heldout

        assert lm is not None
        results["heldout"] = ho = run_heldout(lm, cfg.heldout, out, progress=progress)
        log.info("held-out: %s of %s rows generated (%s skipped: no assistant reply), %s cut at max_new_tokens "
                 "%s, %s prompts over the model's context", ho["metrics"]["n"], ho["rows"]["total"],
                 ho["rows"]["skipped"], ho["rows"]["cut_at_max_new_tokens"], cfg.heldout.max_new_tokens,
                 ho["rows"]["over_context"])
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
