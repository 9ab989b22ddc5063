"""Reconcile what happened to every input record, and assemble manifest.json.

Counts are in input records (a line, row or array element read from a source file):
`input == kept + rejected + deduplicated`. One input may yield several records (ranked responses become
several pairs) and augmentation adds records, so record-level figures are reported beside them.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from tuneforge import __version__
from tuneforge.common.io import dumps, sha256_text
from tuneforge.common.records import Record
from tuneforge.publish.split import SPLITS


def reason_key(reason: str) -> str:
    """`too_short: 3 chars < 5` -> `too_short`; free-text reasons are kept whole (they are short)."""
    head = reason.split(":", 1)[0].strip()
    return head if head and " " not in head else reason


def reconcile(source_stats: dict[str, dict], ingested: list[Record], final: list[Record],
              rejects: list[dict]) -> dict[str, Any]:
    """Input-level counts, overall and per source."""
    produced: dict[str, str] = {}  # input id -> source
    for r in ingested:
        produced[r["meta"]["input"]] = r["meta"]["source"]
    surviving = {r["meta"]["input"] for r in final if r["meta"].get("input") in produced}
    dedup_only: dict[str, bool] = {}
    for row in rejects:
        raw = row.get("raw")
        if row["stage"] == "ingest" or not isinstance(raw, dict):
            continue
        inp = raw.get("meta", {}).get("input")
        if inp in produced and inp not in surviving:
            dedup_only[inp] = dedup_only.get(inp, True) and row["reason"] == "deduplicated"
    per_source: dict[str, dict[str, int]] = {}
    for name, st in source_stats.items():
        per_source[name] = {"input": st["input"], "rejected": st["rejected"], "deduplicated": 0, "kept": 0}
    for inp, src in produced.items():
        c = per_source[src]
        if inp in surviving:
            c["kept"] += 1
        elif dedup_only.get(inp):
            c["deduplicated"] += 1
        else:
            c["rejected"] += 1
    total = {k: sum(c[k] for c in per_source.values()) for k in ("input", "kept", "rejected", "deduplicated")}
    if total["input"] != total["kept"] + total["rejected"] + total["deduplicated"]:
        raise AssertionError(f"counts do not reconcile: {total}")  # a bug in tuneforge, never in the data
    return {"total": total, "sources": per_source}


def build_manifest(*, recipe: dict, recipe_text: str, recipe_file: str, seed: int, template: str,
                   inputs: dict[str, str], source_stats: dict[str, dict], counts: dict[str, Any],
                   splits: dict[str, list[Record]], kb: list[Record], rejects: list[dict],
                   stage_counts: dict[str, Any], generated: int, datasets: dict[str, str], exports: dict[str, dict],
                   extra: dict[str, Any]) -> dict[str, Any]:
    by_kind: dict[str, dict[str, int]] = {}
    for split in SPLITS:
        for r in splits[split]:
            by_kind.setdefault(r["kind"], dict.fromkeys(SPLITS, 0))[split] += 1
    sources = {}
    for name, st in source_stats.items():
        sources[name] = {**{k: v for k, v in st.items() if k not in ("input", "rejected")},
                         **counts["sources"][name],
                         "splits": {s: sum(1 for r in splits[s] if r["meta"]["source"] == name) for s in SPLITS}}
    body = {
        "tuneforge_version": __version__,
        "recipe_file": recipe_file,
        "recipe_sha256": sha256_text(recipe_text),
        "recipe": recipe,
        "seed": seed,
        "template": template,
        "inputs": dict(sorted(inputs.items())),
        "counts": {
            **counts["total"],
            "splits": {s: len(splits[s]) for s in SPLITS},
            "records": {"by_kind": by_kind, "reference_rows": len(kb), "generated": generated},
            "reasons": dict(sorted(Counter(reason_key(r["reason"]) for r in rejects).items())),
            "stages": stage_counts,
        },
        "sources": sources,
        "datasets": datasets,
        "exports": exports,
        **extra,
    }
    return {**body, "sha256": sha256_text(dumps(body))}
