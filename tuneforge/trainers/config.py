"""The training config: one YAML file per run, validated with pydantic before any model is loaded.

What each stage is (its TRL classes, dataset kind, block, the adapters it refuses) is the stage table
(`stage_table.py`); this module validates a config against it. The adapter is `peft: {method: ...}` (see
`peft_methods`; `lora: {...}` is its older spelling). The kto, orpo and simpo stages have a validated block each
(`stage_blocks.py`), translated into their TRL config's fields. Every other TRL knob
(DPO `beta`/`loss_type`, `packing`, `max_steps`...) goes in `args`, which is passed through to the stage's TRL
config and checked against its fields, so every TRL/transformers argument is reachable without this module
mirroring them. Relative paths resolve against the file that names them (`load_config`), and `check_paths`
says which do not exist.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from tuneforge.common.config import error_lines, read_yaml_mapping
from tuneforge.common.errors import RecipeError
from tuneforge.trainers.peft_methods import METHODS, LoraSpec, parse_spec, uses_qlora
from tuneforge.trainers.stage_blocks import GRPOSpec, KTOSpec, ORPOSpec, PPOSpec, SimPOSpec, TRLBlock
from tuneforge.trainers.stage_table import STAGE_NAMES, STAGE_TABLE, STAGES

# The stage names, from the stage table (a config with another `stage` fails validation).
Stage = Literal[STAGE_NAMES]  # type: ignore[valid-type]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReplaySpec(_Strict):
    """General data mixed into training against catastrophic forgetting (a `tuneforge build` folder)."""

    dataset: Path
    ratio: float = Field(0.1, gt=0.0, lt=1.0)
    split: str = "train"


class SplitSpec(_Strict):
    train: str = "train"
    eval: str | None = "validation"


class TruncationSpec(_Strict):
    """What happens to rows longer than `max_length` (see docs/training.md, Truncation)."""

    max_drop_share: float = Field(0.01, ge=0.0, le=1.0)  # more dropped rows than this share fails before training
    strict: bool = False  # fail on any dropped row (also `tuneforge train --strict`)


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
    # the adapter: {method: lora|dora|adalora|ia3|prefix|prompt|p_tuning, ...}; false/null: full fine-tuning.
    # The older `lora: {...}` block is the same as `peft: {method: lora, ...}`.
    peft: Any = Field(default_factory=LoraSpec)
    lora: Any = Field(None, exclude=True)  # the older spelling of `peft: {method: lora}`; read back as the spec
    max_length: int = Field(1024, ge=16)
    train_on: Literal["all", "last"] = "all"  # sft: loss on every assistant reply or only the last
    truncation: TruncationSpec = TruncationSpec()
    replay: ReplaySpec | None = None
    ppo: PPOSpec | None = None
    grpo: GRPOSpec | None = None
    kto: KTOSpec | None = None
    orpo: ORPOSpec | None = None
    simpo: SimPOSpec | None = None
    seed: int = 42
    args: dict[str, Any] = Field(default_factory=dict)

    @field_validator("peft", mode="before")
    @classmethod
    def _peft(cls, v: Any) -> Any:
        return parse_spec(v, key="peft")

    @field_validator("lora", mode="before")
    @classmethod
    def _lora(cls, v: Any) -> Any:
        if isinstance(v, dict) and v.get("method", "lora") not in ("lora", "dora"):
            raise ValueError("`lora:` takes method lora or dora; use `peft: {method: ...}` for the others")
        return parse_spec(v, key="lora")

    @model_validator(mode="after")
    def _lora_alias(self) -> TrainConfig:
        if "lora" in self.model_fields_set:
            if "peft" in self.model_fields_set:
                raise ValueError("give either `lora:` or `peft:`, not both (`lora: {...}` is `peft: {method: lora}`)")
            object.__setattr__(self, "peft", self.lora)
        # read back: `config.lora` is the LoRA-family spec (lora, dora, adalora) or None
        object.__setattr__(self, "lora", self.peft if hasattr(self.peft, "qlora") else None)
        return self

    @property
    def qlora(self) -> bool:
        return uses_qlora(self.peft)

    @model_validator(mode="after")
    def _stage_blocks(self) -> TrainConfig:
        """The stage table's rules: the block a stage needs, the adapters it refuses, no other stage's block."""
        facts = STAGE_TABLE[self.stage]
        if facts.needs and getattr(self, self.stage) is None:
            raise ValueError(f"stage {self.stage!r} needs {facts.needs}")
        refused = dict(facts.refuses)
        if self.qlora and "qlora" in refused:
            raise ValueError(f"QLoRA is not supported for {self.stage} ({refused['qlora']})")
        for other in STAGES:
            if other.block is not None and getattr(self, other.name) is not None and self.stage != other.name:
                raise ValueError(f"a `{other.name}:` block only applies to stage {other.name!r} "
                                 f"(this is {self.stage!r})")
        if facts.block is not None and not facts.needs and getattr(self, self.stage) is None:
            object.__setattr__(self, self.stage, facts.block())
        if self.peft is not None and self.peft.method in refused:
            allowed = [m for m in METHODS if m not in refused]
            raise ValueError(f"peft method {self.peft.method!r} is not supported for stage {self.stage!r} "
                             f"({refused[self.peft.method]}); use {', '.join(allowed[:-1])} or {allowed[-1]}")
        return self

    def default_learning_rate(self) -> float:
        """2e-5 for full fine-tuning, 1e-4 for an adapter, 2e-4 for QLoRA, 1e-2 for prompt-learning methods
        (prefix/prompt/p_tuning train few parameters from scratch); dpo/kto/orpo/simpo/ppo/grpo a tenth of that."""
        if self.peft is None:
            lr = 2e-5
        elif self.peft.method in ("prefix", "prompt", "p_tuning"):
            lr = 1e-2
        else:
            lr = 2e-4 if self.qlora else 1e-4
        return lr / 10 if STAGE_TABLE[self.stage].low_lr else lr

    def stage_fields(self) -> dict[str, Any]:
        """TRL config fields that the stage's block sets (kto/orpo/simpo)."""
        block = getattr(self, self.stage) if STAGE_TABLE[self.stage].block is not None else None
        return block.trl_fields() if isinstance(block, TRLBlock) else {}


