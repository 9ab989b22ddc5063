"""`tuneforge train CONFIG --out DIR`: the training stage's command (also `python -m tuneforge.trainers`)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def train_command(
    config: Annotated[Path, typer.Argument(help="training config YAML (see docs/training.md)", exists=True,
                                           dir_okay=False)],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory: final/, metrics.jsonl, checkpoints/")],
    resume: Annotated[bool, typer.Option("--resume", help="continue from the last checkpoint in --out")] = False,
    merge: Annotated[bool, typer.Option("--merge", help="also write DIR/merged (the adapter folded in)")] = False,
    strict: Annotated[bool, typer.Option("--strict", help="exit 1 before training if any row cannot fit "
                                                          "max_length (they are listed in DIR/run.json)")] = False,
) -> None:
    """Train a model on a `tuneforge build` dataset: pt, sft, rm, dpo, kto, orpo, simpo, ppo or grpo, with a
    PEFT adapter (lora, dora, adalora, ia3, prefix, prompt, p_tuning), QLoRA, or in full."""
    from rich.console import Console

    from tuneforge.common.extras import require
    from tuneforge.trainers.config import check_paths, load_config

    # Read and checked before importing torch, transformers and TRL (seconds): a bad config or a missing path
    # fails as fast as the CLI starts; train() takes the config as read.
    require("training", "train")
    cfg = load_config(config)
    check_paths(cfg)
    from tuneforge.trainers import train
    from tuneforge.trainers.truncation import DroppedRowsError

    try:
        s = train(cfg, out, resume=resume, merge=merge, strict=strict or None)
    except DroppedRowsError as e:
        Console(stderr=True, highlight=False).print(f"[red]{e}[/red]\nevery dropped row: {out / 'run.json'}")
        raise typer.Exit(1) from None
    dropped = sum(r["dropped"] for r in s["rows"].values())
    loss = f"{s['final_loss']:.4f}" if isinstance(s["final_loss"], float) else "n/a"
    typer.echo(f"{s['stage']}: {s['steps']} steps, final loss {loss} -> {s['final']}"
               + (f" (merged: {s['merged']})" if s["merged"] else "")
               + (f"; {dropped} rows did not fit max_length, listed in {out / 'run.json'}" if dropped else ""))


def main() -> None:
    """Entry point for `python -m tuneforge.trainers` (e.g. under `accelerate launch -m`)."""
    import sys

    from rich.console import Console
    from rich.markup import escape

    from tuneforge.common.errors import TuneforgeError

    app = typer.Typer(add_completion=False)
    app.command()(train_command)
    try:
        app()
    except TuneforgeError as e:
        Console(stderr=True).print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)
        sys.exit(2)
