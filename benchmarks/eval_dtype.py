"""Benchmark: the native engine's half-precision GPU default vs float32 and lm-eval, held out of sample.

One process, the embedded SmolLM2-135M-Instruct (its GGUF, de-quantized), 5-shot, in this order:

1. C-Eval val (where the default was chosen): native float32 with the prefix cache (the reference and the speed
   baseline); raw half-precision runs on the fused prefix path (bf16 with a bf16 residual stream, bf16 and fp16
   with a float32 residual stream) and their errors against float32, in the re-score rule's units
   (u |h| max|w_a - w_b|) and in steps of the dtype at the largest letter logit (the older rule's unit); what a
   rule calibrated on the first N questions with safety S would re-score and miss on each raw run; then the
   defaults (`tuneforge eval` on CUDA: float32 residual stream, self-calibrating re-score rule, float32 alone once
   half precision stops paying) in bf16 and fp16, timed, and lm-eval in bf16.
2. CMMLU test and MMLU val (never used to choose anything): the same runs.
3. A larger shape with random weights (a Qwen2-1.5B configuration, SmolLM2's tokenizer) on C-Eval val: speed,
   and whether the self-calibrating rule keeps float32's answers on weights it was not chosen on.

    python3 benchmarks/eval_dtype.py --gguf DIR --ceval DIR --cmmlu DIR --mmlu DIR --large --json OUT.json
    .venv/bin/python benchmarks/eval_dtype.py --update-md OUT.json     # the RESULTS.md section
    .venv/bin/python benchmarks/eval_dtype.py --device cpu --model-dir DIR --limit 2 --subjects-max 2 ...  # dry run

On the lent GPU (64 MiB per call) the 98 MB GGUF goes in two parts over two consecutive calls: the first
carries part 0 (44,000,000 bytes) and the wheels (lm_eval 0.4.13, datasets, dill, multiprocess, gguf, ...;
`pip download --no-deps --only-binary=:all: --python-version 3.12 --platform manylinux_2_28_x86_64 ...`) and
copies them to /tmp; the second, on the still-warm machine, carries part 1, the sha256, the code and the three
corpora, and runs this.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

DEV = "cuda"
LIMIT: int | None = None
SECTION = "Evaluation: native engine in bf16 vs float32, and vs lm-eval"


def _sync() -> None:
    import torch

    if DEV.startswith("cuda"):
        torch.cuda.synchronize()


def native_run(model, tok, suite, shots, *, warm, batch_size, max_batch_tokens, fused=None, rescore=None,
               residual=None, calibrate=0, sizes=False) -> dict:
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.runner import RESCORE_SAFETY

    def engine():
        return NativeEngine(model, tok, DEV, batch_size=batch_size, max_batch_tokens=max_batch_tokens,
                            fused_prefix=fused, rescore_model=rescore, residual_fp32=residual, calibrate=calibrate,
                            safety=RESCORE_SAFETY)

    w = engine()  # warm-up on its own engine: the timed one starts its calibration and its weighing fresh
    w.score_subject(warm, warm.subjects[0], shots, 4)
    if w.rescore is not None:
        w.rescore.score_subject(warm, warm.subjects[0], shots, 4)
    _sync()
    eng = engine()
    if sizes:
        eng.record_sizes = {}
    t0 = time.perf_counter()
    rows = eng.score_suite(suite, shots, LIMIT)
    _sync()
    return {"rows": rows, "seconds": time.perf_counter() - t0, "stats": dict(eng.stats), **eng.describe(),
            **({"sizes": eng.record_sizes} if sizes else {})}


def errors(ref: list[dict], run: dict, dtype: str) -> tuple[list[float], list[float]]:
    """Per question, the largest error of (l_a - l_b) over b (a = the half-precision answer), in the rule's
    units (u |h| max|w_a - w_b|) and in steps of the dtype at the largest letter logit; a flip needs it to reach
    the half-precision top-two margin."""
    from tuneforge.eval.precision import ulp, unit_roundoff

    a = {r["uid"]: r["logits"] for r in ref}
    rel, steps = [], []
    for r in run["rows"]:
        h, f = r["logits"], a[r["uid"]]
        top = max(range(len(h)), key=lambda j: h[j])
        e = max(abs((h[top] - h[b]) - (f[top] - f[b])) for b in range(len(h)))
        rel.append(e / (unit_roundoff(dtype) * run["sizes"][r["uid"]]))
        steps.append(e / ulp(max(abs(x) for x in h), dtype))
    return rel, steps


def agreement(ref: list[dict], rows: list[dict]) -> dict:
    a = {r["uid"]: r["pred"] for r in ref}
    flips = [r["uid"] for r in rows if r["pred"] != a[r["uid"]]]
    return {"compared": len(rows), "flips": len(flips), "agreement": round(100 * (len(rows) - len(flips)) / len(rows), 3),
            "flip_uids": flips[:50]}


def online_rule(ref: list[dict], run: dict, dtype: str, calibrate: int, safety: float) -> dict:
    """What the self-calibrating rule would do on a raw run, question by question in scoring order: the first
    `calibrate` and every flagged question take float32's answer and show their error; the others keep theirs."""
    from tuneforge.eval.precision import RescoreRule

    a = {r["uid"]: r for r in ref}
    rule = RescoreRule(dtype, calibrate=calibrate, safety=safety)
    rescored = missed = 0
    for i, r in enumerate(run["rows"]):
        lg = [*r["logits"], run["sizes"][r["uid"]]]
        n = len(r["logits"])
        if i < calibrate or rule.flagged(lg, n):
            rule.observe(lg, a[r["uid"]]["logits"], n)
            rescored += 1
        else:
            missed += r["pred"] != a[r["uid"]]["pred"]
    return {"calibrate": calibrate, "safety": safety, "rescored": rescored, "missed": missed,
            "share": round(100 * rescored / max(1, len(run["rows"])), 1)}


