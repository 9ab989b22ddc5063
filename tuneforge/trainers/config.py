"""The training config: one YAML file per run, validated with pydantic before any model is loaded.

Stage-specific TRL knobs (DPO `beta`/`loss_type`, `packing`, `max_steps`...) go in `args`, which is passed
through to the stage's TRL config and checked against its fields, so every TRL/transformers argument is
reachable without this module mirroring them.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.common.config import error_lines, read_yaml_mapping
from tuneforge.common.errors import RecipeError

Stage = Literal["pt", "sft", "rm", "dpo", "ppo", "grpo"]
# The dataset kind (see tuneforge.common.records) each stage reads.
STAGE_KIND: dict[str, tuple[str, ...]] = {
    "pt": ("text",),
    "sft": ("messages",),
    "rm": ("preference",),
    "dpo": ("preference",),
    "ppo": ("messages", "preference"),
    "grpo": ("messages", "preference"),
}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class LoraSpec(_Strict):
    """LoRA adapter settings; `qlora: true` loads the base model in 4-bit NF4 (CUDA + bitsandbytes)."""

    r: int = Field(16, ge=1)
    alpha: int = Field(32, ge=1)
    dropout: float = Field(0.05, ge=0.0, lt=1.0)
    target_modules: str | list[str] = "all-linear"
    qlora: bool = False

    @field_validator("target_modules")
    @classmethod
    def _targets(cls, v: str | list[str]) -> str | list[str]:
        if isinstance(v, list) and not v:
            raise ValueError("target_modules must name at least one module, or be 'all-linear'")
        return v


class ReplaySpec(_Strict):
    """General data mixed into training against catastrophic forgetting (a `tuneforge build` folder)."""

    dataset: Path
    ratio: float = Field(0.1, gt=0.0, lt=1.0)
    split: str = "train"


class SplitSpec(_Strict):
    train: str = "train"
    eval: str | None = "validation"


class RewardSpec(_Strict):
    """One GRPO reward function; `weight` scales it in the sum."""

    type: Literal["reward_model", "exact_match", "regex", "length"]
    weight: float = 1.0
    path: str | None = None  # reward_model: an `rm` run's final/ folder (or a hub id)
    pattern: str | None = None  # regex: group 1 (or the whole match) must agree with the reference's
    target: int | None = Field(None, ge=1)  # length: target completion length in characters

    @model_validator(mode="after")
    def _needs(self) -> RewardSpec:
        need = {"reward_model": "path", "regex": "pattern", "length": "target"}.get(self.type)
        if need and getattr(self, need) is None:
            raise ValueError(f"reward {self.type!r} needs `{need}`")
        return self


class PPOSpec(_Strict):
    reward_model: str  # an `rm` run's final/ folder (adapter or full model) or a hub id
    value_model: str | None = None  # defaults to the reward model, as in TRL's examples


class GRPOSpec(_Strict):
    rewards: list[RewardSpec] = Field(min_length=1)


class TrainConfig(_Strict):
    base_model: str = "embedded:smollm2"
    dataset: Path
    splits: SplitSpec = SplitSpec()
    stage: Stage
    template: str | None = None  # default: the template the dataset manifest declares
    trust_remote_code: bool = False
    # sdpa (transformers default), varlen (ours: packed rows on the FlashAttention kernel in torch),
    # flash_attention_2 (the flash-attn package), flex_attention, eager
    attn_implementation: str | None = None
    lora: LoraSpec | None = LoraSpec()  # `lora: false` (or null) means full fine-tuning
    max_length: int = Field(1024, ge=16)
    train_on: Literal["all", "last"] = "all"  # sft: loss on every assistant reply or only the last
    replay: ReplaySpec | None = None
    ppo: PPOSpec | None = None
    grpo: GRPOSpec | None = None
    seed: int = 42
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_off(cls, v: Any) -> Any:
        return None if v is False else (LoraSpec() if v is True else v)

    @model_validator(mode="after")
    def _stage_blocks(self) -> TrainConfig:
        if self.stage == "ppo" and self.ppo is None:
            raise ValueError("stage 'ppo' needs a `ppo:` block with `reward_model` (an `rm` run's final/ folder)")
        if self.stage == "grpo" and self.grpo is None:
            raise ValueError("stage 'grpo' needs a `grpo:` block with `rewards`")
        if self.stage == "ppo" and self.lora is not None and self.lora.qlora:
            raise ValueError("QLoRA is not supported for ppo (TRL's PPOTrainer trains the value model in full)")
        return self

    def default_learning_rate(self) -> float:
        """2e-5 for full fine-tuning, 1e-4 for LoRA, 2e-4 for QLoRA; DPO/PPO/GRPO a tenth of that."""
        lr = 2e-5 if self.lora is None else (2e-4 if self.lora.qlora else 1e-4)
        return lr / 10 if self.stage in ("dpo", "ppo", "grpo") else lr


def trl_config_class(stage: str) -> type:
    if stage in ("pt", "sft"):
        from trl import SFTConfig as cls
    elif stage == "dpo":
        from trl import DPOConfig as cls
    elif stage == "rm":
        from trl import RewardConfig as cls
    elif stage == "grpo":
        from trl import GRPOConfig as cls
    else:
        from tuneforge.trainers._trl import ppo_classes

        cls = ppo_classes()[1]
    return cls


# Filled in by the trainer itself; a config that sets them would be silently overridden.
RESERVED_ARGS = {"output_dir", "logging_dir", "resume_from_checkpoint"}


def check_args(config: TrainConfig) -> None:
    """Every key in `args` must be a field of the stage's TRL config."""
    cls = trl_config_class(config.stage)
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config.args) - fields)
    if unknown:
        raise RecipeError(f"args: {', '.join(unknown)} not a field of TRL's {cls.__name__} (stage {config.stage!r})")
    reserved = sorted(set(config.args) & RESERVED_ARGS)
    if reserved:
        raise RecipeError(f"args: {', '.join(reserved)} is set by `tuneforge train` (use --out / --resume)")


