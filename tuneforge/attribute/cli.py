"""`tuneforge attribute RUN_OR_FORGETTING_DIR --out OUT`: a thin wrapper over `attribute()`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

err = Console(stderr=True, highlight=False)


def attribute_command(
    run: Path = typer.Argument(..., help="a forgetting check's folder, or a pipeline run folder holding forgetting/",
                               exists=True, file_okay=False),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (attribution.jsonl, totals.json, report.md)"),
    proj_dim: int = typer.Option(256, "--proj-dim", min=1, help="dimension the gradients are projected to"),
    proj_type: str = typer.Option("sjlt", "--proj-type",
                                  help="sjlt (sparse; default), rademacher | normal (dense, TRAK's); on CUDA also "
                                       "random_mask | grass"),
    min_lost: int = typer.Option(5, "--min-lost", min=1, help="fewest lost questions worth attributing"),
    no_normalize: bool = typer.Option(False, "--no-normalize", help="raw gradient dot products instead of cosine"),
    seed: int = typer.Option(0, "--seed", help="projection and bootstrap seed"),
    device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda"),
    per_example: str = typer.Option("auto", "--per-example",
                                    help="auto (batched on CUDA when the adapter is LoRA-style linear layers, one "
                                         "backward a record on CPU), batched, loop; exact per-example gradients "
                                         "either way"),
    batch: int = typer.Option(32, "--batch", min=1, help="records a backward pass when batched"),
    no_cache: bool = typer.Option(False, "--no-cache", help="compute again even when the cache has this result"),
) -> None:
    """Rank the training records by their contribution to the questions the forgetting check lost."""
    from tuneforge.attribute.run import Method, attribute

    method = Method(proj_dim=proj_dim, proj_type=proj_type, seed=seed, normalize=not no_normalize,
                    min_lost=min_lost, batch=batch, per_example=per_example)
    s = attribute(run, out, device=device, method=method, use_cache=not no_cache,
                  progress=lambda m: err.print(f"[dim]{m}[/dim]", markup=True, soft_wrap=True))
    if s["status"] != "ranked":
        typer.echo(s["message"])
        return
    top = s["top"][0] if s["top"] else None
    lead = (f"; top: {top['id']} ({top['source']} {top['file']}:{top['line']}, score {top['score']:+.4f})"
            if top else "")
    how = "from the cache" if s["cache"]["hit"] else f"in {s['seconds']} s"
    typer.echo(f"attributed {s['lost']} lost questions to {s['records']} records ({how}){lead}; "
               f"{out / 'attribution.jsonl'}, {out / 'report.md'}")


def register(app: typer.Typer) -> None:
    app.command("attribute")(attribute_command)
