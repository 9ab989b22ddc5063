"""One builder per stage: turn the validated config and loaded data into a ready TRL trainer."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.trainers import models
from tuneforge.trainers.config import TrainConfig, trl_config_class
from tuneforge.trainers.data import prompt_and_reference

# A user's own TensorBoard folder wins; otherwise each run logs into its own DIR/tensorboard.
_USER_TB_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")


def trl_args(config: TrainConfig, out: Path, **stage_defaults: Any) -> Any:
    """The stage's TRL config: field-sensible defaults, then stage defaults, then the config's `args`."""
    _, bf16 = models.device_dtype()
    tensorboard = importlib.util.find_spec("tensorboard") is not None
    if tensorboard and not _USER_TB_DIR:
        os.environ["TENSORBOARD_LOGGING_DIR"] = str(out / "tensorboard")
    values: dict[str, Any] = {
        "learning_rate": config.default_learning_rate(),
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.03,  # a float below 1 is a ratio of the total steps
        "logging_steps": 10,
        "save_strategy": "steps",
        "save_steps": 200,
        "save_total_limit": 2,
        "per_device_train_batch_size": 4,
        "report_to": ["tensorboard"] if tensorboard else "none",
        "seed": config.seed,
        "bf16": bf16,
        "include_num_input_tokens_seen": "non_padding",
    }
    values.update(stage_defaults)
    values.update(config.args)
    values["output_dir"] = str(out / "checkpoints")
    cls = trl_config_class(config.stage)
    try:
        return cls(**values)
    except (ValueError, TypeError) as e:
        raise TuneforgeError(f"args: TRL's {cls.__name__} rejected the arguments: {e}") from e


def _sft_tokenize(ds: Any, tokenizer: Any, template: Any, config: TrainConfig) -> Any:
    """input_ids + labels from our template, so the loss mask is exactly the template's assistant mask."""

    def encode(row: dict) -> dict:
        enc = template.tokenize(tokenizer, row["messages"], train_on=config.train_on, max_length=config.max_length)
        return {"input_ids": list(enc["input_ids"]), "labels": list(enc["labels"])}

    out = ds.map(encode, remove_columns=ds.column_names, desc="Tokenizing with the chat template")
    out = out.filter(lambda row: any(t != -100 for t in row["labels"]), desc="Dropping rows with no target")
    if len(out) == 0:
        raise TuneforgeError("no training row has an assistant token left within max_length")
    return out


def build_sft(config, data, tokenizer, template, out):
    from trl import SFTTrainer

    train = _sft_tokenize(data["train"], tokenizer, template, config)
    ev = _sft_tokenize(data["eval"], tokenizer, template, config) if data["eval"] is not None else None
    args = trl_args(config, out, max_length=config.max_length, eval_strategy="no")
    return SFTTrainer(model=models.load_policy(config), args=args, train_dataset=train, eval_dataset=ev,
                      processing_class=tokenizer, peft_config=models.peft_config(config))


def build_pt(config, data, tokenizer, template, out):
    from trl import SFTTrainer

    train = data["train"].select_columns(["text"])
    ev = data["eval"].select_columns(["text"]) if data["eval"] is not None else None
    args = trl_args(config, out, max_length=config.max_length, dataset_text_field="text", packing=True,
                    packing_strategy="wrapped", eval_strategy="no")
    return SFTTrainer(model=models.load_policy(config), args=args, train_dataset=train, eval_dataset=ev,
                      processing_class=tokenizer, peft_config=models.peft_config(config))


def _pairs(ds: Any) -> Any:
    return None if ds is None else ds.select_columns(["prompt", "chosen", "rejected"])


def build_dpo(config, data, tokenizer, template, out):
    from trl import DPOTrainer

    args = trl_args(config, out, max_length=config.max_length, eval_strategy="no")
    return DPOTrainer(model=models.load_policy(config), args=args, train_dataset=_pairs(data["train"]),
                      eval_dataset=_pairs(data["eval"]), processing_class=tokenizer,
                      peft_config=models.peft_config(config))


def build_rm(config, data, tokenizer, template, out):
    from trl import RewardTrainer

    args = trl_args(config, out, max_length=config.max_length, eval_strategy="no")
    model = models.load_scorer(config.base_model, config, tokenizer)
    return RewardTrainer(model=model, args=args, train_dataset=_pairs(data["train"]),
                         eval_dataset=_pairs(data["eval"]), processing_class=tokenizer,
                         peft_config=models.peft_config(config, task_type="SEQ_CLS"))


def _prompts(ds: Any, tokenizer: Any, max_length: int) -> Any:
    """Tokenized prompts (ending in the assistant header) for on-policy generation."""

    def encode(row: dict) -> dict:
        prompt, _ = prompt_and_reference(row)
        ids = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=True, return_dict=True)
        return {"input_ids": list(ids["input_ids"])}

    out = ds.map(encode, remove_columns=ds.column_names, desc="Tokenizing prompts")
    out = out.filter(lambda row: 0 < len(row["input_ids"]) <= max_length)
    if len(out) == 0:
        raise TuneforgeError(f"no prompt fits within max_length={max_length}")
    return out


def build_ppo(config, data, tokenizer, template, out):
    import copy

    from tuneforge.trainers._trl import ppo_classes

    trainer_cls, _ = ppo_classes()
    train = _prompts(data["train"], tokenizer, config.max_length)
    ev = _prompts(data["eval"], tokenizer, config.max_length) if data["eval"] is not None else train
    args = trl_args(config, out, stop_token="eos", eval_strategy="no")
    tokenizer.padding_side = "left"  # queries are batched for generation
    policy = models.load_policy(config)
    ref = None if config.lora is not None else copy.deepcopy(policy)
    reward = models.load_scorer(config.ppo.reward_model, config, tokenizer, train_head=False)
    value = models.load_scorer(config.ppo.value_model or config.ppo.reward_model, config, tokenizer,
                               train_head=False)
    return trainer_cls(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                       value_model=value, train_dataset=train, eval_dataset=ev,
                       peft_config=models.peft_config(config))


def _grpo_rows(ds: Any) -> Any:
    def row(r: dict) -> dict:
        prompt, ref = prompt_and_reference(r)
        return {"prompt": prompt, "reference": ref}

    return None if ds is None else ds.map(row, remove_columns=ds.column_names)


def build_grpo(config, data, tokenizer, template, out):
    from trl import GRPOTrainer

    from tuneforge.trainers.rewards import build_rewards

    funcs, classes, weights = build_rewards(config, tokenizer)
    # GRPO counts its own tokens (num_tokens); the Trainer's counter cannot see its inputs
    args = trl_args(config, out, reward_weights=weights, eval_strategy="no", include_num_input_tokens_seen="no")
    return GRPOTrainer(model=models.load_policy(config), reward_funcs=funcs, args=args,
                       train_dataset=_grpo_rows(data["train"]), eval_dataset=_grpo_rows(data["eval"]),
                       processing_class=tokenizer, reward_processing_classes=classes,
                       peft_config=models.peft_config(config))


BUILDERS = {"sft": build_sft, "pt": build_pt, "dpo": build_dpo, "rm": build_rm, "ppo": build_ppo,
            "grpo": build_grpo}
