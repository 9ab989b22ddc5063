"""Benchmark: the native C-Eval engine vs lm-eval on the same model, questions and prompts.

Both engines score C-Eval val k-shot (default 5) with identical prompt text; the figure is questions/s of
each (model loading excluded: both get the same already loaded model) and their ratio, plus per-question
prediction agreement. Run on CUDA (bf16) for the GPU figure, on CPU (fp32) for the CPU one:

    .venv/bin/python benchmarks/eval.py --ceval ../shared/corpora/ceval --json runs/bench-eval-cpu.json \
        --subjects art_studies,basic_medicine,discrete_mathematics,ideological_and_moral_cultivation
    python3 benchmarks/eval.py --gguf .gguf --ceval .bench_data/ceval --json $OUT/gpu.json   # on the GPU
    .venv/bin/python benchmarks/eval.py --update-md runs/bench-eval-cpu.json gpu.json    # RESULTS.md section

`--gguf DIR` re-assembles the embedded SmolLM2 GGUF from split parts (for a machine the package can't reach).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SECTION = "## Evaluation (C-Eval, native engine vs lm-eval)"


def _model_from_gguf(parts: Path) -> str:
    """Join `smollm2.gguf.part*`, check its sha256, de-quantize once to a transformers folder."""
    import hashlib

    from transformers import AutoModelForCausalLM, AutoTokenizer

    target = Path(tempfile.gettempdir()) / "smollm2-from-gguf"
    if (target / "config.json").is_file():
        return str(target)
    gguf = Path(tempfile.gettempdir()) / "smollm2.gguf"
    with open(gguf, "wb") as f:
        for part in sorted(parts.glob("smollm2.gguf.part*")):
            f.write(part.read_bytes())
    want = (parts / "sha256").read_text().strip()
    got = hashlib.sha256(gguf.read_bytes()).hexdigest()
    if got != want:
        raise SystemExit(f"GGUF parts do not re-assemble to the original (sha256 {got} != {want})")
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    if getattr(model, "hf_quantizer", None) is not None:
        model.hf_quantizer.remove_quantization_config(model)
    model.save_pretrained(target)
    tok.save_pretrained(target)
    return str(target)


def embedded_models(gguf: str | None, model_dir: str | None, dtypes: tuple[str, ...], dev: str) -> tuple:
    """(tokenizer, {dtype: model}): the embedded SmolLM2 from a transformers folder (`model_dir`, a CPU dry run)
    or its GGUF parts (`gguf`), the same weights in each of `dtypes`, on `dev`; pads fall back to EOS."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = model_dir or _model_from_gguf(Path(gguf))
    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return tok, {dt: AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dt)).to(dev).eval()
                 for dt in dtypes}


def run(args: argparse.Namespace) -> dict:
    import torch

    from tuneforge.eval.lmeval import run_lm_eval
    from tuneforge.eval.models import load_for_eval
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.suites import load_suite

    ref = _model_from_gguf(Path(args.gguf)) if args.gguf else args.model
    lm = load_for_eval(ref, device=args.device, dtype=args.dtype)
    subjects = args.subjects.split(",") if args.subjects else None
    suite = load_suite(f"ceval:{args.ceval}", subjects=subjects)
    n = sum(len(suite.items(s, args.limit)) for s in suite.subjects)
    eng = NativeEngine(lm.model, lm.tokenizer, lm.device, batch_size=args.batch_size,
                       max_batch_tokens=args.max_batch_tokens)
    # warm-up (kernels, allocator) on one subject, not timed, for both engines
    warm = load_suite(f"ceval:{args.ceval}", subjects=[suite.subjects[0]])
    eng.score_subject(warm, warm.subjects[0], args.shots, 2)
    if lm.device.startswith("cuda"):
        torch.cuda.synchronize()
    eng.stats = {k: 0 if k != "seconds" else 0.0 for k in eng.stats}
    prof = None
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    native = eng.score_suite(suite, args.shots, args.limit)
    if lm.device.startswith("cuda"):
        torch.cuda.synchronize()
    t_native = time.perf_counter() - t0
    if prof is not None:
        import pstats

        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(args.profile)
    work = Path(tempfile.mkdtemp(prefix="bench-eval-"))
    run_lm_eval(lm.model, [warm], k=args.shots, limit=2, workdir=work / "warm", device=lm.device,
                batch_size=args.batch_size, tokenizer=lm.tokenizer)
    t0 = time.perf_counter()
    ref_rows, _ = run_lm_eval(lm.model, [suite], k=args.shots, limit=args.limit, workdir=work, device=lm.device,
                              batch_size=args.lm_eval_batch_size or args.batch_size, tokenizer=lm.tokenizer)
    t_lm = time.perf_counter() - t0
    a = {r["uid"]: r for r in native}
    b = {r["uid"]: r for r in ref_rows}
    common = sorted(set(a) & set(b))
    agree = sum(a[u]["pred"] == b[u]["pred"] for u in common)
    dev_name = torch.cuda.get_device_name(0) if lm.device.startswith("cuda") else f"CPU ({torch.get_num_threads()} threads)"
    res = {
        "device": dev_name, "dtype": str(lm.model.dtype), "model": "SmolLM2-135M-Instruct (embedded GGUF, de-quantized)",
        "questions": n, "subjects": len(suite.subjects), "shots": args.shots,
        "native_s": round(t_native, 2), "lm_eval_s": round(t_lm, 2),
        "native_qps": round(n / t_native, 2), "lm_eval_qps": round(n / t_lm, 2),
        "speedup": round(t_lm / t_native, 2), "agreement": round(100 * agree / len(common), 2),
        "agree": agree, "compared": len(common),
        "native_accuracy": round(100 * sum(bool(a[u]["correct"]) for u in common) / len(common), 2),
        "lm_eval_accuracy": round(100 * sum(bool(b[u]["correct"]) for u in common) / len(common), 2),
        "native_forward_tokens": eng.stats["forward_tokens"], "native_cached_tokens": eng.stats["cached_tokens"],
        "batch_size": args.batch_size, "lm_eval_batch_size": args.lm_eval_batch_size or args.batch_size,
    }
    return res


