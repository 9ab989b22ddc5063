"""GRPO reward functions named in the config: a trained reward model, exact match or regex against the
reference answer, and closeness to a target length.

Functions follow TRL's reward-function contract: ``f(prompts, completions, **columns) -> list[float]``,
where conversational completions are lists of messages and ``reference`` is a dataset column.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from typing import Any

from tuneforge.common.errors import RecipeError
from tuneforge.trainers.config import TrainConfig
from tuneforge.trainers.stage_blocks import RewardSpec


def completion_text(completion: Any) -> str:
    if isinstance(completion, str):
        return completion
    return "".join(m.get("content") or "" for m in completion if m.get("role") == "assistant")


def _norm(text: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", text).split()).casefold()


def exact_match(prompts: list, completions: list, reference: list[str], **_: Any) -> list[float]:
    return [float(_norm(completion_text(c)) == _norm(r)) for c, r in zip(completions, reference, strict=True)]


def regex_reward(pattern: str) -> Callable[..., list[float]]:
    """1.0 when the pattern's group 1 (or whole match) is found in both and agrees with the reference's."""
    try:
        rx = re.compile(pattern, re.DOTALL)
    except re.error as e:
        raise RecipeError(f"grpo reward regex {pattern!r}: {e}") from e

    def pick(text: str) -> str | None:
        m = rx.search(text)
        if m is None:
            return None
        return _norm(m.group(1) if rx.groups else m.group(0))

    def regex_match(prompts: list, completions: list, reference: list[str], **_: Any) -> list[float]:
        out = []
        for c, r in zip(completions, reference, strict=True):
            got, want = pick(completion_text(c)), pick(r)
            out.append(float(got is not None and (want is None or got == want)))
        return out

    return regex_match


def length_reward(target: int) -> Callable[..., list[float]]:
    """0 at the target length, falling linearly to -1 at 0 or twice the target (characters)."""

    def length(prompts: list, completions: list, **_: Any) -> list[float]:
        return [-min(1.0, abs(len(completion_text(c)) - target) / target) for c in completions]

    return length


def build_rewards(config: TrainConfig, tokenizer: Any) -> tuple[list[Any], list[Any], list[float]]:
    """(reward_funcs, reward_processing_classes, weights) for GRPOTrainer."""
    from tuneforge.trainers.models import load_scorer

    funcs, classes, weights = [], [], []
    for spec in config.grpo.rewards:
        spec: RewardSpec
        if spec.type == "reward_model":
            funcs.append(load_scorer(spec.path, config, tokenizer, train_head=False))
            classes.append(tokenizer)
        else:
            funcs.append({"exact_match": lambda s: exact_match, "regex": lambda s: regex_reward(s.pattern),
                          "length": lambda s: length_reward(s.target)}[spec.type](spec))
            classes.append(None)
        weights.append(spec.weight)
    return funcs, classes, weights