def trl_config_class(stage: str) -> type:
    """The TRL config dataclass of a stage (ORPO, CPO/SimPO and PPO live in `trl.experimental` in TRL 1.12)."""
    from tuneforge.trainers import _trl

    return _trl.stage_classes(stage)[1]


@functools.cache
def trl_config_fields(stage: str) -> tuple[str, frozenset[str]]:
    """(class name, field names) of the stage's TRL config, for checking `args` keys. Importing TRL imports
    torch and transformers (seconds), far longer than telling a user an `args` key is misspelt, so the answer is
    kept in $TUNEFORGE_HOME, keyed by the stage and TRL's and transformers' versions (as `lsh_params` is)."""
    from importlib.metadata import PackageNotFoundError, version

    from tuneforge.common.home import remembered

    def compute() -> list:
        cls = trl_config_class(stage)
        return [cls.__name__, sorted(f.name for f in dataclasses.fields(cls))]

    try:
        key = f"{stage}:trl-{version('trl')}:transformers-{version('transformers')}"
    except PackageNotFoundError:  # no TRL: importing it raises what the user should see
        key = None
    name, fields = remembered("trl_config_fields", key, compute)
    return name, frozenset(fields)


# Filled in by the trainer itself; a config that sets them would be silently overridden.
RESERVED_ARGS = {"output_dir", "logging_dir", "resume_from_checkpoint"}

_POSITIVE, _AT_LEAST_1, _NOT_NEGATIVE = "must be > 0", "must be a whole number >= 1", "must be >= 0"
# Ranges transformers and TRL leave unchecked: a negative learning rate fails inside the optimizer, `max_steps: 0`
# trains a step and reports success (#34), a zero batch size divides by zero. (stages or None, test, why)
ARG_RULES: dict[str, tuple[tuple[str, ...] | None, Any, str]] = {
    "learning_rate": (None, lambda v: v > 0, _POSITIVE),
    "max_steps": (None, lambda v: isinstance(v, int) and (v == -1 or v >= 1),
                  "must be a positive number of steps, or -1 to train num_train_epochs (0 trains nothing)"),
    "num_train_epochs": (None, lambda v: v > 0, _POSITIVE),
    "per_device_train_batch_size": (None, lambda v: isinstance(v, int) and v >= 1, _AT_LEAST_1),
    "per_device_eval_batch_size": (None, lambda v: isinstance(v, int) and v >= 1, _AT_LEAST_1),
    "gradient_accumulation_steps": (None, lambda v: isinstance(v, int) and v >= 1, _AT_LEAST_1),
    "warmup_steps": (None, lambda v: v >= 0, _NOT_NEGATIVE),
    "weight_decay": (None, lambda v: v >= 0, _NOT_NEGATIVE),
    "max_grad_norm": (None, lambda v: v >= 0, _NOT_NEGATIVE),
    "logging_steps": (None, lambda v: v > 0, _POSITIVE),
    "save_steps": (None, lambda v: v > 0, _POSITIVE),
    "eval_steps": (None, lambda v: v > 0, _POSITIVE),
    "beta": (("dpo", "rm"), lambda v: v > 0, _POSITIVE + " (the KL weight; DPO's loss is flat at 0)"),
    "temperature": (("grpo", "ppo"), lambda v: v > 0, _POSITIVE),
    "num_generations": (("grpo",), lambda v: isinstance(v, int) and v >= 2, "must be a whole number >= 2 "
                        "(GRPO compares completions of one prompt)"),
}


