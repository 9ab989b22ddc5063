"""One shard's part of every published output: what happens to each of its records at export time.

The build's export step reads a shard's cleaned records and its rejects from the work folder, calls
`export_shard`, and writes the files it returns; every decision about a record is made here, because each is
publish's: a duplicate is dropped with its cluster, an augment step's replacement or new records take its
place, a benchmark question is dropped (or reported), the record's group gives its split, its row is written in
the dataset and in every export format, a hash sample of it feeds the card's statistics, and the shard's rejects
are put in input order. The builder only decides where and when a shard runs.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from tuneforge.clean.config import CleanConfig
from tuneforge.clean.exclude import reject_excluded
from tuneforge.clean.stage import STAGE
from tuneforge.common.io import dumps, unpack
from tuneforge.common.records import KINDS, REJECT_RANK, Record, reject_record
from tuneforge.common.shardio import column_bytes, column_list, json_bytes, json_line
from tuneforge.publish.formats import NotRepresentable, export_row, get_writer
from tuneforge.publish.manifest import reason_key
from tuneforge.publish.split import SplitTable
from tuneforge.publish.write import arrow_schema

COLUMNS = ("seq", "id", "group", "record", "original", "input")  # what a shard's export reads of its records
REJECTS = "rejects.jsonl"
LEAK = "leak.npy"


def data_part(kind: str, split: int) -> str:
    return f"data-{kind}-{split}.arrow"


def export_part(fmt: str, split: int) -> str:
    return f"export-{fmt.replace(':', '_').replace('/', '_')}-{split}.jsonl"


def kb_part(source: str) -> str:
    return f"kb-{source}.jsonl"


@dataclass(frozen=True)
class ShardSpec:
    """What a shard's export needs besides its records: small and picklable, so it travels with the job."""

    dedup: dict[int, dict]  # local row -> {duplicate_of, matched, method, similarity}, for dropped duplicates
    augment: str | None  # the shard's augment state file
    groups: str  # the split table (`SplitTable.save`)
    formats: tuple[str, ...]
    clean: CleanConfig
    recipe_dir: str
    sample_below: int  # records whose id hash is below this are in the card's length statistics
    tokenizer: str | None = None
    exclude: dict[int, dict] = field(default_factory=dict)  # local row -> its attribution rank (an exclusion)
    exclude_made: dict[str, dict] = field(default_factory=dict)  # id of a record augment may make -> the same


@dataclass
class ShardOutput:
    """A shard's part files (name -> Arrow table or lines), its split code per record for the leakage check
    (-1: not in a split), and its summary for the manifest."""

    tables: dict[str, pa.Table]
    lines: dict[str, list[bytes] | list[str]]
    leak: np.ndarray
    summary: dict[str, Any]


def sample_below(records: int, limit: int) -> int:
    """The id-hash bound under which a record is in the card's statistics: about `limit` of `records`."""
    return (1 << 64) - 1 if records <= limit else int((limit / max(1, records)) * (1 << 64))


def dedup_rejects(dups: dict[int, Any], offsets: np.ndarray, id_at: dict[int, str]) -> dict[int, dict[int, dict]]:
    """What each duplicate's reject line says of its cluster, by shard and row: the cluster's first record,
    the member it matched when that is another, the method and the similarity (`id_at`: position -> id)."""
    out: dict[int, dict[int, dict]] = {}
    for d in dups.values():
        s = int(np.searchsorted(offsets, d.index, side="right") - 1)
        row = {"duplicate_of": id_at[d.of], "method": d.method, "similarity": round(d.similarity, 4)}
        if d.matched != d.of:
            row["matched"] = id_at[d.matched]
        out.setdefault(s, {})[d.index - int(offsets[s])] = row
    return out


_CACHE: dict[str, Any] = {}
_CACHE_LOCK = threading.Lock()


