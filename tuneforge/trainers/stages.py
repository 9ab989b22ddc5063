"""Per stage: `prepare` fits the rows into max_length (tokenizer only, no model), then `build` turns the config
and the prepared rows into a ready TRL trainer. Which pair a stage uses is the stage table's (`stage_steps`)."""

from __future__ import annotations

import importlib.util
import logging
import os
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.trainers import models
from tuneforge.trainers import truncation as tr
from tuneforge.trainers._trl import current_arg_names, stage_classes
from tuneforge.trainers.config import TrainConfig, trl_config_class
from tuneforge.trainers.data import prompt_and_reference
from tuneforge.trainers.peft_methods import METHODS
from tuneforge.trainers.stage_table import STAGE_TABLE

log = logging.getLogger("tuneforge.train")
# A user's own TensorBoard folder wins; otherwise each run logs into its own DIR/tensorboard.
_USER_TB_DIR = os.environ.get("TENSORBOARD_LOGGING_DIR")


@dataclass
class Prepared:
    """The rows a trainer gets, and what fitting them into max_length did to each split."""

    train: Any
    eval: Any
    reports: list[tr.SplitReport]


def trl_args(config: TrainConfig, out: Path, **stage_defaults: Any) -> Any:
    """The stage's TRL config: field-sensible defaults, then stage defaults, the stage block, the config's `args`."""
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
    values.update(config.stage_fields())
    values.update(config.args)
    method = config.peft.method if config.peft is not None else None
    if method and not METHODS[method].checkpointing and not ({"gradient_checkpointing", "activation_checkpointing"}
                                                             & set(config.args)):
        values["activation_checkpointing"] = False  # TRL's default is on; said once, by train()
    values["output_dir"] = str(out / "checkpoints")
    cls = trl_config_class(config.stage)
    try:
        return cls(**current_arg_names(cls, values))
    except (ValueError, TypeError) as e:
        raise TuneforgeError(f"args: TRL's {cls.__name__} rejected the arguments: {e}") from e


# ------------------------------------------------------------------ prepare (no model)


def _splits(data: dict) -> list[tuple[str, Any]]:
    out = [("train", data["train"])]
    if data["eval"] is not None:
        out.append(("eval", data["eval"]))
    return out


def _fit_all(data: dict, config: TrainConfig, fn: Any, columns: list[str], desc: str) -> Prepared:
    done, reports = {}, []
    for name, ds in _splits(data):
        split = config.splits.train if name == "train" else config.splits.eval
        kept, report = tr.apply(ds, fn, split, desc)
        done[name] = kept.select_columns(columns)
        reports.append(report)
    ev = done.get("eval")
    if ev is not None and len(ev) == 0:  # every eval row was dropped by the fitting (counted in its report)
        log.warning("eval split %r: no row fits max_length %d; training runs without an eval set",
                    config.splits.eval, config.max_length)
        ev = None
    return Prepared(done["train"], ev, reports)


def prepare_sft(config, data, tokenizer, template) -> Prepared:
    """input_ids + labels from our template (the loss mask is exactly its assistant mask), fitted by the rule
    in `truncation`."""

    def fit(row: dict) -> dict:
        return tr.fit_sft(row["messages"], tokenizer, template, config.max_length, config.train_on)

    return _fit_all(data, config, fit, ["input_ids", "labels"], "Fitting conversations into max_length")


def prepare_pt(config, data, tokenizer, template) -> Prepared:
    ev = data["eval"].select_columns(["text"]) if data["eval"] is not None else None
    reports = [tr.untouched(data["train"], config.splits.train)]
    if ev is not None:
        reports.append(tr.untouched(ev, config.splits.eval))
    return Prepared(data["train"].select_columns(["text"]), ev, reports)


def _prepare_pairs(config, data, tokenizer, template, completions: tuple[str, ...], extra: tuple[str, ...],
                   cut_completion: bool) -> Prepared:
    def fit(row: dict) -> dict:
        return tr.fit_pair(row, completions, tokenizer, template, config.max_length, cut_completion)

    return _fit_all(data, config, fit, ["prompt", *completions, *extra], "Fitting prompts into max_length")


def prepare_preference(config, data, tokenizer, template) -> Prepared:
    # dpo: TRL keeps the start of a completion that does not fit; rm drops such rows, and ORPO/CPO would cut
    # replies to nothing, so for those a row must fit whole (the stage table's `cut_completion`).
    return _prepare_pairs(config, data, tokenizer, template, ("chosen", "rejected"), (),
                          cut_completion=STAGE_TABLE[config.stage].cut_completion)


def prepare_kto(config, data, tokenizer, template) -> Prepared:
    return _prepare_pairs(config, data, tokenizer, template, ("completion",), ("label",),
                          cut_completion=STAGE_TABLE[config.stage].cut_completion)


def _fit_prompt_row(row: dict, tokenizer: Any, template: Any, max_length: int, tokenize: bool) -> dict:
    prompt, ref = prompt_and_reference(row)
    out = tr.fit_prompt(prompt, tokenizer, template, max_length)
    if tokenize:
        ids = [] if out[tr.STATUS] == tr.DROPPED else tokenizer.apply_chat_template(
            out["prompt"], add_generation_prompt=True, tokenize=True, return_dict=True)["input_ids"]
        return {"input_ids": list(ids), tr.STATUS: out[tr.STATUS], tr.REASON: out[tr.REASON]}
    return {**out, "reference": ref}


