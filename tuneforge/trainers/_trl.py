"""Each stage's TRL trainer and config classes, imported when a stage is used (the stage table names them);
the experimental ones (PPO, ORPO, CPO for SimPO live in `trl.experimental` in TRL 1.12) are imported without
their warning banner."""

from __future__ import annotations

import dataclasses
import importlib
import os
from typing import Any

from tuneforge.trainers.stage_table import STAGE_TABLE


def stage_classes(stage: str) -> tuple[type, type]:
    """(trainer class, config class) of a stage; a stage TRL no longer has names the extra that holds it."""
    facts = STAGE_TABLE[stage]
    if facts.module.startswith("trl.experimental"):
        os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    try:
        mod = importlib.import_module(facts.module)
        return getattr(mod, facts.trainer), getattr(mod, facts.config)
    except (ImportError, AttributeError):
        if facts.extra is None or facts.trl_last is None:
            raise
        from importlib.metadata import version

        from tuneforge.common.extras import MissingExtra, install_line

        last = ".".join(map(str, facts.trl_last))
        raise MissingExtra(f"stage {stage} needs TRL's {facts.trainer}, which TRL {version('trl')} no longer has "
                           f"(removed after {last}): {install_line(facts.extra)}") from None


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