def _cached(key: str, make: Any) -> Any:
    """One expensive object per worker process (a tokenizer, a benchmark index, the split table). Made under a
    lock: export tasks on a thread runner (Prefect's) would otherwise import transformers at once from several
    threads, and its lazy module then answers "cannot import name 'AutoTokenizer'" to all but one."""
    if key not in _CACHE:
        with _CACHE_LOCK:
            if key not in _CACHE:
                _CACHE[key] = make()
    return _CACHE[key]


def export_shard(table: pa.Table, rejects: pa.Table, spec: ShardSpec) -> ShardOutput:
    """One shard (its kept records, `COLUMNS`, and the clean step's rejects) into its parts of every output,
    its rejects in input order, and its per-input counts. Row by row: a duplicate is dropped; otherwise the
    record (or augment's replacement) is placed, or augment's drop rejected, then what augment made from it."""
    split_of = _cached(f"split:{spec.groups}", lambda: SplitTable.load(spec.groups))
    where = split_of.lookup(table.column("group").to_numpy()) if table.num_rows else np.empty(0, np.int8)
    aug = _augment_state(spec.augment)
    out = _Export(spec, rejects)
    leak = np.full(table.num_rows, -1, dtype=np.int8)
    cols = {name: column_list(table, name) for name in ("seq", "id", "input")}
    cols.update({name: column_bytes(table, name) for name in ("record", "original")})
    excluded_made: list[str] = []
    for i in range(table.num_rows):
        seq, rid = cols["seq"][i], cols["id"][i]
        st = out.status(cols["input"][i])
        d = spec.dedup.get(i)
        if d is not None:
            raw = unpack(cols["original"][i] or cols["record"][i])
            out.reject(seq, "dedup", reject_record(raw, "deduplicated", stage=STAGE, **d))
            continue
        if i in spec.exclude:  # `build --exclude`: after dedup, so its duplicates stay deduplicated
            raw = unpack(cols["original"][i] or cols["record"][i])
            out.reject(seq, "exclude", reject_excluded(raw, spec.exclude[i]))
            st[1] = False
            continue
        split = int(where[i])
        if rid in aug.dropped:
            out.reject(seq, "augment", aug.dropped[rid])
            st[1] = False
        else:
            rec = aug.replaced.get(rid) or unpack(cols["record"][i])
            if out.emit(rec, split, seq):
                st[0] = True
                if KINDS[rec["kind"]].split:
                    leak[i] = split
            else:
                st[1] = False
        for new in aug.created.get(rid, []):
            if new["id"] in spec.exclude_made:
                excluded_made.append(new["id"])
                out.reject(seq, "augment", reject_excluded(new, spec.exclude_made[new["id"]]))
                continue
            if out.emit(new, split, seq):
                st[0] = True
        for row in aug.rejected.get(rid, []):  # made from this input, then failed the clean stage's checks
            out.reject(seq, "augment", row)
    done = out.output(rejects, leak, sum(len(v) for v in aug.created.values()))
    if spec.exclude_made:
        done.summary["excluded_generated"] = excluded_made
    return done


