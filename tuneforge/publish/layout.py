"""What the published folder holds, and from which shard parts each file is joined.

The export step leaves every shard's part of each output in its work folder (`publish/shard.py` names them);
here those parts are mapped onto the published layout (a `datasets` folder per record kind and split, an
exports folder per format, kb rows per source, rejects.jsonl) with the figures the manifest reports of them.
The builder runs the joins (spread over its workers) and switches the folder in atomically; what the folder
holds is publish's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.records import KINDS, SPLIT_KINDS
from tuneforge.common.shardio import json_line
from tuneforge.publish.formats import get_writer
from tuneforge.publish.shard import REJECTS, data_part, export_part, kb_part
from tuneforge.publish.split import SPLITS
from tuneforge.publish.write import first_line, write_dataset_dict

FAILURES = "augment_failures.jsonl"


@dataclass(frozen=True)
class Join:
    """One published file (or, with `kind`, one dataset split folder) from shard parts, in shard order."""

    target: Path
    parts: tuple[Path, ...]
    kind: str | None = None


@dataclass
class Layout:
    joins: list[Join] = field(default_factory=list)
    names: list[str] = field(default_factory=list)  # the folder's top-level names, in the order they are linked
    datasets: dict[str, str] = field(default_factory=dict)  # record kind -> its dataset folder
    exports: dict[str, dict[str, Any]] = field(default_factory=dict)  # format -> folder, rows, skipped
    by_kind: dict[str, list[int]] = field(default_factory=dict)  # record kind -> rows per split

    def join(self, target: Path, parts: list[Path], kind: str | None = None) -> None:
        self.joins.append(Join(target, tuple(parts), kind))


def layout(stage: Path, units: list[Path], exported: list[dict[str, Any]], formats: Sequence[str]) -> Layout:
    """The published files under `stage`, each from the parts in `units` (the export units, in shard order),
    whose summaries are `exported`."""
    out = Layout()
    for e in exported:
        for k, v in e["by_kind"].items():
            acc = out.by_kind.setdefault(k, [0, 0, 0])
            for i in range(3):
                acc[i] += v[i]
    for kind in SPLIT_KINDS:
        if kind not in out.by_kind:
            continue
        folder = KINDS[kind].dataset_dir
        assert folder is not None
        for i, s in enumerate(SPLITS):
            out.join(stage / folder / s, [u / data_part(kind, i) for u in units], kind)
        out.datasets[kind] = folder
        out.names.append(folder)
    for fmt in formats:
        w = get_writer(fmt)
        info: dict[str, Any] = {"folder": f"exports/{w.folder}", "rows": {}, "skipped": {}}
        for i, s in enumerate(SPLITS):
            out.join(stage / "exports" / w.folder / f"{s}.jsonl", [u / export_part(fmt, i) for u in units])
            info["rows"][s] = sum(e["exports"][fmt]["rows"][i] for e in exported)
        for e in exported:
            for why, n in e["exports"][fmt]["skipped"].items():
                info["skipped"][why] = info["skipped"].get(why, 0) + n
        info["skipped"] = dict(sorted(info["skipped"].items()))
        out.exports[fmt] = info
    if formats:
        out.names.append("exports")
    kb_sources = sorted({s for e in exported for s in e["kb_sources"]})
    for src in kb_sources:
        out.join(stage / "kb" / f"{src}.jsonl", [u / kb_part(src) for u in units])
    if kb_sources:
        out.names.append("kb")
    out.join(stage / REJECTS, [u / REJECTS for u in units])
    out.names.append(REJECTS)
    return out


def finish_layout(stage: Path, lay: Layout, failures: list[dict]) -> None:
    """What the joins leave to write: each dataset folder's `dataset_dict.json`, and the augment requests
    that failed (if any), beside the rejects."""
    for folder in lay.datasets.values():
        write_dataset_dict(stage / folder)
    if failures:
        with open(stage / FAILURES, "w", encoding="utf-8") as f:
            for row in failures:
                f.write(json_line(row) + "\n")
        lay.names.append(FAILURES)


def card_examples(stage: Path, formats: Sequence[str]) -> dict[str, dict]:
    """The first train row of every export format, for the card."""
    examples = {}
    for fmt in formats:
        row = first_line(stage / "exports" / get_writer(fmt).folder / "train.jsonl")
        if row is not None:
            examples[fmt] = row
    return examples
