"""report.html (one self-contained file, inline PNG plots) and report.md, built from the same sections.

Inside a Prefect flow run the tables are also published as Prefect table artifacts.
"""

from __future__ import annotations

import base64
import html
import io
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.io import write_text


@dataclass
class Table:
    headers: list[str]
    rows: list[list[Any]]
    key: str = ""


@dataclass
class Section:
    title: str
    text: str = ""
    tables: list[Table] = field(default_factory=list)
    images: list[tuple[str, bytes]] = field(default_factory=list)  # (name, png bytes)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.2f}"
    return str(v)


def _png(fig: Any) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(fig)
    return buf.getvalue()


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def bar_chart(title: str, labels: list[str], values: list[float], ylabel: str = "accuracy (%)",
              chance: float | None = 25.0) -> bytes:
    """Bars on a 0-100 scale; `chance` draws the 4-option guessing line (None for scores without one)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2), 3.2))
    ax.bar(labels, [v or 0 for v in values], color="#4C72B0")
    if chance is not None:
        ax.axhline(chance, color="grey", lw=0.8, ls="--", label=f"chance ({chance:g}%)")
        ax.legend(fontsize=8)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.set_ylim(0, 100)
    ax.tick_params(axis="x", rotation=30)
    return _png(fig)


def below_chance(accuracy: float | None, chance: float | None) -> bool:
    return accuracy is not None and chance is not None and accuracy < chance


def with_chance(accuracy: float | None, chance: float | None) -> str | None:
    """`31.20 (chance 25.00)`, marked `below chance` when a guess would do better on average."""
    if accuracy is None or chance is None:
        return None if accuracy is None else _fmt(accuracy)
    return f"{accuracy:.2f} (chance {chance:.2f})" + (" ⚠ below chance" if below_chance(accuracy, chance) else "")


def delta_chart(title: str, labels: list[str], deltas: list[float], lows: list[float], highs: list[float],
                tolerance: float | list[float]) -> bytes:
    """Deltas with their CIs; `tolerance` one for all bars, or each bar's own (its suite's tier), drawn as a
    dashed line under that bar."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(max(4.0, 0.8 * len(labels) + 2), 3.2))
    err = [[d - lo for d, lo in zip(deltas, lows, strict=True)], [hi - d for d, hi in zip(deltas, highs, strict=True)]]
    colors = ["#C44E52" if hi < 0 else "#55A868" if lo > 0 else "#8C8C8C"
              for lo, hi in zip(lows, highs, strict=True)]
    ax.bar(labels, deltas, yerr=err, capsize=4, color=colors)
    ax.axhline(0, color="black", lw=0.8)
    tols = tolerance if isinstance(tolerance, list) else [tolerance] * len(labels)
    if len(set(tols)) <= 1:
        ax.axhline(-tols[0] if tols else 0, color="#C44E52", lw=0.8, ls="--",
                   label=f"-{tols[0] if tols else 0:g} pt tolerance")
    else:
        seen: set[float] = set()
        for i, t in enumerate(tols):
            ax.hlines(-t, i - 0.45, i + 0.45, color="#C44E52", lw=1.2, ls="--",
                      label=None if t in seen else f"-{t:g} pt tolerance")
            seen.add(t)
    ax.set_ylabel("tuned − base (points, 95% CI)")
    ax.set_title(title)
    ax.tick_params(axis="x", rotation=30)
    ax.legend(fontsize=8)
    return _png(fig)


def lineage_table(lineage: dict[str, Any], key: str) -> Table:
    """The model a result scored: each link of its chain with the hash of its weights."""
    rows = [[e.get("kind"), e.get("stage") or e.get("ref"), e.get("path"), (e.get("sha256") or "")[:16]]
            for e in lineage.get("model") or []]
    ad = lineage.get("adapter")
    if ad:
        rows.append(["adapter", ad.get("stage"), ad.get("path"), (ad.get("sha256") or "")[:16]])
    return Table(["model lineage", "stage / ref", "path", "weights sha256"], rows, key)


