"""Accuracy per subject, per category, C-Eval Hard, and the average, from per-question rows.

The average is C-Eval's official one: the mean of the subjects' accuracies (52 subjects on full C-Eval);
a category is the mean over its subjects, and C-Eval Hard the mean over its 8 subjects (hkust-nlp/ceval
computes the leaderboard this way). lm-eval's `ceval-valid` group pools the questions instead
(`weight_by_size`); that figure is reported beside it as `micro_accuracy`.
"""

from __future__ import annotations

from collections import defaultdict

from tuneforge.eval.suites import CEVAL_HARD


def _acc(rows: list[dict]) -> float | None:
    scored = [r for r in rows if r["correct"] is not None]
    return round(100.0 * sum(bool(r["correct"]) for r in scored) / len(scored), 2) if scored else None


def _mean(values: list[float | None]) -> float | None:
    known = [v for v in values if v is not None]
    return round(sum(known) / len(known), 2) if known else None


def summarize(rows: list[dict], layout: str) -> dict:
    """The `suites.<name>` block of results.json."""
    by_subject: dict[str, list[dict]] = defaultdict(list)
    for r in rows:
        by_subject[r["subject"]].append(r)
    subjects = {s: {"accuracy": _acc(rs), "n": len(rs), "category": rs[0]["category"]}
                for s, rs in sorted(by_subject.items())}
    generated = any(r.get("mode") == "generate" for r in rows)
    if generated:  # unextractable answers count as wrong; how many there were is shown per subject
        for s, rs in by_subject.items():
            subjects[s]["unextracted"] = sum(r.get("extracted") is None for r in rs)
    by_cat: dict[str, list[str]] = defaultdict(list)
    for s, v in subjects.items():
        by_cat[v["category"]].append(s)
    hard = [s for s in subjects if s in CEVAL_HARD] if layout == "ceval" else []
    out = {
        "accuracy": _mean([v["accuracy"] for v in subjects.values()]),
        "n": len(rows),
        "average": "mean of subject accuracies (C-Eval's official Average); categories and Hard likewise",
        "micro_accuracy": _acc(rows),
        "categories": {c: {"accuracy": _mean([subjects[s]["accuracy"] for s in ss]),
                           "n": sum(subjects[s]["n"] for s in ss)} for c, ss in sorted(by_cat.items())},
        "subjects": subjects,
        "hard": ({"accuracy": _mean([subjects[s]["accuracy"] for s in hard]),
                  "n": sum(subjects[s]["n"] for s in hard), "subjects": hard} if hard else None),
    }
    if generated:
        out["unextracted"] = sum(v["unextracted"] for v in subjects.values())
        methods: dict[str, int] = defaultdict(int)
        for r in rows:
            methods[r.get("extraction") or "unextracted"] += 1
        out["extraction"] = dict(sorted(methods.items()))
    return out


def submission(rows: list[dict]) -> dict[str, dict[str, str]]:
    """C-Eval's leaderboard submission layout: subject -> {id: letter}."""
    out: dict[str, dict[str, str]] = defaultdict(dict)
    for r in rows:
        out[r["subject"]][str(r["id"])] = r["pred"] or ""
    return dict(out)
