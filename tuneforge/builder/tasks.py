"""The build's units of work: top-level functions of one small, picklable job each, so any executor (this
process, worker processes, a Dask cluster, Prefect task runs) can run them. Each reads and writes shard files
under the work folder and returns a small summary; none receives or returns a record list.

- `plan_task`: hash and cut a batch of input files (ingest planning).
- `clean_task`: read one shard, clean it (clean's `clean_shard`), write its records, keys and rejects.
- `verify_task`: the exact Jaccard of candidate near-duplicate pairs whose later record is in one shard.
- `export_task`: one shard's records to their split, in every dataset and export format, with its rejects
  (what happens to each record is `publish.shard.export_shard`'s; the task reads and writes the shard's files).
- `join_task`: one published file (or dataset split) from every shard's part of it, in shard order.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tuneforge.clean.config import CleanConfig
from tuneforge.clean.keys import lsh_params
from tuneforge.clean.minhash import key_text
from tuneforge.clean.stage import KIND_CODES, clean_shard, group_code
from tuneforge.common.gcpause import gc_paused_task
from tuneforge.common.io import pack_bytes, unpack
from tuneforge.common.records import REJECT_RANK as RANK
from tuneforge.common.records import Record, texts_of
from tuneforge.common.shardio import done, finish, fresh, json_line, read_table, write_lines, write_table
from tuneforge.ingest import FileJob, Shard, ShardReader, plan_file
from tuneforge.ingest.plan import FilePlan
from tuneforge.publish.shard import COLUMNS as SHARD_COLUMNS
from tuneforge.publish.shard import LEAK, ShardSpec, export_shard

PLAN_BATCH = 256  # files planned in one task at most


def plan_batches(jobs: list[FileJob], sizes: list[int], target: int) -> list[tuple[FileJob, ...]]:
    """Consecutive files in tasks of up to PLAN_BATCH files and about `target` bytes."""
    out: list[tuple[FileJob, ...]] = []
    batch: list[FileJob] = []
    total = 0
    for job, size in zip(jobs, sizes, strict=True):
        if batch and (len(batch) >= PLAN_BATCH or total + size > target):
            out.append(tuple(batch))
            batch, total = [], 0
        batch.append(job)
        total += size
    if batch:
        out.append(tuple(batch))
    return out


def input_size(p: Path) -> int:
    """An input file's bytes (a folder source: its files'), 0 when it cannot be read (planning says why)."""
    try:
        st = os.stat(p)
    except OSError:
        return 0
    if stat.S_ISREG(st.st_mode):
        return st.st_size
    return sum(f.stat().st_size for f in p.rglob("*") if f.is_file()) if p.is_dir() else 0


@gc_paused_task
def plan_task(jobs: tuple[FileJob, ...]) -> list[FilePlan]:
    """Plan a batch of files (one for a big file, up to hundreds of small ones: a task costs more than a
    small file's plan)."""
    return [plan_file(job) for job in jobs]


# ---------------------------------------------------------------- clean

@dataclass(frozen=True)
class CleanJob:
    shard: Shard
    clean: CleanConfig
    recipe_dir: str
    variables: dict[str, str]
    unit: str
    key: str


def _records_schema(bands: int | None) -> pa.Schema:
    cols = [("seq", pa.int32()), ("id", pa.string()), ("kind", pa.int8()), ("input", pa.string()),
            ("group", pa.uint64()), ("exact", pa.binary(16))]
    if bands:
        cols.append(("bands", pa.list_(pa.uint64(), bands)))
    cols += [("record", pa.large_string()), ("original", pa.large_string())]
    return pa.schema(cols)


REJECTS_SCHEMA = pa.schema([("seq", pa.int32()), ("rank", pa.int8()), ("input", pa.string()),
                            ("line", pa.large_string())])


@gc_paused_task
def clean_task(job: CleanJob) -> dict[str, Any]:
    """Ingest one shard, clean it (`clean_shard`: the clean stage decides each record's fate), and write the
    kept records with their keys to `records.arrow` and the ingest and filter rejects to `rejects.arrow`."""
    unit = Path(job.unit)
    prior = done(unit)
    if prior is not None and prior.get("key") == job.key:
        return {**prior, "cached": True}
    fresh(unit)
    reader = ShardReader(job.shard, job.variables)
    rej: dict[str, list] = {"seq": [], "rank": [], "input": [], "line": []}

    def inputs() -> Iterator[tuple[int, list[Record]]]:
        for inp in reader:
            if inp.reject is None:
                yield inp.seq, inp.records
                continue
            rej["seq"].append(inp.seq)
            rej["rank"].append(RANK["ingest"])
            rej["input"].append(None)
            rej["line"].append(json_line(inp.reject))

    out = clean_shard(inputs(), job.clean, job.recipe_dir)
    for seq, row in out.rejects:
        rej["seq"].append(seq)
        rej["rank"].append(RANK["clean"])
        rej["input"].append(row["raw"]["meta"]["input"])
        rej["line"].append(json_line(row))
    kept, keys = out.kept, out.keys
    nb = keys.bands.shape[1] if keys.bands is not None else None
    cols: dict[str, Any] = {
        "seq": pa.array(out.seqs, pa.int32()), "id": pa.array([r["id"] for r in kept], pa.string()),
        "kind": pa.array(keys.kind, pa.int8()), "input": pa.array([r["meta"]["input"] for r in kept], pa.string()),
        "group": pa.array(keys.group, pa.uint64()),
        "exact": pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), len(kept), [None, pa.py_buffer(keys.exact.tobytes())]),
    }
    if nb:
        flat = pa.array(keys.bands.reshape(-1), pa.uint64())
        cols["bands"] = pa.FixedSizeListArray.from_arrays(flat, nb)
    cols["record"] = pa.array([pack_bytes(r) for r in kept], pa.large_string())
    cols["original"] = pa.array([None if r is None else pack_bytes(r) for r in out.originals], pa.large_string())
    write_table(unit / "records.arrow", pa.table(cols, schema=_records_schema(nb)))
    write_table(unit / "rejects.arrow", pa.table(rej, schema=REJECTS_SCHEMA))
    st = reader.stats
    return finish(unit, {"key": job.key, "shard": job.shard.index, "source": job.shard.source.name,
                         "input": st.input, "rejected": st.rejected, "records": st.records, "kept": len(kept),
                         "formats": st.formats, "encodings": st.encodings, "clean": out.counts,
                         "bands": nb})