def summary(run: dict, n: int, ref: list[dict] | None) -> dict:
    out = {k: v for k, v in run.items() if k not in ("rows", "sizes")}
    out["seconds"] = round(run["seconds"], 3)
    out["qps"] = round(n / run["seconds"], 2)
    if ref is not None:
        out.update(agreement(ref, run["rows"]))
    return out


def lm_eval_run(model, tok, suite, warm, shots, bs, work: Path) -> dict:
    from tuneforge.eval.lmeval import run_lm_eval

    run_lm_eval(model, [warm], k=shots, limit=2, workdir=work / f"warm-{bs}", device=DEV, batch_size=bs,
                tokenizer=tok)
    _sync()
    t0 = time.perf_counter()
    rows, _ = run_lm_eval(model, [suite], k=shots, limit=LIMIT, workdir=work / f"run-{time.time_ns()}", device=DEV,
                          batch_size=bs, tokenizer=tok)
    _sync()
    return {"rows": rows, "seconds": time.perf_counter() - t0, "stats": {"batch_size": bs}, "dtype": str(model.dtype)}


def extraction_outputs(model, tok, shared: dict[str, str], per_subject: int, n_subjects: int) -> list[dict]:
    from tuneforge.eval.generate import GenerativeEngine
    from tuneforge.eval.suites import load_suite

    # the model's own chat template through transformers (what `tuneforge.templates`' "tokenizer" renders)
    def render(msgs: list[dict]) -> str:
        return tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)

    stops = [tok.eos_token]
    rows = []
    variants = [(False, 1, 32, None), (True, 0, 256, None), (False, 0, 48, "请回答。"), (False, 0, 48, "Answer briefly.")]
    for spec in (f"ceval:{shared['ceval']}", f"mmlu:{shared['mmlu']}"):
        suite = load_suite(spec)
        suite.subjects = suite.subjects[:n_subjects]
        for cot, shots, max_new, instr in variants:
            if instr and (("请" in instr) != spec.startswith("ceval")):
                continue
            gen = SimpleNamespace(cot=cot, instruction=instr, max_new_tokens=max_new, batch_size=64, stop=None,
                                  do_sample=False, temperature=1.0, top_p=1.0, seed=0)
            eng = GenerativeEngine(model, tok, DEV, gen=gen, render=render, stops=stops)
            for r in eng.score_suite(suite, shots, per_subject, cot):
                it = next(i for i in suite.items(r["subject"]) if i.uid == r["uid"])
                rows.append({"suite": suite.name, "subject": r["subject"], "uid": r["uid"],
                             "variant": f"{'cot' if cot else 'answer-only'}-{shots}shot" + ("-brief" if instr else ""),
                             "question": it.question, "options": list(it.options), "gold": it.answer,
                             "output": r["output"]})
    return rows


