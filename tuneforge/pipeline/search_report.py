"""OUT/report.html of a search: domain gain against general change for every trial (95% CIs as error bars,
the Pareto front, the chosen trial), then a table of every trial with its state and why it lost."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from tuneforge.common.io import write_text

STYLE = {"complete": ("o", "tab:blue"), "failed_gate": ("X", "tab:red"), "pruned": ("v", "tab:gray"),
         "error": ("s", "black")}


def scatter_png(results: dict[str, Any]) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric = results["search"]["objective_metric"]
    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    seen: set[str] = set()
    for t in results["trials"]:
        g, d = t.get("general") or {}, t.get("domain") or {}
        if g.get("change") is None:
            continue
        x = g["change"]
        y = d.get("gain")
        marker, color = STYLE.get(t["state"], ("o", "tab:blue"))
        if y is None:  # pruned: no domain number; drawn on the x axis with a hollow marker
            y = 0.0
        xerr = [[x - g["ci"][0]], [g["ci"][1] - x]] if g.get("ci") else None
        yerr = [[y - d["ci"][0]], [d["ci"][1] - y]] if d.get("ci") and d.get("gain") is not None else None
        label = t["state"] if t["state"] not in seen else None
        seen.add(t["state"])
        ax.errorbar(x, y, xerr=xerr, yerr=yerr, fmt=marker, color=color, ecolor=color, alpha=0.8, capsize=3,
                    markersize=8, label=label, mfc="none" if t["state"] == "pruned" else color)
        ax.annotate(f"#{t['number']}", (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
        if t.get("chosen"):
            ax.scatter([x], [y], s=320, facecolors="none", edgecolors="gold", linewidths=2.5, label="chosen")
    front = sorted((t["general"]["change"], t["domain"]["gain"]) for t in results["trials"] if t.get("pareto"))
    if len(front) > 1:
        ax.plot([p[0] for p in front], [p[1] for p in front], "--", color="tab:green", label="Pareto front")
    elif front:
        ax.scatter([front[0][0]], [front[0][1]], s=140, marker="+", color="tab:green", label="Pareto front")
    ax.axhline(0, color="0.8", lw=0.8)
    ax.axvline(0, color="0.8", lw=0.8)
    ax.set_xlabel("general change (accuracy points, tuned - base; 95% CI)")
    ax.set_ylabel(f"domain gain (held-out {metric}, tuned - base; 95% CI)")
    ax.set_title(f"{results['pipeline']}: {len(results['trials'])} trials")
    ax.legend(fontsize=8, loc="best")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=96, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


def _fmt(v: Any, ci: list[float] | None = None) -> str:
    if v is None:
        return ""
    s = f"{v:+.2f}" if isinstance(v, float) else str(v)
    return s + (f" [{ci[0]:+.2f}, {ci[1]:+.2f}]" if ci else "")


def to_html(results: dict[str, Any], png: bytes) -> str:
    e = html.escape
    s = results["search"]
    chosen = results.get("chosen")
    metric = s["objective_metric"]
    rows = []
    for t in results["trials"]:
        d, g = t.get("domain") or {}, t.get("general") or {}
        gate = (t.get("gate") or {}).get("verdict")
        cls = ' class="chosen"' if t.get("chosen") else ""
        rows.append(
            f"<tr{cls}><td>{t['number']}</td><td><code>{e(t['hash'])}</code></td>"
            f"<td><code>{e(', '.join(f'{k}={v}' for k, v in sorted(t['params'].items())))}</code></td>"
            f"<td>{e(t['state'])}</td><td>{e(_fmt(d.get('tuned')))}</td><td>{e(_fmt(d.get('gain'), d.get('ci')))}</td>"
            f"<td>{e(_fmt(g.get('change'), g.get('ci')))}{' (prune check)' if g.get('from') == 'prune check' else ''}</td>"
            f"<td>{e(str(gate))}</td><td>{'yes' if t.get('pareto') else ''}</td><td>{e(t.get('why') or '')}</td></tr>")
    base = (results.get("base") or {}).get("heldout") or {}
    head = (f"<p>Chosen: trial <b>#{chosen['number']}</b> (<code>{e(chosen['hash'])}</code>) "
            f"<code>{e(str(chosen['params']))}</code>; its model is <code>{e(str(results.get('final')))}</code>.</p>"
            if chosen else "<p><b>No trial passed the forgetting gate.</b></p>")
    steps = results.get("steps") or {}
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>{e(results['pipeline'])} search</title>
<style>body{{font-family:sans-serif;max-width:1100px;margin:2em auto}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 6px;font-size:13px;vertical-align:top}}tr.chosen{{background:#fff3c4}}</style>
</head><body><h1>Search: {e(results['pipeline'])}</h1>
{head}
<p>Objective: held-out <b>{e(metric)}</b>, up (base model: {e(_fmt(base.get(metric)))}). Constraint: the
forgetting gate passes (policy <code>fail</code>). Sampler: {e(s['sampler_used'])} (seed {s['seed']}), budget
{s['budget']} trials{', pruning on a cheap first forgetting check ' + e(str(s['prune'])) if s.get('prune') else ''}.
Steps: {len(steps.get('ran', []))} ran, {len(steps.get('reused', []))} reused from the cache.</p>
<h2>Domain gain against general change</h2>
<p>Every trial with its 95% intervals (domain: paired bootstrap over held-out examples; general: paired bootstrap
over every general question pooled). Pruned trials have no domain number and sit on the x axis with the change their
cheap check measured. The dashed line is the Pareto front (no trial is better on both axes).</p>
<img alt="domain gain against general change" src="data:image/png;base64,{base64.b64encode(png).decode()}">
<h2>Trials</h2>
<table><tr><th>#</th><th>hash</th><th>params</th><th>state</th><th>{e(metric)}</th><th>domain gain [95% CI]</th>
<th>general change, points [95% CI]</th><th>gate verdict</th><th>Pareto</th><th>why</th></tr>
{''.join(rows)}</table>
<p>Each trial's folder is <code>trials/&lt;hash&gt;/</code> (train/, prune/, eval/, forgetting/ with their own
reports); <code>results.json</code> has the same numbers.</p>
</body></html>"""


def write_search_report(root: Path, results: dict[str, Any]) -> None:
    write_text(root / "report.html", to_html(results, scatter_png(results)))
