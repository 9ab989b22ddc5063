"""The eval config (YAML): which model, which suites, held-out data, perplexity, forgetting thresholds."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.common.config import error_lines, read_yaml_mapping
from tuneforge.common.errors import RecipeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SuiteConfig(_Strict):
    benchmark: str  # ceval | ceval:PATH | cmmlu:PATH | mmlu:PATH | mcq:FILE | ceval/ceval-exam
    name: str | None = None
    subjects: list[str] | None = None
    shots: int = 5
    split: str | None = None  # default: val, else test; ceval `test` writes the submission JSON
    limit: int | None = None  # first N questions per subject
    columns: dict[str, str] | None = None  # for mcq files
    style: Literal["ceval", "mmlu"] | None = None
    strict_subjects: bool = True  # False when one --subjects list is shared by several suites


class HeldoutConfig(_Strict):
    dataset: str  # a `tuneforge build` output folder (manifest.json) or a saved DatasetDict
    split: str = "test"
    template: str | None = None  # default: the manifest's template, else the tokenizer's own
    limit: int | None = None
    max_new_tokens: int = 256
    do_sample: bool = False
    temperature: float = 1.0
    top_p: float = 1.0
    batch_size: int = 8
    tokenize: Literal["char", "word"] = "char"
    exact_match_max_chars: int = 16
    seed: int = 0


class PerplexityConfig(_Strict):
    corpus: str | None = None  # default: the shipped general-text sample
    limit: int | None = 60
    max_length: int = 512


class ForgettingConfig(_Strict):
    tolerance: float = 1.0  # points of accuracy
    alpha: float = 0.05
    bootstrap: int = 10000
    seed: int = 0
    perplexity_tolerance_pct: float = 10.0


class EvalConfig(_Strict):
    model: str | None = None
    adapter: str | None = None
    engine: Literal["native", "lm-eval"] = "native"
    device: str = "auto"
    dtype: str = "auto"
    batch_size: int = 16
    max_batch_tokens: int = 8192
    chat: bool = False  # wrap MCQ prompts in the model's chat template (C-Eval's chat mode)
    chat_template: str | None = None
    suites: list[SuiteConfig] = Field(default_factory=list)
    heldout: HeldoutConfig | None = None
    perplexity: PerplexityConfig | None = None
    forgetting: ForgettingConfig = Field(default_factory=ForgettingConfig)
    samples_in_report: int = 20


def load_config(src: str | Path | dict | EvalConfig | None, **overrides: Any) -> EvalConfig:
    """A YAML path, a dict or a config, with non-None keyword overrides applied on top."""
    if isinstance(src, EvalConfig):
        data = src.model_dump()
    elif isinstance(src, dict):
        data = dict(src)
    elif src is None:
        data = {}
    else:
        data = read_yaml_mapping(src, "eval config")
    data.update({k: v for k, v in overrides.items() if v is not None})
    try:
        return EvalConfig.model_validate(data)
    except ValidationError as e:
        raise RecipeError("eval config: " + "; ".join(error_lines(e))) from None
