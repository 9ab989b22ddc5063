"""Benchmark: what the GPU evaluation default costs the GPU itself, apart from the host's overhead (#38).

On the embedded SmolLM2-135M-Instruct the GPU mostly waits on Python (`eval_profile.py`: one bf16 subject, 91 ms
of CPU for 20 ms of GPU), so a wall-clock ratio mixes two things: how much work the default gives the GPU, and
how many kernel launches the host issues for it. This script separates them. Each run goes twice in one process:
once timed (wall seconds, as `eval_dtype.py` times it), once under torch.profiler with CUDA activity only, whose
kernel durations summed are the run's device seconds. Per set it reports:

- wall ratio: the float32 engine's wall seconds over the run's (the figure `eval_dtype.py` reports);
- device ratio: the float32 engine's device seconds over the run's: the ratio if neither run paid any host
  overhead, which is the most any launch-side change (CUDA graphs, compilation, fused kernels for the same
  arithmetic) could give while the run does the same GPU work;
- today's float32 engine over the run's device seconds: the most the run could reach against the float32 engine
  as it is, if only the run lost its host overhead.

Runs: the float32 engine (prefix cache), the raw bf16 pass (fused prefix, float32 residual, no re-scoring), and
the bf16 and fp16 defaults (`tuneforge eval` on CUDA: self-calibrating re-score rule, float32 twin). Sets:
C-Eval val, MMLU val, CMMLU test, and a Qwen2-1.5B-shaped model with random weights on C-Eval val.

    python3 benchmarks/eval_floor.py --gguf DIR --sets ceval:DIR,mmlu:DIR --json A.json
    python3 benchmarks/eval_floor.py --gguf DIR --sets cmmlu:DIR --subjects-max 10 --large ceval:DIR \
        --large-subjects 10 --json B.json          # each within one 10-minute device call (profiling is slow)
    .venv/bin/python benchmarks/eval_floor.py --update-md A.json B.json        # the RESULTS.md section
    .venv/bin/python benchmarks/eval_floor.py --device cpu --model-dir DIR --sets ceval:DIR --subjects-max 2 --limit 2
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

SECTION = "Evaluation: the GPU work of the default, apart from host overhead"
FP32, RAW = "native fp32, prefix cache", "bf16 raw pass (fused prefix, fp32 residual, no re-scoring)"
DEFAULTS = {"bfloat16": "bf16 default", "float16": "fp16 default"}
TARGET = 1.5  # #38: the default at >= 1.5x the float32 prefix-cache engine


def measure(args: argparse.Namespace) -> dict:
    import torch

    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.runner import RESCORE_CALIBRATE, RESCORE_SAFETY
    from tuneforge.eval.suites import load_suite

    dev = args.device
    cuda = dev.startswith("cuda")

    def sync() -> None:
        if cuda:
            torch.cuda.synchronize()

    from eval import embedded_models  # type: ignore[import-not-found]

    tok, models = embedded_models(args.gguf, args.model_dir, ("float32", "bfloat16", "float16"), dev)
    kw = {"batch_size": 64, "max_batch_tokens": 65536}

    def engines(models: dict) -> dict:
        out = {FP32: lambda: NativeEngine(models["float32"], tok, dev, **kw),
               RAW: lambda: NativeEngine(models["bfloat16"], tok, dev, fused_prefix=True, **kw)}
        for dt, label in DEFAULTS.items():
            out[label] = (lambda dt=dt: NativeEngine(models[dt], tok, dev, rescore_model=models["float32"],
                                                     calibrate=RESCORE_CALIBRATE, safety=RESCORE_SAFETY, **kw))
        return out

    def timed(make, suite) -> dict:
        warm = make()  # kernels and allocator, on an engine of its own: the timed one calibrates fresh
        warm.score_subject(suite, suite.subjects[0], 5, 4)
        if warm.rescore is not None:
            warm.rescore.score_subject(suite, suite.subjects[0], 5, 4)
        sync()
        eng = make()
        t = time.perf_counter()
        rows = eng.score_suite(suite, 5, args.limit)
        sync()
        return {"questions": len(rows), "wall_s": round(time.perf_counter() - t, 3), "rescored": eng.stats["rescored"],
                "float32_direct": eng.stats["float32_direct"], "preds": [r["pred"] for r in rows]}

    def profiled(make, suite, run: dict) -> None:
        acts = [torch.profiler.ProfilerActivity.CUDA] if cuda else [torch.profiler.ProfilerActivity.CPU]
        # on a CPU dry run there is no device: its self CPU time stands in, so the arithmetic below still runs
        attr = "self_device_time_total" if cuda else "self_cpu_time_total"
        for extra in ([], [torch.profiler.ProfilerActivity.CPU] if cuda else []):  # CPU too if CUDA alone shows none
            eng = make()
            with torch.profiler.profile(activities=acts + extra) as prof:
                rows = eng.score_suite(suite, 5, args.limit)
                sync()
            ka = prof.key_averages()
            run["device_s"] = round(sum(getattr(e, attr, 0) for e in ka) / 1e6, 3)
            run["kernels"] = sum(e.count for e in ka if getattr(e, attr, 0) > 0)
            if run["device_s"] > 0:
                break
        run["same_answers_profiled"] = sum(a == r["pred"] for a, r in zip(run["preds"], rows, strict=True))

    def load(spec: str, n: int | None):
        suite = load_suite(spec)
        return load_suite(spec, subjects=suite.subjects[:n]) if n else suite

    res: dict = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                 "walls_before_profiling": True, "sets": {}}
    todo = []  # (name, models, suite)
    for spec in filter(None, (args.sets or "").split(",")):
        name = {"ceval": "C-Eval val", "mmlu": "MMLU val", "cmmlu": "CMMLU test"}.get(spec.split(":")[0], spec)
        todo.append((name + (f", first {args.subjects_max} subjects" if args.subjects_max else ""), models,
                     load(spec, args.subjects_max)))
    if args.large:
        from eval_dtype import large_models  # type: ignore[import-not-found]

        big = large_models(args.large_dims, tok, dev)
        hidden, mlp, layers = (int(x) for x in args.large_dims.split(",")[:3])
        todo.append((f"Qwen2-1.5B-like shape (hidden {hidden}, {layers} layers, MLP {mlp}), random weights, C-Eval "
                     f"val, first {args.large_subjects} subjects", big, load(args.large, args.large_subjects)))
    # Every timed pass before any profiled one: after a CUDA profiling session the process's kernel launches
    # stayed slower (the first version of this script, which alternated, timed the bf16 raw pass on C-Eval val
    # at 6.9 s against 5.3 s in a process that never profiled), so wall seconds come from an unprofiled process
    for name, mods, suite in todo:
        res["sets"][name] = {"questions": sum(len(suite.items(s, args.limit)) for s in suite.subjects),
                             "subjects": len(suite.subjects),
                             "runs": {label: timed(make, suite) for label, make in engines(mods).items()}}
        print(name, {k: v["wall_s"] for k, v in res["sets"][name]["runs"].items()}, flush=True)
    for name, mods, suite in todo:
        runs = res["sets"][name]["runs"]
        for label, make in engines(mods).items():
            profiled(make, suite, runs[label])
            print(name, label, {k: v for k, v in runs[label].items() if k != "preds"}, flush=True)
        ref = runs[FP32]["preds"]
        for r in runs.values():
            r["agreement"] = sum(a == b for a, b in zip(ref, r.pop("preds"), strict=True))
        _dump(res, args.json)
    return res


def _dump(res: dict, path: str | None) -> None:
    if path:
        Path(path).write_text(json.dumps(res, indent=1))


def ratios(s: dict) -> dict[str, dict]:
    """Per run, against the float32 engine of the same set and process: wall ratio, device ratio, and today's
    float32 engine (wall) over the run's device seconds."""
    base = s["runs"][FP32]
    return {label: {"wall": base["wall_s"] / r["wall_s"], "device": base["device_s"] / r["device_s"],
                    "fp32_wall_over_device": base["wall_s"] / r["device_s"], "busy": r["device_s"] / r["wall_s"]}
            for label, r in s["runs"].items()}


