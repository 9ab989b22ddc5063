"""Write the split dataset (Arrow, via `datasets`) and its JSONL exports, byte for byte reproducibly."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from tuneforge.common.io import dumps, write_jsonl
from tuneforge.common.records import SPLIT_KINDS, Record
from tuneforge.publish.formats import export_rows, get_writer
from tuneforge.publish.split import SPLITS

DATASET_DIRS = {"messages": "dataset", "preference": "dataset_preference", "unpaired": "dataset_unpaired",
                "text": "dataset_text"}


def _features(kind: str) -> Any:
    from datasets import Features, List, Value

    msgs = List({"role": Value("string"), "content": Value("string")})
    cols: dict[str, Any] = {"id": Value("string")}
    if kind == "messages":
        cols["messages"] = msgs
    elif kind == "preference":
        cols.update(prompt=msgs, chosen=msgs, rejected=msgs)
    elif kind == "unpaired":
        cols.update(prompt=msgs, completion=msgs, label=Value("bool"))
    else:
        cols["text"] = Value("string")
    cols["meta"] = Value("string")
    return Features(cols)


def _row(rec: Record, kind: str) -> dict:
    fields = {"messages": ("messages",), "preference": ("prompt", "chosen", "rejected"),
              "unpaired": ("prompt", "completion", "label"), "text": ("text",)}[kind]
    return {"id": rec["id"], **{f: rec[f] for f in fields}, "meta": dumps(rec["meta"])}


def primary_kind(kinds: set[str]) -> str | None:
    return next((k for k in SPLIT_KINDS if k in kinds), None)


def write_datasets(out: Path, splits: dict[str, list[Record]]) -> dict[str, str]:
    """One DatasetDict per record kind present; `dataset/` holds conversations when there are any."""
    from datasets import Dataset, DatasetDict

    kinds = {r["kind"] for recs in splits.values() for r in recs}
    written = {}
    for kind in SPLIT_KINDS:
        if kind not in kinds:
            continue
        parts = {}
        for split in SPLITS:
            rows = [_row(r, kind) for r in splits[split] if r["kind"] == kind]
            ds = Dataset.from_list(rows, features=_features(kind))
            # A content fingerprint instead of a random one keeps state.json identical across re-runs.
            ds._fingerprint = hashlib.sha256(f"{kind}/{split}/".encode() + "\n".join(
                dumps(r) for r in rows).encode()).hexdigest()[:16]
            parts[split] = ds
        folder = DATASET_DIRS[kind]
        DatasetDict(parts).save_to_disk(str(out / folder))
        written[kind] = folder
    return written


def write_exports(out: Path, splits: dict[str, list[Record]], formats: list[str]) -> dict[str, dict]:
    summary: dict[str, dict] = {}
    for name in formats:
        writer = get_writer(name)
        info: dict[str, Any] = {"folder": f"exports/{writer.folder}", "rows": {}, "skipped": {}}
        for split in SPLITS:
            rows, skipped = export_rows(writer, splits[split])
            info["rows"][split] = write_jsonl(out / "exports" / writer.folder / f"{split}.jsonl", rows)
            for reason, n in skipped.items():
                info["skipped"][reason] = info["skipped"].get(reason, 0) + n
        summary[name] = info
    return summary
