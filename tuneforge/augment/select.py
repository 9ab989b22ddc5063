"""Which records a step takes: decided by the seed, the step's name and each record's id, never by order
or chance, so a re-run picks the same records and finds their responses in the cache."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from tuneforge.augment.config import StepConfig
from tuneforge.common.records import Record


def draw(seed: int, step: str, record_id: str) -> float:
    """A number in [0, 1) fixed by (seed, step, record id)."""
    h = hashlib.sha256(f"{seed}\x1f{step}\x1f{record_id}".encode()).hexdigest()
    return int(h[:13], 16) / 16**13


def input_only(step: StepConfig) -> bool:
    """Whether a step selects only from the records the augment stage received."""
    return step.select.from_steps is None or set(step.select.from_steps) == {"input"}


def takes_from(step: StepConfig, default_kinds: Sequence[str]) -> tuple[set[str], set[str] | None]:
    """The record kinds a step takes (its `select.kinds`, else its operator's defaults) and the sources it
    takes them from (None: every source)."""
    s = step.select
    return set(s.kinds or default_kinds), (set(s.sources) if s.sources else None)


def sample(step: StepConfig, seed: int, ids: Sequence[str], *, limit: bool = True) -> list[int]:
    """The rule, the only copy: which of the candidates `ids` (records of the kinds, sources and origins the
    step takes) it chooses. A candidate is chosen when its draw is below `select.p`; then, with `limit`, only
    the `limit` smallest draws (ties: the earlier candidate), a uniform sample that stays stable as the
    corpus grows. Returns positions into `ids`, in order. The in-memory `select` and the sharded build (which
    applies it to the whole corpus's compact columns) both call it."""
    picked = [(u, i) for i, rid in enumerate(ids) if (u := draw(seed, step.name, rid)) < step.select.p]
    if limit and step.limit is not None and len(picked) > step.limit:
        picked = sorted(picked)[: step.limit]
    return sorted(i for _, i in picked)


def select(records: list[Record], step: StepConfig, seed: int, made_by: dict[str, str],
           default_kinds: tuple[str, ...], preselected: set[str] | None = None) -> list[int]:
    """Indices into `records`, in record order. `made_by` maps a created record's id to its step.
    `preselected`: for a step that takes only received records, the ids already chosen over the whole
    corpus (a sharded build draws and applies `limit` before the records come here)."""
    if preselected is not None and input_only(step):
        return [i for i, rec in enumerate(records) if rec["id"] in preselected and made_by.get(rec["id"]) is None]
    kinds, sources = takes_from(step, default_kinds)
    origins = set(step.select.from_steps) if step.select.from_steps is not None else {"input"}
    cand = [i for i, rec in enumerate(records)
            if rec["kind"] in kinds and made_by.get(rec["id"], "input") in origins
            and (sources is None or rec["meta"].get("source") in sources)]
    return [cand[j] for j in sample(step, seed, [records[i]["id"] for i in cand])]
