"""Training stages (pt, sft, rm, dpo, kto, orpo, simpo, ppo, grpo) on a `tuneforge build` dataset, from one YAML
config, with a PEFT adapter (lora, dora, adalora, ia3, prefix, prompt, p_tuning) or in full.

The public names load lazily, so importing the CLI does not import transformers, TRL and PEFT.
"""

from typing import Any

__all__ = ["TrainConfig", "check_paths", "load_config", "train"]


def __getattr__(name: str) -> Any:
    if name in ("TrainConfig", "check_paths", "load_config"):
        from tuneforge.trainers import config

        return getattr(config, name)
    if name == "train":
        from tuneforge.common.extras import require

        require("training", "train")
        from tuneforge.trainers.run import train

        return train
    raise AttributeError(name)
