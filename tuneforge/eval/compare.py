"""`compare`: one leaderboard across eval runs (their results.json), as results.json + report.html/.md."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import read_json_file, write_json
from tuneforge.eval.report import Section, Table, _plt, _png, below_chance, with_chance, write_report_files


def _load(path: Path) -> dict:
    f = path / "results.json" if path.is_dir() else path
    return read_json_file(f, f"{path}: no results.json (run `tuneforge eval ... --out {path}` first)")


def _maybe(folder: Path | str | None) -> dict:
    f = Path(folder) / "results.json" if folder else None
    return read_json_file(f, "") if f is not None and f.is_file() else {}


def _merged(own: dict, general: dict) -> dict:
    """A model's evaluate-step results with what its forgetting-side evaluation measured and it did not
    (the general suites, perplexity)."""
    if not own and not general:
        return {}
    r = dict(own or general)
    r["suites"] = {**(general.get("suites") or {}), **(own.get("suites") or {})}
    for key in ("perplexity", "heldout"):
        if not r.get(key) and general.get(key):
            r[key] = general[key]
    return r


def expand(path: Path) -> list[tuple[str | None, Path, dict]]:
    """A run folder is one run; a pipeline folder (`tuneforge run`: results.json with `evaluations`) is its
    base and tuned models, each with its evaluate step's and its forgetting check's measurements, and the
    tuned one with the check's verdict and the last training stage's losses."""
    res = _load(path)
    if "evaluations" not in res and "pipeline" not in res:
        return [(None, path, res)]
    name = res.get("pipeline") or path.name
    evals = res.get("evaluations") or {}
    fo = _maybe(path / "forgetting")
    general = {"base": _maybe(fo.get("base_eval") or path / "forgetting" / "base"),
               "tuned": _maybe(path / "forgetting" / "tuned")}
    out = []
    for model in ("base", "tuned"):
        ev = evals.get(model) or {}
        own = _maybe(ev.get("out") or path / "eval" / model) or (
            {"suites": ev.get("suites") or {}, "heldout": {"metrics": ev["heldout"]} if ev.get("heldout") else None}
            if ev else {})
        r = _merged(own, general[model])
        if not r:
            continue
        if model == "tuned":
            if res.get("forgetting"):
                r["forgetting"] = res["forgetting"]
            last = (res.get("train") or [{}])[-1]
            r["train"] = {k: last.get(k) for k in ("stage", "final_loss", "eval_loss")}
        out.append((f"{name}: {model}", path, r))
    if not out:
        raise TuneforgeError(f"{path}: the pipeline evaluated no model (no evaluate or forgetting step ran)")
    return out


def _chance(sr: dict) -> float | None:
    """The suite's guessing level: recorded since runs count options; 4-way for the C-Eval/MMLU layouts."""
    if sr.get("chance") is not None:
        return sr["chance"]
    return 25.0 if sr.get("layout") in ("ceval", "mmlu") else None


def competition_ranks(values: list[float | None]) -> list[int]:
    """1 + how many runs scored strictly higher: equal means share a rank (1, 1, 3); unknown ranks last."""
    key = [v if v is not None else float("-inf") for v in values]
    return [1 + sum(o > k for o in key) for k in key]


HELDOUT_SKIP = ("n", "tokenize", "exact_match_n")


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


def _cell(acc: float | None, chance: float | None) -> Any:
    return with_chance(acc, chance) if chance is not None else acc


