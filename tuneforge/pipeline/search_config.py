"""The `search:` block of a pipeline (issue 17): which knobs a hyperparameter search varies, its trial budget,
the objective (a held-out domain metric, up) and the constraint (the forgetting gate passes).

Knobs are named either by a shorthand that applies to every training stage (`learning_rate`, `lora_r`,
`max_steps`, `num_train_epochs`, `replay_ratio`), by `<stage>.<shorthand>` for one stage, by `order` (which
training stages run, in which order: `"pt>sft"` or `"sft"`), or by a dotted path into the pipeline file
(`forgetting.tolerance`, `evaluate.heldout.max_new_tokens`), whose value is deep-merged there.
A knob is a list of values (categorical) or a range `{low, high, log}`; `grid:` instead gives a plain grid
(a mapping of lists: every combination) or an explicit list of points (mappings knob -> value).
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

SHORTHAND = ("learning_rate", "lora_r", "max_steps", "num_train_epochs", "replay_ratio")
EXCLUDE_KNOB = "exclude_top_percent"  # the trial's build drops the top P% of `exclude` (pipeline/exclude.py)
INT_KNOBS = ("lora_r", "max_steps", "num_train_epochs")
# The held-out block's metric names (tuneforge/eval/heldout.py `score`).
HELDOUT_METRICS = ("bleu4", "rouge1", "rouge2", "rougeL", "exact_match")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class KnobRange(_Strict):
    low: float
    high: float
    log: bool = False
    step: float | None = None

    @model_validator(mode="after")
    def _order(self) -> KnobRange:
        if not self.low < self.high:
            raise ValueError(f"a range needs low < high (got {self.low}..{self.high})")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


class Objective(_Strict):
    metric: str = Field("rougeL", description="a metric of the evaluate step's held-out block, maximised")

    @model_validator(mode="after")
    def _known(self) -> Objective:
        if self.metric not in HELDOUT_METRICS:
            raise ValueError(f"objective.metric {self.metric!r}: one of {', '.join(HELDOUT_METRICS)}")
        return self


class PruneSpec(_Strict):
    """The cheap first forgetting check: these suites (by name; default all) with at most `limit` questions
    a subject. A trial whose gate already fails here is pruned before its full evaluation."""

    suites: list[str] | None = None
    limit: int = Field(2, ge=1)


class SearchSpec(_Strict):
    knobs: dict[str, list[Any] | KnobRange] = Field(default_factory=dict)
    grid: dict[str, list[Any]] | list[dict[str, Any]] | None = None
    trials: int | None = Field(None, ge=1, description="trial budget (default 3; with a grid, its size)")
    sampler: Literal["tpe", "random"] = Field("tpe", description="Optuna sampler for `knobs` (seeded)")
    seed: int = 0
    objective: Objective = Field(default_factory=Objective)
    constraint: Literal["gate"] = Field("gate", description="the forgetting gate passes (policy `fail`)")
    prune: PruneSpec | None = None
    replay_dataset: str | None = Field(None, description="a `tuneforge build` folder for `replay_ratio` when "
                                                         "a stage's config names none (relative to the pipeline)")
    bootstrap: int = Field(1000, ge=100, description="bootstrap resamples for the domain gain's CI")
    exclude: str | None = Field(None, description="a ranked attribution.jsonl the `exclude_top_percent` knob "
                                                  "drops the top P% of (relative to the pipeline)")

    @model_validator(mode="after")
    def _space(self) -> SearchSpec:
        if bool(self.knobs) == bool(self.grid):
            raise ValueError("search: give exactly one of `knobs` (Optuna samples them) or `grid`")
        for name, knob in self.knobs.items():
            if isinstance(knob, list) and not knob:
                raise ValueError(f"search.knobs.{name}: an empty list of values")
            if name == "order" and not isinstance(knob, list):
                raise ValueError("search.knobs.order: a list of stage orders, e.g. ['sft', 'pt>sft']")
        if isinstance(self.grid, dict) and any(not v for v in self.grid.values()):
            raise ValueError("search.grid: every knob needs at least one value")
        if isinstance(self.grid, list) and not self.grid:
            raise ValueError("search.grid: an empty list of points")
        _exclude_knob(self.space().get(EXCLUDE_KNOB), self.exclude)
        return self

    def points(self) -> list[dict[str, Any]] | None:
        """The grid's points, else None: a list grid's in its order; a mapping grid's product in an order shuffled
        by `seed` (so a budget under its size tries a seeded random subset). Enqueued, not drawn by Optuna's
        GridSampler: that one calls `study.stop()` when the grid is used up, which the ask/tell loop the search
        runs cannot take (it raised at the last trial's `tell`)."""
        if isinstance(self.grid, dict):
            import itertools
            import random

            keys = list(self.grid)
            pts = [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*self.grid.values())]
            random.Random(self.seed).shuffle(pts)
            return pts
        return list(self.grid) if isinstance(self.grid, list) else None

    def space(self) -> dict[str, list[Any] | KnobRange]:
        """Every knob and its values: the knobs, a mapping grid, or a list grid's union of values per knob
        (a point that leaves a knob out has None there: the knob is not applied)."""
        if self.knobs:
            return dict(self.knobs)
        if isinstance(self.grid, dict):
            return {k: list(v) for k, v in self.grid.items()}
        names = sorted({k for p in self.points() or [] for k in p})
        out: dict[str, list[Any]] = {}
        for n in names:
            vals: list[Any] = []
            for p in self.points() or []:
                v = p.get(n)
                if encode(v) not in [encode(x) for x in vals]:
                    vals.append(v)
            out[n] = vals
        return out

    def budget(self) -> int:
        if isinstance(self.grid, dict):
            size = 1
            for v in self.grid.values():
                size *= len(v)
            return min(self.trials or size, size)
        if isinstance(self.grid, list):
            return min(self.trials or len(self.grid), len(self.grid))
        return self.trials or 3


def _exclude_knob(knob: list[Any] | KnobRange | None, file: str | None) -> None:
    """`exclude_top_percent` (drop the top P% of an attribution ranking) needs the ranking and percentages."""
    if knob is None:
        if file is not None:
            raise ValueError(f"search.exclude is only read by the {EXCLUDE_KNOB} knob; add the knob or drop it")
        return
    if file is None:
        raise ValueError(f"search.knobs.{EXCLUDE_KNOB} needs `search.exclude`: the attribution.jsonl to drop from")
    values = [knob.low, knob.high] if isinstance(knob, KnobRange) else knob
    for v in values:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 100):
            raise ValueError(f"search.knobs.{EXCLUDE_KNOB}: percentages from 0 to 100, got {v!r}")


def encode(value: Any) -> Any:
    """Optuna's categorical choices are None/bool/int/float/str: anything else goes as canonical JSON."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return "json:" + json.dumps(value, sort_keys=True, ensure_ascii=False)


def decode(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("json:"):
        return json.loads(value[5:])
    return value