def load_config(source: str | Path | dict) -> TrainConfig:
    """Read and validate a config (a YAML path or a dict); relative paths resolve against the YAML's folder."""
    base = None
    if isinstance(source, dict):
        raw = source
    else:
        path = Path(source)
        raw = read_yaml_mapping(path, "training config")
        base = path.resolve().parent
    if not isinstance(raw, dict):
        raise RecipeError("config must be a YAML mapping")
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"invalid training config: {'; '.join(error_lines(e))}") from None
    if base is not None:
        config = _resolve_paths(config, base)
    check_args(config)
    return config


def _resolve(p: str | Path, base: Path) -> Any:
    """A relative path that exists beside the YAML wins over the working directory."""
    q = Path(p)
    if q.is_absolute() or q.exists() or not (base / q).exists():
        return p
    return type(p)(base / q) if isinstance(p, Path) else str(base / q)


def _resolve_paths(config: TrainConfig, base: Path) -> TrainConfig:
    update: dict[str, Any] = {"dataset": _resolve(config.dataset, base)}
    if not config.base_model.startswith("embedded:"):
        update["base_model"] = _resolve(config.base_model, base)
    if config.replay:
        update["replay"] = config.replay.model_copy(update={"dataset": _resolve(config.replay.dataset, base)})
    if config.ppo:
        update["ppo"] = config.ppo.model_copy(update={
            "reward_model": _resolve(config.ppo.reward_model, base),
            "value_model": config.ppo.value_model and _resolve(config.ppo.value_model, base)})
    if config.grpo:
        update["grpo"] = config.grpo.model_copy(update={"rewards": [
            r.model_copy(update={"path": r.path and _resolve(r.path, base)}) for r in config.grpo.rewards]})
    return config.model_copy(update=update)
