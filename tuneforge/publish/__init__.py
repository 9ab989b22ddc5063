"""Publish: split the records 8:1:1, write the dataset and its exports, and explain it (manifest, card)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.io import atomic_dir, write_json, write_jsonl, write_text
from tuneforge.common.records import SPLIT_KINDS, Record, reject_record
from tuneforge.publish.card import length_stats, render_card
from tuneforge.publish.formats import export_rows, get_writer
from tuneforge.publish.manifest import build_manifest, reconcile
from tuneforge.publish.split import SPLITS, SplitResult, split_records
from tuneforge.publish.write import write_datasets, write_exports

__all__ = ["BuildInputs", "publish", "split_records"]


@dataclass
class BuildInputs:
    """Everything the earlier stages produced, handed to `publish`."""

    recipe: Any
    recipe_path: Path
    seed: int
    ingested: list[Record]
    records: list[Record]  # after clean and augment
    rejects: list[dict]
    source_stats: dict[str, dict]
    inputs: dict[str, str]
    split: SplitResult
    stage_counts: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    failures: list[dict] = field(default_factory=list)


def drop_from_splits(split: SplitResult, ids: set[str], reason: str, stage: str) -> list[dict]:
    """Remove records (e.g. benchmark-contaminated ones) from the splits, returning their reject rows."""
    rejects = []
    for name in SPLITS:
        keep = []
        for r in split.splits[name]:
            if r["id"] in ids:
                rejects.append(reject_record(r, reason, stage))
            else:
                keep.append(r)
        split.splits[name] = keep
    return rejects


def publish(out: Path, b: BuildInputs, tokenizer: Any = None) -> dict[str, Any]:
    """Write OUT atomically: a reader sees the previous build or this one, never a mix."""
    recipe = b.recipe
    kb = [r for r in b.records if r["kind"] not in SPLIT_KINDS]
    final = [r for s in SPLITS for r in b.split.splits[s]] + kb
    counts = reconcile(b.source_stats, b.ingested, final, b.rejects)
    ingested_ids = {r["id"] for r in b.ingested}
    generated = sum(1 for r in final if r["id"] not in ingested_ids)
    recipe_text = b.recipe_path.read_text(encoding="utf-8")
    with atomic_dir(out) as tmp:
        datasets = write_datasets(tmp, b.split.splits)
        exports = write_exports(tmp, b.split.splits, recipe.formats)
        write_jsonl(tmp / "rejects.jsonl", b.rejects)
        if b.failures:
            write_jsonl(tmp / "augment_failures.jsonl", b.failures)
        for source in sorted({r["meta"]["source"] for r in kb}):
            write_jsonl(tmp / "kb" / f"{source}.jsonl", [r for r in kb if r["meta"]["source"] == source])
        manifest = build_manifest(
            recipe=recipe.model_dump(mode="json"), recipe_text=recipe_text, recipe_file=b.recipe_path.name,
            seed=b.seed, template=recipe.template, inputs=b.inputs, source_stats=b.source_stats, counts=counts,
            splits=b.split.splits, kb=kb, rejects=b.rejects, stage_counts=b.stage_counts, generated=generated,
            datasets=datasets, exports=exports, extra={**b.extra, "split_notes": b.split.notes})
        write_json(tmp / "manifest.json", manifest)
        examples = {}
        for name in recipe.formats:
            rows, _ = export_rows(get_writer(name), b.split.splits["train"][:50])
            if rows and recipe.card.examples:
                examples[name] = rows[0]
        all_split = [r for s in SPLITS for r in b.split.splits[s]]
        stats = length_stats(all_split, tokenizer, recipe.card.max_stat_records)
        write_text(tmp / "README.md", render_card(manifest, b.split.splits, stats, examples, b.split.notes))
    return manifest
