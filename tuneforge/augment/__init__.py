"""LLM augmentation: recipe steps that rewrite, extend, generate and judge records through any
OpenAI-compatible endpoint, with a persistent response cache so nothing is paid for twice."""

from tuneforge.augment.config import AugmentConfig, load_config
from tuneforge.augment.run import AugmentResult, run_augment

__all__ = ["AugmentConfig", "AugmentResult", "load_config", "run_augment"]