def table(rows: list[dict]) -> str:
    head = ("| device | dtype | questions (subjects, shots) | native q/s | lm-eval q/s | speedup (native / lm-eval) "
            "| agreement | accuracy native / lm-eval |\n|---|---|---|---|---|---|---|---|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['device']} | {r['dtype'].replace('torch.', '')} | {r['questions']} ({r['subjects']}, "
                     f"{r['shots']}-shot) | {r['native_qps']} | {r['lm_eval_qps']} | **{r['speedup']}x** | "
                     f"{r['agreement']}% ({r['agree']}/{r['compared']}) | {r['native_accuracy']} / "
                     f"{r['lm_eval_accuracy']} |")
    return "\n".join(lines)


def update_md(files: list[str]) -> None:
    rows = [json.loads(Path(f).read_text()) for f in files]
    body = (f"{SECTION}\n\n"
            "`benchmarks/eval.py`: C-Eval val, the same model (SmolLM2-135M-Instruct, the embedded GGUF "
            "de-quantized), the same prompts, scored by the native engine and by `lm_eval.simple_evaluate` "
            "(tasks generated by `tuneforge.eval.lmeval`), in one process; model loading is not timed and both "
            "engines get one untimed warm-up. Baseline = lm-eval; speedup = lm-eval time / native time; agreement "
            "= identical predicted letter per question. Target: >= 3x at >= 99% agreement (GPU).\n\n"
            f"{table(rows)}\n\n"
            "Notes. GPU rows: one H100 through the device tool, the GGUF carried in parts and re-assembled "
            "(sha256 checked); `--device cuda --batch-size 64 --max-batch-tokens 65536`, lm-eval batch 64 in bf16 "
            "and 16 in fp32 (64 ran out of memory in its full-vocabulary log_softmax). The native engine forwarded "
            "282,442 tokens; 1,222,196 prompt tokens came from the per-subject KV cache instead. fp32 meets the "
            "target (6.0x, 100% of 1,346). bf16 does not: agreement falls to 81% because lm-eval's bf16 "
            "`log_softmax` over the vocabulary rounds the letters' scores (~0.06 at these magnitudes) into ties and "
            "flips for this 135M model, whose four letter logits are close; and the native engine is slower in bf16 "
            "than in fp32 (profile: 11.9 of 19.9 s in `scaled_dot_product_attention`, the masked attention of each "
            "question over the cached prefix), so the speedup is 1.9x (the bf16 path has since changed: whole prompts on FlashAttention plus float32 re-scoring of close calls, see the next section). CPU row: this shared 2-core machine with "
            "other jobs running (load average 4-6), 20 questions of art_studies and basic_medicine, so an upper "
            "bound on time. Commands: `python3 benchmarks/eval.py --gguf DIR --ceval .bench_data/ceval --device cuda "
            "--batch-size 64 --max-batch-tokens 65536 [--dtype float32 --lm-eval-batch-size 16] --json OUT` (GPU); "
            "`.venv/bin/python benchmarks/eval.py --subjects art_studies,basic_medicine --limit 10 --batch-size 10 "
            "--json runs/bench-eval-cpu.json` (CPU).\n")
    md = REPO / "benchmarks" / "RESULTS.md"
    text = md.read_text(encoding="utf-8") if md.is_file() else "# Benchmark results\n"
    if SECTION in text:
        start = text.index(SECTION)
        nxt = text.find("\n## ", start + len(SECTION))
        text = text[:start] + body + (text[nxt + 1:] if nxt != -1 else "")
    else:
        text = text.rstrip("\n") + "\n\n" + body
    md.write_text(text, encoding="utf-8")
    print(table(rows))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--gguf", help="folder with smollm2.gguf.part* and sha256")
    ap.add_argument("--ceval", default=str(REPO.parent / "shared" / "corpora" / "ceval"))
    ap.add_argument("--subjects", help="comma-separated; default all in the folder")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--limit", type=int)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lm-eval-batch-size", type=int, help="default: --batch-size")
    ap.add_argument("--max-batch-tokens", type=int, default=8192)
    ap.add_argument("--dtype", default="auto", help="auto (bf16 on CUDA, fp32 on CPU), float32, bfloat16")
    ap.add_argument("--profile", type=int, default=0, help="print the native engine's top N functions")
    ap.add_argument("--json", help="write the figures here")
    ap.add_argument("--update-md", nargs="+", metavar="JSON", help="write these figures into RESULTS.md")
    args = ap.parse_args()
    if args.update_md:
        update_md(args.update_md)
        return
    res = run(args)
    print(table([res]))
    print(json.dumps(res))
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
