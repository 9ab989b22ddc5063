"""Every operator's `params:` as a pydantic model, keyed by op name: the one registry of op names.

This module imports pydantic and nothing of tuneforge's, so the recipe config can validate a step's params
without importing the operators (which import the client, which imports the config): `config -> params`,
`ops -> params`, never back. Adding an operator is one class here and one in `ops/`.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ResponseFormat = Literal["json_object", "json_schema", "none"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SamplingOverride(_Strict):
    """What a step may change for its own requests (the endpoint stays the run's)."""

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int | None = Field(None, ge=1)
    response_format: ResponseFormat | None = None


class OpParams(_Strict):
    """Base of every operator's params; `vars` passes extra variables to a user's own template."""

    vars: dict[str, Any] = Field(default_factory=dict)


class QuestionParams(OpParams):
    n: int = Field(3, ge=1, le=20)
    max_chars: int = Field(3000, ge=100)
    min_chars: int = Field(30, ge=0)


class AnswerParams(OpParams):
    mode: Literal["fill", "regenerate"] = "fill"
    turns: Literal["last", "all"] = "last"
    system: str | None = None  # replaces the template's default system prompt


class RewriteParams(OpParams):
    roles: list[Literal["user", "assistant", "system"]] = Field(default_factory=lambda: ["user"], min_length=1)
    style: str | None = None  # the template's default style when unset
    turns: Literal["all", "first", "last"] = "all"
    context_turns: int = Field(4, ge=0)


class ExtendParams(OpParams):
    followups: int = Field(1, ge=0, le=5)
    closing: bool = True


Constraint = Literal["name", "short_name", "price_cap", "facilities", "rating"]


class KBFields(_Strict):
    """Which row keys hold what (CrossWOZ hotel_db names by default)."""

    name: str = "名称"
    price: str = "价格"
    rating: str = "评分"
    facilities: str = "酒店设施"
    categories: list[str] = Field(default_factory=lambda: ["酒店类型"])


class KBParams(OpParams):
    n: int = Field(2, ge=1, le=20)
    constraints: list[Constraint] = Field(
        default_factory=lambda: ["name", "short_name", "price_cap", "facilities", "rating"], min_length=1)
    fields: KBFields = Field(default_factory=KBFields)
    strip_prefixes: list[str] = Field(default_factory=lambda: ["北京"])
    # Row keys left out of the prompt (long lists the query is not about); the grounding check sees the whole row.
    omit_fields: list[str] = Field(default_factory=lambda: ["周边景点", "周边餐馆", "周边酒店"])
    check_grounding: bool = True


class PreferenceParams(OpParams):
    k: int = Field(2, ge=1, le=16)
    include_original: bool = True
    margin: float = Field(1.0, ge=0, le=9)
    rubric: str | None = None
    system: str | None = None  # a system prompt for sampling (none: the conversation's own)
    judge: SamplingOverride = Field(default_factory=lambda: SamplingOverride(temperature=0.0))


class JudgeParams(OpParams):
    threshold: float = Field(6, ge=1, le=10)
    rubric: str | None = None


# The op names, in the order the docs list them; `ops.OPERATORS` has one operator per key.
PARAMS: dict[str, type[OpParams]] = {
    "question_from_passage": QuestionParams,
    "answer": AnswerParams,
    "rewrite": RewriteParams,
    "extend_turns": ExtendParams,
    "kb_queries": KBParams,
    "preference": PreferenceParams,
    "judge_filter": JudgeParams,
}
OPS = tuple(PARAMS)