def _suite(spec: str, args) -> tuple:
    from tuneforge.eval.suites import load_suite

    suite = load_suite(spec)
    if args.subjects_max:
        suite.subjects = suite.subjects[: args.subjects_max]
    warm = load_suite(spec, subjects=[suite.subjects[0]])
    return suite, warm, sum(len(suite.items(s, LIMIT)) for s in suite.subjects)


def _dump(res: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(res, indent=1))


RAW = (("bfloat16", "bfloat16, bf16 residual", False), ("bfloat16", "bfloat16, fp32 residual", True),
       ("float16", "float16, fp32 residual", True))
ONLINE = ((16, 2.0), (32, 2.0), (64, 2.0), (32, 1.5), (32, 3.0))  # (calibrate, safety) tried offline on raw runs


def _set_runs(models: dict, tok, suite, warm, n: int, args, *, label: str, lm_eval: bool, work: Path) -> dict:
    """The reference, the raw half-precision runs with their errors and the offline rule table, the two timed
    defaults and (optionally) lm-eval bf16 on one set."""
    from tuneforge.eval.runner import RESCORE_CALIBRATE

    kw = {"batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens, "warm": warm}
    s: dict = {"questions": n, "subjects": len(suite.subjects), "runs": {}, "raw": {}}
    ref_run = native_run(models["float32"], tok, suite, args.shots, **kw)
    ref = ref_run["rows"]
    s["runs"]["native fp32, prefix cache"] = summary(ref_run, n, None)
    if any(r["correct"] is not None for r in ref):
        s["accuracy_fp32"] = round(100 * sum(bool(r["correct"]) for r in ref) / n, 2)
    print(label, "fp32", s["runs"]["native fp32, prefix cache"]["qps"], flush=True)
    for dt, name, residual in RAW:
        raw = native_run(models[dt], tok, suite, args.shots, fused=True, residual=residual, sizes=True, **kw)
        rel, steps = errors(ref, raw, dt)
        s["runs"][f"native {name}, fused prefix, no re-scoring"] = summary(raw, n, ref)
        s["raw"][name] = {"max_error_rel": round(max(rel), 4), "p99_error_rel": round(sorted(rel)[int(0.99 * (len(rel) - 1))], 4),
                          "max_error_steps": round(max(steps), 4),
                          "first_32_max_error_rel": round(max(rel[:32]), 4),
                          "online": [online_rule(ref, raw, dt, c, sf) for c, sf in ONLINE]}
        print(label, name, "raw", s["runs"][f"native {name}, fused prefix, no re-scoring"]["qps"], s["raw"][name],
              flush=True)
    for dt in ("bfloat16", "float16"):
        d = native_run(models[dt], tok, suite, args.shots, rescore=models["float32"], calibrate=RESCORE_CALIBRATE, **kw)
        s["runs"][f"native {dt} default"] = summary(d, n, ref)
        print(label, dt, "default", s["runs"][f"native {dt} default"], flush=True)
    if lm_eval:
        s["runs"]["lm-eval bf16"] = summary(lm_eval_run(models["bfloat16"], tok, suite, warm, args.shots,
                                                         args.lm_eval_batch, work), n, ref)
        print(label, "lm-eval bf16", s["runs"]["lm-eval bf16"]["qps"], flush=True)
    return s


def run(args: argparse.Namespace) -> dict:
    import torch
    from eval import embedded_models

    from tuneforge.eval.runner import RESCORE_CALIBRATE, RESCORE_SAFETY

    tok, models = embedded_models(args.gguf, args.model_dir, ("float32", "bfloat16", "float16"), DEV)
    from results_md import commit  # type: ignore[import-not-found]

    res: dict = {"commit": commit(REPO),
                 "device": torch.cuda.get_device_name(0) if DEV.startswith("cuda") else "cpu",
                 "torch": torch.__version__, "model": "SmolLM2-135M-Instruct (embedded GGUF, de-quantized)",
                 "shots": args.shots, "batch_size": args.batch_size, "max_batch_tokens": args.max_batch_tokens,
                 "calibrate": RESCORE_CALIBRATE, "safety": RESCORE_SAFETY, "sets": {}}
    if args.extraction_out:  # the raw material of tests/data/extraction_outputs.jsonl
        t0 = time.perf_counter()
        ex = extraction_outputs(models["bfloat16"], tok, {"ceval": args.ceval, "mmlu": args.mmlu}, args.per_subject,
                                args.extraction_subjects)
        Path(args.extraction_out).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ex),
                                             encoding="utf-8")
        res["extraction_outputs"] = {"rows": len(ex), "seconds": round(time.perf_counter() - t0, 2)}
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    for label, spec in (("C-Eval val", f"ceval:{args.ceval}"), ("CMMLU test", f"cmmlu:{args.cmmlu}"),
                        ("MMLU val", f"mmlu:{args.mmlu}")):
        suite, warm, n = _suite(spec, args)
        res["sets"][label] = _set_runs(models, tok, suite, warm, n, args, label=label,
                                       lm_eval=label != "CMMLU test" and not args.no_lm_eval, work=work)
        _dump(res, args.json)
    if args.large:
        del models
        res["large"] = large_shape(args, tok)
        _dump(res, args.json)
    return res


