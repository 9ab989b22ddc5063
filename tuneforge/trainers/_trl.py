"""Each stage's TRL trainer and config classes, one table; the experimental ones (PPO, ORPO, CPO for SimPO live
in `trl.experimental` in TRL 1.12) are imported without their warning banner."""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

# stage -> (module, trainer class, config class)
STAGE_CLASSES: dict[str, tuple[str, str, str]] = {
    "pt": ("trl", "SFTTrainer", "SFTConfig"),
    "sft": ("trl", "SFTTrainer", "SFTConfig"),
    "rm": ("trl", "RewardTrainer", "RewardConfig"),
    "dpo": ("trl", "DPOTrainer", "DPOConfig"),
    "kto": ("trl", "KTOTrainer", "KTOConfig"),
    "orpo": ("trl.experimental.orpo", "ORPOTrainer", "ORPOConfig"),
    "simpo": ("trl.experimental.cpo", "CPOTrainer", "CPOConfig"),
    "ppo": ("trl.experimental.ppo", "PPOTrainer", "PPOConfig"),
    "grpo": ("trl", "GRPOTrainer", "GRPOConfig"),
}


def stage_classes(stage: str) -> tuple[type, type]:
    """(trainer class, config class) of a stage."""
    module, trainer, config = STAGE_CLASSES[stage]
    if module.startswith("trl.experimental"):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        mod = importlib.import_module(module)
        return getattr(mod, trainer), getattr(mod, config)
    except (ImportError, AttributeError):
        if stage != "ppo":
            raise
        from importlib.metadata import version

        from tuneforge.common.extras import MissingExtra, install_line

        raise MissingExtra(f"stage ppo needs TRL's PPOTrainer, which TRL {version('trl')} no longer has (removed "
                           f"after 1.12): {install_line('ppo')}") from None


# transformers 5.23 renamed these TrainingArguments (the old names warn until v6); TRL <= 1.12 still defaults
# gradient_checkpointing to True, so a config built with no argument for it raises the FutureWarning.
RENAMED_ARGS = (("gradient_checkpointing", "activation_checkpointing"),
                ("gradient_checkpointing_kwargs", "activation_checkpointing_kwargs"))


def current_arg_names(cls: type, values: dict[str, Any]) -> dict[str, Any]:
    """`values` with each renamed argument under its current name (a user's old-name value moves there, else
    the config's own default for the old name), so building the config warns about nothing we passed."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    out = dict(values)
    for old, new in RENAMED_ARGS:
        if old not in fields or new not in fields:
            continue
        if old in out:
            out.setdefault(new, out.pop(old))
        if out.get(new) is None and fields[old].default not in (dataclasses.MISSING, None):
            out[new] = fields[old].default
    return out


def ppo_classes() -> tuple[type, type]:
    return stage_classes("ppo")
