"""manifest.json: what went in, what came out, and how every input record is accounted for.

Counts are in input records (a line, row or array element read from a source file):
`input == kept + rejected + deduplicated`, overall and per source. One input may yield several records (ranked
responses become several pairs) and augmentation adds records, so record-level figures are reported beside
them. The manifest is assembled from per-shard summaries; it never needs the records themselves.
"""

from __future__ import annotations

from typing import Any

from tuneforge.common.io import dumps, sha256_text
from tuneforge.common.version import __version__

SPLITS = ("train", "validation", "test")


def reason_key(reason: str) -> str:
    """`too_short: 3 chars < 5` -> `too_short`; free-text reasons are kept whole (they are short)."""
    head = reason.split(":", 1)[0].strip()
    return head if head and " " not in head else reason


class CountsDoNotReconcile(AssertionError):
    """A bug in tuneforge, never in the data: an input record is unaccounted for."""


def reconcile(per_source: dict[str, dict[str, int]]) -> dict[str, int]:
    total = {k: sum(c[k] for c in per_source.values()) for k in ("input", "kept", "rejected", "deduplicated")}
    for name, c in {**per_source, "(all)": total}.items():
        if c["input"] != c["kept"] + c["rejected"] + c["deduplicated"]:
            raise CountsDoNotReconcile(f"counts do not reconcile for {name}: {c}")
    return total


def public_recipe(recipe: dict) -> dict:
    """The recipe as the manifest keeps it: an endpoint URL without user:password or query string."""
    from tuneforge.augment.endpoint import public_url

    llm = (recipe.get("augment") or {}).get("llm") or {}
    if not llm.get("base_url"):
        return recipe
    return {**recipe, "augment": {**recipe["augment"], "llm": {**llm, "base_url": public_url(llm["base_url"])}}}


def build_manifest(*, recipe: dict, recipe_text: str, recipe_file: str, seed: int, template: str,
                   inputs: dict[str, str], sources: dict[str, dict[str, Any]], by_kind: dict[str, list[int]],
                   reasons: dict[str, int], reference_rows: int, generated: int, stage_counts: dict[str, Any],
                   datasets: dict[str, str], exports: dict[str, dict], extra: dict[str, Any]) -> dict[str, Any]:
    """The manifest body and its sha256. `sources[name]` carries input/kept/rejected/deduplicated and splits."""
    total = reconcile({n: {k: s[k] for k in ("input", "kept", "rejected", "deduplicated")} for n, s in sources.items()})
    splits = {s: sum(v[i] for v in by_kind.values()) for i, s in enumerate(SPLITS)}
    body = {
        "tuneforge_version": __version__,
        "recipe_file": recipe_file,
        "recipe_sha256": sha256_text(recipe_text),
        "recipe": public_recipe(recipe),
        "seed": seed,
        "template": template,
        "inputs": dict(sorted(inputs.items())),
        "counts": {
            **total,
            "splits": splits,
            "records": {"by_kind": {k: dict(zip(SPLITS, v, strict=True)) for k, v in sorted(by_kind.items())},
                        "reference_rows": reference_rows, "generated": generated},
            "reasons": dict(sorted(reasons.items())),
            "stages": stage_counts,
        },
        "sources": sources,
        "datasets": datasets,
        "exports": exports,
        **extra,
    }
    return {**body, "sha256": sha256_text(dumps(body))}
