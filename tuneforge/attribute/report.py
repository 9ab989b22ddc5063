"""Attribution's outputs: attribution.jsonl (one line per record, highest score first), totals.json (per source,
per augment operator, per source x subject), report.md; and the plain `too few lost questions` result."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.common.io import write_json, write_jsonl, write_text

TOP_SHOWN = 15


def _augment_ops(meta: dict) -> str:
    """The augment operators that made a record (`rewrite+extend_turns`), or `none` for an original one."""
    ops = [o.get("op") for o in meta.get("ops") or [] if isinstance(o, dict) and o.get("op")]
    return "+".join(ops) if ops else "none"


def _source(meta: dict) -> str:
    return str(meta.get("source") or "unknown")


def too_few(out: Path, ins: Any, method: Any, notes: list[str]) -> dict:
    """Fewer lost questions than `min_lost`: no ranking is made, and the report says so."""
    fg = ins.results["forgetting"]
    msg = (f"the forgetting check lost {len(ins.lost)} question(s) (right before, wrong after) out of "
           f"{ins.n_questions} compared; attribution needs at least {method.min_lost} to rank anything, so no "
           f"ranking was made (verdict: {fg.get('verdict')})")
    summary = {"status": "too_few_lost", "message": msg, "lost": len(ins.lost), "questions": ins.n_questions,
               "min_lost": method.min_lost, "verdict": fg.get("verdict"), "forgetting_dir": str(ins.forgetting_dir),
               "notes": notes}
    for name in ("attribution.jsonl", "totals.json"):  # no stale ranking from an earlier run beside this answer
        (out / name).unlink(missing_ok=True)
    write_json(out / "attribution.json", summary)
    write_text(out / "report.md", f"# Which training records caused the forgetting\n\n{msg[0].upper()}{msg[1:]}.\n")
    return summary


def _rows(ins: Any, method: Any, harm: np.ndarray, rows: list[dict], sc: dict) -> list[dict]:
    order = np.argsort(-sc["score"], kind="stable")
    uids = [f"{q.suite}/{q.uid}" for q in ins.lost]
    out = []
    for rank, i in enumerate(order, 1):
        r, meta = rows[i], rows[i]["meta"]
        top = [uids[j] for j in np.argsort(-harm[i], kind="stable")[: method.top_lost] if harm[i, j] > 0]
        out.append({"rank": rank, "id": r["id"], "score": round(float(sc["score"][i]), 6),
                    "ci_low": round(float(sc["ci_low"][i]), 6), "ci_high": round(float(sc["ci_high"][i]), 6),
                    "top10_share": round(float(sc["top10_share"][i]), 3), "source": _source(meta),
                    "file": meta.get("file"), "line": meta.get("line"), "augment": _augment_ops(meta),
                    "lost": top, "text": r["text"]})
    return out


def _fmt(x: float) -> str:
    return f"{x:+.4f}"


def _markdown(ins: Any, summary: dict, ranked: list[dict], totals: dict) -> str:
    fg = ins.results["forgetting"]
    lines = ["# Which training records caused the forgetting", "",
             f"{summary['lost']} lost questions (right with the base, wrong after tuning; verdict "
             f"`{fg.get('verdict')}`) attributed to {summary['records']} training records of {ins.run_dir} "
             f"(TracIn over {len(ins.checkpoints)} checkpoint(s), gradients on {summary['adapter_weights']:,} adapter "
             f"weights projected to {summary['method']['proj_dim']}). Score: the record's mean harm over the lost "
             "questions (positive: training on it lowered the correct answers' likelihood). Intervals: 95% "
             f"percentile bootstrap over the lost questions ({summary['method']['bootstrap']} draws).", ""]
    if summary.get("notes"):
        lines += [f"- note: {n}" for n in summary["notes"]] + [""]
    lines += ["## Top records", "", "| rank | score [95% CI] | in top 10 | source | file:line | augment | lost (most "
              "pushed) | text |", "|---:|---|---:|---|---|---|---|---|"]
    for r in ranked[:TOP_SHOWN]:
        text = r["text"].replace("|", "\\|")[:120]
        lines.append(f"| {r['rank']} | {_fmt(r['score'])} [{_fmt(r['ci_low'])}, {_fmt(r['ci_high'])}] | "
                     f"{100 * r['top10_share']:.0f}% | {r['source']} | {r['file']}:{r['line']} | {r['augment']} | "
                     f"{', '.join(r['lost'])} | {text} |")
    h = totals["histogram"]
    peak = max(h["counts"]) or 1
    lines += ["", "## Scores", "", "| from | to | records | |", "|---:|---:|---:|---|"]
    for c, a, b in zip(h["counts"], h["edges"][:-1], h["edges"][1:], strict=True):
        lines.append(f"| {_fmt(a)} | {_fmt(b)} | {c} | {'█' * max(1 if c else 0, round(30 * c / peak))} |")
    for title, key in (("Per source", "sources"), ("Per augment operator", "augment")):
        lines += ["", f"## {title}", "", "| name | records | total [95% CI] | mean | positive |",
                  "|---|---:|---|---:|---:|"]
        for name, t in totals[key].items():
            lines.append(f"| {name} | {t['records']} | {_fmt(t['total'])} [{_fmt(t['ci_low'])}, {_fmt(t['ci_high'])}]"
                         f" | {_fmt(t['mean'])} | {t['positive']} |")
    lines += ["", "## Which subjects each source hurt", "",
              "Mean harm of the source's records to the lost questions of each subject [95% CI over those questions].",
              "", "| source | subject | lost | mean harm [95% CI] |", "|---|---|---:|---|"]
    for src, subj in totals["subjects"].items():
        for s, v in sorted(subj.items(), key=lambda kv: -kv[1]["mean_harm"]):
            ci = (f"[{_fmt(v['ci_low'])}, {_fmt(v['ci_high'])}]" if v["ci_low"] is not None
                  else "(one lost question: no interval)")
            lines.append(f"| {src} | {s} | {v['lost']} | {_fmt(v['mean_harm'])} {ci} |")
    if summary["dropped"]:
        lines += ["", f"{summary['dropped']} rows the trainer dropped (over max_length) are not ranked; their ids "
                  "and reasons are in attribution.json."]
    return "\n".join(lines) + "\n"


def write_outputs(out: Path, ins: Any, method: Any, harm: np.ndarray, rows: list[dict], dropped: list[dict],
                  notes: list[str], timing: dict) -> dict:
    from tuneforge.attribute import scoring

    sc = scoring.record_scores(harm, method.bootstrap, method.seed)
    ranked = _rows(ins, method, harm, rows, sc)
    sources = [_source(r["meta"]) for r in rows]
    totals = {"sources": scoring.group_totals(sources, sc["draws"], sc["score"]),
              "augment": scoring.group_totals([_augment_ops(r["meta"]) for r in rows], sc["draws"], sc["score"]),
              "subjects": scoring.subject_harm(sources, [q.subject for q in ins.lost], harm, method.bootstrap,
                                               method.seed),
              "histogram": scoring.histogram(sc["score"])}
    write_jsonl(out / "attribution.jsonl", ranked)
    write_json(out / "totals.json", totals)
    summary = {"status": "ranked", "lost": len(ins.lost), "questions": ins.n_questions, "records": len(rows),
               "dropped": len(dropped), "dropped_rows": dropped[:1000], "verdict": ins.results["forgetting"].get("verdict"),
               "forgetting_dir": str(ins.forgetting_dir), "adapter": str(ins.adapter), "run_dir": str(ins.run_dir),
               "checkpoints": [{"name": n, "path": str(p), "weight": round(w, 6)} for n, p, w in ins.checkpoints],
               "lost_questions": [{"suite": q.suite, "uid": q.uid, "subject": q.subject, "answer": q.answer,
                                   "tuned": q.tuned} for q in ins.lost],
               "method": asdict(method), "notes": notes,
               "top": ranked[:10]}
    write_text(out / "report.md", _markdown(ins, {**summary, "adapter_weights": timing.get("adapter_weights", 0)},
                                            ranked, totals))
    return summary
