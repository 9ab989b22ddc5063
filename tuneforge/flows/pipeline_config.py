"""A pipeline file (`pipelines/<name>.yaml`): which recipe to build, which training stages to run on it,
how to evaluate, and what the forgetting gate does. Paths are relative to the pipeline file."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.common.config import error_lines, read_yaml_mapping
from tuneforge.common.errors import RecipeError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BuildStep(_Strict):
    recipe: str
    runner: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    augment_limit: int | None = Field(None, ge=0, description="cap every augmentation step's `limit`")


class TrainStep(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    config: str = Field(description="a `tuneforge train` config; its `dataset` is replaced by the build")
    set: dict[str, Any] = Field(default_factory=dict, description="keys merged into the config (deep)")
    from_previous: bool = Field(False, description="start from the previous stage's merged model")
    accelerate: str | None = Field(None, description="an accelerate config file: train in a subprocess under "
                                                     "`accelerate launch` (DDP, FSDP, DeepSpeed; 1 or N GPUs)")


class EvaluateStep(_Strict):
    config: str | None = Field(None, description="eval config: C-Eval-style suites, held-out settings")
    heldout: dict[str, Any] | None = Field(default_factory=dict,
                                           description="held-out generation settings on the build's test split; "
                                                       "null to skip")
    base: bool = Field(True, description="also evaluate the base model, for the comparison report")


class ForgettingStep(_Strict):
    config: str | None = Field(None, description="eval config naming the general suites")
    suites: list[str] | None = None
    gate: Literal["fail", "warn"] = "fail"
    tolerance: float | None = None
    alpha: float | None = None


class PipelineConfig(_Strict):
    name: str
    build: BuildStep
    train: list[TrainStep] = Field(default_factory=list)
    evaluate: EvaluateStep | None = None
    forgetting: ForgettingStep | None = None


def deep_merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def load_pipeline(path: str | Path) -> tuple[PipelineConfig, Path]:
    p = Path(path)
    data = read_yaml_mapping(p, "pipeline")
    try:
        return PipelineConfig.model_validate(data), p.parent
    except ValidationError as e:
        raise RecipeError(f"{p}: invalid pipeline\n  " + "\n  ".join(error_lines(e))) from None