class _Export:
    """A shard's export in progress: its part files, kept in lists until the end of the shard, the fate of
    each of its inputs, and the figures of its summary."""

    def __init__(self, spec: ShardSpec, rejects: pa.Table) -> None:
        self.spec = spec
        self.writers = [get_writer(f) for f in spec.formats]
        self.contam = _contamination(spec)
        self.data: dict[tuple[str, int], dict[str, list]] = {}  # (kind, split) -> dataset columns
        self.exports: dict[tuple[str, int], list[bytes]] = {}  # (format, split) -> rows
        self.kb: dict[str, list[str]] = {}  # source -> reference rows
        self.rejects: list[tuple[int, int, int, str]] = []  # (seq, rank, order, line)
        self.inputs: dict[str, list[bool]] = {}  # input -> [kept?, only dedup drops?]
        for inp in column_list(rejects, "input"):
            if inp is not None:
                self.status(inp)[1] = False
        self.by_kind: dict[str, list[int]] = {}
        self.exported: dict[str, dict[str, Any]] = {f: {"rows": [0, 0, 0], "skipped": {}} for f in spec.formats}
        self.hits: list[dict] = []
        self.benchmarks: dict[str, dict] = {}
        self.lengths: list[int] = []
        self.turns: list[int] = []

    def status(self, inp: str) -> list[bool]:
        return self.inputs.setdefault(inp, [False, True])

    def reject(self, seq: int, stage: str, row: dict) -> None:
        """A reject made at export: after the clean step's (order -1) and the earlier ones of its input."""
        self.rejects.append((seq, REJECT_RANK[stage], len(self.rejects), json_line(row)))

    def emit(self, rec: Record, split: int, seq: int) -> bool:
        """Place one record: a kb row, or a row of its dataset split and of every export format that can say
        it. False when it is rejected instead."""
        if rec["kind"] == "prompt":  # a question no `answer` step took: it never reaches a split unanswered
            self.reject(seq, "augment", reject_record(
                rec, "unanswered: no `answer` step selected this prompt (its select, p or limit, or "
                     "--augment-limit, left it out)", "augment"))
            return False
        if not KINDS[rec["kind"]].split:
            self.kb.setdefault(rec["meta"]["source"], []).append(json_line(rec))
            return True
        if self._contaminated(rec, seq):
            return False
        self._row(rec, split, dumps(rec["meta"]))
        if _sample_value(rec["id"]) < self.spec.sample_below and rec["kind"] == "messages":
            self.lengths.extend(_lengths(rec, self.spec.tokenizer))
            self.turns.append(sum(1 for m in rec["messages"] if m["role"] == "user"))
        return True

    def _contaminated(self, rec: Record, seq: int) -> bool:
        """Report a record that holds a benchmark question; True when the recipe drops it."""
        c = self.spec.clean.contamination
        found = self.contam.hits(rec, c.min_overlap) if self.contam is not None else None
        if not found:
            return False
        from tuneforge.clean.contamination import add_hits

        add_hits(self.benchmarks, found)
        self.hits.extend({"record_id": rec["id"], "benchmark": b, "item": u, "overlap": ov} for b, u, ov in found)
        if c.drop:
            self.reject(seq, "contamination", reject_record(rec, "contaminated: contains a benchmark question",
                                                            "clean"))
        return c.drop

    def _row(self, rec: Record, split: int, meta_json: str) -> None:
        """The record's dataset row, a column at a time (`payload` and its meta), and its row in every format."""
        k = KINDS[rec["kind"]]
        cols = self.data.get((rec["kind"], split))
        if cols is None:
            cols = self.data[(rec["kind"], split)] = {name: [] for name in ("id", *k.fields, "meta")}
        for name in ("id", *k.fields):
            cols[name].append(rec[name])
        cols["meta"].append(meta_json)
        self.by_kind.setdefault(rec["kind"], [0, 0, 0])[split] += 1
        for w in self.writers:
            if rec["kind"] not in w.kinds:
                continue
            try:
                self.exports.setdefault((w.name, split), []).append(json_bytes(export_row(w, rec, meta_json)))
                self.exported[w.name]["rows"][split] += 1
            except NotRepresentable as e:
                sk = self.exported[w.name]["skipped"]
                sk[str(e)] = sk.get(str(e), 0) + 1

    def output(self, rejects: pa.Table, leak: np.ndarray, generated: int) -> ShardOutput:
        """The part files, with the clean step's rejects merged in input order, and the summary."""
        for seq, rank, line in zip(column_list(rejects, "seq"), column_list(rejects, "rank"),
                                   column_list(rejects, "line"), strict=True):
            self.rejects.append((seq, rank, -1, line))
        self.rejects.sort(key=lambda t: (t[0], t[1], t[2]))
        reasons = Counter(reason_key(json.loads(r[3])["reason"]) for r in self.rejects)
        fates = self.inputs.values()
        summary = {"kept": sum(1 for s in fates if s[0]), "deduplicated": sum(1 for s in fates if not s[0] and s[1]),
                   "rejected_records": sum(1 for s in fates if not s[0] and not s[1]), "reasons": dict(reasons),
                   "by_kind": self.by_kind, "exports": self.exported,
                   "contamination": {"hits": self.hits, "benchmarks": self.benchmarks}, "lengths": self.lengths,
                   "turns": self.turns, "kb_sources": sorted(self.kb),
                   "kb_rows": sum(len(v) for v in self.kb.values()), "generated": generated}
        tables = {data_part(kind, split): _table(cols, arrow_schema(kind)) for (kind, split), cols in self.data.items()}
        lines: dict[str, list[bytes] | list[str]] = {export_part(fmt, split): rows
                                                     for (fmt, split), rows in self.exports.items()}
        lines.update({kb_part(source): rows for source, rows in self.kb.items()})
        lines[REJECTS] = [r[3] for r in self.rejects]
        return ShardOutput(tables, lines, leak, summary)


