"""Imports from TRL's experimental namespace (PPO lives there in TRL 1.12), without its warning banner."""

from __future__ import annotations

import os


def ppo_classes() -> tuple[type, type]:
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    from trl.experimental.ppo import PPOConfig, PPOTrainer

    return PPOTrainer, PPOConfig