def large_models(dims: str, tok, dev: str) -> dict:
    """A Qwen2-shaped model (`dims`: hidden,mlp,layers,heads,kv_heads) with random weights from seed 0, the same
    weights in float32, bf16 and fp16, on `dev`; SmolLM2's tokenizer."""
    import torch
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(0)
    hidden, mlp, layers, heads, kv = (int(x) for x in dims.split(","))
    cfg = Qwen2Config(vocab_size=len(tok), hidden_size=hidden, intermediate_size=mlp, num_hidden_layers=layers,
                      num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=32768,
                      tie_word_embeddings=True, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                      pad_token_id=tok.pad_token_id, attn_implementation="sdpa")
    with torch.device(dev):
        m32 = Qwen2ForCausalLM(cfg).eval()
    return {"float32": m32, "bfloat16": copy.deepcopy(m32).to(torch.bfloat16).eval(),
            "float16": copy.deepcopy(m32).to(torch.float16).eval()}


def large_shape(args, tok) -> dict:
    """A Qwen2-1.5B-shaped model with random weights (the same weights in float32, bf16 and fp16) on C-Eval val."""
    models = large_models(args.large_dims, tok, DEV)
    m32 = models["float32"]
    hidden, mlp, layers, heads, kv = (int(x) for x in args.large_dims.split(","))
    suite, warm, n = _suite(f"ceval:{args.ceval}", args)
    if args.large_subjects:
        suite.subjects = suite.subjects[: args.large_subjects]
        n = sum(len(suite.items(s, LIMIT)) for s in suite.subjects)
    out = _set_runs(models, tok, suite, warm, n, args, label="large", lm_eval=not args.no_lm_eval,
                    work=Path(tempfile.mkdtemp(prefix="bench-eval-large-")))
    out["config"] = (f"Qwen2-1.5B-like shape (hidden {hidden}, {layers} layers, {heads} heads / {kv} KV heads, "
                     f"MLP {mlp}), random weights, SmolLM2 tokenizer")
    out["params"] = sum(p.numel() for p in m32.parameters())
    return out


