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


def _run_label(path: Path, r: dict) -> str:
    """`model + adapter` by their last path parts (embedded:smollm2 stays as written)."""
    def short(x: str) -> str:
        return x if ":" in x and not Path(x).exists() else (Path(x).name or x)

    model = r.get("model") or path.name
    label = short(str(model))
    if r.get("adapter"):
        label += " + " + short(str(r["adapter"]))
    return label


def _questions(sr: dict) -> str:
    """Which questions a suite scored: the run's fingerprint, else its size and selection (older runs)."""
    return sr.get("questions") or f"n={sr.get('n')},split={sr.get('split')},limit={sr.get('limit')}"


def _forgetting_cell(r: dict) -> str:
    fg = r.get("forgetting")
    if not fg:
        return "not checked"
    worst = min(fg.get("suites", {}).items(), key=lambda kv: kv[1].get("delta", 0), default=None)
    return fg["verdict"] + (f" (worst {worst[0]} {worst[1]['delta']:+.2f} pt)" if worst else "")


def compare_runs(paths: list[str | Path], out: str | Path) -> dict:
    """Leaderboard rows sorted by mean suite accuracy, over the runs that scored the same questions per suite;
    runs on other questions go to a separate table. Writes results.json and the reports."""
    if len(paths) < 2:
        raise TuneforgeError("compare needs at least two eval runs")
    runs = []
    for p in paths:
        res = _load(Path(p))
        runs.append((Path(p), res))
    labels = [_run_label(p, r) for p, r in runs]
    dup = {x for x in labels if labels.count(x) > 1}
    labels = [f"{x} ({p.name})" if x in dup else x for x, (p, _) in zip(labels, runs, strict=True)]
    # runs are comparable when every suite they both have scored the same questions; the leaderboard is the
    # largest such group (the first run's group on a tie)
    sigs = [{s: _questions(sr) for s, sr in (r.get("suites") or {}).items()} for _, r in runs]
    groups: list[list[int]] = []
    for i, sig in enumerate(sigs):
        for g in groups:
            if all(sigs[j].get(s) == q for j in g for s, q in sig.items() if s in sigs[j]) and \
                    all(set(sigs[j]) == set(sig) for j in g):
                g.append(i)
                break
        else:
            groups.append([i])
    main = max(groups, key=len)
    suites = sorted({s for i in main for s in sigs[i]})
    board, others = [], []
    for i, ((path, r), name) in enumerate(zip(runs, labels, strict=True)):
        rs = r.get("suites") or {}
        accs = {s: (rs.get(s) or {}).get("accuracy") for s in suites}
        known = [v for v in accs.values() if v is not None]
        entry = {"run": name, "path": str(path), "model": r.get("model"), "adapter": r.get("adapter"),
                 "suites": accs, "n": {s: (rs.get(s) or {}).get("n") for s in suites},
                 "mode": {s: (rs.get(s) or {}).get("mode", "logits") for s in rs},
                 "mean": round(sum(known) / len(known), 2) if known else None,
                 "categories": {s: {c: v["accuracy"] for c, v in (rs[s].get("categories") or {}).items()}
                                for s in rs},
                 "hard": {s: (rs[s].get("hard") or {}).get("accuracy") for s in rs},
                 "perplexity": (r.get("perplexity") or {}).get("perplexity"),
                 "heldout": (r.get("heldout") or {}).get("metrics"),
                 "forgetting": (r.get("forgetting") or {}).get("verdict"),
                 "forgetting_summary": _forgetting_cell(r),
                 "judge": (r.get("judge") or {}).get("win_rate")}
        (board if i in main else others).append(entry)
        if i not in main:
            entry["suites"] = {s: sr.get("accuracy") for s, sr in rs.items()}
            entry["n"] = {s: sr.get("n") for s, sr in rs.items()}
            entry["reason"] = "scored other questions than the leaderboard runs (suites, subjects, split or limit)"
    board.sort(key=lambda e: -(e["mean"] if e["mean"] is not None else -1))
    for rank, e in enumerate(board, 1):
        e["rank"] = rank
    result = {"runs": [str(p) for p in paths], "suites": suites, "leaderboard": board, "not_comparable": others}
    out = Path(out)
    write_json(out / "results.json", result)
    head = ["rank", "run", *[h for s in suites for h in (s, f"{s} n")], "mean", "perplexity", "forgetting"]
    rows = [[e["rank"], e["run"], *[v for s in suites for v in (e["suites"][s], e["n"][s])], e["mean"],
             e["perplexity"] if e["perplexity"] is not None else "not measured", e["forgetting_summary"]]
            for e in board]
    if any(e["judge"] is not None for e in board):
        head.append("judge win rate")
        for row, e in zip(rows, board, strict=True):
            row.append(e["judge"])
    sec = Section("Leaderboard", text=("Accuracy (%) per suite (C-Eval's average: the mean over subjects) and its "
                                       "number of questions; mean is over suites. Only runs that scored the same "
                                       "questions in every suite are ranked."),
                  tables=[Table(head, rows, "leaderboard")])
    if suites:
        sec.images.append(("leaderboard", _grouped("Accuracy per suite", [e["run"] for e in board], suites,
                                                   {(e["run"], s): e["suites"][s] for e in board for s in suites})))
    secs = [sec]
    if others:
        secs.append(Section("Not ranked: other questions", text="These runs scored different questions (another "
                            "subject list, split or limit), so their accuracies are not comparable with the "
                            "leaderboard.", tables=[Table(
                                ["run", "suites (accuracy, n)", "forgetting"],
                                [[e["run"], "; ".join(f"{s} {a} (n={e['n'][s]})" for s, a in e["suites"].items()),
                                  e["forgetting_summary"]] for e in others], "not-comparable")]))
    for s in suites:
        cats = sorted({c for e in board for c in e["categories"].get(s, {})})
        has_hard = any(e["hard"].get(s) is not None for e in board)
        if len(cats) > 1 or has_hard:
            secs.append(Section(f"{s} by category", tables=[Table(
                ["run", *cats, *(["C-Eval Hard"] if has_hard else [])],
                [[e["run"], *[e["categories"].get(s, {}).get(c) for c in cats],
                  *([e["hard"].get(s)] if has_hard else [])] for e in board],
                f"compare-{s}")]))
    write_report_files(out, f"Comparison of {len(board)} runs", secs)
    return result
