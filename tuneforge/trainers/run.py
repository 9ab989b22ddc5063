"""`train()`: one config in, a run directory out (resolved config, manifest hash, metrics, final model)."""

from __future__ import annotations

import contextlib
import logging
import re
import sys
from pathlib import Path
from typing import Any

import yaml

from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.io import sha256_file, write_json, write_text
from tuneforge.common.lineage import write_trained
from tuneforge.common.models import resolve_model
from tuneforge.trainers import truncation as tr
from tuneforge.trainers.config import TrainConfig, check_paths, load_config
from tuneforge.trainers.data import load_stage_data
from tuneforge.trainers.metrics import LossProgress, MetricsLog, plot_loss, read_metrics
from tuneforge.trainers.models import load_tokenizer_and_template
from tuneforge.trainers.peft_methods import METHODS
from tuneforge.trainers.stage_table import STAGE_TABLE
from tuneforge.trainers.stages import stage_steps, trl_args

log = logging.getLogger(__name__)

log = logging.getLogger("tuneforge.trainers")


def last_checkpoint(out: Path) -> Path | None:
    from transformers.trainer_utils import get_last_checkpoint

    ckpts = out / "checkpoints"
    found = get_last_checkpoint(str(ckpts)) if ckpts.is_dir() else None
    return Path(found) if found else None


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for name in ("tuneforge", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        with contextlib.suppress(md.PackageNotFoundError):
            out[name] = md.version(name)
    return out


def _manifest_hash(config: TrainConfig, manifest: dict) -> str:
    return manifest.get("sha256") or sha256_file(Path(config.dataset) / "manifest.json")


def _is_main() -> bool:
    from accelerate import PartialState

    return PartialState().is_main_process


def _swap_progress_bar(trainer: Any) -> None:
    from transformers.trainer_callback import ProgressCallback

    if any(isinstance(cb, ProgressCallback) for cb in trainer.callback_handler.callbacks):
        trainer.remove_callback(ProgressCallback)
        trainer.add_callback(LossProgress())


def merge_adapter(final: Path, target: Path, stage: str, tokenizer: Any) -> Path:
    """A standalone model: the LoRA adapter folded into its base weights."""
    if STAGE_TABLE[stage].scorer:
        from peft import AutoPeftModelForSequenceClassification as auto
    else:
        from peft import AutoPeftModelForCausalLM as auto
    model = auto.from_pretrained(str(final)).merge_and_unload()
    model.save_pretrained(str(target))
    tokenizer.save_pretrained(str(target))
    return target


def final_eval(trainer: Any) -> None:
    """Eval loss on the eval split at the last step, when the trainer has one and evaluation is on but did not
    fall on that step (short runs end before the first `eval_steps`); it lands in metrics.jsonl."""
    args, state = trainer.args, trainer.state
    if getattr(trainer, "eval_dataset", None) is None or args.eval_strategy == "no":
        return
    if not any("eval_loss" in h and h.get("step") == state.global_step for h in state.log_history):
        trainer.evaluate()


def _rows_trained(trainer: Any, kept: int) -> int:
    """Rows the trainer got: its dataset's length, unless packing joined rows into blocks (nothing dropped)."""
    ds = getattr(trainer, "train_dataset", None)
    if getattr(trainer.args, "packing", False):
        return kept
    try:
        return len(ds)
    except TypeError:  # an iterable dataset
        return kept


def train(config: TrainConfig | str | Path | dict, out: str | Path, resume: bool = False, merge: bool = False,
          *, strict: bool | None = None, base_dir: str | Path | None = None) -> dict[str, Any]:
    """Train one stage; returns {run_dir, final, merged, metrics, plot, steps, final_loss, rows, ...}.

    `config` is a YAML path, a dict (its relative paths resolve against `base_dir`, default the working
    directory) or a TrainConfig. Before any model loads: every path is checked, and every split is fitted into
    max_length; too many dropped rows (or any, with `strict`) fail here, listed in DIR/run.json."""
    config = load_config(config, base_dir=base_dir)
    check_paths(config)
    args = trl_args(config, Path(out))  # TRL's own checks (GRPO's batch and num_generations...) before data or model
    if config.peft is not None and not METHODS[config.peft.method].checkpointing and not args.activation_checkpointing:
        log.info("peft method %s: activation checkpointing off (it cannot be combined with this method)",
                 config.peft.method)
    strict = config.truncation.strict if strict is None else strict
    if merge and config.peft is not None and not METHODS[config.peft.method].merges:
        raise RecipeError(f"--merge: a {config.peft.method!r} adapter (virtual tokens) cannot be folded into the "
                          "base weights; load DIR/final with peft.AutoPeftModelForCausalLM instead")
    out = Path(out)
    ckpt = last_checkpoint(out)
    if resume and ckpt is None:
        raise TuneforgeError(f"--resume: no checkpoint under {out / 'checkpoints'}")
    if not resume and ckpt is not None:
        raise TuneforgeError(f"{out} already holds checkpoints; pass --resume to continue, or choose another --out")
    facts = STAGE_TABLE[config.stage]
    if resume and facts.own_loop:
        raise TuneforgeError(f"--resume is not supported for {config.stage}: TRL's {facts.trainer} cannot restore "
                             "its state")

    data = load_stage_data(config)
    template_name = config.template or data["manifest"].get("template")
    if not template_name:
        raise RecipeError("no `template` in the config and none declared in the dataset manifest")
    tokenizer, template = load_tokenizer_and_template(config, template_name)

    prepare, build = stage_steps(config.stage)
    prepared = prepare(config, data, tokenizer, template)
    fitting = {r.split: r.to_json() for r in prepared.reports}
    main = _is_main()
    try:
        tr.preflight(prepared.reports, config.max_length, config.truncation.max_drop_share, strict)
    except TuneforgeError as e:
        if main:
            write_json(out / "run.json", {"stage": config.stage, "error": str(e), "max_length": config.max_length,
                                          "truncation": fitting})
        raise

    trainer = build(config, prepared, tokenizer, out)
    kept = prepared.reports[0].kept
    train_rows = _rows_trained(trainer, kept)
    if train_rows < kept:  # TRL filtered rows our fitting kept: count them, never hide them, check them too
        first = prepared.reports[0]
        fitting[first.split]["dropped_by_trl"] = kept - train_rows
        lost = first.n_dropped + kept - train_rows
        if strict or lost / first.rows > config.truncation.max_drop_share:
            msg = (f"{first.split}: TRL's {type(trainer).__name__} kept {train_rows} of the {kept} rows that fit "
                   f"max_length {config.max_length} ({lost} of {first.rows} lost in all)")
            if main:
                write_json(out / "run.json", {"stage": config.stage, "error": msg, "max_length": config.max_length,
                                              "truncation": fitting})
            raise (tr.DroppedRowsError(f"--strict: {msg}") if strict else RecipeError(
                f"{msg}; that is over truncation.max_drop_share {100 * config.truncation.max_drop_share:g}%"))
    rows_line = tr.fitting_line(fitting, config.max_length)
    log.info("%s: %s", config.stage, rows_line)
    resume_step = int(re.search(r"(\d+)$", ckpt.name).group(1)) if resume and ckpt else None
    metrics_path = out / "metrics.jsonl"
    if main:
        out.mkdir(parents=True, exist_ok=True)
        resolved = config.model_dump(mode="json")
        resolved["template"] = template_name
        write_text(out / "config.yaml", yaml.safe_dump(resolved, allow_unicode=True, sort_keys=False))
        write_json(out / "run.json", {
            "stage": config.stage, "base_model": config.base_model,
            "base_model_path": resolve_model(config.base_model), "template": template_name,
            "peft_method": config.peft.method if config.peft is not None else None,
            "dataset": str(config.dataset), "dataset_kind": data["kind"],
            "dataset_manifest_sha256": _manifest_hash(config, data["manifest"]),
            "train_rows": train_rows, "max_length": config.max_length, "truncation": fitting,
            "attn_implementation": getattr(getattr(trainer.model, "config", None), "_attn_implementation", None),
            "resumed_from": str(ckpt) if resume_step is not None else None,
            "trl_args": {k: v for k, v in trainer.args.to_dict().items() if "token" not in k},
            "versions": _versions(),
        })
    if main:
        trainer.add_callback(MetricsLog(metrics_path, resume_step=resume_step))
    _swap_progress_bar(trainer)

    if facts.own_loop:
        trainer.train()
    else:
        trainer.train(resume_from_checkpoint=str(ckpt) if resume_step is not None else None)
        final_eval(trainer)

    final = out / "final"
    trainer.save_model(str(final))
    merged = lineage = None
    if main:
        tokenizer.save_pretrained(str(final))
        if merge and config.peft is not None:
            merged = merge_adapter(final, out / "merged", config.stage, tokenizer)
        lineage = write_trained(final, config.base_model, config.stage, out, config.peft is not None, merged)
    rows = read_metrics(metrics_path) if main else []
    plot = plot_loss(rows, out / "loss.png") if main else None
    losses = [r[facts.loss] for r in rows if isinstance(r.get(facts.loss), (int, float))]
    eval_losses = [r["eval_loss"] for r in rows if isinstance(r.get("eval_loss"), (int, float))]
    summary = {
        "run_dir": str(out), "stage": config.stage, "final": str(final),
        "adapter": config.peft is not None, "peft_method": config.peft.method if config.peft is not None else None,
        "merged": str(merged) if merged else None,
        "metrics": str(metrics_path), "plot": str(plot) if plot else None,
        "steps": int(trainer.state.global_step), "final_loss": losses[-1] if losses else None,
        "eval_loss": eval_losses[-1] if eval_losses else None, "rows_line": rows_line,
        "template": template_name, "train_rows": train_rows, "lineage": lineage,
        "rows": {split: {k: v for k, v in r.items() if k != "dropped_rows"} for split, r in fitting.items()},
    }
    if main:
        write_json(out / "summary.json", summary)
    return summary
