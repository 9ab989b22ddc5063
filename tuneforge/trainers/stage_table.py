"""The training stages, one row each: every fact about a stage that more than one module needs (its TRL
trainer and config, the dataset kind it reads, its config block, the adapters it refuses, how it is prepared
and built). The config's schema, its validation, the TRL imports, the data loader, `tuneforge check` and the
trainer all read this table, so a stage is added or changed here, in one place.

The table names classes and functions as strings: reading it imports neither TRL nor the trainers; they load
when a stage is used (`_trl.stage_classes`, `stages.stage_steps`). `tests/test_stage_table.py` resolves every
row and checks it against the config's schema.
"""

from __future__ import annotations

from dataclasses import dataclass

from pydantic import BaseModel

from tuneforge.common.extras import PPO_LAST_TRL
from tuneforge.trainers.stage_blocks import GRPOSpec, KTOSpec, ORPOSpec, PPOSpec, SimPOSpec

VIRTUAL_TOKENS = ("prefix", "prompt", "p_tuning")  # peft methods that train virtual tokens, not weights


@dataclass(frozen=True)
class StageFacts:
    """One training stage."""

    name: str
    trainer: str  # TRL's trainer class
    config: str  # TRL's config class: the fields `args` may set
    kinds: tuple[str, ...]  # dataset kinds it reads (tuneforge.common.records), in order of preference
    prepare: str  # the function of `trainers.stages` that fits the rows into max_length (tokenizer only)
    build: str  # the function of `trainers.stages` that makes the ready TRL trainer (loads the model)
    module: str = "trl"  # where TRL keeps both classes (`trl.experimental.*` for the experimental ones)
    low_lr: bool = False  # preference-style: the default learning rate is a tenth of the supervised one
    block: type[BaseModel] | None = None  # its config block, a TrainConfig field named after the stage
    needs: str = ""  # what the config must give (the block is then required); "": an absent block is its defaults
    # (peft method, or "qlora") -> why the stage refuses it
    refuses: tuple[tuple[str, str], ...] = ()
    cut_completion: bool = False  # a completion that does not fit is cut (TRL keeps its start), not dropped
    scorer: bool = False  # the model is a scoring head (sequence classification), not a causal LM
    own_loop: bool = False  # TRL's trainer runs its own loop: no resume, no Trainer.evaluate
    loss: str = "loss"  # the metric that is the training loss in its logs
    extra: str | None = None  # the extra that holds a TRL which still has this trainer
    trl_last: tuple[int, int] | None = None  # the last TRL version that has it (None: every supported one)


_VIRTUAL = "a scoring head or value model on virtual tokens"
_PREFERENCE = ("preference",)
_PROMPTS = ("messages", "preference")

STAGES: tuple[StageFacts, ...] = (
    StageFacts("pt", "SFTTrainer", "SFTConfig", ("text",), "prepare_pt", "build_pt"),
    StageFacts("sft", "SFTTrainer", "SFTConfig", ("messages",), "prepare_sft", "build_sft"),
    StageFacts("rm", "RewardTrainer", "RewardConfig", _PREFERENCE, "prepare_preference", "build_rm", scorer=True,
               refuses=tuple((m, _VIRTUAL) for m in VIRTUAL_TOKENS)),
    StageFacts("dpo", "DPOTrainer", "DPOConfig", _PREFERENCE, "prepare_preference", "build_dpo", low_lr=True,
               cut_completion=True),
    StageFacts("kto", "KTOTrainer", "KTOConfig", ("unpaired",), "prepare_kto", "build_kto", low_lr=True,
               block=KTOSpec, cut_completion=True),
    StageFacts("orpo", "ORPOTrainer", "ORPOConfig", _PREFERENCE, "prepare_preference", "build_reference_free",
               module="trl.experimental.orpo", low_lr=True, block=ORPOSpec),
    StageFacts("simpo", "CPOTrainer", "CPOConfig", _PREFERENCE, "prepare_preference", "build_reference_free",
               module="trl.experimental.cpo", low_lr=True, block=SimPOSpec),
    StageFacts("ppo", "PPOTrainer", "PPOConfig", _PROMPTS, "prepare_ppo", "build_ppo",
               module="trl.experimental.ppo", low_lr=True, block=PPOSpec,
               needs="a `ppo:` block with `reward_model` (an `rm` run's final/ folder)",
               refuses=(("qlora", "TRL's PPOTrainer trains the value model in full"),
                        *((m, _VIRTUAL) for m in VIRTUAL_TOKENS),
                        ("adalora", "TRL's PPOTrainer runs its own loop, so the rank budget would never be "
                                    "reallocated")),
               own_loop=True, loss="loss/policy_avg", extra="ppo", trl_last=PPO_LAST_TRL),
    StageFacts("grpo", "GRPOTrainer", "GRPOConfig", _PROMPTS, "prepare_grpo", "build_grpo", low_lr=True,
               block=GRPOSpec, needs="a `grpo:` block with `rewards`"),
)
STAGE_TABLE: dict[str, StageFacts] = {s.name: s for s in STAGES}
STAGE_NAMES: tuple[str, ...] = tuple(STAGE_TABLE)
