"""Checks on the split dataset: cross-split leakage (must be zero) and benchmark contamination."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tuneforge.clean import CleanConfig, contamination_report, leakage_report
from tuneforge.publish.split import SPLITS, SplitResult


def run_checks(split: SplitResult, cfg: CleanConfig, recipe_dir: Path) -> tuple[dict[str, Any], list[dict]]:
    """Manifest entries for both checks, and reject rows for contaminated records the recipe drops."""
    from tuneforge.publish import drop_from_splits

    extra: dict[str, Any] = {}
    rejects: list[dict] = []
    records = [r for s in SPLITS for r in split.splits[s]]
    report = contamination_report(records, cfg, recipe_dir)
    if report.get("benchmarks"):
        dropped = set(report.get("dropped") or [])
        if dropped:
            rejects = drop_from_splits(split, dropped, "contaminated: contains a benchmark question", "clean")
        extra["contamination"] = report
    extra["leakage"] = leakage_report(split.splits, cfg)
    return extra, rejects