def build_sections(results: dict, rows: list[dict], samples: int = 20) -> list[Section]:
    secs: list[Section] = []
    t = results.get("timing") or {}
    head = Section("Run", text=("Accuracy is in percent. A suite's accuracy is C-Eval's official average: the mean "
                                "of its subjects' accuracies; categories and Hard likewise (mean over their "
                                "subjects). The pooled (micro) accuracy is shown beside it."))
    head.tables.append(Table(["model", "adapter", "engine", "questions", "seconds", "questions/s"],
                             [[results.get("model"), results.get("adapter"), results.get("engine"),
                               t.get("questions"), t.get("seconds"), t.get("questions_per_s")]], "run"))
    if results.get("lineage"):
        head.tables.append(lineage_table(results["lineage"], "lineage"))
    secs.append(head)
    fg = results.get("forgetting")
    if fg:
        s = Section("Catastrophic-forgetting check",
                    text=(f"Base `{fg['base']}` vs tuned on the same questions. Verdict per suite: `forgetting` "
                          f"when the drop exceeds its tier's tolerance and McNemar's exact test gives "
                          f"p < {fg['alpha']:g}; `inconclusive` when nothing is significant but the run is too "
                          f"small to see a drop of the tolerance (MDE: the drop detectable at this n with "
                          f"{100 * fg.get('power', 0.8):.0f}% power, two-sided, in points); 95% CI from a paired "
                          f"bootstrap ({fg['bootstrap']} resamples); subjects and categories Holm-corrected "
                          f"within their suite. Overall verdict (gating tiers): **{fg['verdict']}**."))
        if fg.get("tiers"):
            s.tables.append(Table(["tier", "suites", "tolerance (pt)", "gates", "verdict"],
                                  [[t, ", ".join(v["suites"]), v["tolerance"], v["gates"], v["verdict"]]
                                   for t, v in fg["tiers"].items()], "forgetting-tiers"))
        rws, labels, d, lo, hi, tol = [], [], [], [], [], []
        for name, r in fg["suites"].items():
            chance = ((results.get("suites") or {}).get(name) or {}).get("chance")
            rws.append([name, r.get("tier"), "all", r["n"], with_chance(r["base_accuracy"], chance),
                        with_chance(r["tuned_accuracy"], chance), r["delta"],
                        f"[{r['ci_low']:.2f}, {r['ci_high']:.2f}]", r["lost"], r["gained"], f"{r['p_value']:.3g}",
                        r.get("mde"), r["verdict"], r.get("note", "")])
            labels.append(name)
            d.append(r["delta"]), lo.append(r["ci_low"]), hi.append(r["ci_high"])
            tol.append(r.get("tolerance", fg["tolerance"]))
            for cat, c in r["categories"].items():
                rws.append([name, r.get("tier"), cat, c["n"], c["base_accuracy"], c["tuned_accuracy"], c["delta"],
                            f"[{c['ci_low']:.2f}, {c['ci_high']:.2f}]", c["lost"], c["gained"],
                            f"{c.get('p_holm', c['p_value']):.3g}", c.get("mde"), c["verdict"], c.get("note", "")])
                labels.append(f"{name}/{cat}")
                d.append(c["delta"]), lo.append(c["ci_low"]), hi.append(c["ci_high"])
                tol.append(r.get("tolerance", fg["tolerance"]))
        s.tables.append(Table(["suite", "tier", "category", "n", "base", "tuned", "delta", "95% CI", "right→wrong",
                               "wrong→right", "p (Holm for categories)", "MDE (pt)", "verdict", "note"], rws,
                              "forgetting"))
        subj_rows = [[name, subj, c["n"], c["base_accuracy"], c["tuned_accuracy"], c["delta"], c["lost"], c["gained"],
                      f"{c['p_raw']:.3g}", f"{c['p_holm']:.3g}", c.get("mde"), c["verdict"]]
                     for name, r in fg["suites"].items() for subj, c in (r.get("subjects") or {}).items()]
        if subj_rows:
            s.tables.append(Table(["suite", "subject", "n", "base", "tuned", "delta", "right→wrong", "wrong→right",
                                   "McNemar p", "Holm p", "MDE (pt)", "verdict"], subj_rows, "forgetting-subjects"))
        if labels:
            s.images.append(("forgetting_deltas", delta_chart("Accuracy change, tuned vs base", labels, d, lo, hi,
                                                               tol)))
        if fg.get("perplexity"):
            p = fg["perplexity"]
            s.tables.append(Table(["perplexity base", "perplexity tuned", "change %", "verdict"],
                                  [[p["base"], p["tuned"], p["change_pct"], p["verdict"]]], "perplexity"))
        flips = [dict(f, suite=n) for n, r in fg["suites"].items() for f in r["flips"]]
        if flips:
            s.tables.append(Table(["suite", "question", "answer", "base", "tuned"],
                                  [[f["suite"], f["uid"], f["answer"], f["base"], f["tuned"]] for f in flips[:200]],
                                  "flips"))
        secs.append(s)
    jd = results.get("judge")
    if jd:
        s = Section("LLM-judge win rate, tuned vs base", text=f"Judge `{jd.get('judge')}` at {jd.get('endpoint')}; "
                    + jd.get("note", ""))
        s.tables.append(Table(["pairs", "win rate (%)", "95% CI", "wins", "ties", "losses", "failed",
                               "position consistency (%)", "first answer preferred (%)", "requests", "cached"],
                              [[jd["n"], jd["win_rate"],
                                f"[{jd['ci_low']}, {jd['ci_high']}]" if jd.get("ci_low") is not None else None,
                                jd["wins"], jd["ties"], jd["losses"], jd["failed"], jd.get("position_consistency"),
                                jd.get("first_position_preferred"), jd.get("requests"), jd.get("cached")]], "judge"))
        secs.append(s)
    for name, sr in (results.get("suites") or {}).items():
        mode = sr.get("mode", "logits")
        how = ("mode `generate`" + (" with chain of thought" if sr.get("cot") else " (answer only)")
               + f"; {sr.get('unextracted', 0)} answers unextractable (counted wrong); extraction levels "
               + ", ".join(f"{k} {v}" for k, v in (sr.get("extraction") or {}).items())
               if mode == "generate" else "mode `logits`")
        warn = (f" Below chance: {sr['accuracy']:.2f}% is under the {sr['chance']:.2f}% a uniform guess scores "
                "on average." if below_chance(sr["accuracy"], sr.get("chance")) else "")
        s = Section(f"Suite {name}", text=(f"split `{sr.get('split')}`, {sr.get('shots')}-shot, {sr['n']} questions, "
                                           f"{how}; pooled over questions (micro, as lm-eval's group) "
                                           f"{_fmt(sr.get('micro_accuracy'))}; chance "
                                           f"{_fmt(sr.get('chance'))} (1 / number of options).{warn}"))
        cats = sr.get("categories") or {}
        crow = [["average (mean over subjects)", with_chance(sr["accuracy"], sr.get("chance")), sr["n"]]] + [[c, v["accuracy"], v["n"]] for c, v in cats.items()]
        if sr.get("hard"):
            crow.append(["C-Eval Hard", sr["hard"]["accuracy"], sr["hard"]["n"]])
        s.tables.append(Table(["group", "accuracy", "n"], crow, f"{name}-categories"))
        if cats and sr["accuracy"] is not None:
            s.images.append((f"{name}_categories", bar_chart(f"{name}: accuracy per category", list(cats),
                                                             [v["accuracy"] for v in cats.values()],
                                                             chance=sr.get("chance", 25.0))))
        if mode == "generate":
            s.tables.append(Table(["subject", "category", "accuracy", "n", "unextracted"],
                                  [[k, v["category"], v["accuracy"], v["n"], v.get("unextracted")]
                                   for k, v in sr["subjects"].items()], f"{name}-subjects"))
        else:
            s.tables.append(Table(["subject", "category", "accuracy", "n"],
                                  [[k, v["category"], v["accuracy"], v["n"]] for k, v in sr["subjects"].items()],
                                  f"{name}-subjects"))
        secs.append(s)
    if results.get("perplexity") and not fg:
        p = results["perplexity"]
        secs.append(Section("Perplexity", tables=[Table(["perplexity", "tokens", "documents", "corpus"],
                                                        [[p["perplexity"], p["tokens"], p["documents"], p["corpus"]]])]))
    ho = results.get("heldout")
    if ho:
        s = Section("Held-out domain evaluation", text=ho.get("note", ""))
        s.tables.append(Table(list(ho["metrics"]), [list(ho["metrics"].values())], "heldout"))
        s.tables.append(Table(["id", "prompt", "reference", "output"],
                              [[e["id"], e["prompt"][-300:], e["reference"], e["output"]]
                               for e in ho.get("examples", [])[:samples]], "heldout-samples"))
        secs.append(s)
    if rows:
        secs.append(Section("Sample predictions", tables=[Table(
            ["suite", "subject", "id", "answer", "prediction", "correct"],
            [[r["suite"], r["subject"], r["id"], r["answer"], r["pred"], r["correct"]] for r in rows[:samples]])]))
        gen = [r for r in rows if r.get("mode") == "generate"]
        if gen:
            secs.append(Section("Sample generated answers", text="Raw output, the letter read from it and the "
                                "extraction level (unextracted: counted wrong, never guessed).", tables=[Table(
                                    ["suite", "subject", "id", "answer", "output", "extracted", "level", "correct"],
                                    [[r["suite"], r["subject"], r["id"], r["answer"], r["output"][-400:],
                                      r["extracted"], r["extraction"], r["correct"]] for r in gen[:samples]])]))
    return secs


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1100px}table{border-collapse:collapse;margin:1em 0}
th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left;vertical-align:top;max-width:420px}
th{background:#f0f0f0}img{max-width:100%;display:block;margin:1em 0}code{background:#f4f4f4}"""
# Lets a headless browser (and a person) confirm every inline image decoded.
CHECK = ("<script>window.addEventListener('load',function(){var i=document.images,n=0;for(var k=0;k<i.length;k++)"
         "{if(i[k].complete&&i[k].naturalWidth>0)n++;}document.body.setAttribute('data-images-decoded',n+'/'+i.length);"
         "});</script>")


def to_html(title: str, sections: list[Section]) -> str:
    out = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
           f"<style>{CSS}</style>{CHECK}</head><body><h1>{html.escape(title)}</h1>"]
    for s in sections:
        out.append(f"<h2>{html.escape(s.title)}</h2>")
        if s.text:
            out.append(f"<p>{html.escape(s.text).replace('**', '')}</p>")
        for name, png in s.images:
            out.append(f"<img alt='{html.escape(name)}' src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
        for t in s.tables:
            out.append("<table><tr>" + "".join(f"<th>{html.escape(h)}</th>" for h in t.headers) + "</tr>")
            for r in t.rows:
                out.append("<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in r) + "</tr>")
            out.append("</table>")
    out.append("</body></html>")
    return "\n".join(out)


def _md_cell(v: Any) -> str:
    return _fmt(v).replace("|", "\\|").replace("\n", " ")


def to_markdown(title: str, sections: list[Section], figdir: str = "figures") -> tuple[str, dict[str, bytes]]:
    lines, files = [f"# {title}", ""], {}
    for s in sections:
        lines += [f"## {s.title}", ""]
        if s.text:
            lines += [s.text, ""]
        for name, png in s.images:
            files[f"{figdir}/{name}.png"] = png
            lines += [f"![{name}]({figdir}/{name}.png)", ""]
        for t in s.tables:
            lines.append("| " + " | ".join(t.headers) + " |")
            lines.append("|" + "---|" * len(t.headers))
            lines += ["| " + " | ".join(_md_cell(v) for v in r) + " |" for r in t.rows]
            lines.append("")
    return "\n".join(lines), files


def publish_artifacts(sections: list[Section]) -> int:
    """Tables as Prefect artifacts when running inside a flow or task run; a no-op elsewhere."""
    try:
        from prefect.context import FlowRunContext, TaskRunContext

        if FlowRunContext.get() is None and TaskRunContext.get() is None:
            return 0
        from prefect.artifacts import create_table_artifact
    except Exception:
        return 0
    n = 0
    for s in sections:
        for t in s.tables:
            if not t.key:
                continue
            key = "".join(c if c.isalnum() else "-" for c in f"eval-{t.key}".lower())[:100]
            create_table_artifact(key=key, table=[{h: _fmt(v) for h, v in zip(t.headers, r, strict=True)}
                                                  for r in t.rows], description=s.title)
            n += 1
    return n


def write_report_files(out: Path, title: str, sections: list[Section]) -> None:
    write_text(out / "report.html", to_html(title, sections))
    md, files = to_markdown(title, sections)
    for rel, data in files.items():
        p = out / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    write_text(out / "report.md", md)
    publish_artifacts(sections)


def write_reports(out: str | Path, results: dict, rows: list[dict], samples: int | None = None) -> None:
    n = samples or (results.get("config") or {}).get("samples_in_report", 20)
    model = results.get("model")
    title = f"Evaluation: {model}" + (f" + {results['adapter']}" if results.get("adapter") else "")
    write_report_files(Path(out), title, build_sections(results, rows, n))