def prepare_ppo(config, data, tokenizer, template) -> Prepared:
    """Tokenized prompts (ending in the assistant header) for on-policy generation, oldest turns trimmed."""
    fit = partial(_fit_prompt_row, tokenizer=tokenizer, template=template, max_length=config.max_length,
                  tokenize=True)
    p = _fit_all(data, config, fit, ["input_ids"], "Fitting prompts into max_length")
    if p.eval is None:  # TRL's PPOTrainer needs an eval set: the training prompts
        p.eval = p.train
    return p


def prepare_grpo(config, data, tokenizer, template) -> Prepared:
    fit = partial(_fit_prompt_row, tokenizer=tokenizer, template=template, max_length=config.max_length,
                  tokenize=False)
    return _fit_all(data, config, fit, ["prompt", "reference"], "Fitting prompts into max_length")


# ------------------------------------------------------------------ build (loads the model)


def evaluation(config: TrainConfig, p: Prepared) -> dict[str, Any]:
    """Eval loss on the eval split at each checkpoint (`save_steps`, a whole pass over the split is not
    free), none without one; `args.eval_strategy`/`eval_steps` in the config override it. `train()` adds
    one at the last step."""
    if p.eval is None or not len(p.eval):
        return {"eval_strategy": "no"}
    return {"eval_strategy": "steps", "eval_steps": config.args.get("save_steps", 200)}


def _peft_for(config, model, p: Prepared, args, task_type: str = "CAUSAL_LM") -> Any:
    return models.peft_config(config, task_type, model=model, steps=models.total_steps(args, len(p.train)))


def _trainer(cls, config, p: Prepared, tokenizer, args, model, **kw) -> Any:
    return cls(model=model, args=args, train_dataset=p.train, eval_dataset=p.eval, processing_class=tokenizer,
               peft_config=_peft_for(config, model, p, args), callbacks=models.peft_callbacks(config), **kw)


def build_sft(config, p, tokenizer, out):
    cls, _ = stage_classes("sft")
    args = trl_args(config, out, max_length=config.max_length, **evaluation(config, p))
    return _trainer(cls, config, p, tokenizer, args, models.load_policy(config))


def build_pt(config, p, tokenizer, out):
    cls, _ = stage_classes("pt")
    args = trl_args(config, out, max_length=config.max_length, dataset_text_field="text", packing=True,
                    packing_strategy="wrapped", **evaluation(config, p))
    return _trainer(cls, config, p, tokenizer, args, models.load_policy(config))


def build_dpo(config, p, tokenizer, out):
    cls, _ = stage_classes("dpo")
    args = trl_args(config, out, max_length=config.max_length, **evaluation(config, p))
    return _trainer(cls, config, p, tokenizer, args, models.load_policy(config))


def build_kto(config, p, tokenizer, out):
    """KTO: TRL's KTOTrainer on unpaired rows; the KL term needs batches of 2 or more (TRL checks)."""
    cls, _ = stage_classes("kto")
    args = trl_args(config, out, max_length=config.max_length, **evaluation(config, p))
    return _trainer(cls, config, p, tokenizer, args, models.load_policy(config))


def build_reference_free(config, p, tokenizer, out):
    """orpo (ORPOTrainer) and simpo (CPOTrainer, loss_type simpo): preference pairs, no reference model."""
    cls, _ = stage_classes(config.stage)
    args = trl_args(config, out, max_length=config.max_length, **evaluation(config, p), remove_unused_columns=False)
    return _trainer(cls, config, p, tokenizer, args, models.load_policy(config))


def build_rm(config, p, tokenizer, out):
    cls, _ = stage_classes("rm")
    args = trl_args(config, out, max_length=config.max_length, **evaluation(config, p))
    model = models.load_scorer(config.base_model, config, tokenizer)
    return cls(model=model, args=args, train_dataset=p.train, eval_dataset=p.eval, processing_class=tokenizer,
               peft_config=_peft_for(config, model, p, args, "SEQ_CLS"), callbacks=models.peft_callbacks(config))


def build_ppo(config, p, tokenizer, out):
    import copy

    trainer_cls, _ = stage_classes("ppo")
    args = trl_args(config, out, stop_token="eos", eval_strategy="no")
    tokenizer.padding_side = "left"  # queries are batched for generation
    policy = models.load_policy(config)
    ref = None if config.peft is not None else copy.deepcopy(policy)
    reward = models.load_scorer(config.ppo.reward_model, config, tokenizer, train_head=False)
    value = models.load_scorer(config.ppo.value_model or config.ppo.reward_model, config, tokenizer,
                               train_head=False)
    return trainer_cls(args=args, processing_class=tokenizer, model=policy, ref_model=ref, reward_model=reward,
                       value_model=value, train_dataset=p.train, eval_dataset=p.eval,
                       peft_config=models.peft_config(config, model=policy))


def build_grpo(config, p, tokenizer, out):
    from tuneforge.trainers.rewards import build_rewards

    cls, _ = stage_classes("grpo")
    funcs, classes, weights = build_rewards(config, tokenizer)
    # GRPO counts its own tokens (num_tokens); the Trainer's counter cannot see its inputs
    args = trl_args(config, out, reward_weights=weights, eval_strategy="no", include_num_input_tokens_seen="no")
    return _trainer(cls, config, p, tokenizer, args, models.load_policy(config), reward_funcs=funcs,
                    reward_processing_classes=classes)


def stage_steps(stage: str) -> tuple[Any, Any]:
    """(prepare, build) of a stage: the functions of this module that the stage table names."""
    facts = STAGE_TABLE[stage]
    return globals()[facts.prepare], globals()[facts.build]