def table(s: dict) -> str:
    runs = s["runs"]
    fp32 = runs["native fp32, prefix cache"]["qps"]
    lm = runs.get("lm-eval bf16", {}).get("qps")
    lines = ["| run | q/s | vs float32 engine | vs lm-eval bf16 | agreement with float32 | flips | re-scored | "
             "float32 prefix shared | float32 alone after |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in runs.items():
        ag = f"{r['agreement']}% ({r['compared'] - r['flips']}/{r['compared']})" if "agreement" in r else "—"
        vs_lm = f"{r['qps'] / lm:.2f}x" if lm else "—"
        switched = r.get("float32_direct_after")
        lines.append(f"| {name} | {r['qps']} | {r['qps'] / fp32:.2f}x | {vs_lm} | {ag} | {r.get('flips', '—')} | "
                     f"{r['stats'].get('rescored', 0)} | {r['stats'].get('shared_prefixes', '—')} | "
                     f"{'—' if switched is None else f'{switched} questions'} |")
    return "\n".join(lines)


def raw_table(s: dict) -> str:
    lines = ["| raw run | largest error (rule units) | 99th pct | largest in the first 32 | largest (steps at max logit) | "
             + " | ".join(f"calibrate {c}, safety {sf:g}: re-scored / missed" for c, sf in ONLINE) + " |",
             "|---|---:|---:|---:|---:|" + "---:|" * len(ONLINE)]
    for name, r in s["raw"].items():
        lines.append(f"| {name} | {r['max_error_rel']} | {r['p99_error_rel']} | {r['first_32_max_error_rel']} | "
                     f"{r['max_error_steps']} | " + " | ".join(f"{o['share']}% / {o['missed']}" for o in r["online"])
                     + " |")
    return "\n".join(lines)


def notes(res: dict) -> str:
    """What the figures say, read off `res` (a re-run rewrites them)."""
    sets = dict(res["sets"])
    if "large" in res:
        sets["random-weight 1.5B shape"] = res["large"]
    out = []
    for label, s in sets.items():
        f32 = s["runs"]["native fp32, prefix cache"]["qps"]
        for dt in ("bfloat16", "float16"):
            d = s["runs"][f"native {dt} default"]
            lm = s["runs"].get("lm-eval bf16", {}).get("qps")
            out.append(f"{label}, {dt} default: {d['agreement']}% agreement, {d['qps'] / f32:.2f}x the float32 engine"
                       + (f", {d['qps'] / lm:.2f}x lm-eval bf16" if lm else "")
                       + f", {d['stats']['rescored']} of {d['compared']} re-scored"
                       + (f", float32 alone after {d['float32_direct_after']} questions" if d.get("float32_direct_after")
                          else "") + ".")
    for dt in ("bfloat16", "float16"):
        met = [label for label, s in sets.items() if _meets(s, dt)]
        out.append(f"{dt} default against the targets (>= 1.5x the float32 engine, >= 3x lm-eval bf16 where it ran): "
                   f"met on {len(met)} of {len(sets)}" + (f" ({', '.join(met)})" if met else "") + ".")
    return "\n".join(f"- {x}" for x in out)


def _meets(s: dict, dt: str) -> bool:
    runs = s["runs"]
    d, f32, lm = runs[f"native {dt} default"], runs["native fp32, prefix cache"]["qps"], runs.get("lm-eval bf16")
    return d["qps"] >= 1.5 * f32 and (lm is None or d["qps"] >= 3 * lm["qps"])


def flips_text(sets: dict, noise_file: str | None) -> str:
    """Where the defaults' flips came from: the rule applied offline to the same raw runs (calibrate and safety
    as in the default) against the flips of the timed runs, and float32 against itself at other batch sizes."""
    from tuneforge.eval.runner import RESCORE_CALIBRATE, RESCORE_SAFETY

    lines = []
    for label, s in sets.items():
        for dt, raw in (("bfloat16", "bfloat16, fp32 residual"), ("float16", "float16, fp32 residual")):
            d = s["runs"][f"native {dt} default"]
            if not d["flips"]:
                continue
            off = next(o for o in s["raw"][raw]["online"]
                       if (o["calibrate"], o["safety"]) == (RESCORE_CALIBRATE, RESCORE_SAFETY))
            lines.append(f"{label}, {dt} default: flipped {', '.join(d['flip_uids'])}; the same rule applied offline "
                         f"to the raw run, with float32's reference answers for what it flags, missed {off['missed']}")
    text = "Flips. " + ("; ".join(lines) + "." if lines else "none.")
    if noise_file:
        noise = json.loads((REPO / noise_file).read_text())
        text += " Float32 against float32 (the reference engine at other batch sizes): " + "; ".join(
            f"{k}: {v['flips']} flips" + (f" ({', '.join(v['uids'])}, float32 margins "
                                           f"{', '.join(str(m) for m in v.get('margins', []))})" if v["flips"] else "")
            for k, v in noise.items()) + "."
    return text


def update_md(files: list[str]) -> None:
    from results_md import write_section  # type: ignore[import-not-found]

    res = json.loads(Path(files[0]).read_text())
    body = [f"## {SECTION}\n",
            f"`benchmarks/eval_dtype.py` on one {res['device']} (torch {res['torch']}), {res['model']}, "
            f"{res['shots']}-shot, every run in one process on the same loaded weights, each after an untimed "
            f"warm-up; native batches {res['batch_size']} rows / {res['max_batch_tokens']:,} tokens. Agreement = the "
            "same predicted letter as the native engine in float32 with the prefix cache (the reference). The "
            "default in half precision on CUDA (`tuneforge eval`): weights, matrix products and attention in half "
            "precision, the residual stream, norms and RoPE in float32; questions attend to the subject's cached "
            "prefix through one fused SDPA call (lower-right causal, FlashAttention); the first "
            f"{res['calibrate']} questions are scored both ways and every question whose top-two margin is under "
            f"{res['safety']:g} x the largest error seen so far (in units of u |h| max|w_a - w_b|) is re-scored in "
            "float32; once most subjects get re-scored, a subject's float32 prefix runs first and serves both "
            "passes (the column `float32 prefix shared` counts those subjects); once half precision plus "
            "re-scoring costs more than float32 alone would, the rest of the run is scored in float32. Every engine "
            "tokenizes the next subject while the model runs this one. The calibration size and safety were chosen "
            "on C-Eval val (the offline table there); CMMLU test, MMLU val and the random-weight shape are out of "
            f"sample. Code: commit {res.get('commit', 'unrecorded')}.\n"]
    sets = dict(res["sets"])
    if "large" in res:
        sets[f"Larger shape: {res['large']['config']}, {res['large']['params'] / 1e9:.2f} B parameters, C-Eval val"] = \
            res["large"]
    for label, s in sets.items():
        body.append(f"### {label} ({s['questions']:,} questions, {s['subjects']} subjects"
                    f"{', where the rule was chosen' if label == 'C-Eval val' else ', out of sample'})\n")
        body.append(table(s) + "\n")
        body.append("Raw half-precision runs against float32, and what the self-calibrating rule would re-score and "
                    "miss on them (offline, in scoring order)" + (f"; accuracy (float32): {s['accuracy_fp32']}" if
                                                                  "accuracy_fp32" in s else "") + ":\n")
        body.append(raw_table(s) + "\n")
    body.append(notes(res) + "\n")
    body.append(flips_text(sets, files[1] if len(files) > 1 else None) + "\n")
    body.append("Command: `python3 benchmarks/eval_dtype.py --gguf DIR --ceval DIR --cmmlu DIR --mmlu DIR --large "
                "--large-subjects 20 --json OUT` (Python 3.12, the built wheel's dependencies); raw figures: "
                "`benchmarks/results/eval-dtype-h100.json`" + (f", `{files[1]}`" if len(files) > 1 else "") + ".\n")
    text = "\n".join(body)
    write_section(REPO / "benchmarks" / "RESULTS.md", SECTION, text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf")
    ap.add_argument("--ceval")
    ap.add_argument("--cmmlu")
    ap.add_argument("--mmlu")
    ap.add_argument("--subjects-max", type=int, help="first N subjects of each set (a dry run)")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-batch-tokens", type=int, default=65536)
    ap.add_argument("--lm-eval-batch", type=int, default=64)
    ap.add_argument("--no-lm-eval", action="store_true")
    ap.add_argument("--large", action="store_true", help="also the Qwen2-1.5B-shaped random model (speed)")
    ap.add_argument("--large-subjects", type=int)
    ap.add_argument("--large-dims", default="1536,8960,28,12,2", help="hidden,mlp,layers,heads,kv_heads")
    ap.add_argument("--extraction-out", help="also write SmolLM2's generate-mode outputs here")
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--extraction-subjects", type=int, default=20)
    ap.add_argument("--json")
    ap.add_argument("--update-md", nargs="+")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model-dir", help="a transformers folder instead of --gguf (a dry run on CPU)")
    ap.add_argument("--limit", type=int, help="first N questions per subject (a dry run)")
    args = ap.parse_args()
    global DEV, LIMIT
    DEV, LIMIT = args.device, args.limit
    if args.update_md:
        update_md(args.update_md)
        return
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    res = run(args)
    for label, s in res["sets"].items():
        print(label)
        print(table(s))
    if "large" in res:
        print(table(res["large"]))
    _dump(res, args.json)


if __name__ == "__main__":
    main()