def _sample_value(rid: str) -> int:
    return int.from_bytes(hashlib.sha1(rid.encode()).digest()[:8], "big")


def _lengths(rec: Record, tokenizer: str | None) -> list[int]:
    texts = [m["content"] for m in rec["messages"]]
    if tokenizer is None:
        return [len(t) for t in texts]
    from tuneforge.common.models import load_tokenizer

    tok = _cached(f"tok:{tokenizer}", lambda: load_tokenizer(tokenizer))
    return [len(ids) for ids in tok(texts, add_special_tokens=False)["input_ids"]]


@dataclass
class _AugmentState:
    replaced: dict[str, Record] = field(default_factory=dict)
    created: dict[str, list[Record]] = field(default_factory=dict)  # root input id -> records, in order
    dropped: dict[str, dict] = field(default_factory=dict)  # id -> reject row
    rejected: dict[str, list[dict]] = field(default_factory=dict)  # root input id -> reject rows of created records


def _augment_state(path: str | None) -> _AugmentState:
    st = _AugmentState()
    if path is None or not Path(path).is_file():
        return st
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if row["action"] == "replace":
                st.replaced[row["id"]] = row["record"]
            elif row["action"] == "create":
                st.created.setdefault(row["root"], []).append(row["record"])
            elif row["action"] == "reject":
                st.rejected.setdefault(row["root"], []).append(row["reject"])
            else:
                st.dropped[row["id"]] = row["reject"]
    return st


def _contamination(spec: ShardSpec) -> Any:
    c = spec.clean.contamination
    if not c.benchmarks:
        return None
    from tuneforge.clean.contamination import BenchmarkIndex

    key = f"contam:{spec.recipe_dir}:{c.model_dump_json()}"
    return _cached(key, lambda: BenchmarkIndex(spec.clean, Path(spec.recipe_dir)))


def _table(cols: dict[str, list], schema: pa.Schema) -> pa.Table:
    """Columns of Python values as a table, converted a column at a time: about nine times faster than
    `Table.from_pylist`, which looks every field up row by row (at 10k message rows 0.23 s against 0.026 s)."""
    return pa.table({f.name: _column(cols[f.name], f.type) for f in schema}, schema=schema)


def _column(values: list[Any], typ: pa.DataType) -> pa.Array:
    """A list-of-struct column (messages) is built from flat per-field string arrays and the list offsets:
    converting nested Python dicts is the export's costliest step otherwise (24 us a record against 4)."""
    if not (pa.types.is_list(typ) and pa.types.is_struct(typ.value_type)):
        return pa.array(values, type=typ)
    names = [f.name for f in typ.value_type]
    flat: list[list[Any]] = [[] for _ in names]
    offsets, nulls, n = [0], [], 0
    for v in values:
        nulls.append(v is None)
        for m in v or ():
            for col, name in zip(flat, names, strict=True):
                col.append(m.get(name))
            n += 1
        offsets.append(n)
    items = pa.StructArray.from_arrays([pa.array(col, type=f.type) for col, f in zip(flat, typ.value_type, strict=True)],
                                       fields=list(typ.value_type))
    mask = pa.array(nulls, pa.bool_()) if any(nulls) else None
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), items, type=typ, mask=mask)
