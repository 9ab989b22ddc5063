"""The canonical record: TRL's dataset formats plus a stable id and provenance.

A record is a plain dict (cheap to build by the hundred thousand, easy to pickle to Dask or Prefect):

- ``kind="messages"``: ``messages`` = [{role, content}] with roles system/user/assistant/tool (TRL conversational).
- ``kind="preference"``: ``prompt`` = [{role, content}], ``chosen``/``rejected`` = [{role: assistant, content}]
  (TRL conversational preference).
- ``kind="unpaired"``: ``prompt``, ``completion`` (message lists) and ``label`` (TRL unpaired preference, KTO).
- ``kind="text"``: ``text`` (raw documents, for continued pre-training).
- ``kind="kb"``: ``row`` (a knowledge-base table row, kept structured for augmentation, never split).

Every record has ``id`` and ``meta``: {source, file, line, index, group, ops, ...}. ``group`` ties together
everything derived from one conversation or document so the split never separates them.
"""

from __future__ import annotations

import hashlib
from typing import Any

KINDS = ("messages", "preference", "unpaired", "text", "kb")
ROLES = ("system", "user", "assistant", "tool")
# Kinds that go into the split datasets, in order of preference for the primary dataset.
SPLIT_KINDS = ("messages", "preference", "unpaired", "text")

Record = dict[str, Any]
Message = dict[str, str]


def make_id(*parts: object) -> str:
    """A stable id from provenance parts: same source file and position give the same id on any machine."""
    h = hashlib.sha1("\x1f".join(str(p) for p in parts).encode("utf-8"))
    return h.hexdigest()[:16]


def provenance(source: str, file: str, line: int | None, index: int | None, key: str | None = None) -> dict:
    return {"source": source, "file": file, "line": line, "index": index, "key": key, "ops": []}


def new_record(kind: str, meta: dict, sub: int = 0, **fields: Any) -> Record:
    """Build a record; `sub` distinguishes several records made from one input (ranked pairs)."""
    rid = make_id(meta["source"], meta["file"], meta.get("line"), meta.get("index"), meta.get("key"), sub)
    meta = dict(meta)
    meta.setdefault("group", make_id(meta["source"], meta["file"], meta.get("line"), meta.get("index"), meta.get("key")))
    meta.setdefault("ops", [])
    return {"id": rid, "kind": kind, **fields, "meta": meta}


def record_texts(rec: Record) -> list[str]:
    """All human text in a record, for cleaning, dedup and length statistics."""
    kind = rec["kind"]
    if kind == "messages":
        return [m["content"] for m in rec["messages"]]
    if kind == "preference":
        return [m["content"] for m in rec["prompt"] + rec["chosen"] + rec["rejected"]]
    if kind == "unpaired":
        return [m["content"] for m in rec["prompt"] + rec["completion"]]
    if kind == "text":
        return [rec["text"]]
    return []


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
