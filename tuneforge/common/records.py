"""The canonical record, and the one table that says which fields each record kind has.

A record is a plain dict (cheap to build by the hundred thousand, easy to pickle to a worker): TRL's dataset
formats plus a stable ``id`` and ``meta`` (provenance: source, file, line, index, group, ops, ...). ``group``
ties together everything derived from one conversation or document so the split never separates them.

Every stage reads the fields of a kind from `KINDS` and walks message contents with `messages_of`,
`texts_of` and `map_texts`, so adding a field or a kind is one edit here.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Record = dict[str, Any]
Message = dict[str, str]
ROLES = ("system", "user", "assistant", "tool")


@dataclass(frozen=True)
class Kind:
    """What a record of one kind holds and where it goes."""

    name: str
    message_fields: tuple[str, ...] = ()  # lists of {role, content}, in reading order
    text_fields: tuple[str, ...] = ()  # plain strings
    value_fields: tuple[str, ...] = ()  # anything else the dataset keeps (a label, a table row)
    response_fields: tuple[str, ...] = ()  # what a model learns to produce (checked by refusal filters)
    dataset_dir: str | None = None  # folder of its DatasetDict; None: not split (reference rows, prompts)
    cleaned: bool = True  # its text is normalised, scrubbed and deduplicated (a kb row is reference, kept as is)
    doc: str = ""

    @property
    def fields(self) -> tuple[str, ...]:
        return self.message_fields + self.text_fields + self.value_fields

    @property
    def split(self) -> bool:
        return self.dataset_dir is not None


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("messages", message_fields=("messages",), response_fields=("messages",), dataset_dir="dataset",
         doc="a conversation, roles system/user/assistant/tool (TRL conversational)"),
    Kind("preference", message_fields=("prompt", "chosen", "rejected"), response_fields=("chosen",),
         dataset_dir="dataset_preference", doc="a prompt and a chosen and a rejected reply (TRL preference)"),
    Kind("unpaired", message_fields=("prompt", "completion"), value_fields=("label",),
         response_fields=("completion",), dataset_dir="dataset_unpaired",
         doc="a prompt and one completion marked desirable or not (TRL unpaired preference, KTO)"),
    Kind("text", text_fields=("text",), dataset_dir="dataset_text", doc="a raw document, for continued pre-training"),
    Kind("kb", value_fields=("row",), cleaned=False,
         doc="a knowledge-base table row, kept structured for augmentation, never split"),
    Kind("prompt", message_fields=("messages",),
         doc="a conversation ending in a user turn with no reply yet (`kind: prompt` on a source); the `answer` "
             "step makes it `messages`, and one left unanswered is a reject, never split"),
)}
# Kinds that go into the split datasets, in order of preference for the primary dataset.
SPLIT_KINDS = tuple(k.name for k in KINDS.values() if k.split)
# Kinds whose text the clean stage normalises, scrubs and deduplicates.
CLEANED_KINDS = tuple(k.name for k in KINDS.values() if k.cleaned)


def kind_of(rec: Record) -> Kind:
    return KINDS[rec["kind"]]


def messages_of(rec: Record) -> list[Message]:
    """Every message of a record, in field order (prompt, then chosen, then rejected...)."""
    k = KINDS[rec["kind"]]
    if len(k.message_fields) == 1:
        return rec[k.message_fields[0]]
    return [m for f in k.message_fields for m in rec[f]]


def texts_of(rec: Record) -> list[str]:
    """All human text in a record, for cleaning, dedup and length statistics."""
    k = KINDS[rec["kind"]]
    out = [m["content"] for f in k.message_fields for m in rec[f]]
    out += [rec[f] for f in k.text_fields]
    return out


def turns_of(rec: Record) -> list[tuple[int, str, str]]:
    """(turn number from 1, role, text); a text field is one `document` turn."""
    k = KINDS[rec["kind"]]
    turns = [(m["role"], m["content"]) for f in k.message_fields for m in rec[f]]
    turns += [("document", rec[f]) for f in k.text_fields]
    return [(i, role, text) for i, (role, text) in enumerate(turns, start=1)]


def responses_of(rec: Record) -> list[tuple[int, str]]:
    """(turn number, text) of what a model learns to produce: assistant turns, the chosen reply, a completion
    labelled desirable."""
    k = KINDS[rec["kind"]]
    if k.name == "unpaired" and not rec.get("label", True):
        return []
    out, n = [], 0
    for f in k.message_fields:
        for m in rec[f]:
            n += 1
            if f in k.response_fields and (m["role"] == "assistant" or f != "messages"):
                out.append((n, m["content"]))
    return out


def map_texts(rec: Record, fn: Callable[[str], str]) -> Record:
    """A copy of `rec` with `fn` applied to every message content and text field (meta is shared)."""
    k = KINDS[rec["kind"]]
    new = dict(rec)
    for f in k.message_fields:
        new[f] = [{**m, "content": fn(m["content"])} for m in rec[f]]
    for f in k.text_fields:
        new[f] = fn(rec[f])
    return new


def payload(rec: Record) -> dict[str, Any]:
    """The dataset columns of a record: id, its kind's fields."""
    return {"id": rec["id"], **{f: rec[f] for f in KINDS[rec["kind"]].fields}}