def table(s: dict, walls: bool) -> str:
    """`walls`: the wall seconds were timed before any profiling in their process (else only device figures)."""
    rs = ratios(s)
    cols = ["run"] + (["wall s"] if walls else []) + ["device s"] + (["GPU busy", "wall ratio"] if walls else []) + \
        ["device ratio"] + (["float32 wall / device"] if walls else []) + ["kernels", "scored in float32",
                                                                          "agreement with float32"]
    lines = ["| " + " | ".join(cols) + " |", "|---|" + "---:|" * (len(cols) - 1)]
    for label, r in s["runs"].items():
        x = rs[label]
        cells = [label] + ([str(r["wall_s"])] if walls else []) + [str(r["device_s"])] + \
            ([f"{100 * x['busy']:.0f} %", f"{x['wall']:.2f}x"] if walls else []) + [f"{x['device']:.2f}x"] + \
            ([f"{x['fp32_wall_over_device']:.2f}x"] if walls else []) + \
            [f"{r['kernels']:,}", _float32_text(r), f"{r['agreement']}/{r['questions']}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _float32_text(r: dict) -> str:
    if r["float32_direct"]:
        return f"{r['rescored']} re-scored + {r['float32_direct']} float32 alone"
    return str(r["rescored"])


def notes(sets: dict, walls: bool) -> list[str]:
    out = []
    for name, s in sets.items():
        rs = ratios(s)
        for label in DEFAULTS.values():
            x, r = rs[label], s["runs"][label]
            f32 = 100 * (r["rescored"] + r["float32_direct"]) / r["questions"]
            reach = "at or over" if x["device"] >= TARGET else "under"
            out.append(f"- {name}, {label}: {f32:.0f} % of the questions scored in float32; the float32 engine's GPU "
                       f"work is {x['device']:.2f}x the default's ({reach} the {TARGET}x target)"
                       + (f"; against today's float32 engine it could reach at most {x['fp32_wall_over_device']:.2f}x"
                          if walls else "") + ".")
        raw = rs[RAW]["device"]
        out.append(f"- {name}: the float32 engine's GPU work is {raw:.2f}x the raw bf16 pass's.")
    return out


def update_md(files: list[str], target: Path | None = None) -> str:
    from results_md import write_section  # type: ignore[import-not-found]

    parts = [json.loads(Path(f).read_text()) for f in files]
    head = parts[0]
    blocks, all_notes = [], []
    for p in parts:
        walls = bool(p.get("walls_before_profiling"))
        for name, s in p["sets"].items():
            blocks.append(f"### {name} ({s['questions']:,} questions, {s['subjects']} subjects)\n\n{table(s, walls)}\n")
            all_notes += notes({name: s}, walls)
    unclean = [name for p in parts if not p.get("walls_before_profiling") for name in p["sets"]]
    code = ", ".join(dict.fromkeys(str(p.get("commit", "unrecorded")) for p in parts))
    text = "\n".join([
        f"## {SECTION}\n",
        f"`benchmarks/eval_floor.py` on one {head['device']} (torch {head['torch']}), 5-shot, batches of 64 rows / "
        f"65,536 tokens, code {code}. Each run's device seconds are its kernel durations summed, under "
        "torch.profiler with CUDA activity only: the GPU's own work, whatever the host does. Device ratio = the "
        "float32 engine's device seconds over the run's (same set, same process): the ratio if neither paid any "
        "host overhead, so the most that any launch-side change (CUDA graphs, compilation, fewer launches for the "
        "same arithmetic) could give a run doing the same GPU work. GPU busy = device / wall seconds. Float32 wall "
        "/ device: the most a run could reach against today's float32 engine if only the run lost its host "
        "overhead. Scored in float32: re-scored questions, plus those scored by float32 alone once half precision "
        "stopped paying. Agreement: the same letter as the float32 engine's pass. Each process timed every pass "
        "before it profiled any"
        + (f", except for {len(unclean)} of these sets ({', '.join(unclean)}): there the script's first version "
           "timed each pass right after the previous pass's profiling, and those passes ran slower than in processes on the same machine "
           "that never profiled (the bf16 raw pass on C-Eval val: 6.9 s, against 5.3 s in `eval_ab.py`'s process "
           "two calls later), so their wall seconds are left out (wall ratios: the eval dtype section)"
           if unclean else "") + ".\n",
        *blocks, *all_notes, "",
        "Commands: `python3 benchmarks/eval_floor.py --gguf DIR --sets ceval:DIR --subjects-max 26 --json C`; "
        "`... --sets ceval:DIR,mmlu:DIR --json A`; `... --sets cmmlu:DIR --subjects-max 10 --large ceval:DIR "
        "--large-subjects 10 --json B` (Python 3.12, the built wheel's dependencies; one process each, a device "
        "call's 10 minutes allowing no more); raw figures: `benchmarks/results/eval-floor-h100-{c,a,b}.json`.\n"])
    write_section(target or REPO / "benchmarks" / "RESULTS.md", SECTION, text)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--gguf")
    ap.add_argument("--model-dir", help="a transformers folder instead of --gguf (a dry run on CPU)")
    ap.add_argument("--sets", help="suite specs, comma-separated: ceval:DIR,mmlu:DIR,cmmlu:DIR")
    ap.add_argument("--large", help="the suite spec the random-weight 1.5B shape runs on (ceval:DIR)")
    ap.add_argument("--large-dims", default="1536,8960,28,12,2", help="hidden,mlp,layers,heads,kv_heads")
    ap.add_argument("--large-subjects", type=int, default=20)
    ap.add_argument("--limit", type=int, help="first N questions per subject (a dry run)")
    ap.add_argument("--subjects-max", type=int, help="first N subjects of each set (a dry run)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--json")
    ap.add_argument("--update-md", nargs="+")
    args = ap.parse_args()
    if args.update_md:
        print(update_md(args.update_md))
        return
    from results_md import commit  # type: ignore[import-not-found]

    res = {"commit": commit(REPO), **measure(args)}
    _dump(res, args.json)
    for name, s in res["sets"].items():
        print(f"\n{name}\n{table(s, True)}")
    print("\n".join(notes(res["sets"], True)))


if __name__ == "__main__":
    main()
