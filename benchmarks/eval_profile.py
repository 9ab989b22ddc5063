"""Benchmark: where a GPU evaluation's time goes, phase by phase, in the native engine (#38).

One process, the embedded SmolLM2-135M-Instruct (its GGUF, de-quantized), 5-shot, on each set given: the float32
engine, the raw fused bf16 pass (batch 64 and 256), float32 at batch 256, then the fp16 and bf16 defaults
(`tuneforge eval` on CUDA: float32 twin, self-calibrating re-score rule). Every engine method that does a phase
is wrapped in a timer that synchronizes the GPU on both sides, so each phase's seconds are its wall time:
rendering prompts, tokenizing, the model's forward passes (prefixes and question batches), re-scoring. Then one
subject under torch.profiler (self CPU against self CUDA time: is the GPU waiting on Python?).

    python3 benchmarks/eval_profile.py --gguf DIR --sets ceval:DIR,mmlu:DIR,cmmlu:DIR --json OUT.json
    .venv/bin/python benchmarks/eval_profile.py --update-md OUT.json    # the RESULTS.md section
    .venv/bin/python benchmarks/eval_profile.py --device cpu --model-dir DIR --sets ceval:DIR --subjects-max 2 --limit 1
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

SECTION = "Evaluation: where a GPU run's time goes"
PHASES = {"prompt": "rendering", "_encode": "tokenizing", "_run": "model forwards", "_rescore": "re-scoring"}


def profile(args: argparse.Namespace) -> dict:
    import torch
    from eval import embedded_models

    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.suites import load_suite

    dev = args.device
    spent: dict[str, float] = defaultdict(float)
    calls: dict[str, int] = defaultdict(int)

    def sync() -> None:
        if dev.startswith("cuda"):
            torch.cuda.synchronize()

    def wrap(name, fn):
        def inner(self, *a, **k):
            sync()
            t = time.perf_counter()
            try:
                return fn(self, *a, **k)
            finally:
                sync()
                spent[f"{name}[{self.dtype}]"] += time.perf_counter() - t
                calls[f"{name}[{self.dtype}]"] += 1
        return inner

    for meth in PHASES:
        setattr(NativeEngine, meth, wrap(meth, getattr(NativeEngine, meth)))
    tok, models = embedded_models(args.gguf, args.model_dir, ("float32", "bfloat16", "float16"), dev)
    res: dict = {"device": torch.cuda.get_device_name(0) if dev.startswith("cuda") else "cpu",
                 "torch": torch.__version__, "runs": {}}

    def run(label: str, eng: NativeEngine, suite) -> None:
        NativeEngine(eng.model, tok, dev).score_subject(suite, suite.subjects[0], 5, 4)  # warm-up
        spent.clear()
        calls.clear()
        sync()
        t = time.perf_counter()
        rows = eng.score_suite(suite, 5, args.limit)
        sync()
        total = time.perf_counter() - t
        res["runs"][label] = {"total": round(total, 3), "questions": len(rows),
                              "phases": {k: [round(v, 3), calls[k]] for k, v in sorted(spent.items())}}
        print(label, json.dumps(res["runs"][label]), flush=True)

    kw = {"batch_size": 64, "max_batch_tokens": 65536}
    def load(spec: str):
        suite = load_suite(spec)
        if args.subjects_max:
            suite = load_suite(spec, subjects=suite.subjects[: args.subjects_max])
        return suite

    for spec in args.sets.split(","):
        suite, name = load(spec), spec.split(":")[0]
        run(f"{name} fp32", NativeEngine(models["float32"], tok, dev, **kw), suite)
        run(f"{name} bf16 raw", NativeEngine(models["bfloat16"], tok, dev, fused_prefix=True, **kw), suite)
        run(f"{name} bf16 raw b256", NativeEngine(models["bfloat16"], tok, dev, fused_prefix=True, batch_size=256,
                                                 max_batch_tokens=262144), suite)
        run(f"{name} fp32 b256", NativeEngine(models["float32"], tok, dev, batch_size=256, max_batch_tokens=262144),
            suite)
        for dt in ("float16", "bfloat16"):
            run(f"{name} {dt} default", NativeEngine(models[dt], tok, dev, rescore_model=models["float32"],
                                                     calibrate=32, safety=2.0, **kw), suite)
    suite = load(args.sets.split(",")[0])
    subject = suite.subjects[min(1, len(suite.subjects) - 1)]  # the second: the first was the warm-up's
    for dt in ("bfloat16", "float32"):  # one subject, run twice: the second under the profiler
        eng = NativeEngine(models[dt], tok, dev, fused_prefix=dt != "float32", **kw)
        eng.score_subject(suite, subject, 5, args.limit)
        acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if dev.startswith("cuda") else [])
        with torch.profiler.profile(activities=acts) as prof:
            eng.score_subject(suite, subject, 5, args.limit)
            sync()
        ka = prof.key_averages()
        res[f"profiler {dt}"] = {"self_cpu_ms": round(sum(e.self_cpu_time_total for e in ka) / 1e3, 1),
                                 "self_device_ms": round(sum(getattr(e, "self_device_time_total", 0) for e in ka) / 1e3, 1)}
        print(dt, res[f"profiler {dt}"], flush=True)
    return res


def table(res: dict) -> str:
    lines = ["| run | seconds | vs float32 engine | " + " | ".join(f"{p} (s, calls)" for p in PHASES.values()) + " |",
             "|---|---:|---:|" + "---:|" * len(PHASES)]
    for label, r in res["runs"].items():
        base = res["runs"][label.split(" ")[0] + " fp32"]["total"]
        cells = []
        for meth in PHASES:
            hits = [(s, n) for k, (s, n) in r["phases"].items() if k.startswith(meth + "[")]
            cells.append(" + ".join(f"{s} ({n})" for s, n in hits) if hits else "—")
        lines.append(f"| {label} | {r['total']} | {base / r['total']:.2f}x | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def update_md(path: str) -> None:
    from results_md import write_section  # type: ignore[import-not-found]

    res = json.loads(Path(path).read_text())
    shares = {label: sum(s for k, (s, _) in r["phases"].items() if k.startswith("_encode[")) / r["total"]
              for label, r in res["runs"].items() if label.endswith(" fp32")}
    prof = [f"{dt}: {res[f'profiler {dt}']['self_cpu_ms']} ms of CPU for {res[f'profiler {dt}']['self_device_ms']} ms "
            "of GPU" for dt in ("bfloat16", "float32") if f"profiler {dt}" in res]
    text = "\n".join([
        f"## {SECTION}\n",
        f"`benchmarks/eval_profile.py` on one {res['device']} (torch {res['torch']}), SmolLM2-135M-Instruct, 5-shot, "
        f"code {res.get('commit', 'unrecorded')}. Each phase is the wall time of the engine methods that do it "
        "(GPU synchronized on both sides), with how many calls; model forwards include each subject's prefix, "
        "re-scoring includes its float32 forwards (also counted under model forwards, float32). Runs in this "
        "order in one process, each after a 4-question warm-up of the first subject.\n",
        table(res) + "\n",
        "- Tokenizing in the float32 engine: " + ", ".join(f"{k.split(' ')[0]} {100 * v:.0f} %" for k, v in shares.items())
        + " of the run.",
        "- One subject under torch.profiler (second pass): " + "; ".join(prof) + ".\n",
        "Command: `python3 benchmarks/eval_profile.py --gguf DIR --sets ceval:DIR,mmlu:DIR,cmmlu:DIR --json OUT` "
        "(Python 3.12, the built wheel's dependencies); raw figures: `benchmarks/results/eval-profile-h100.json`.\n"])
    write_section(REPO / "benchmarks" / "RESULTS.md", SECTION, text)
    print(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf")
    ap.add_argument("--model-dir", help="a transformers folder instead of --gguf (a dry run on CPU)")
    ap.add_argument("--sets", help="suite specs, comma-separated: ceval:DIR,mmlu:DIR,cmmlu:DIR")
    ap.add_argument("--limit", type=int, help="first N questions per subject (a dry run)")
    ap.add_argument("--subjects-max", type=int, help="first N subjects of each set (a dry run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    ap.add_argument("--update-md")
    args = ap.parse_args()
    if args.update_md:
        update_md(args.update_md)
        return
    from results_md import commit  # type: ignore[import-not-found]

    res = {"commit": commit(REPO), **profile(args)}
    if args.json:
        Path(args.json).write_text(json.dumps(res, indent=1))
    print(table(res))


if __name__ == "__main__":
    main()
