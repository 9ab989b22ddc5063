"""The recipe's `augment:` block: the endpoint and sampling settings, then the steps in order.

Every model forbids unknown keys, so a typo in a recipe names the field instead of being ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, model_validator

from tuneforge.augment.params import OPS, PARAMS, OpParams, ResponseFormat, SamplingOverride, _Strict
from tuneforge.common.errors import RecipeError

__all__ = ["OPS", "AugmentConfig", "LLMConfig", "ResponseFormat", "SamplingOverride", "SelectConfig", "StepConfig",
           "cache_path", "load_config"]


class LLMConfig(_Strict):
    base_url: str | None = None
    model: str | None = None
    api_key_env: str = "OPENAI_API_KEY"
    temperature: float = Field(0.7, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    max_tokens: int = Field(512, ge=1)
    # A reply cut by max_tokens (finish_reason length) fails its item; true keeps it (where a cut reply is harmless)
    keep_truncated: bool = False
    # How a JSON reply is asked for: auto (probe the endpoint on first contact: json_schema, else json_object,
    # else the instruction in the prompt with one repair round), or one of them pinned.
    response_format: Literal["auto"] | ResponseFormat = "auto"
    concurrency: int = Field(8, ge=1, le=1024)
    rpm: float | None = Field(None, gt=0)
    tpm: float | None = Field(None, gt=0)
    timeout_s: float = Field(60.0, gt=0)
    # Hedge an attempt running past the p95 of finished ones (None: on, except for the embedded server).
    hedge: bool | None = None
    max_attempts: int = Field(5, ge=1)
    backoff_base_s: float = Field(1.0, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    repair_attempts: int = Field(2, ge=0, le=10)
    price_per_1k_prompt: float = Field(0.0, ge=0)
    price_per_1k_completion: float = Field(0.0, ge=0)


class SelectConfig(_Strict):
    kinds: list[str] | None = None
    sources: list[str] | None = None
    p: float = Field(1.0, ge=0, le=1)
    # None: the records the augment stage received; else only records created by these steps
    # ("input" names the received ones).
    from_steps: list[str] | None = None


class StepConfig(_Strict):
    op: Literal[OPS]  # type: ignore[valid-type]
    name: str | None = None
    select: SelectConfig = Field(default_factory=SelectConfig)
    limit: int | None = Field(None, ge=0)
    template: str | None = None
    lang: Literal["zh", "en"] = "zh"
    params: dict[str, Any] = Field(default_factory=dict)
    llm: SamplingOverride | None = None
    _parsed: OpParams | None = PrivateAttr(None)

    @property
    def op_params(self) -> OpParams:
        """The validated params (validated once, when the recipe is loaded)."""
        if self._parsed is None:
            self._parsed = PARAMS[self.op].model_validate(self.params)
        return self._parsed


class AugmentConfig(_Strict):
    llm: LLMConfig = Field(default_factory=LLMConfig)
    steps: list[StepConfig] = Field(default_factory=list)
    # The response cache (SQLite); relative paths are against the recipe folder.
    # Default: $TUNEFORGE_HOME/augment/cache.sqlite.
    cache: str | None = None

    @model_validator(mode="after")
    def _check_steps(self) -> AugmentConfig:
        seen: set[str] = set()
        for i, step in enumerate(self.steps):
            if step.name is None:
                step.name = step.op if step.op not in seen else f"{step.op}_{i}"
            if step.name in seen or step.name == "input":
                raise ValueError(f"steps[{i}].name {step.name!r} is used twice (or reserved)")
            for src in step.select.from_steps or []:
                if src != "input" and src not in seen:
                    raise ValueError(f"steps[{i}].select.from_steps: {src!r} is not an earlier step")
            seen.add(step.name)
            try:
                step._parsed = PARAMS[step.op].model_validate(step.params)
            except ValidationError as e:
                first = e.errors()[0]
                loc = ".".join(str(p) for p in first["loc"])
                raise ValueError(f"steps[{i}] ({step.op}).params.{loc}: {first['msg']}") from None
        return self


def load_config(block: dict | None, where: str = "augment") -> AugmentConfig:
    """Validate a recipe block, turning pydantic's error into one line that names the field."""
    try:
        return AugmentConfig.model_validate(block or {})
    except ValidationError as e:
        first = e.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise RecipeError(f"{where}.{loc}: {first['msg']}") from None


def cache_path(cfg: AugmentConfig, recipe_dir: Path | None) -> Path:
    from tuneforge.common.home import tuneforge_home

    if cfg.cache:
        p = Path(cfg.cache).expanduser()
        return p if p.is_absolute() or recipe_dir is None else recipe_dir / p
    return tuneforge_home() / "augment" / "cache.sqlite"
