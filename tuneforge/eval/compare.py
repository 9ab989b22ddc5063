"""`compare`: one leaderboard across eval runs (their results.json), as results.json + report.html/.md."""

from __future__ import annotations

from pathlib import Path

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import read_json_file, write_json
from tuneforge.eval.report import Section, Table, _plt, _png, write_report_files


def _load(path: Path) -> dict:
    f = path / "results.json" if path.is_dir() else path
    return read_json_file(f, f"{path}: no results.json (run `tuneforge eval ... --out {path}` first)")


def _grouped(title: str, runs: list[str], suites: list[str], acc: dict[tuple[str, str], float | None]) -> bytes:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(suites) * max(1, len(runs)) / 2 + 2), 3.4))
    width = 0.8 / max(1, len(runs))
    for i, run in enumerate(runs):
        xs = [j + i * width for j in range(len(suites))]
        ax.bar(xs, [acc.get((run, s)) or 0 for s in suites], width, label=run)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(suites))], suites)
    ax.set_ylim(0, 100)
    ax.set_ylabel("accuracy (%)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _png(fig)


def compare_runs(paths: list[str | Path], out: str | Path) -> dict:
    """Leaderboard rows (one per run) sorted by mean suite accuracy; writes results.json and the reports."""
    if len(paths) < 2:
        raise TuneforgeError("compare needs at least two eval runs")
    runs = []
    for p in paths:
        res = _load(Path(p))
        runs.append((Path(p).name or str(p), res))
    suites = sorted({s for _, r in runs for s in r.get("suites", {})})
    board = []
    for name, r in runs:
        accs = {s: (r.get("suites", {}).get(s) or {}).get("accuracy") for s in suites}
        known = [v for v in accs.values() if v is not None]
        entry = {"run": name, "model": r.get("model"), "adapter": r.get("adapter"), "suites": accs,
                 "mean": round(sum(known) / len(known), 2) if known else None,
                 "categories": {s: {c: v["accuracy"] for c, v in (r["suites"][s].get("categories") or {}).items()}
                                for s in r.get("suites", {})},
                 "hard": {s: (r["suites"][s].get("hard") or {}).get("accuracy") for s in r.get("suites", {})},
                 "perplexity": (r.get("perplexity") or {}).get("perplexity"),
                 "heldout": (r.get("heldout") or {}).get("metrics"),
                 "forgetting": (r.get("forgetting") or {}).get("verdict")}
        board.append(entry)
    board.sort(key=lambda e: -(e["mean"] if e["mean"] is not None else -1))
    for rank, e in enumerate(board, 1):
        e["rank"] = rank
    result = {"runs": [str(p) for p in paths], "suites": suites, "leaderboard": board}
    out = Path(out)
    write_json(out / "results.json", result)
    head = ["rank", "run", "model", "adapter", *suites, "mean", "perplexity", "forgetting"]
    rows = [[e["rank"], e["run"], e["model"], e["adapter"], *[e["suites"][s] for s in suites], e["mean"],
             e["perplexity"], e["forgetting"]] for e in board]
    sec = Section("Leaderboard", text="Accuracy (%) per suite (C-Eval's average: the mean over subjects); mean is over suites.",
                  tables=[Table(head, rows, "leaderboard")])
    if suites:
        sec.images.append(("leaderboard", _grouped("Accuracy per suite", [e["run"] for e in board], suites,
                                                   {(e["run"], s): e["suites"][s] for e in board for s in suites})))
    secs = [sec]
    for s in suites:
        cats = sorted({c for e in board for c in e["categories"].get(s, {})})
        if cats:
            secs.append(Section(f"{s} by category", tables=[Table(
                ["run", *cats, "C-Eval Hard"],
                [[e["run"], *[e["categories"].get(s, {}).get(c) for c in cats], e["hard"].get(s)] for e in board],
                f"compare-{s}")]))
    write_report_files(out, f"Comparison of {len(board)} runs", secs)
    return result
