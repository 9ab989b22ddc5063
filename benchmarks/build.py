"""Data-build throughput and memory as a user runs it: the `tuneforge build` CLI on one large alpaca JSONL
file, against a plain `json.loads` + `random.shuffle` + write-three-JSONL baseline run in the same process
tree on the same file. Peak RSS is the whole process tree's (the CLI and its worker processes), sampled.

    .venv/bin/python benchmarks/build.py [--records 200000 300000 1000000] [--near-records 200000] [--dask]
                                         [--repeat 2]

The corpus is real records (alpaca_zh, oaast_sft_zh, ruozhiba from ../shared/corpora) repeated with
variation: every copy gets a distinct tag, so exact dedup keeps them all. For the near-dup run, lightly
edited copies of 1% of the records are planted (a typo, punctuation, an added phrase): recall and precision
are measured on them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import re
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import psutil
import yaml
from results_md import write_section  # benchmarks/ is on sys.path when a script runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TUNEFORGE = [sys.executable, "-m", "tuneforge.cli"]


def make_corpus(shared: Path, n: int, path: Path, planted: float = 0.0) -> dict[int, int]:
    """`n` alpaca records in one JSONL file; with `planted`, that share of the lines are edited copies of
    an earlier line (at most 50k lines back). Returns {copy line: original line} (1-based)."""
    base = []
    for rel in ("llamafactory/alpaca_zh_demo.json", "chatglm-efficient-tuning/oaast_sft_zh.json",
                "chinese-llama-alpaca-3/ruozhiba_qa2449_gpt4o.json"):
        base += json.loads((shared / rel).read_text(encoding="utf-8"))
    rng = random.Random(0)
    if planted:  # distinct records (four random real sentences each), so the only near duplicates are planted
        pool = [x for r in base for x in re.split(r"(?<=[。！？!?])", r["output"]) if 12 <= len(x.strip()) <= 60]
    truth: dict[int, int] = {}
    recent: dict[int, dict] = {}  # unplanted, unused lines of the last 50k, by 0-based line
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            j = i - rng.randrange(1, 50_000)
            if planted and rng.random() < planted and j in recent and len(recent[j]["output"]) >= 150:
                src = recent.pop(j)
                out = list(src["output"])
                k = rng.randrange(len(out))
                out[k] = "的" if out[k] != "的" else "了"
                f.write(json.dumps({**src, "output": "".join(out).replace("，", ",") + "希望对你有帮助。"},
                                   ensure_ascii=False) + "\n")
                truth[i + 1] = j + 1
                continue
            if planted:
                r = {"instruction": f"{rng.choice(pool)}（第{i}问）", "input": "",
                     "output": "".join(rng.choice(pool) for _ in range(4))}
            else:
                r = dict(base[i % len(base)])
                r["instruction"] = f"{r['instruction']}（第{i}问，编号{rng.randrange(10**9)}）"
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            recent[i] = r
            recent.pop(i - 50_000, None)
    return truth


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


def measured(cmd: list[str], env: dict[str, str] | None = None) -> dict:
    """Run `cmd`; wall seconds and the peak summed RSS of it and all its descendants (sampled every 50 ms).
    Dirty pages are written out first, so that no run pays for the writeback of the one before."""
    os.sync()
    t = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    peak = [0]
    per_child: dict[int, int] = {}  # peak RSS of each descendant (a worker's share)
    done = threading.Event()

    def sample() -> None:
        try:
            p = psutil.Process(proc.pid)
        except psutil.NoSuchProcess:
            return
        while not done.is_set():
            try:
                total = p.memory_info().rss
                for c in p.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss = c.memory_info().rss
                        total += rss
                        per_child[c.pid] = max(per_child.get(c.pid, 0), rss)
                peak[0] = max(peak[0], total)
            except psutil.Error:
                pass
            time.sleep(0.05)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    done.set()
    th.join()
    if proc.returncode:
        sys.exit(f"{' '.join(cmd)} failed:\n{err[-4000:]}")
    return {"seconds": time.perf_counter() - t, "peak_mb": peak[0] / 2**20, "stdout": out, "stderr": err,
            "child_peaks_mb": sorted((v / 2**20 for v in per_child.values()), reverse=True)}


def recipe(tmp: Path, corpus: Path, near: bool) -> Path:
    p = tmp / f"recipe-{'near' if near else 'plain'}.yaml"
    p.write_text(yaml.safe_dump({
        "name": "bench", "sources": [{"name": "synthetic", "path": str(corpus), "format": "alpaca",
                                      "allow_outside": True}],
        "clean": {"dedup": {"near": near}}, "formats": ["openai", "alpaca"], "card": {"tokenizer": None}},
        allow_unicode=True), encoding="utf-8")
    return p


def tuneforge_build(rec: Path, out: Path, *extra: str) -> dict:
    r = measured([*TUNEFORGE, "build", str(rec), "--out", str(out), "--no-prefect", *extra])
    r["manifest"] = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    r["timings"] = json.loads((out / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))
    return r


def near_quality(out: Path, truth: dict[int, int]) -> dict:
    """Recall and precision of near-dup removal on the planted pairs: a planted copy must be removed as a
    duplicate; every removal that is not a planted copy counts against precision."""
    removed = {}
    with open(out / "rejects.jsonl", encoding="utf-8") as f:
        for line in f:
            r = json.loads(line)
            if r["reason"] == "deduplicated":
                removed[r["line"]] = r
    hit = sum(1 for c in truth if c in removed)
    false = sum(1 for line in removed if line not in truth)
    return {"planted": len(truth), "found": hit, "recall": hit / max(1, len(truth)),
            "removed": len(removed), "precision": (len(removed) - false) / max(1, len(removed))}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--records", type=int, nargs="+", default=[200_000, 300_000, 1_000_000])
    ap.add_argument("--near-records", type=int, default=200_000)
    ap.add_argument("--dask", action="store_true", help="also the largest build on a Dask LocalCluster, 1 and 2 workers")
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "corpora")
    ap.add_argument("--repeat", type=int, default=2, help="runs of the baseline and the build at each size "
                    "(alternately); the table keeps each one's fastest")
    args = ap.parse_args()
    rows, notes = [], []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        per_shard = None
        dask_1 = 0.0
        for n in args.records:
            corpus = tmp / f"corpus-{n}.jsonl"
            make_corpus(args.shared, n, corpus)
            mb = corpus.stat().st_size / 2**20
            base_cmd = [sys.executable, "-c", BASELINE, str(corpus), str(tmp / f"base-{n}")]
            rec, out = recipe(tmp, corpus, False), tmp / f"tf-{n}"
            b, t = _repeated(args.repeat, n, notes, functools.partial(measured, base_cmd),
                             functools.partial(tuneforge_build, rec, out), [tmp / f"base-{n}", out])
            assert t["manifest"]["counts"]["input"] == n
            rows.append((f"baseline, {n:,} records ({mb:,.0f} MB)", n, b, b))
            rows.append((f"tuneforge build, {n:,} records, near-dup off", n, t, b))
            shards = t["timings"]["timings"].get("shards") or 1
            per_shard = (t["seconds"], shards, n, os.cpu_count())
            if args.dask and n == max(args.records):
                for w in (1, 2):
                    d = tuneforge_build(recipe(tmp, corpus, False), tmp / f"dask{w}-{n}", "--runner", "dask",
                                        "--workers", str(w))
                    same = _same_bytes(tmp / f"tf-{n}", tmp / f"dask{w}-{n}")
                    rows.append((f"tuneforge build on Dask LocalCluster, {w} worker(s), {n:,} records", n, d, b))
                    biggest = ", ".join(f"{x:,.0f}" for x in d["child_peaks_mb"][:w])
                    notes.append(f"Dask {w} worker(s): {t['seconds'] / d['seconds']:.2f}x the local build's speed, "
                                 f"{(dask_1 or d['seconds']) / d['seconds']:.2f}x the 1-worker "
                                 f"Dask run; largest worker processes peaked at {biggest} MB RSS; output "
                                 f"{'byte-identical to' if same else 'DIFFERS from'} the local build.")
                    dask_1 = dask_1 or d["seconds"]
            for p in (tmp / f"tf-{n}", tmp / f"base-{n}"):
                subprocess.run(["rm", "-rf", str(p)], check=False)
            corpus.unlink()
        n = args.near_records
        corpus = tmp / f"near-{n}.jsonl"
        truth = make_corpus(args.shared, n, corpus, planted=0.01)
        b, t = _repeated(args.repeat, n, notes,
                         functools.partial(measured, [sys.executable, "-c", BASELINE, str(corpus), str(tmp / "base-near")]),
                         functools.partial(tuneforge_build, recipe(tmp, corpus, True), tmp / "tf-near"),
                         [tmp / "base-near", tmp / "tf-near"], " (near-dup on)")
        q = near_quality(tmp / "tf-near", truth)
        rows.append((f"baseline, {n:,} records", n, b, b))
        rows.append((f"tuneforge build, {n:,} records, near-dup on", n, t, b))
        notes.append(f"Near-dup on {n:,} records with {q['planted']} planted edited copies: recall "
                     f"{q['recall']:.3f} ({q['found']}/{q['planted']}), precision {q['precision']:.3f} "
                     f"({q['removed']} removed).")
    head = "| run | records/s | seconds | peak RSS MB (process tree) | speed vs baseline | memory vs baseline |"
    lines = [head, "|---|---:|---:|---:|---:|---:|"]
    for name, n, r, base in rows:
        rps, brps = n / r["seconds"], n / base["seconds"]
        lines.append(f"| {name} | {rps:,.0f} | {r['seconds']:.1f} | {r['peak_mb']:,.0f} | {rps / brps:.2f}x | "
                     f"{r['peak_mb'] / base['peak_mb']:.2f}x |")
    plain = [(n, r) for name, n, r, _ in rows if "near-dup off" in name]
    if len(plain) >= 2:
        (n0, r0), (n1, r1) = plain[0], plain[-1]
        notes.append(f"Peak RSS at {n1:,} records is {r1['peak_mb'] / r0['peak_mb']:.2f}x its {n0:,} figure.")
    if per_shard:
        secs, shards, n, cpus = per_shard
        cost = secs * cpus / shards  # core-seconds per shard, startup and global steps included
        notes.append(f"Per shard: {cost:.1f} core-seconds ({n / shards:,.0f} records a shard, {shards} shards on "
                     f"{cpus} cores, global steps included). A 100M-record build is {100e6 / (n / shards):,.0f} "
                     f"shards: at this cost, about {100e6 / (n / shards) * cost / 32 / 3600:.1f} h on 32 workers, "
                     f"if the global steps (dedup keys, split) stay the small share they are here.")
    table = "\n".join(lines)
    print(table)
    print("\n".join(notes))
    section = (f"## build\n\n`benchmarks/build.py --records {' '.join(map(str, args.records))} --near-records "
               f"{args.near_records}{' --dask' if args.dask else ''} --repeat {args.repeat}` on this machine "
               f"({os.cpu_count()} cores): "
               "the `tuneforge build` CLI (no Prefect; worker processes, one per core) on one alpaca JSONL file "
               "of real records repeated with variation (exports openai + alpaca, card without tokenizer), "
               "against json.loads + random.shuffle + three JSONL writes of the same file, each run a child of "
               "this script; peak RSS summed over each run's process tree. Every run starts after a sync (no "
               "run pays for the previous one's writeback); at each size the baseline and the build run "
               "alternately, each going first in turn, and the table keeps each one's fastest run and its highest peak RSS.\n\n"
               f"{table}\n\n" + "\n".join(f"- {x}" for x in notes) + "\n")
    write_section(HERE / "RESULTS.md", "build", section)


def _repeated(repeat: int, n: int, notes: list[str], base: Any, build: Any, outputs: list[Path],
              what: str = "") -> tuple[dict, dict]:
    """The baseline and the build `repeat` times each, alternately and each going first in turn (`outputs`:
    the baseline's and the build's folder, each removed before its own run): each one's fastest run, with its highest peak RSS; every run's seconds go into
    the notes."""
    runs: tuple[list[dict], list[dict]] = ([], [])
    for k in range(max(1, repeat)):
        pair = [(base, runs[0], outputs[0]), (build, runs[1], outputs[1])]
        # Each goes first in turn: on this shared machine a run right after another is measurably slower.
        for fn, acc, out in (pair if k % 2 == 0 else pair[::-1]):
            subprocess.run(["rm", "-rf", str(out)], check=False)  # only its own: the build's output is used after
            acc.append(fn())
    best = []
    for acc in runs:
        r = dict(min(acc, key=lambda x: x["seconds"]))
        r["peak_mb"] = max(x["peak_mb"] for x in acc)
        best.append(r)
    if repeat > 1:
        notes.append(f"{n:,} records{what}: {repeat} runs each, fastest kept; baseline "
                     f"{_secs(runs[0])} s, build {_secs(runs[1])} s.")
    return best[0], best[1]


def _secs(runs: list[dict]) -> str:
    return ", ".join(f"{x['seconds']:.1f}" for x in runs)


def _same_bytes(a: Path, b: Path) -> bool:
    from tuneforge.builder.outdir import published

    files_a, files_b = published(a), published(b)
    return files_a == files_b and all((a / f).read_bytes() == (b / f).read_bytes() for f in files_a)


BASELINE = f"""
import sys
sys.path.insert(0, {str(HERE)!r})
from pathlib import Path
from build import baseline
baseline(Path(sys.argv[1]), Path(sys.argv[2]))
"""


if __name__ == "__main__":
    main()
