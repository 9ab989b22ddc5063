"""The report of a train-then-eval pipeline: what was built and trained, base vs tuned on the held-out
split, and the forgetting check with its verdict and the gate's decision, in one HTML/Markdown file.

It lives in `pipeline/` because it reads the pipeline's own folders and summary; it builds on `eval.report`'s
sections and charts (pipeline -> eval, never the other way)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tuneforge.common.io import read_jsonl
from tuneforge.eval.report import (
    Section,
    Table,
    bar_chart,
    build_sections,
    lineage_table,
    with_chance,
    write_report_files,
)


def _load(folder: Path) -> dict[str, Any]:
    p = folder / "results.json"
    return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else {}


def pipeline_sections(summary: dict[str, Any], root: Path) -> list[Section]:
    secs: list[Section] = []
    gate = summary.get("gate")
    build = summary.get("build") or {}
    c = build.get("counts") or {}
    head = Section("Pipeline", text=(f"Pipeline `{summary.get('pipeline')}`. Dataset: input {c.get('input')} = "
                                     f"kept {c.get('kept')} + rejected {c.get('rejected')} + deduplicated "
                                     f"{c.get('deduplicated')}; splits {c.get('splits')} (card: `data/README.md`)."))
    head.tables.append(Table(["stage", "steps", "final loss", "eval loss", "rows cut or dropped", "adapter", "output"],
                             [[t.get("stage"), t.get("steps"), t.get("final_loss"),
                               t.get("eval_loss") if t.get("eval_loss") is not None else "no eval split",
                               t.get("rows_line") or _rows_line(t), t.get("adapter"), t.get("final")]
                              for t in summary.get("train") or []], "training"))
    if gate:
        head.tables.append(Table(["gate", "on inconclusive", "verdict", "status", "why"],
                                 [[gate["policy"], gate.get("on_inconclusive"), gate["verdict"],
                                   gate.get("status", "pass" if gate["passed"] else "fail"),
                                   "; ".join(gate["reasons"])]], "gate"))
    model = summary.get("model")
    if model:
        head.tables.append(lineage_table(model, "model-lineage"))
    sizing = summary.get("forgetting_sizing")
    if sizing:
        from tuneforge.eval.sizing import sizing_lines

        head.tables.append(Table(["forgetting check sized before training"], [[line] for line in
                                                                              sizing_lines(sizing)], "sizing"))
    secs.append(head)
    evals = {name: _load(root / "eval" / name) for name in ("base", "tuned")}
    mcq = _suite_section(evals)
    if mcq is not None:
        secs.append(mcq)
    held = {k: v["heldout"] for k, v in evals.items() if v.get("heldout")}
    if held:
        metrics = [m for m in next(iter(held.values()))["metrics"] if m not in ("tokenize",)]
        s = Section("Held-out domain evaluation: base vs tuned",
                    text=next(iter(held.values())).get("note", "") or "Generation on the dataset's test split.")
        counts = {k: v["rows"] for k, v in held.items() if v.get("rows")}
        if counts:
            s.tables.append(Table(["model", "rows read", "generated", "skipped (no reply)", "cut at max_new_tokens",
                                   "prompts over the context"],
                                  [[k, c.get("total"), c.get("generated"), c.get("skipped"),
                                    c.get("cut_at_max_new_tokens"), c.get("over_context")] for k, c in counts.items()],
                                  "heldout-rows"))
        s.tables.append(Table(["model", *metrics], [[k, *[v["metrics"].get(m) for m in metrics]]
                                                    for k, v in held.items()], "heldout-compare"))
        scores = [m for m in ("bleu4", "rouge1", "rouge2", "rougeL") if m in metrics]
        if scores and "tuned" in held and "base" in held:
            labels = [f"{m} {k}" for m in scores for k in ("base", "tuned")]
            values = [held[k]["metrics"][m] or 0.0 for m in scores for k in ("base", "tuned")]
            s.images.append(("heldout", bar_chart("Held-out scores, base vs tuned", labels, values, "score", chance=None)))
        if "tuned" in held and "base" in held:
            base_out = {e["id"]: e["output"] for e in held["base"].get("examples", [])}
            s.tables.append(Table(["id", "prompt (end)", "reference", "base", "tuned"],
                                  [[e["id"], e["prompt"][-200:], e["reference"], base_out.get(e["id"]), e["output"]]
                                   for e in held["tuned"].get("examples", [])[:20]], "heldout-samples"))
        secs.append(s)
    fo = root / "forgetting"
    forgetting = _load(fo)
    if forgetting:
        rows = read_jsonl(fo / "predictions.jsonl") if (fo / "predictions.jsonl").is_file() else []
        secs += [s for s in build_sections(forgetting, rows, 10) if s.title != "Run"]
    return secs


def _suite_section(evals: dict[str, dict[str, Any]]) -> Section | None:
    """The evaluate step's own multiple-choice suites (e.g. the domain's exam), base and tuned side by side."""
    names = sorted({s for ev in evals.values() for s in ev.get("suites") or {}})
    if not names:
        return None
    rows = []
    for suite in names:
        row: list[Any] = [suite]
        for model in ("base", "tuned"):
            r = (evals.get(model, {}).get("suites") or {}).get(suite) or {}
            row += [with_chance(r.get("accuracy"), r.get("chance")), r.get("n")]
        rows.append(row)
    s = Section("Evaluate step: multiple-choice suites, base vs tuned",
                text="Accuracy (%) with its chance level (1 / number of options) and number of questions of each "
                     "suite of the evaluate step's config.")
    s.tables.append(Table(["suite", "base accuracy", "base n", "tuned accuracy", "tuned n"], rows, "evaluate-suites"))
    return s


def _rows_line(t: dict[str, Any]) -> str | None:
    """Older summaries: the line from their per-split counts."""
    from tuneforge.trainers.truncation import fitting_line

    return fitting_line(t["rows"], t.get("max_length", "?")) if t.get("rows") else None


def write_pipeline_report(root: str | Path, summary: dict[str, Any]) -> None:
    root = Path(root)
    write_report_files(root, f"tuneforge pipeline: {summary.get('pipeline')}", pipeline_sections(summary, root))
