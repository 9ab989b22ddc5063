"""A pipeline file (`pipelines/<name>.yaml`): which recipe to build, which training stages to run on it,
how to evaluate, and what the forgetting gate does. Paths in the pipeline are relative to the pipeline file;
paths inside a config it names are relative to that config file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tuneforge.clean.exclude import ExcludeConfig
from tuneforge.common.config import error_lines, read_yaml_mapping
from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.extras import require
from tuneforge.common.io import sha256_file
from tuneforge.pipeline.search_config import SearchSpec


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class BuildStep(_Strict):
    recipe: str
    runner: Literal["local", "dask"] = "local"
    dask_address: str | None = None
    llm_base_url: str | None = None
    llm_model: str | None = None
    augment_limit: int | None = Field(None, ge=0, description="cap every augmentation step's `limit`")
    exclude: ExcludeConfig | None = Field(None, description="drop the top records of a ranked attribution.jsonl "
                                                            "(its `file` relative to the pipeline)")


class TrainStep(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9_.\-]+$")
    config: str = Field(description="a `tuneforge train` config; its `dataset` is replaced by the build")
    set: dict[str, Any] = Field(default_factory=dict, description="keys merged into the config (deep)")
    from_previous: bool | None = Field(
        None, description="start from the previous stage's model (its merged adapter or its full weights); the "
                          "default for every stage after the first, which is the only place `false` is allowed")
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
    on_inconclusive: Literal["fail", "warn", "pass"] = Field(
        "warn", description="what an under-powered check (verdict `inconclusive`) does to the gate: fail the run, "
                            "warn (exit 0, said on the summary line) or pass (said in the reasons)")
    tolerance: float | None = None
    alpha: float | None = None
    expected_flip_rate: float | None = Field(
        None, gt=0, lt=1, description="planning guess of the share of questions whose answer flips between base "
                                      "and tuned; adds a sizing at that rate to the best-case one")


class AttributeStep(_Strict):
    """Rank the training records by their contribution to the questions the forgetting check lost
    (tuneforge/attribute; needs `forgetting:` and a PEFT adapter)."""

    proj_dim: int = Field(256, ge=1, description="dimension the adapter gradients are projected to")
    proj_type: str = Field("sjlt", description="sjlt (sparse), rademacher | normal (dense); CUDA: random_mask, grass")
    min_lost: int = Field(5, ge=1, description="fewest lost questions worth attributing")
    normalize: bool = Field(True, description="cosine (true) or raw gradient dot products")
    per_example: Literal["auto", "batched", "loop"] = Field(
        "auto", description="per-example gradients: batched on CUDA for LoRA-style adapters (auto), or forced")
    batch: int = Field(32, ge=1, description="records a backward pass when batched")
    device: str | None = Field(None, description="auto (default), cpu, cuda")


class PipelineConfig(_Strict):
    name: str
    build: BuildStep
    train: list[TrainStep] = Field(default_factory=list)
    evaluate: EvaluateStep | None = None
    forgetting: ForgettingStep | None = None
    attribute: AttributeStep | None = None
    # a hyperparameter search over the training stages (tuneforge/pipeline/search.py and search_*.py)
    search: SearchSpec | None = None


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


@dataclass
class TrainStage:
    """One training stage, its config loaded and checked up front; the build's output and (with
    `from_previous`) the previous stage's merged model are filled in when it runs."""

    name: str
    config: Any  # TrainConfig
    from_previous: bool
    accelerate: str | None
    accelerate_sha: str | None

    def config_for(self, previous: dict[str, Any] | None) -> Any:
        update: dict[str, Any] = {}
        if self.from_previous and previous is not None:
            update["base_model"] = previous_model(self.name, previous)
        return self.config.model_copy(update=update)


def previous_model(name: str, previous: dict[str, Any]) -> str:
    """The model a stage continues from: the previous stage's merged model, or its weights when it trained
    them all (no adapter)."""
    if previous.get("merged"):
        return previous["merged"]
    if not previous.get("adapter"):
        return previous["final"]
    method = previous.get("peft_method")
    raise RecipeError(f"train step {name!r} continues from the previous stage, whose {method or 'PEFT'} adapter "
                      "was not merged into its weights (a method that cannot merge: train that stage with "
                      "LoRA or in full, or make it the last stage)")


@dataclass
class Plan:
    """A pipeline with every sub-config validated and every path resolved, before any step runs."""

    cfg: PipelineConfig
    root: Path
    recipe: Path
    recipe_fingerprint: str
    train: list[TrainStage]
    base_model: str | None
    eval_config: Any  # EvalConfig | None
    forgetting_config: Any  # EvalConfig | None


def _file(base: Path, rel: str, what: str) -> Path:
    p = (base / rel).resolve()
    if not p.is_file():
        raise RecipeError(f"{what} {rel!r} not found (paths in a pipeline are relative to the pipeline file: {p})")
    return p


