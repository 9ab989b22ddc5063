"""Check `run_eval` itself on CUDA with its defaults: float32 vs the bf16 default (whole prompts + fp32
re-scoring of close calls), per-question agreement and questions/s, and generate mode on full C-Eval val.

    python3 benchmarks/eval_runner_check.py --gguf DIR --ceval DIR --json OUT.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gguf", required=True)
    ap.add_argument("--ceval", required=True)
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    from eval import _model_from_gguf

    from tuneforge.common.io import read_jsonl
    from tuneforge.eval import run_eval

    path = _model_from_gguf(Path(args.gguf))
    common = {"batch_size": 64, "max_batch_tokens": 65536, "suites": [{"benchmark": f"ceval:{args.ceval}"}]}
    out: dict = {}
    runs = {}
    for name, extra in (("float32", {"dtype": "float32"}), ("bf16 default", {}), ("bf16 default again", {})):
        res = run_eval({**common, **extra}, out=f"/tmp/run-{len(runs)}", model=path, report=False)
        runs[name] = {r["uid"]: r for r in read_jsonl(Path(f"/tmp/run-{len(runs)}") / "predictions.jsonl")}
        out[name] = {"timing": res["timing"], "accuracy": res["suites"]["ceval"]["accuracy"]}
        print(name, res["timing"], flush=True)
    ref = runs["float32"]
    for name in ("bf16 default", "bf16 default again"):
        agree = sum(runs[name][u]["pred"] == ref[u]["pred"] for u in ref)
        out[name]["agreement_vs_float32"] = round(100 * agree / len(ref), 2)
        out[name]["agree"] = agree
    gen = run_eval({"mode": "generate", "generation": {"batch_size": 128},
                    "suites": [{"benchmark": f"ceval:{args.ceval}", "shots": 0}]}, out="/tmp/gen", model=path,
                   report=False)
    s = gen["suites"]["ceval"]
    out["generate 0-shot answer-only"] = {"timing": gen["timing"], "accuracy": s["accuracy"],
                                          "unextracted": s["unextracted"], "extraction": s["extraction"]}
    print(json.dumps(out, indent=1))
    Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
