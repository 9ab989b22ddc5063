"""Write the published files from per-shard parts, byte for byte the same however the work was sharded.

Each shard writes its part of every output (Arrow rows per kind and split, JSON lines per export format
and split); here the parts are joined in shard order: JSON lines by copying bytes, Arrow rows re-batched into
fixed-size record batches of an IPC stream (what `datasets.save_to_disk` writes), so batch boundaries never
depend on shard boundaries. Memory holds one batch, not the dataset.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import xxhash

from tuneforge.common.io import atomic_open, write_json
from tuneforge.common.records import KINDS
from tuneforge.common.shardio import copy_into, json_line

SPLITS = ("train", "validation", "test")
BATCH_ROWS = 1000
FILE_BYTES = 500 << 20  # datasets' default max_shard_size for save_to_disk


def features(kind: str) -> dict[str, Any]:
    """A kind's `datasets.Features` as the dict `Features.to_dict()` gives (message lists, text, values).

    Written out here, not built by `datasets`: importing it costs over a second in every build worker, and
    a test checks the two stay equal."""
    k = KINDS[kind]
    msgs = {"feature": {"role": _value("string"), "content": _value("string")}, "_type": "List"}
    cols: dict[str, Any] = {"id": _value("string")}
    for f in k.message_fields:
        cols[f] = msgs
    for f in k.text_fields:
        cols[f] = _value("string")
    for f in k.value_fields:
        cols[f] = _value("bool" if f == "label" else "string")
    cols["meta"] = _value("string")
    return cols


def _value(dtype: str) -> dict[str, str]:
    return {"dtype": dtype, "_type": "Value"}


_MESSAGES = pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))


def arrow_schema(kind: str) -> pa.Schema:
    """The Arrow schema `datasets` gives `features(kind)`, with the metadata it reads the features back from."""
    f = features(kind)
    types = {"List": _MESSAGES, "string": pa.string(), "bool": pa.bool_()}
    fields = [(name, types[v["_type"]] if v["_type"] == "List" else types[v["dtype"]]) for name, v in f.items()]
    return pa.schema(fields, metadata={"huggingface": json.dumps({"info": {"features": f}})})


class _SplitWriter:
    """IPC stream files of exactly BATCH_ROWS-row batches (the last may be shorter), a new file every
    FILE_BYTES; the fingerprint is a hash of every byte written: xxh3-128, the family `datasets` fingerprints with
    (154 MB in 0.014 s here; sha256 took 0.11 on the longest task of a build's last step)."""

    def __init__(self, folder: Path, schema: pa.Schema) -> None:
        self.folder, self.schema = folder, schema
        self.files: list[Path] = []
        self.hash = xxhash.xxh3_128()
        self.rows = 0
        self._writer: Any = None
        self._sink: Any = None
        self._written = 0

    def _open(self) -> None:
        path = self.folder / f".part-{len(self.files):05d}.arrow"
        self.files.append(path)
        self._sink = open(path, "wb")  # noqa: SIM115 - closed in _close
        self._writer = pa.ipc.new_stream(self._sink, self.schema)
        self._written = 0

    def _close(self) -> None:
        if self._writer is None:
            return
        self._writer.close()
        self._sink.flush()
        os.fsync(self._sink.fileno())  # a published file: on disk before the manifest says it is there
        self._sink.close()
        self._writer = self._sink = None
        with open(self.files[-1], "rb") as f:
            while block := f.read(1 << 22):
                self.hash.update(block)

    def write(self, table: pa.Table) -> None:
        if self._writer is None or self._written >= FILE_BYTES:
            self._close()
            self._open()
        # `take` rebuilds every buffer compactly: a slice would carry its parent's buffers, and the bytes
        # written would then depend on where the part boundaries fell.
        compact = table.take(np.arange(table.num_rows)).combine_chunks()
        for b in compact.to_batches(max_chunksize=BATCH_ROWS):
            self._writer.write_batch(b)
            self._written += b.nbytes
        self.rows += table.num_rows

    def finish(self) -> None:
        if self._writer is None and not self.files:
            self._open()  # an empty split is still a dataset (of no rows)
        self._close()
        n = len(self.files)
        names = []
        for i, f in enumerate(self.files):
            name = f"data-{i:05d}-of-{n:05d}.arrow"
            f.rename(self.folder / name)
            names.append({"filename": name})
        write_json(self.folder / "state.json", {
            "_data_files": names, "_fingerprint": self.hash.hexdigest()[:16], "_format_columns": None,
            "_format_kwargs": {}, "_format_type": None, "_output_all_columns": False, "_split": None})
        write_json(self.folder / "dataset_info.json", {"citation": "", "description": "",
                                                       "features": features_dict(self.schema), "homepage": "",
                                                       "license": ""})


def write_split(folder: Path, schema: pa.Schema, parts: list[Path]) -> int:
    """Join Arrow IPC parts into `data-XXXXX-of-NNNNN.arrow`; returns rows. One part is mapped at a time and
    at most BATCH_ROWS - 1 rows are carried from one part to the next."""
    folder.mkdir(parents=True, exist_ok=True)
    w = _SplitWriter(folder, schema)
    carry = schema.empty_table()
    for part in parts:
        if not part.is_file():
            continue
        t = pa.concat_tables([carry, pa.ipc.open_file(pa.memory_map(str(part))).read_all().cast(schema)])
        full = t.num_rows - t.num_rows % BATCH_ROWS
        for k in range(0, full, BATCH_ROWS):
            w.write(t.slice(k, BATCH_ROWS))
        rest = t.slice(full)
        carry = rest.take(np.arange(rest.num_rows)).combine_chunks()  # a copy: the part is unmapped next
    if carry.num_rows:
        w.write(carry)
    w.finish()
    return w.rows


def features_dict(schema: pa.Schema) -> dict:
    return json.loads(schema.metadata[b"huggingface"])["info"]["features"]


def write_dataset_dict(out: Path) -> None:
    """What makes a folder of split folders a `datasets.DatasetDict`."""
    write_json(out / "dataset_dict.json", {"splits": list(SPLITS)})


def concat_lines(path: Path, parts: list[Path]) -> None:
    """Join JSON-lines parts into one file (atomically)."""
    with atomic_open(path, "wb") as f:
        for p in parts:
            if p.is_file():
                copy_into(f, p)


def first_line(path: Path) -> dict | None:
    if not path.is_file():
        return None
    with open(path, encoding="utf-8") as f:
        line = f.readline()
    return json.loads(line) if line.strip() else None


__all__ = ["SPLITS", "arrow_schema", "concat_lines", "features", "first_line", "json_line", "write_dataset_dict",
           "write_split"]
