"""The stage blocks of a training config (`ppo:`, `grpo:`, `kto:`, `orpo:`, `simpo:`): one validated pydantic
block per stage that has knobs of its own. The stage table (`stage_table.py`) names each stage's block, and
`TrainConfig` (`config.py`) has one field of that name; they live here, apart from both, so that the table can
hold the classes without importing the whole config.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


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


# Stage blocks translated to TRL config fields (the TRL style: one validated config per stage). A field set
# both here and in `args` is an error, so a run has one source for each value.
class TRLBlock(_Strict):
    def trl_fields(self) -> dict[str, Any]:
        return self.model_dump()


class KTOSpec(TRLBlock):
    """KTO on unpaired rows (prompt, completion, label): `desirable_weight`/`undesirable_weight` balance an
    unequal number of desirable and undesirable completions (TRL warns when they are out of range)."""

    beta: float = Field(0.1, gt=0.0)
    desirable_weight: float = Field(1.0, gt=0.0)
    undesirable_weight: float = Field(1.0, gt=0.0)
    loss_type: Literal["kto", "apo_zero_unpaired"] = "kto"


class ORPOSpec(TRLBlock):
    """ORPO (TRL's experimental ORPOTrainer): no reference model; `beta` is the odds-ratio weight (λ)."""

    beta: float = Field(0.1, gt=0.0)


class SimPOSpec(TRLBlock):
    """SimPO (TRL's experimental CPOTrainer with loss_type simpo): length-normalised reward, no reference model;
    `gamma` is the target reward margin, `cpo_alpha` > 0 adds CPO's NLL term on the chosen reply (CPO-SimPO)."""

    beta: float = Field(2.0, gt=0.0)
    gamma: float = Field(0.5, ge=0.0)
    cpo_alpha: float = Field(0.0, ge=0.0)

    def trl_fields(self) -> dict[str, Any]:
        return {"loss_type": "simpo", "beta": self.beta, "simpo_gamma": self.gamma, "cpo_alpha": self.cpo_alpha}
