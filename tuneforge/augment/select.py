"""Which records a step takes: decided by the seed, the step's name and each record's id, never by order
or chance, so a re-run picks the same records and finds their responses in the cache."""

from __future__ import annotations

import hashlib

from tuneforge.augment.config import StepConfig
from tuneforge.common.records import Record


def draw(seed: int, step: str, record_id: str) -> float:
    """A number in [0, 1) fixed by (seed, step, record id)."""
    h = hashlib.sha256(f"{seed}\x1f{step}\x1f{record_id}".encode()).hexdigest()
    return int(h[:13], 16) / 16**13


def input_only(step: StepConfig) -> bool:
    """Whether a step selects only from the records the augment stage received."""
    return step.select.from_steps is None or set(step.select.from_steps) == {"input"}


def candidate(rec: Record, step: StepConfig, default_kinds: tuple[str, ...]) -> bool:
    """A record a step may take, before the draw (kinds and sources)."""
    s = step.select
    if rec["kind"] not in set(s.kinds or default_kinds):
        return False
    return not s.sources or rec["meta"].get("source") in s.sources


def select(records: list[Record], step: StepConfig, seed: int, made_by: dict[str, str],
           default_kinds: tuple[str, ...], preselected: set[str] | None = None) -> list[int]:
    """Indices into `records`, in record order. `made_by` maps a created record's id to its step.
    `preselected`: for a step that takes only received records, the ids already chosen over the whole
    corpus (a sharded build draws and applies `limit` before the records come here)."""
    if preselected is not None and input_only(step):
        return [i for i, rec in enumerate(records) if rec["id"] in preselected and made_by.get(rec["id"]) is None]
    s = step.select
    kinds = set(s.kinds or default_kinds)
    sources = set(s.sources) if s.sources else None
    origins = set(s.from_steps) if s.from_steps is not None else {"input"}
    picked = []
    for i, rec in enumerate(records):
        if rec["kind"] not in kinds or made_by.get(rec["id"], "input") not in origins:
            continue
        if sources is not None and rec["meta"].get("source") not in sources:
            continue
        u = draw(seed, step.name, rec["id"])
        if u < s.p:
            picked.append((u, i))
    if step.limit is not None and len(picked) > step.limit:
        picked = sorted(picked)[: step.limit]  # the `limit` smallest draws: a uniform sample, stable
    return sorted(i for _, i in picked)
