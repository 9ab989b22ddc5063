"""LLM augmentation: recipe steps that rewrite, extend, generate and judge records through any
OpenAI-compatible endpoint, with a persistent response cache so nothing is paid for twice.

Exports are lazy: `tuneforge.augment.config` (what a recipe loader needs) loads without the operators,
the client or the endpoint code.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tuneforge.augment.config import AugmentConfig, load_config
    from tuneforge.augment.run import AugmentResult, run_augment

__all__ = ["AugmentConfig", "AugmentResult", "load_config", "run_augment"]
_WHERE = {"AugmentConfig": "config", "load_config": "config", "AugmentResult": "run", "run_augment": "run"}


def __getattr__(name: str):
    if name not in _WHERE:
        raise AttributeError(f"module 'tuneforge.augment' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f"tuneforge.augment.{_WHERE[name]}"), name)
