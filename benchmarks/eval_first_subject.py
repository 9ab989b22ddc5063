"""Agreement of the half-precision default with float32 on one set's first subjects, where the self-calibrating
re-score rule starts (its first 32 questions calibrate it): CPU or GPU, the native engine, 5-shot.

    .venv/bin/python benchmarks/eval_first_subject.py cmmlu:../shared/corpora/cmmlu agronomy

Prints the float32 reference's time, then the default's (bf16 with a float32 twin, calibrate 32, safety 2): how
many questions it re-scored and which answers differ from float32's.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from tuneforge.common.models import load_causal_lm, load_tokenizer
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.runner import RESCORE_CALIBRATE, RESCORE_SAFETY
    from tuneforge.eval.suites import load_suite

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", help="e.g. cmmlu:DIR")
    ap.add_argument("subjects", help="comma-separated")
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--dtype", default="bfloat16")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=16)
    a = ap.parse_args()
    suite = load_suite(a.suite, subjects=a.subjects.split(","))
    tok = load_tokenizer(a.model)
    m32 = load_causal_lm(a.model, dtype=torch.float32, device=a.device)
    half = load_causal_lm(a.model, dtype=getattr(torch, a.dtype), device=a.device)
    t = time.perf_counter()
    ref = {r["uid"]: r["pred"] for r in NativeEngine(m32, tok, a.device, batch_size=a.batch_size)
           .score_suite(suite, a.shots)}
    print(f"float32: {len(ref)} questions in {time.perf_counter() - t:.1f} s")
    eng = NativeEngine(half, tok, a.device, batch_size=a.batch_size, rescore_model=m32, calibrate=RESCORE_CALIBRATE,
                       safety=RESCORE_SAFETY)
    t = time.perf_counter()
    rows = eng.score_suite(suite, a.shots)
    flips = [r["uid"] for r in rows if r["pred"] != ref[r["uid"]]]
    print(f"{a.dtype} default: {time.perf_counter() - t:.1f} s, re-scored {eng.stats['rescored']}, "
          f"agreement {len(rows) - len(flips)}/{len(rows)}, flips {flips}")


if __name__ == "__main__":
    main()
