"""Start-up cost of `tuneforge build` on the shipped hotel recipe (its LLM steps left out): the whole command,
against a bare `python -c pass` run in the same process tree, for this checkout and, with `--before DIR`,
another checkout of tuneforge (e.g. a git worktree of an earlier commit) run with the same interpreter.

    .venv/bin/python benchmarks/startup.py [--runs 3] [--before ../wt-before]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml
from results_md import write_section  # benchmarks/ is on sys.path when a script runs

HERE = Path(__file__).resolve().parent
REPO = HERE.parent


def _recipe(tmp: Path, checkout: Path) -> Path:
    src = checkout / "datasets" / "hotel" / "recipe.yaml"
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    data.pop("augment", None)
    for s in data["sources"]:
        paths = s["path"] if isinstance(s["path"], list) else [s["path"]]
        s["path"] = [str((src.parent / p).resolve()) for p in paths]
    data.setdefault("card", {})["tokenizer"] = None
    p = tmp / f"hotel-{checkout.name}.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


def _time(cmd: list[str], env: dict[str, str], runs: int) -> float:
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=tempfile.gettempdir())
        times.append(time.perf_counter() - t)
        if p.returncode:
            sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr[-3000:]}")
    return statistics.median(times)


def _build_cmd(checkout: Path, recipe: Path, out: Path, allow: bool) -> list[str]:
    cmd = [sys.executable, "-m", "tuneforge.cli", "build", str(recipe), "--out", str(out)]
    return cmd + (["--allow-outside"] if allow else [])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--before", type=Path, help="another tuneforge checkout to compare with")
    args = ap.parse_args()
    base_env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "PYTHONPATH")}
    base_env["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    rows = []
    with tempfile.TemporaryDirectory() as tmp_s:
        tmp = Path(tmp_s)
        bare = _time([sys.executable, "-c", "pass"], base_env, args.runs)
        checkouts = [("this checkout", REPO, True)]
        if args.before:
            checkouts.insert(0, (f"before ({args.before.name})", args.before.resolve(), False))
        for name, checkout, allow in checkouts:
            env = {**base_env, "PYTHONPATH": str(checkout)}
            recipe = _recipe(tmp, checkout)
            help_s = _time([sys.executable, "-m", "tuneforge.cli", "--help"], env, args.runs)
            build_s = []
            for i in range(args.runs):
                out = tmp / f"out-{checkout.name}-{i}"
                t = time.perf_counter()
                p = subprocess.run(_build_cmd(checkout, recipe, out, allow), env=env, capture_output=True, cwd=tmp,
                                   text=True)
                build_s.append(time.perf_counter() - t)
                if p.returncode:
                    sys.exit(f"build with {checkout} failed:\n{p.stderr[-3000:]}")
            rows.append((name, help_s, statistics.median(build_s)))
    lines = ["| checkout | `tuneforge --help` s | `tuneforge build` hotel s | build vs bare python |",
             "|---|---:|---:|---:|"]
    lines += [f"| {n} | {h:.1f} | {b:.1f} | {b / bare:.0f}x |" for n, h, b in rows]
    table = "\n".join(lines)
    print(table)
    notes = [f"bare `python -c pass`: {bare:.2f} s (median of {args.runs})."]
    if len(rows) == 2:
        notes.append(f"`tuneforge build` on the hotel recipe takes {rows[1][2] / rows[0][2]:.2f}x the time it took "
                     f"before.")
    print("\n".join(notes))
    write_section(HERE / "RESULTS.md", "startup", (
        "## startup\n\n`benchmarks/startup.py --runs " f"{args.runs}" + (" --before DIR" if args.before else "") +
        "`: the whole `tuneforge build` command on the shipped hotel recipe without its LLM steps (192 input "
        "records), no `PREFECT_API_URL`, median of the runs, on this machine; `before` is the commit before "
        "the build ran outside Prefect (it started a temporary Prefect server per command).\n\n"
        f"{table}\n\n" + "\n".join(f"- {x}" for x in notes) + "\n"))


if __name__ == "__main__":
    main()