_INT_ARGS = {"max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps",
             "num_generations"}


def check_arg_values(config: TrainConfig) -> None:
    """The `args` values the trainer would only trip over mid-run (or never): one RecipeError naming each.
    A number YAML read as text (`1e-4`: YAML 1.1 wants `1.0e-4`) becomes the number."""
    bad = []
    for key, (stages, ok, why) in ARG_RULES.items():
        if key not in config.args or config.args[key] is None or (stages and config.stage not in stages):
            continue
        v = config.args[key]
        if isinstance(v, str):
            with contextlib.suppress(ValueError):
                v = config.args[key] = float(v)
        if isinstance(v, float) and v.is_integer() and key in _INT_ARGS:
            v = config.args[key] = int(v)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            bad.append(f"args.{key}: {v!r} is not a number")
        elif not ok(v):
            bad.append(f"args.{key}: {v!r} {why}")
    if bad:
        raise RecipeError("; ".join(bad))


def check_args(config: TrainConfig) -> None:
    """Every key in `args` must be a field of the stage's TRL config, and not one the stage block sets."""
    name, fields = trl_config_fields(config.stage)  # (a stage TRL no longer has fails here, as it always did)
    unknown = sorted(set(config.args) - fields)
    if unknown:
        raise RecipeError(f"args: {', '.join(unknown)} not a field of TRL's {name} (stage {config.stage!r})")
    reserved = sorted(set(config.args) & RESERVED_ARGS)
    if reserved:
        raise RecipeError(f"args: {', '.join(reserved)} is set by `tuneforge train` (use --out / --resume)")
    check_arg_values(config)
    method = config.peft.method if config.peft is not None else None
    on = [k for k in ("activation_checkpointing", "gradient_checkpointing") if config.args.get(k)]
    if method and not METHODS[method].checkpointing and on:
        raise RecipeError(f"args.{on[0]}: peft method {method!r} cannot train with activation checkpointing; "
                          "remove the key (tuneforge turns it off for this method) or set it false")
    block = config.stage_fields()
    both = sorted(set(config.args) & set(block))
    if both:
        raise RecipeError(f"args: {', '.join(both)} is set by the `{config.stage}:` block; set it there only")
    if config.stage == "dpo":
        losses = config.args.get("loss_type") or []
        for loss in [losses] if isinstance(losses, str) else losses:
            if loss in ("orpo", "simpo", "cpo"):
                stage = "simpo" if loss == "cpo" else loss
                raise RecipeError(f"args.loss_type: {loss!r} is not a DPOTrainer loss in TRL 1.12; use `stage: "
                                  f"{stage}` (TRL's {'ORPOTrainer' if loss == 'orpo' else 'CPOTrainer'})")


def load_config(source: str | Path | dict | TrainConfig, *, base_dir: str | Path | None = None) -> TrainConfig:
    """Read and validate a config: a YAML path, or a dict (e.g. from a pipeline file).

    Every relative path in it (dataset, base_model, replay.dataset, ppo.reward_model/value_model, grpo reward
    paths, a .jinja template, args.deepspeed/fsdp_config files) resolves against the folder of the file that
    names it: the YAML's folder, or `base_dir` for a dict (default: the working directory). The result holds
    absolute paths. Existence is checked separately, by `check_paths`, before any model loads."""
    if isinstance(source, TrainConfig):
        return source
    if isinstance(source, dict):
        raw = source
        base = Path(base_dir) if base_dir is not None else Path.cwd()
    else:
        path = Path(source)
        raw = read_yaml_mapping(path, "training config")
        base = Path(base_dir) if base_dir is not None else path.parent
    if not isinstance(raw, dict):
        raise RecipeError("config must be a YAML mapping")
    try:
        config = TrainConfig.model_validate(raw)
    except ValidationError as e:
        raise RecipeError(f"invalid training config: {'; '.join(error_lines(e))}") from None
    config = resolve_paths(config, base.resolve())
    check_args(config)
    return config


