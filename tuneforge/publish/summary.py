"""The manifest and the card of a build, from what its steps reported: per-shard summaries and compact
arrays, never the records.

The builder collects these facts as it runs (file plans, the clean and export summaries of every shard, the
dedup result, the augment result, the split notes) and hands them here once every shard is exported; what the
manifest says of them (counts per source and stage, reasons, warnings, the contamination and leakage checks)
and what the card shows is publish's.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.clean.config import CleanConfig
from tuneforge.clean.dedup import Keys
from tuneforge.clean.stage import merge_counts
from tuneforge.ingest import FileJob, empty_files, source_figures
from tuneforge.ingest.plan import FilePlan
from tuneforge.publish.card import empty_sources, render_card
from tuneforge.publish.layout import card_examples
from tuneforge.publish.manifest import build_manifest
from tuneforge.publish.split import SPLITS

log = logging.getLogger("tuneforge.builder")  # the build's log: its warnings print under its name


@dataclass
class BuildFacts:
    """What a build knows once every shard is exported."""

    recipe: Any  # the build's `tuneforge.recipe.Recipe` (publish sits below the recipe module)
    recipe_path: Path
    base: Path  # the recipe's folder
    seed: int
    jobs: list[FileJob]
    plans: list[FilePlan]  # one a job
    cleaned: list[dict[str, Any]]  # the clean step's summary of every shard
    exported: list[dict[str, Any]]  # the export step's summary of every shard (`publish.shard.export_shard`)
    dedup: Any  # `clean.dedup.deduplicate`'s result
    augment: dict[str, Any]  # the augment step's result
    notes: list[str]  # the split's notes
    keys: Keys
    ids: list  # every shard's record ids (an Arrow column each), in build order
    leak: Callable[[], np.ndarray]  # every record's split code (-1: none), read only for the leakage check
    exclusion: Any = None  # `clean.exclude.Exclusion` of `build --exclude` (or the recipe's `exclude:`)
    excluded: dict[int, dict] = field(default_factory=dict)  # build position -> its attribution rank

    @cached_property
    def recipe_text(self) -> str:
        return self.recipe_path.read_text(encoding="utf-8")


def make_manifest(f: BuildFacts, by_kind: dict[str, list[int]], datasets: dict[str, str],
             exports: dict[str, dict]) -> dict[str, Any]:
    """The manifest body and its sha256 (`publish.manifest.build_manifest`)."""
    r = f.recipe
    sources = source_counts(f)
    reasons: Counter = Counter()
    for e in f.exported:
        reasons.update(e["reasons"])
    clean_counts = merge_counts([c["clean"] for c in f.cleaned])
    for d in f.dedup.dups.values():
        clean_counts["deduplicated"]["exact" if d.method == "exact" else "near"] += 1
    clean_counts["kept"] -= len(f.dedup.dups)
    stage_counts: dict[str, Any] = {"ingest": {"rejected": sum(c["rejected"] for c in f.cleaned)},
                                    "clean": clean_counts}
    extra: dict[str, Any] = {"warnings": empty_files(f.jobs, f.plans)}
    for w in empty_sources({"sources": sources}):
        log.warning("%s", w)
        extra["warnings"].append(w)
    if f.augment["counts"]:
        stage_counts["augment"] = f.augment["counts"]
        stage_counts["generated"] = f.augment["clean"]
        extra["augment_usage"] = f.augment["usage"]
    extra["split_notes"] = f.notes
    if f.exclusion is not None:
        from tuneforge.clean.exclude import report

        made = {rid for e in f.exported for rid in e.get("excluded_generated", [])}
        extra["exclude"], warned = report(f.exclusion, f.excluded, sum(p in f.dedup.dups for p in f.excluded), made)
        for w in warned:
            log.warning("%s", w)
        extra["warnings"] += warned
    extra.update(checks(f, r.clean))
    outside = sorted({j.rel for j in f.jobs if j.rel.startswith("..") or Path(j.rel).is_absolute()})
    if outside:
        extra["outside_sources"] = outside
    # Execution facts (executor, shard sizes) are in build.json, not in the manifest: they never change
    # what the build produces, and the manifest must be identical whatever ran it.
    return build_manifest(
        recipe=r.model_dump(mode="json"), recipe_text=f.recipe_text,
        recipe_file=f.recipe_path.name, seed=f.seed, template=r.template,
        inputs={p.rel: p.sha256 for p in f.plans if p.sha256}, sources=sources, by_kind=by_kind,
        reasons=dict(reasons), reference_rows=sum(e["kb_rows"] for e in f.exported),
        generated=sum(f.augment.get("generated", {}).values()), stage_counts=stage_counts, datasets=datasets,
        exports=exports, extra=extra)


def make_card(f: BuildFacts, manifest: dict[str, Any], stage: Path) -> str:
    """OUT/README.md: the manifest's figures, the sampled turn lengths, and the first train row of each export
    format (read from the staged exports under `stage`)."""
    lengths = [n for e in f.exported for n in e["lengths"]]
    turns = [n for e in f.exported for n in e["turns"]]
    stats = {"unit": "tokens" if f.recipe.card.tokenizer else "characters", "sampled": len(turns),
             "turn_lengths": lengths, "turns": turns}
    examples = card_examples(stage, f.recipe.formats) if f.recipe.card.examples else {}
    return render_card(manifest, stats, examples, f.notes, f.recipe_text)


def source_counts(f: BuildFacts) -> dict[str, dict[str, Any]]:
    """Every source's figures as read (`ingest.source_figures`), with its kept, rejected and deduplicated
    input records and its rows per split."""
    out = source_figures(f.recipe.sources, f.jobs, f.plans, f.cleaned)
    for o in out.values():
        o.update(kept=0, deduplicated=0, splits=dict.fromkeys(SPLITS, 0))
    for c, e in zip(f.cleaned, f.exported, strict=True):
        o = out[c["source"]]
        o["kept"] += e["kept"]
        o["deduplicated"] += e["deduplicated"]
        o["rejected"] += e["rejected_records"]
        for v in e["by_kind"].values():
            for i, s in enumerate(SPLITS):
                o["splits"][s] += v[i]
    return out


def checks(f: BuildFacts, cfg: CleanConfig) -> dict[str, Any]:
    """The manifest's `contamination` (when benchmarks are named) and `leakage` entries."""
    from tuneforge.clean.leakage import report

    out: dict[str, Any] = {}
    c = cfg.contamination
    if c.benchmarks:
        stats: dict[str, dict] = {}
        hits: list[dict] = []
        for e in f.exported:
            hits += e["contamination"]["hits"]
            for name, st in e["contamination"]["benchmarks"].items():
                acc = stats.setdefault(name, {**st, "hits": 0, "records": 0})
                acc["hits"] += st["hits"]
                acc["records"] += st["records"]
        from tuneforge.clean.contamination import BenchmarkIndex

        idx = BenchmarkIndex(cfg, f.base)
        for name, st in idx.stats.items():
            base = {**st, "hits": 0, "records": 0}
            base.update({k: v for k, v in stats.get(name, {}).items() if k in ("hits", "records")})
            stats[name] = base
        out["contamination"] = {"ngram": c.ngram, "min_overlap": c.min_overlap, "benchmarks": stats,
                                "hits": hits, "dropped": [h["record_id"] for h in hits] if c.drop else []}
    if cfg.check_leakage and f.keys.bands is not None:
        starts = np.cumsum([0] + [len(c) for c in f.ids])

        def id_at(pos: int) -> str:
            s = int(np.searchsorted(starts, pos, side="right") - 1)
            return f.ids[s][pos - int(starts[s])].as_py()

        out["leakage"] = report(f.dedup.pairs, f.dedup.similarity, f.leak(), id_at, cfg,
                                int(f.keys.alive.sum()) - len(f.dedup.dups))
    else:
        out["leakage"] = {"checked": 0, "skipped": "near-duplicate detection is off (clean.dedup.near: false); "
                                                  "set clean.leakage: true to check anyway"}
    return out
