"""Many small files as a user has them: the `tuneforge build` CLI on a folder of `--files` small JSONL files,
against the same records in one JSONL file, built the same way in the same process tree (the baseline).
Time, peak RSS (the whole process tree, sampled) and the scratch a build leaves (`OUT/.tuneforge/work`, the
shard work kept for the next incremental build) are each a ratio to the one-file build.

    .venv/bin/python benchmarks/small_files.py [--files 20000] [--per-file 2] [--repeat 1]

The records are real alpaca records repeated with variation (benchmarks/build.py's corpus).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from build import make_corpus, measured  # benchmarks/ is on sys.path when a script runs
from results_md import write_section

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
TUNEFORGE = [sys.executable, "-m", "tuneforge.cli"]


def split_corpus(corpus: Path, folder: Path, files: int, per_file: int) -> None:
    """The corpus's lines, `per_file` a file, in files whose sorted order is the corpus's order."""
    folder.mkdir(parents=True)
    lines = corpus.read_text(encoding="utf-8").splitlines(keepends=True)
    width = len(str(files))
    for i in range(files):
        (folder / f"part-{i:0{width}d}.jsonl").write_text("".join(lines[i * per_file:(i + 1) * per_file]),
                                                          encoding="utf-8")


def recipe(tmp: Path, name: str, path: Path) -> Path:
    p = tmp / f"recipe-{name}.yaml"
    p.write_text(yaml.safe_dump({
        "name": f"small-{name}", "sources": [{"name": "synthetic", "path": str(path), "format": "alpaca",
                                              "allow_outside": True}],
        "clean": {"dedup": {"near": False}}, "formats": ["openai", "alpaca"], "card": {"tokenizer": None}},
        allow_unicode=True), encoding="utf-8")
    return p


def tree_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file()) if folder.is_dir() else 0


def run(rec: Path, out: Path) -> dict:
    shutil.rmtree(out, ignore_errors=True)
    r = measured([*TUNEFORGE, "build", str(rec), "--out", str(out), "--no-prefect"])
    r["manifest"] = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    r["timings"] = json.loads((out / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))
    r["scratch"] = tree_bytes(out / ".tuneforge" / "work")
    r["work_files"] = sum(1 for f in (out / ".tuneforge" / "work").rglob("*") if f.is_file())
    return r


def secs(runs: list[dict]) -> str:
    return ", ".join(f"{r['seconds']:.1f}" for r in runs)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--files", type=int, default=20_000)
    ap.add_argument("--per-file", type=int, default=2)
    ap.add_argument("--repeat", type=int, default=1)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "corpora")
    ap.add_argument("--no-write", action="store_true", help="print the table; leave RESULTS.md alone")
    args = ap.parse_args()
    shared = args.shared if args.shared.is_dir() else Path("/work/shared/corpora")
    n = args.files * args.per_file
    with tempfile.TemporaryDirectory(prefix="tf-small-") as tmp_s:
        tmp = Path(tmp_s)
        corpus = tmp / "one" / "all.jsonl"
        corpus.parent.mkdir()
        make_corpus(shared, n, corpus)
        split_corpus(corpus, tmp / "many", args.files, args.per_file)
        one, many = recipe(tmp, "one", corpus), recipe(tmp, "many", tmp / "many")
        runs: dict[str, list[dict]] = {"one": [], "many": []}
        for i in range(args.repeat):  # alternate, each going first in turn
            for name in (["one", "many"] if i % 2 == 0 else ["many", "one"]):
                runs[name].append(run(one if name == "one" else many, tmp / f"out-{name}"))
        best = {k: min(v, key=lambda r: r["seconds"]) for k, v in runs.items()}
        counts = {k: (b["manifest"]["counts"]["input"], b["manifest"]["counts"]["kept"]) for k, b in best.items()}
        base = best["one"]
        rows = [("one file (baseline)", "one"), (f"{args.files:,} files of {args.per_file} records", "many")]
        lines = ["| input | seconds | peak RSS MB | scratch MB | scratch files | shards | time vs baseline | "
                 "scratch vs baseline |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for label, k in rows:
            b = best[k]
            lines.append(f"| {label} | {b['seconds']:.1f} | {b['peak_mb']:,.0f} | {b['scratch'] / 2**20:.1f} | "
                         f"{b['work_files']:,} | {b['timings']['timings']['shards']:,} | "
                         f"{b['seconds'] / base['seconds']:.2f}x | {b['scratch'] / max(1, base['scratch']):.2f}x |")
        cores = os.cpu_count()
        notes = [f"- {n:,} records ({tree_bytes(tmp / 'many') / 2**20:.1f} MB); input/kept records: one file "
                 f"{counts['one'][0]:,}/{counts['one'][1]:,}, many files {counts['many'][0]:,}/{counts['many'][1]:,}.",
                 f"- {args.repeat} run(s) each, fastest kept: one file "
                 f"{secs(runs['one'])} s, many files {secs(runs['many'])} s.",
                 *(f"- Stage seconds ({label}): " + ", ".join(
                     f"{k} {v}" for k, v in best[k2]["timings"]["timings"].items()
                     if isinstance(v, int | float) and k not in ("shards",)) for label, k2 in rows)]
        text = (f"## small files\n\n`benchmarks/small_files.py --files {args.files} --per-file {args.per_file} "
                f"--repeat {args.repeat}` on this machine ({cores} cores): the `tuneforge build` CLI (no Prefect; "
                f"worker processes, one per core) on a folder of small alpaca JSONL files, against the same "
                f"records in one file, each run a child of this script. Scratch is `OUT/.tuneforge/work` after "
                f"the build.\n\n" + "\n".join(lines) + "\n\n" + "\n".join(notes) + "\n")
        print(text)
        if not args.no_write:
            write_section(HERE / "RESULTS.md", "small files", text)


if __name__ == "__main__":
    main()