def compare_runs(paths: list[str | Path], out: str | Path) -> dict:
    """Leaderboard rows sorted by mean suite accuracy (equal means share a rank), over the runs that scored
    the same questions per suite; runs on other questions go to a separate table. A pipeline folder gives its
    base and tuned models. Every accuracy shows its suite's chance level, held-out metrics and perplexity
    their own columns. Writes results.json and the reports."""
    runs = [(hint, path, res) for p in paths for hint, path, res in expand(Path(p))]
    if len(runs) < 2:
        raise TuneforgeError("compare needs at least two evaluated models (eval runs, or a pipeline folder)")
    labels = [hint or _run_label(p, r) for hint, p, r in runs]
    dup = {x for x in labels if labels.count(x) > 1}
    labels = [f"{x} ({p.name})" if x in dup else x for x, (_, p, _) in zip(labels, runs, strict=True)]
    # runs are comparable when every suite they both have scored the same questions; the leaderboard is the
    # largest such group (the first run's group on a tie)
    sigs = [{s: _questions(sr) for s, sr in (r.get("suites") or {}).items()} for _, _, r in runs]
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
    for i, ((_, path, r), name) in enumerate(zip(runs, labels, strict=True)):
        rs = r.get("suites") or {}
        accs = {s: (rs.get(s) or {}).get("accuracy") for s in suites}
        known = [v for v in accs.values() if v is not None]
        chance = {s: _chance(sr) for s, sr in rs.items()}
        entry = {"run": name, "path": str(path), "model": r.get("model"), "adapter": r.get("adapter"),
                 "suites": accs, "n": {s: (rs.get(s) or {}).get("n") for s in suites}, "chance": chance,
                 "below_chance": sorted(s for s, sr in rs.items() if below_chance(sr.get("accuracy"), chance[s])),
                 "mode": {s: (rs.get(s) or {}).get("mode", "logits") for s in rs},
                 "mean": round(sum(known) / len(known), 2) if known else None,
                 "categories": {s: {c: v["accuracy"] for c, v in (rs[s].get("categories") or {}).items()}
                                for s in rs},
                 "hard": {s: (rs[s].get("hard") or {}).get("accuracy") for s in rs},
                 "perplexity": (r.get("perplexity") or {}).get("perplexity"),
                 "heldout": (r.get("heldout") or {}).get("metrics"),
                 "forgetting": (r.get("forgetting") or {}).get("verdict"),
                 "forgetting_summary": _forgetting_cell(r),
                 "judge": (r.get("judge") or {}).get("win_rate"),
                 "train": r.get("train")}
        (board if i in main else others).append(entry)
        if i not in main:
            entry["suites"] = {s: sr.get("accuracy") for s, sr in rs.items()}
            entry["n"] = {s: sr.get("n") for s, sr in rs.items()}
            entry["reason"] = "scored other questions than the leaderboard runs (suites, subjects, split or limit)"
    board.sort(key=lambda e: -(e["mean"] if e["mean"] is not None else -1))
    for e, rank in zip(board, competition_ranks([e["mean"] for e in board]), strict=True):
        e["rank"] = rank
    result = {"runs": [str(p) for p in paths], "suites": suites, "leaderboard": board, "not_comparable": others}
    out = Path(out)
    write_json(out / "results.json", result)
    heldout = sorted({m for e in board for m in (e["heldout"] or {}) if m not in HELDOUT_SKIP})
    head = ["rank", "run", *[h for s in suites for h in (s, f"{s} n")], "mean", *[f"held-out {m}" for m in heldout],
            "perplexity", "forgetting"]
    rows = [[e["rank"], e["run"], *[v for s in suites for v in (_cell(e["suites"][s], e["chance"].get(s)),
                                                                  e["n"][s])],
             e["mean"], *[(e["heldout"] or {}).get(m, "not measured") if e["heldout"] else "not measured"
                          for m in heldout],
             f"{e['perplexity']:.4f}" if e["perplexity"] is not None else "not measured",  # small changes show
             e["forgetting_summary"]]
            for e in board]
    extra = [("judge win rate", lambda e: e["judge"]),
             ("final train loss", lambda e: (e["train"] or {}).get("final_loss")),
             ("eval loss", lambda e: (e["train"] or {}).get("eval_loss"))]
    for title, get in extra:
        if any(get(e) is not None for e in board):
            head.append(title)
            for row, e in zip(rows, board, strict=True):
                row.append(get(e) if get(e) is not None else "not measured")
    ties = sorted({e["rank"] for e in board if sum(o["rank"] == e["rank"] for o in board) > 1})
    low = [f"{e['run']}: {', '.join(e['below_chance'])}" for e in board + others if e["below_chance"]]
    sec = Section("Leaderboard", text=("Accuracy (%) per suite (C-Eval's average: the mean over subjects), its "
                                       "chance level (1 / number of options) and its number of questions; mean "
                                       "is over suites. Only runs that scored the same questions in every suite "
                                       "are ranked; equal means share a rank."
                                       + (f" Tied ranks: {', '.join(map(str, ties))}." if ties else "")
                                       + (f" ⚠ Below chance (a uniform guess scores more on average): "
                                          f"{'; '.join(low)}." if low else "")),
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
                                [[e["run"], "; ".join(f"{s} {_cell(a, e['chance'].get(s))} (n={e['n'][s]})"
                                                      for s, a in e["suites"].items()),
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
