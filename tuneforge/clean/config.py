"""The recipe's `clean:` block, validated so a typo names the field.

Defaults are safe: they only apply normalisation that never changes meaning, drop empty records, scrub
PII and remove exact and near duplicates. Every other filter is off until the recipe sets its threshold.
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_serializer, model_validator

LANGS = ("zh", "en", "mixed", "other")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


_PATH = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*$")
_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")


class UserOp(_Strict):
    """A user's own filter or normaliser: `path` names a class (or factory) importable where the build runs,
    called with `params`. Checked when the recipe loads (clean/custom.py), imported again in each worker."""

    path: str = Field(description="module.path:Attribute, e.g. mypkg.filters:NoURLs")
    params: dict[str, Any] = Field(default_factory=dict, description="keyword arguments for the class")
    name: str | None = Field(None, description="the reason key its rejects are counted under; default: the "
                                               "object's `name` attribute, else the attribute's name in `path`")

    @field_validator("path")
    @classmethod
    def _path(cls, v: str) -> str:
        if not _PATH.match(v):
            raise ValueError(f"{v!r} is not `module.path:Attribute` (e.g. mypkg.filters:NoURLs)")
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        if v is not None and not _NAME.match(v):
            raise ValueError(f"{v!r}: a reason key is letters, digits, `_`, `.` or `-` (no spaces or colons)")
        return v


class _Custom(_Strict):
    """A block with a `custom:` list, which its dump leaves out while empty (a recipe without one dumps, and so
    hashes and publishes, as it did before the key existed)."""

    @model_serializer(mode="wrap")
    def _drop_empty_custom(self, handler: Any) -> Any:
        out = handler(self)
        if isinstance(out, dict) and not out.get("custom"):
            out.pop("custom", None)
        return out


class NormalizeConfig(_Custom):
    nfkc: bool = Field(False, description="Unicode NFKC (x² -> x2, ① -> 1); off = NFC, which never changes meaning")
    fullwidth_ascii: bool = Field(True, description="full-width letters/digits to ASCII; full-width punctuation "
                                                    "only outside Chinese context")
    whitespace: bool = Field(True, description="fold space runs, trailing spaces, CRLF and 3+ newlines "
                                               "(fenced code blocks keep their spacing)")
    control_chars: bool = Field(True, description="drop control and zero-width characters")
    html: bool = Field(False, description="unescape entities and strip tags (for scraped text)")
    custom: list[UserOp] = Field(default_factory=list, description="your own normalisers (`normalize(text) -> "
                                                                   "str`), after the ones above, in this order")


class LanguageConfig(_Strict):
    allow: list[Literal["zh", "en", "mixed", "other"]] = Field(default_factory=lambda: ["zh", "en", "mixed"])
    min_share: float = Field(0.8, gt=0.5, le=1.0,
                             description="share of Han chars (zh) or Latin words (en) to call a record one "
                                         "language; below it in both, zh+en is `mixed`")


class FilterConfig(_Custom):
    min_chars: int | None = Field(None, ge=1, description="whole record, characters")
    max_chars: int | None = Field(None, ge=1)
    min_turn_chars: int | None = Field(None, ge=1, description="every user/assistant turn, characters")
    max_turn_chars: int | None = Field(None, ge=1)
    min_tokens: int | None = Field(None, ge=1, description="whole record, tokens of `tokenizer`")
    max_tokens: int | None = Field(None, ge=1)
    min_turn_tokens: int | None = Field(None, ge=1, description="every user/assistant turn, tokens")
    max_turn_tokens: int | None = Field(None, ge=1)
    tokenizer: str | None = Field(None, description="model ref for token filters, e.g. embedded:smollm2")
    max_repeat_ngram_ratio: float | None = Field(None, gt=0, le=1,
                                                 description="share of repeated char n-grams in a turn")
    repeat_ngram: int = Field(10, ge=2, le=50)
    language: LanguageConfig | None = None
    badwords: str | None = Field(None, description="file of words, one a line (# comments), relative to recipe")
    drop_refusals: bool = Field(False, description="drop responses that are refusals or placeholders")
    refusal_patterns: list[str] = Field(default_factory=list, description="extra regexes that mark a refusal")
    speaker_markers: Literal["off", "flag", "reject"] = Field(
        "flag", description="a transcript's speaker marker (Human:, Assistant:, User:, 用户：, 助手：) at the start of "
                            "a line inside a turn: flag it (kept, counted, `meta.flags`), reject the record, or off")
    custom: list[UserOp] = Field(default_factory=list, description="your own filters (`filter(record)`), after "
                                                                   "the ones above, in this order")

    @property
    def token_filters(self) -> bool:
        return any((self.min_tokens, self.max_tokens, self.min_turn_tokens, self.max_turn_tokens))

    @model_validator(mode="after")
    def _check(self) -> FilterConfig:
        if self.token_filters and not self.tokenizer:
            raise ValueError("token filters (min_tokens/max_tokens/min_turn_tokens/max_turn_tokens) need `tokenizer`")
        for lo, hi in (("min_chars", "max_chars"), ("min_tokens", "max_tokens"),
                       ("min_turn_chars", "max_turn_chars"), ("min_turn_tokens", "max_turn_tokens")):
            a, b = getattr(self, lo), getattr(self, hi)
            if a is not None and b is not None and a > b:
                raise ValueError(f"{lo} ({a}) is greater than {hi} ({b})")
        return self


class PIIConfig(_Strict):
    phone: bool = True
    id_card: bool = True
    email: bool = True
    bank_card: bool = True
    placeholders: dict[Literal["phone", "id_card", "email", "bank_card"], str] = Field(default_factory=dict)


class DedupConfig(_Strict):
    exact: bool = True
    near: bool = True
    threshold: float = Field(0.8, gt=0.0, lt=1.0, description="Jaccard of char n-gram sets")
    num_perm: int = Field(128, ge=16, le=1024)
    ngram: int = Field(5, ge=1, le=32)
    seed: int = 1
    candidate_margin: float = Field(0.1, ge=0.0, lt=0.5,
                                    description="LSH finds candidates down to threshold - margin; each is then "
                                                "checked on its exact Jaccard")


class BenchmarkRef(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    path: str = Field(description="C-Eval/CMMLU/MMLU folder or an MCQ .csv/.tsv/.jsonl, relative to the recipe")
    layout: Literal["auto", "ceval", "cmmlu", "mmlu", "mcq"] = "auto"
    columns: dict[str, str] | None = Field(None, description="for layout mcq: question/A/B/C/D/id -> field")


class ContaminationConfig(_Strict):
    benchmarks: list[BenchmarkRef] = Field(default_factory=list)
    ngram: int = Field(13, ge=4, le=50, description="n-gram of tokens (one Han char or one Latin word each)")
    min_overlap: float = Field(0.5, gt=0.0, le=1.0,
                               description="share of a question's n-grams a record must contain to be flagged")
    max_items_per_gram: int = Field(5, ge=1, description="n-grams shared by more benchmark items are boilerplate")
    drop: bool = False


class CleanConfig(_Strict):
    enabled: bool = True
    normalize: NormalizeConfig = Field(default_factory=NormalizeConfig)
    filters: FilterConfig = Field(default_factory=FilterConfig)
    pii: PIIConfig | None = Field(default_factory=PIIConfig, description="null turns PII scrubbing off")
    dedup: DedupConfig = Field(default_factory=DedupConfig)
    contamination: ContaminationConfig = Field(default_factory=ContaminationConfig)
    leakage: bool | None = Field(None, description="check near-duplicate pairs across train/validation/test; "
                                                   "default: when dedup.near is on (it reuses its signatures)")

    @property
    def check_leakage(self) -> bool:
        return self.dedup.near if self.leakage is None else self.leakage