def _train_stage(step: TrainStep, base: Path, data_dir: Path, from_previous: bool) -> TrainStage:
    from tuneforge.trainers.config import check_paths, load_config

    config_file = _file(base, step.config, f"train step {step.name!r}: config")
    raw = deep_merge(read_yaml_mapping(config_file, "training config"), step.set)
    raw["dataset"] = str(data_dir)  # the pipeline's build (made by its first step)
    try:
        config = load_config(raw, base_dir=config_file.parent)
        check_paths(config, skip=("dataset",) + (("base_model",) if from_previous else ()))
    except RecipeError as e:
        raise RecipeError(f"train step {step.name!r} ({config_file}): {e}") from None
    accel = _file(base, step.accelerate, f"train step {step.name!r}: accelerate config") if step.accelerate else None
    return TrainStage(step.name, config, from_previous, str(accel) if accel else None,
                      sha256_file(accel) if accel else None)


def _eval_config(base: Path, rel: str | None, what: str, extra: dict[str, Any]) -> Any:
    from tuneforge.eval.config import check_suite_paths, load_config

    path = _file(base, rel, what) if rel else None
    raw = deep_merge(read_yaml_mapping(path, "eval config") if path else {}, extra)
    try:
        config = load_config(raw, base_dir=path.parent if path else base)
        check_suite_paths(config)
    except TuneforgeError as e:
        raise RecipeError(f"{what} ({path or 'inline'}): {e}") from None
    return config


def _check_mergeable(stage: TrainStage) -> None:
    """A stage that a later one continues from must leave full weights: no adapter, or one that merges."""
    from tuneforge.trainers.peft_methods import METHODS

    peft = stage.config.peft
    if peft is not None and not METHODS[peft.method].merges:
        raise RecipeError(f"train step {stage.name!r}: a later stage continues from its model, but a "
                          f"{peft.method!r} adapter cannot be merged into the weights; use LoRA (or full "
                          "training) for it, or make it the last stage")


def chained(train: list[TrainStep], i: int) -> bool:
    """Whether stage i starts from the previous stage's model: every stage after the first does, so the
    pipeline's last model holds all of its stages' training (the model its evaluation must score)."""
    step = train[i]
    if i == 0:
        if step.from_previous:
            raise RecipeError(f"train step {step.name!r}: from_previous on the first stage has no previous stage")
        return False
    if step.from_previous is False:
        raise RecipeError(
            f"train step {step.name!r}: from_previous: false would start it from its own base model, so the "
            f"model of {', '.join(repr(s.name) for s in train[:i])} would reach no evaluation; stages of one "
            "pipeline build on each other (drop the key), or put independent runs in separate pipelines")
    return True


def pipeline_extras(cfg: PipelineConfig) -> list[str]:
    """The extras a pipeline's steps need: train for train steps, eval for evaluate/forgetting, attribute,
    search."""
    needed = ["train"] if cfg.train else []
    needed += ["eval"] if cfg.evaluate is not None or cfg.forgetting is not None else []
    needed += ["attribute"] if cfg.attribute is not None else []
    return needed + (["search"] if cfg.search is not None else [])


def plan_pipeline(path: str | Path, out: str | Path, overrides: dict[str, Any] | None = None) -> Plan:
    """Load the pipeline and every file it names; fail here, before the first step, on any config error."""
    from tuneforge.recipe import fingerprint, load_recipe

    cfg, base = load_pipeline(path, overrides)
    require(f"pipeline {path}", *pipeline_extras(cfg))
    root = Path(out).resolve()
    data_dir = root / "data"
    recipe = _file(base, cfg.build.recipe, "build: recipe")
    load_recipe(recipe)
    stages = [_train_stage(s, base, data_dir, chained(cfg.train, i)) for i, s in enumerate(cfg.train)]
    for stage in stages[:-1]:
        _check_mergeable(stage)
    eval_cfg = forgetting_cfg = None
    if cfg.evaluate is not None:
        extra = {"heldout": {**cfg.evaluate.heldout, "dataset": str(data_dir)}} \
            if cfg.evaluate.heldout is not None else {}
        eval_cfg = _eval_config(base, cfg.evaluate.config, "evaluate: config", extra)
    if cfg.forgetting is not None:
        f = cfg.forgetting
        extra = {"suites": [{"benchmark": s} for s in f.suites]} if f.suites else {}
        tuning = {k: getattr(f, k) for k in ("tolerance", "alpha") if getattr(f, k) is not None}
        if tuning:
            extra["forgetting"] = tuning
        forgetting_cfg = _eval_config(base, f.config, "forgetting: config", extra)
    return Plan(cfg, root, recipe, fingerprint(str(recipe)), stages,
                stages[0].config.base_model if stages else None, eval_cfg, forgetting_cfg)
