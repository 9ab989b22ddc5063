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


def _fingerprint(table: Any) -> str:
    """A content hash of the Arrow table (its IPC bytes), instead of datasets' random fingerprint, so
    state.json is identical across re-runs and changes whenever the content does."""
    import pyarrow as pa

    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return hashlib.sha256(sink.getvalue().to_pybytes()).hexdigest()[:16]


def write_datasets(out: Path, splits: dict[str, list[Record]]) -> dict[str, str]:
    """One DatasetDict per record kind present; `dataset/` holds conversations when there are any."""
    import pyarrow as pa

    from datasets import Dataset, DatasetDict, DatasetInfo

    kinds = {r["kind"] for recs in splits.values() for r in recs}
    written = {}
    for kind in SPLIT_KINDS:
        if kind not in kinds:
            continue
        features = _features(kind)
        parts = {}
        for split in SPLITS:
            # Arrow builds the table in C++; Dataset.from_list would encode row by row in Python.
            table = pa.Table.from_pylist([_row(r, kind) for r in splits[split] if r["kind"] == kind],
                                         schema=features.arrow_schema)
            parts[split] = Dataset(table, info=DatasetInfo(features=features), fingerprint=_fingerprint(table))
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
