"""What every operator shares: its step context, its outcome, and how derived records are built."""

from __future__ import annotations

import asyncio
import copy
import hashlib
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import jinja2
from pydantic import BaseModel, Field

from tuneforge.augment.client import LLM
from tuneforge.augment.config import StepConfig
from tuneforge.augment.params import OpParams
from tuneforge.augment.request_types import ItemState, Sampling, Tally
from tuneforge.common.records import KINDS, Record, new_record
from tuneforge.templates.loader import load_prompt, prompt_source, render


@dataclass
class Outcome:
    replace: Record | None = None  # the record, modified (rewrite, answer, judge_filter's score)
    created: list[Record] = field(default_factory=list)
    drop: str | None = None  # reason the input record is dropped
    skipped: str | None = None  # reason nothing was done (not a failure)
    discarded: str | None = None  # a would-be new record thrown away (preference tie), counted by reason


@dataclass
class Prompt:
    name: str
    template: jinja2.Template
    version: str


def load_template(ref: str, recipe_dir: Path | None) -> Prompt:
    """A packaged prompt by name (`rewrite.zh`) or a file relative to the recipe."""
    path = (recipe_dir / ref) if recipe_dir is not None else None
    target: str | Path = path if path is not None and path.is_file() else ref
    source = prompt_source(target)
    return Prompt(str(ref), load_prompt(target), hashlib.sha256(source.encode("utf-8")).hexdigest()[:16])


@dataclass
class StepContext:
    step: StepConfig
    params: Any
    llm: LLM
    sampling: Sampling
    prompt: Prompt
    repair: Prompt
    seed: int
    tally: Tally
    extra: dict[str, Any] = field(default_factory=dict)
    invalid: int = 0  # replies that failed validation or the operator's checks
    schema_invalid: int = 0  # JSON replies that did not parse or did not match the schema
    json_replies: int = 0  # JSON replies that matched the schema

    @property
    def template_version(self) -> str:
        return self.prompt.version

    def render(self, prompt: Prompt | None = None, **variables: Any) -> str:
        p = self.params
        return render((prompt or self.prompt).template, params=p.model_dump(), vars=p.vars, lang=self.step.lang,
                      **variables)

    def render_repair(self, error: str, expects_json: bool) -> str:
        return render(self.repair.template, error=error, expects_json=expects_json, lang=self.step.lang)

    def tally_invalid(self) -> None:
        self.invalid += 1

    def rng(self, *parts: object) -> random.Random:
        """A random stream fixed by the seed, the step and the parts (a record id): re-runs repeat it."""
        h = hashlib.sha256("\x1f".join(str(x) for x in (self.seed, self.step.name, *parts)).encode()).hexdigest()
        return random.Random(int(h[:16], 16))

    def op_entry(self, keys: list[str], template: str | None = None, **extra: Any) -> dict:
        """The `meta.ops` entry; `keys` in the operator's own order, the last being the main reply."""
        entry = {"op": self.step.op, "step": self.step.name, "template": template or self.prompt.name,
                 "model": self.sampling.label, "cache_key": keys[-1] if keys else None}
        if len(keys) > 1:
            entry["cache_keys"] = list(keys)
        entry.update(extra)
        return entry

    def derive(self, origin: Record, kind: str, k: int, entry: dict, **fields: Any) -> Record:
        """A new record from `origin`: same provenance and group (so it lands in the same split)."""
        meta = copy.deepcopy(origin["meta"])
        meta["ops"] = [*meta.get("ops", []), entry]
        meta["derived_from"] = origin["id"]
        rec = new_record(kind, meta, sub=f"{self.step.name}#{k}", **fields)  # type: ignore[arg-type]
        return rec

    def modified(self, rec: Record, entry: dict) -> Record:
        """A copy safe to change: messages and meta lists are new, the strings shared."""
        out = dict(rec)
        for k in KINDS[rec["kind"]].message_fields:
            out[k] = [dict(m) for m in out[k]]
        meta = out["meta"] = dict(rec["meta"])
        meta["ops"] = [*meta.get("ops", []), entry]
        if "originals" in meta:
            meta["originals"] = list(meta["originals"])
        return out


class Score(BaseModel):
    """A judge's verdict."""

    score: int = Field(ge=1, le=10)
    reason: str = ""


async def gather_all(*aws: Any) -> list[Any]:
    """Run concurrently and wait for all; then raise the first failure (so no task is left dangling)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


class Operator:
    """An augmentation step: `run` turns one selected record into an Outcome (raising on failure)."""

    name: str = ""  # set by the registry (ops/__init__.py) from `params.PARAMS`, where op names are listed
    Params: ClassVar[type[OpParams]] = OpParams
    default_kinds: ClassVar[tuple[str, ...]] = ("messages",)
    creates: ClassVar[tuple[str, ...]] = ()  # record kinds it writes that its input lacks (what a stage can train on)
    default_template: ClassVar[str | None] = None  # None: "<op>"; ".<lang>" is appended

    def prepare(self, ctx: StepContext, records: list[Record]) -> None:
        """Precompute what items share (a vocabulary over all records, say)."""

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        raise NotImplementedError
