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
    merge: Annotated[bool, typer.Option("--merge", help="also write DIR/merged (LoRA folded in)")] = False,
) -> None:
    """Train a model on a `tuneforge build` dataset: pt, sft, rm, dpo, ppo or grpo, LoRA/QLoRA or full."""
    from tuneforge.trainers.run import train

    s = train(config, out, resume=resume, merge=merge)
    loss = f"{s['final_loss']:.4f}" if isinstance(s["final_loss"], float) else "n/a"
    typer.echo(f"{s['stage']}: {s['steps']} steps, final loss {loss} -> {s['final']}"
               + (f" (merged: {s['merged']})" if s["merged"] else ""))


def main() -> None:
    """Entry point for `python -m tuneforge.trainers` (e.g. under `accelerate launch -m`)."""
    import sys

    from rich.console import Console

    from tuneforge.common.errors import TuneforgeError

    app = typer.Typer(add_completion=False)
    app.command()(train_command)
    try:
        app()
    except TuneforgeError as e:
        Console(stderr=True).print(f"[red]error:[/red] {e}")
        sys.exit(2)
