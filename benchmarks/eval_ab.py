"""Benchmark: same-process A/B runs of two native-engine choices on the GPU (#38).

1. Half precision without cuDNN's attention (the engine's choice since b204687) against with it, each first on
   shapes that engine has not seen (cuDNN builds a plan for every new shape, and every subject's prefix is a new
   length), then again warm.
2. The next subject tokenized on a thread while the model runs this one (`NativeEngine.iter_subjects`) against
   tokenizing inline (`score_subject` in a loop), float32, twice each, alternating.

One process, the embedded SmolLM2-135M-Instruct, 5-shot, batches of 64 rows / 65,536 tokens, no profiler.

    python3 benchmarks/eval_ab.py --gguf DIR --suite ceval:DIR --json OUT.json
    .venv/bin/python benchmarks/eval_ab.py --update-md OUT.json          # the RESULTS.md section
    .venv/bin/python benchmarks/eval_ab.py --device cpu --model-dir DIR --suite ceval:DIR --subjects-max 2
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SECTION = "Evaluation: A/B of cuDNN attention and tokenizing ahead"
RUNS = (("bf16 no cuDNN, fresh shapes", "bf16", False), ("bf16 cuDNN allowed, fresh cuDNN plans", "bf16", True),
        ("bf16 no cuDNN, warm", "bf16", False), ("bf16 cuDNN allowed, warm", "bf16", True),
        ("fp32 inline tokenizing", "fp32", False), ("fp32 tokenized ahead", "fp32", True),
        ("fp32 inline tokenizing (2)", "fp32", False), ("fp32 tokenized ahead (2)", "fp32", True))


def measure(args: argparse.Namespace) -> dict:
    import torch
    import torch.nn.attention as tna

    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.suites import load_suite

    dev = args.device
    from eval import embedded_models  # type: ignore[import-not-found]

    tok, models = embedded_models(args.gguf, args.model_dir, ("float32", "bfloat16"), dev)
    suite = load_suite(args.suite)
    if args.subjects_max:
        suite = load_suite(args.suite, subjects=suite.subjects[: args.subjects_max])
    kw = {"batch_size": 64, "max_batch_tokens": 65536}
    orig = tna.sdpa_kernel  # the engine's own backend list; the B side appends cuDNN to it

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def bf16(cudnn: bool) -> list[dict]:
        tna.sdpa_kernel = (lambda b: orig([*b, tna.SDPBackend.CUDNN_ATTENTION])) if cudnn else orig
        try:
            return NativeEngine(models["bfloat16"], tok, dev, fused_prefix=True, **kw).score_suite(suite, 5)
        finally:
            tna.sdpa_kernel = orig

    def fp32(ahead: bool) -> list[dict]:
        eng = NativeEngine(models["float32"], tok, dev, **kw)
        if ahead:
            return eng.score_suite(suite, 5)
        return [r for s in suite.subjects for r in eng.score_subject(suite, s, 5)]

    NativeEngine(models["bfloat16"], tok, dev, fused_prefix=True).score_subject(suite, suite.subjects[0], 5, 4)
    NativeEngine(models["float32"], tok, dev).score_subject(suite, suite.subjects[0], 5, 4)
    res: dict = {"device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
                 "torch": torch.__version__, "suite": args.suite.split(":")[0], "questions": 0, "seconds": {}}
    preds: dict[str, list[str]] = {}
    for label, kind, flag in RUNS:
        sync()
        t = time.perf_counter()
        rows = bf16(flag) if kind == "bf16" else fp32(flag)
        sync()
        res["seconds"][label] = round(time.perf_counter() - t, 3)
        res["questions"] = len(rows)
        preds[label] = [r["pred"] for r in rows]
        print(label, res["seconds"][label], flush=True)
    a, b = preds[RUNS[0][0]], preds[RUNS[1][0]]
    res["bf16_same_letter_with_and_without_cudnn"] = sum(x == y for x, y in zip(a, b, strict=True))
    c, d = preds[RUNS[4][0]], preds[RUNS[5][0]]
    res["fp32_same_letter_inline_and_ahead"] = sum(x == y for x, y in zip(c, d, strict=True))
    return res


def update_md(path: str) -> str:
    from results_md import write_section  # type: ignore[import-not-found]

    res = json.loads(Path(path).read_text())
    sec = res["seconds"]
    lines = ["| run | seconds | q/s |", "|---|---:|---:|"]
    lines += [f"| {k} | {v} | {res['questions'] / v:.1f} |" for k, v in sec.items()]
    fresh = sec[RUNS[1][0]] / sec[RUNS[0][0]]
    warm = sec[RUNS[3][0]] / sec[RUNS[2][0]]
    inline = (sec[RUNS[4][0]] + sec[RUNS[6][0]]) / (sec[RUNS[5][0]] + sec[RUNS[7][0]])
    text = "\n".join([
        f"## {SECTION}\n",
        f"`benchmarks/eval_ab.py` on one {res['device']} (torch {res['torch']}), SmolLM2-135M-Instruct, 5-shot, "
        f"{res['suite']} ({res['questions']:,} questions), batches of 64 rows / 65,536 tokens, code "
        f"{res.get('commit', 'unrecorded')}; the runs in this order in one process, no profiler.\n",
        "\n".join(lines) + "\n",
        f"- cuDNN attention allowed took {fresh:.2f}x the time without it on shapes it had not seen, and "
        f"{warm:.2f}x once warm.",
        f"- Tokenizing inline took {inline:.2f}x the time of tokenizing the next subject ahead (float32, two "
        "runs each).",
        f"- Same letter: bf16 with and without cuDNN {res['bf16_same_letter_with_and_without_cudnn']}/"
        f"{res['questions']} (raw bf16, no re-scoring: another kernel rounds differently)"
        + (f"; float32 inline and ahead {res['fp32_same_letter_inline_and_ahead']}/{res['questions']}"
           if "fp32_same_letter_inline_and_ahead" in res else "") + ".\n",
        "Command: `python3 benchmarks/eval_ab.py --gguf DIR --suite ceval:DIR --json OUT` (Python 3.12, the built "
        "wheel's dependencies); raw figures: `benchmarks/results/eval-ab-h100.json`.\n"])
    write_section(REPO / "benchmarks" / "RESULTS.md", SECTION, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf")
    ap.add_argument("--model-dir", help="a transformers folder instead of --gguf (a dry run on CPU)")
    ap.add_argument("--suite", help="ceval:DIR")
    ap.add_argument("--subjects-max", type=int, help="first N subjects (a dry run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    ap.add_argument("--update-md")
    args = ap.parse_args()
    if args.update_md:
        print(update_md(args.update_md))
        return
    from results_md import commit  # type: ignore[import-not-found]

    res = {"commit": commit(REPO), **measure(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(json.dumps(res, indent=1))


if __name__ == "__main__":
    main()
