"""LLM augmentation: recipe steps that rewrite, extend, generate and judge records through any
OpenAI-compatible endpoint, with a persistent response cache so nothing is paid for twice.

The names load lazily: a recipe needs only the config, and the client (openai, aiohttp) costs seconds to
import in every build worker."""

from typing import Any

__all__ = ["AugmentConfig", "AugmentResult", "load_config", "run_augment"]


def __getattr__(name: str) -> Any:
    if name in ("AugmentConfig", "load_config"):
        from tuneforge.augment import config

        return getattr(config, name)
    if name in ("AugmentResult", "run_augment"):
        from tuneforge.augment import run

        return getattr(run, name)
    raise AttributeError(name)