# ---------------------------------------------------------------- verify

@dataclass(frozen=True)
class VerifyJob:
    pairs: np.ndarray  # (m, 2) global positions, later member in this job's shard
    units: tuple[str, ...]  # every shard's clean unit, in order
    offsets: tuple[int, ...]  # global position of each shard's first record
    ngram: int


def _texts_at(units: tuple[str, ...], offsets: tuple[int, ...], positions: np.ndarray) -> dict[int, str]:
    """The dedup text of records at global positions, reading only those rows."""
    out: dict[int, str] = {}
    starts = np.asarray(offsets)
    shard_of = np.searchsorted(starts, positions, side="right") - 1
    for s in np.unique(shard_of):
        pos = positions[shard_of == s]
        col = read_table(Path(units[s]) / "records.arrow", ["record"]).column("record")
        rows = col.take(pa.array(pos - starts[s])).to_pylist()
        for p, r in zip(pos, rows, strict=True):
            out[int(p)] = key_text(texts_of(unpack(r)))
    return out


@gc_paused_task
def verify_task(job: VerifyJob) -> np.ndarray:
    from tuneforge.clean.dedup import verify

    if not len(job.pairs):
        return np.empty(0, dtype=np.float32)
    texts = _texts_at(job.units, job.offsets, np.unique(job.pairs))
    return verify(job.pairs, texts.__getitem__, job.ngram)


# ---------------------------------------------------------------- export

@dataclass(frozen=True)
class ExportJob:
    shard: int
    source: str
    clean_unit: str
    unit: str
    key: str
    spec: ShardSpec  # what publish needs to place the shard's records


@gc_paused_task
def export_task(job: ExportJob) -> dict[str, Any]:
    """One shard's records, placed by `publish.shard.export_shard`, into its part of every output."""
    unit = Path(job.unit)
    prior = done(unit)
    if prior is not None and prior.get("key") == job.key:
        return {**prior, "cached": True}
    fresh(unit)
    records = read_table(Path(job.clean_unit) / "records.arrow", list(SHARD_COLUMNS))
    out = export_shard(records, read_table(Path(job.clean_unit) / "rejects.arrow"), job.spec)
    for name, table in out.tables.items():
        write_table(unit / name, table)
    for name, lines in out.lines.items():
        write_lines(unit / name, lines)
    np.save(unit / LEAK, out.leak)
    return finish(unit, {"key": job.key, "shard": job.shard, "source": job.source, **out.summary})


# ---------------------------------------------------------------- join

@dataclass(frozen=True)
class JoinJob:
    """One published file (or one dataset split folder) from every shard's part of it, in shard order."""
    target: str
    parts: tuple[str, ...]
    kind: str | None = None  # a dataset split of this record kind; None: JSON lines


@gc_paused_task
def join_task(job: JoinJob) -> dict[str, Any]:
    """Published files are joined on the task runner, one file a task, so that a build's last step spreads over
    the workers too (at 200k records the joins move about 600 MB)."""
    from tuneforge.publish.write import arrow_schema, concat_lines, write_split

    parts = [Path(p) for p in job.parts]
    if job.kind is None:
        concat_lines(Path(job.target), parts)
        return {"target": job.target, "rows": 0}
    return {"target": job.target, "rows": write_split(Path(job.target), arrow_schema(job.kind), parts)}


__all__ = ["KIND_CODES", "CleanJob", "ExportJob", "JoinJob", "VerifyJob", "clean_task", "export_task",
           "group_code", "join_task", "lsh_params", "plan_task", "verify_task"]
