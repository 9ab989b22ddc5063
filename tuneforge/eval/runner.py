"""`run_eval` and `run_forgetting`: the public entry points the CLI and the Prefect flows call."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_json, write_jsonl
from tuneforge.common.lineage import eval_lineage
from tuneforge.eval.config import EvalConfig, SuiteConfig, check_model_paths, check_paths, load_config
from tuneforge.eval.models import LoadedModel, load_for_eval, pick_device
from tuneforge.eval.progress import Counter
from tuneforge.eval.scoring import submission, summarize
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
            r, st = run_lm_eval(resolve_model(cfg.model), [suite], k=suite.effective_shots(sc.shots),
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
                    # one subject at a time (the next one's prompts tokenized meanwhile): the bar moves as they finish
                    for _subject, done in eng.iter_subjects(suite, sc.shots, sc.limit):
                        rows += done
                        bar.advance(len(done))
            timing.update({k: eng.stats[k] for k in ("forward_tokens", "cached_tokens", "rescored", "float32_direct",
                                                     "shared_prefixes")})
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
                    rows += geng.score_suite(suite, suite.effective_shots(sc.shots), sc.limit, cot,
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
                         "shots": suite.effective_shots(sc.shots),
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