_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*(/[A-Za-z0-9][\w.\-]*)?$")


def _path(p: str | Path, base: Path) -> str:
    q = Path(p).expanduser()
    return os.path.normpath(q if q.is_absolute() else base / q)


def _model_ref(ref: str, base: Path) -> str:
    """A model reference: `embedded:NAME` and hub ids (`org/name`, `name`) stay as they are unless a folder of
    that name exists beside the config; anything else is a path against the config's folder."""
    if ref.startswith("embedded:"):
        return ref
    q = Path(ref).expanduser()
    if q.is_absolute():
        return os.path.normpath(q)
    if (base / q).exists() or ref.startswith((".", "~")) or not _HUB_ID.match(ref):
        return os.path.normpath(base / q)
    return ref


PATH_ARGS = ("deepspeed", "fsdp_config")


def resolve_paths(config: TrainConfig, base: Path) -> TrainConfig:
    update: dict[str, Any] = {"dataset": Path(_path(config.dataset, base)),
                              "base_model": _model_ref(config.base_model, base)}
    if config.template and config.template.endswith(".jinja"):
        update["template"] = _path(config.template, base)
    if config.replay:
        update["replay"] = config.replay.model_copy(update={"dataset": Path(_path(config.replay.dataset, base))})
    if config.ppo:
        update["ppo"] = config.ppo.model_copy(update={
            "reward_model": _model_ref(config.ppo.reward_model, base),
            "value_model": config.ppo.value_model and _model_ref(config.ppo.value_model, base)})
    if config.grpo:
        update["grpo"] = config.grpo.model_copy(update={"rewards": [
            r.model_copy(update={"path": r.path and _model_ref(r.path, base)}) for r in config.grpo.rewards]})
    args = dict(config.args)
    for key in PATH_ARGS:
        if isinstance(args.get(key), str) and args[key].endswith((".json", ".yaml", ".yml")):
            args[key] = _path(args[key], base)
    update["args"] = args
    return config.model_copy(update=update)


def config_paths(config: TrainConfig) -> list[tuple[str, str, bool]]:
    """(field, path, is_model_ref) of every path-like value in a resolved config."""
    out: list[tuple[str, str, bool]] = [("dataset", str(config.dataset), False),
                                        ("base_model", config.base_model, True)]
    if config.template and config.template.endswith(".jinja"):
        out.append(("template", config.template, False))
    if config.replay:
        out.append(("replay.dataset", str(config.replay.dataset), False))
    if config.ppo:
        out.append(("ppo.reward_model", config.ppo.reward_model, True))
        if config.ppo.value_model:
            out.append(("ppo.value_model", config.ppo.value_model, True))
    if config.grpo:
        out += [(f"grpo.rewards[{i}].path", r.path, True) for i, r in enumerate(config.grpo.rewards) if r.path]
    out += [(f"args.{k}", config.args[k], False) for k in PATH_ARGS
            if isinstance(config.args.get(k), str) and Path(config.args[k]).is_absolute()]
    return out


def check_paths(config: TrainConfig, *, skip: tuple[str, ...] | set[str] = ()) -> None:
    """Every local path the config names must exist (models: a folder; a hub id is left to transformers).

    Called by `train()` before any model loads, and by a pipeline before its first step (`skip` names fields
    an earlier step will produce, e.g. {"dataset", "base_model"}). One RecipeError lists every missing path."""
    missing = []
    for field, value, is_model in config_paths(config):
        if field in skip or (is_model and (value.startswith("embedded:") or not Path(value).is_absolute())):
            continue
        p = Path(value)
        if not p.exists():
            hint = " (a `tuneforge build` output folder, with manifest.json)" if field.endswith("dataset") else ""
            missing.append(f"{field}: {p} does not exist{hint}")
        elif is_model and not p.is_dir():
            missing.append(f"{field}: {p} is not a model folder")
    if config.dataset and "dataset" not in skip and Path(config.dataset).is_dir() \
            and not (Path(config.dataset) / "manifest.json").is_file():
        missing.append(f"dataset: {config.dataset} is not a `tuneforge build` output (no manifest.json)")
    if missing:
        raise RecipeError("training config paths (relative paths resolve against the config file's folder): "
                          + "; ".join(missing))