def make_id(*parts: object) -> str:
    """A stable id from provenance parts: same source file and position give the same id on any machine."""
    return _id_of(_joined(parts))


def _joined(parts: tuple[object, ...]) -> str:
    return "\x1f".join(str(p) for p in parts)


def _id_of(joined: str) -> str:
    return hashlib.sha1(joined.encode("utf-8", "surrogatepass")).hexdigest()[:16]


def provenance(source: str, file: str, line: int | None, index: int | None, key: str | None = None) -> dict:
    return {"source": source, "file": file, "line": line, "index": index, "key": key, "ops": []}


def new_record(kind: str, meta: dict, sub: int | str = 0, **fields: Any) -> Record:
    """Build a record; `sub` distinguishes several records made from one input (ranked pairs)."""
    if kind not in KINDS:
        raise ValueError(f"unknown record kind {kind!r}; known: {', '.join(KINDS)}")
    # make_id(source, file, line, index, key[, sub]): the joined provenance is built once for both ids
    where = _joined((meta["source"], meta["file"], meta.get("line"), meta.get("index"), meta.get("key")))
    rid = _id_of(f"{where}\x1f{sub}")
    meta = dict(meta)
    if "group" not in meta:
        meta["group"] = _id_of(where)
    meta.setdefault("ops", [])
    return {"id": rid, "kind": kind, **fields, "meta": meta}


# Where a reject stands among its input's rejects in rejects.jsonl: the stage that rejected it, earliest first
# (rejects are ordered by input, then by this rank). Ingest and clean rank them in the clean step, the rest at export.
REJECT_RANK = {"ingest": 0, "clean": 1, "dedup": 2, "exclude": 2, "augment": 3, "contamination": 4}


def reject(reason: str, *, stage: str, source: str, file: str | None, line: int | None = None,
           index: int | None = None, raw: Any = None, record_id: str | None = None, **extra: Any) -> dict:
    """One line of rejects.jsonl: why, where it came from, and the raw input so nothing is lost."""
    row = {"reason": reason, "stage": stage, "source": source, "file": file, "line": line, "index": index,
           "id": record_id, "raw": raw}
    row.update(extra)
    return row


def reject_record(rec: Record, reason: str, stage: str, **extra: Any) -> dict:
    """Reject a canonical record (dropped by a filter or dedup), keeping it whole in `raw`."""
    m = rec["meta"]
    return reject(reason, stage=stage, source=m["source"], file=m["file"], line=m.get("line"),
                  index=m.get("index"), raw=rec, record_id=rec["id"], **extra)


def kinds_table() -> str:
    """The table as Markdown, for the docs (`tuneforge.common.records.kinds_table()`)."""
    rows = ["| kind | fields | dataset folder | what it is |", "|---|---|---|---|"]
    for k in KINDS.values():
        rows.append(f"| `{k.name}` | {', '.join(f'`{f}`' for f in k.fields)} | "
                    f"{f'`{k.dataset_dir}/`' if k.dataset_dir else '(not split)'} | {k.doc} |")
    return "\n".join(rows)
