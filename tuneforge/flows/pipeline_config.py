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


def load_pipeline(path: str | Path, overrides: dict[str, Any] | None = None) -> tuple[PipelineConfig, Path]:
    """The validated pipeline (with `overrides` deep-merged in, as `tuneforge demo --quick` does) and the
    folder its relative paths resolve against."""
    p = Path(path)
    data = deep_merge(read_yaml_mapping(p, "pipeline"), overrides or {})
    try:
        return PipelineConfig.model_validate(data), p.parent
    except ValidationError as e:
        raise RecipeError(f"{p}: invalid pipeline\n  " + "\n  ".join(error_lines(e))) from None


def train_config(step: TrainStep, base: Path, data_dir: Path, previous: dict[str, Any] | None) -> dict[str, Any]:
    """The trainer config a step runs: its file with `set` merged in, the pipeline's build as its dataset,
    a relative replay path resolved beside the config file, and the previous stage's merged model as base
    when `from_previous`."""
    config_file = base / step.config
    tc = deep_merge(read_yaml_mapping(config_file, "training config"), step.set)
    tc["dataset"] = str(data_dir)
    replay = tc.get("replay")
    if replay and not Path(str(replay["dataset"])).is_absolute():
        replay["dataset"] = str(config_file.parent / replay["dataset"])
    if step.from_previous and previous is not None:
        if not previous.get("merged"):
            raise RecipeError(f"train step {step.name!r}: from_previous needs a merged previous model")
        tc["base_model"] = previous["merged"]
    return tc


def eval_config(cfg: PipelineConfig, base: Path, data_dir: Path) -> dict[str, Any]:
    """The eval config of the evaluate step, its held-out block pointed at the pipeline's build."""
    assert cfg.evaluate is not None
    ec = read_yaml_mapping(base / cfg.evaluate.config, "eval config") if cfg.evaluate.config else {}
    if cfg.evaluate.heldout is not None:
        ec["heldout"] = {**cfg.evaluate.heldout, "dataset": str(data_dir)}
    return ec


def forgetting_config(cfg: PipelineConfig, base: Path) -> dict[str, Any]:
    """The eval config of the forgetting step, with the pipeline's suites, tolerance and alpha applied."""
    assert cfg.forgetting is not None
    f = cfg.forgetting
    fc = read_yaml_mapping(base / f.config, "eval config") if f.config else {}
    if f.config:  # mcq:FILE paths in the eval config are relative to that file
        from tuneforge.eval.config import resolve_suite_paths

        resolve_suite_paths(fc, (base / f.config).resolve().parent)
    if f.suites:
        fc["suites"] = [{"benchmark": s} for s in f.suites]
    for key in ("tolerance", "alpha"):
        if getattr(f, key) is not None:
            fc.setdefault("forgetting", {})[key] = getattr(f, key)
    return fc
