"""Training stages (pt, sft, rm, dpo, ppo, grpo) on a `tuneforge build` dataset, from one YAML config."""

from tuneforge.trainers.config import TrainConfig, load_config
from tuneforge.trainers.run import train

__all__ = ["TrainConfig", "load_config", "train"]
