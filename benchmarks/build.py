"""Data-build throughput: tuneforge's ingest → clean → split → publish on a synthetic 200k-record corpus,
against a plain `json.loads` + `random.shuffle` + write baseline, each in its own subprocess (so peak RSS
is each one's own), in the same run.

    .venv/bin/python benchmarks/build.py [--records 200000] [--shared ../shared/corpora]

The corpus is real records (alpaca_zh, oaast_sft_zh, ruozhiba from ../shared/corpora) repeated with
variation: every copy gets a distinct suffix, so exact dedup keeps them all and near-dup work is real.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_md import write_section  # benchmarks/ is on sys.path when a script runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def make_corpus(shared: Path, n: int, path: Path) -> None:
    base = []
    for rel in ("llamafactory/alpaca_zh_demo.json", "chatglm-efficient-tuning/oaast_sft_zh.json",
                "chinese-llama-alpaca-3/ruozhiba_qa2449_gpt4o.json"):
        base += json.loads((shared / rel).read_text(encoding="utf-8"))
    rng = random.Random(0)
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = dict(base[i % len(base)])
            r["instruction"] = f"{r['instruction']}（第{i}问，编号{rng.randrange(10**9)}）"
            f.write(json.dumps(r, ensure_ascii=False) + "\n")


def baseline(corpus: Path, out: Path) -> int:
    rows = [json.loads(line) for line in corpus.read_text(encoding="utf-8").splitlines()]
    random.Random(0).shuffle(rows)
    n = len(rows)
    cuts = {"train": rows[: int(0.8 * n)], "validation": rows[int(0.8 * n): int(0.9 * n)], "test": rows[int(0.9 * n):]}
    out.mkdir(parents=True, exist_ok=True)
    for name, part in cuts.items():
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for r in part:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    return n


def tuneforge_build(corpus: Path, out: Path, near: bool) -> int:
    import yaml

    recipe = out.parent / "bench_recipe.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "bench", "sources": [{"name": "synthetic", "path": str(corpus), "format": "alpaca"}],
        "clean": {"dedup": {"near": near}}, "formats": ["openai", "alpaca"], "card": {"tokenizer": None}},
        allow_unicode=True), encoding="utf-8")
    from tuneforge.clean import run_clean
    from tuneforge.ingest import ingest
    from tuneforge.publish import BuildInputs, publish, split_records
    from tuneforge.recipe import load_recipe

    r, base = load_recipe(recipe)
    ing = ingest(r.sources, base)
    cl = run_clean(ing.records, r.clean, recipe_dir=base, num_proc=os.cpu_count() or 1)
    sp = split_records(cl.kept, r.split, r.seed, cl.clusters)
    m = publish(out, BuildInputs(recipe=r, recipe_path=recipe, seed=r.seed, ingested=ing.records, records=cl.kept,
                                 rejects=ing.rejects + cl.rejects, source_stats=ing.sources, inputs=ing.inputs,
                                 split=sp, stage_counts={"clean": cl.counts}))
    return m["counts"]["input"]


def child(which: str, corpus: str, out: str) -> None:
    t = time.perf_counter()
    if which == "baseline":
        n = baseline(Path(corpus), Path(out))
    else:
        n = tuneforge_build(Path(corpus), Path(out), near=which == "tuneforge+near")
    dt = time.perf_counter() - t
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"which": which, "records": n, "seconds": dt, "peak_mb": peak_mb}))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "corpora")
    ap.add_argument("--child", nargs=3)
    args = ap.parse_args()
    if args.child:
        child(*args.child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        corpus = Path(tmp) / "corpus.jsonl"
        make_corpus(args.shared, args.records, corpus)
        results = {}
        for which in ("baseline", "tuneforge", "tuneforge+near"):
            proc = subprocess.run([sys.executable, __file__, "--child", which, str(corpus), str(Path(tmp) / which)],
                                  capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode:
                sys.exit(proc.stderr[-4000:])
            results[which] = json.loads(proc.stdout.strip().splitlines()[-1])
    b = results["baseline"]
    rows = []
    for which, r in results.items():
        rps = r["records"] / r["seconds"]
        rows.append((which, r["records"], r["seconds"], rps, r["peak_mb"], rps / (b["records"] / b["seconds"]),
                     r["peak_mb"] / b["peak_mb"]))
    head = "| run | records | seconds | records/s | peak RSS MB | speed vs baseline | memory vs baseline |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|"]
    lines += [f"| {w} | {n:,} | {s:.1f} | {rps:,.0f} | {mb:,.0f} | {sr:.2f}x | {mr:.2f}x |"
              for w, n, s, rps, mb, sr, mr in rows]
    table = "\n".join(lines)
    print(table)
    section = (f"## build\n\n`benchmarks/build.py --records {args.records}` (synthetic corpus of real alpaca_zh, "
               "oaast_sft_zh and ruozhiba records repeated with variation; each run in its own subprocess on this "
               "2-core machine; `tuneforge` = ingest → clean (normalise, filters, exact dedup) → split → publish "
               "(Arrow datasets + openai/alpaca exports + manifest + card, no tokenizer); `tuneforge+near` adds "
               "MinHash near-duplicate removal; baseline = json.loads + random.shuffle + write 3 JSONL files).\n\n"
               f"{table}\n")
    write_section(HERE / "RESULTS.md", "build", section)


if __name__ == "__main__":
    main()
