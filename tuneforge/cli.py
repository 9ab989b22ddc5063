"""The `tuneforge` command line: one verb per capability, each a thin call into the library."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import typer
from rich.console import Console

from tuneforge.common.errors import TuneforgeError

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# The ephemeral Prefect API starts in a subprocess; on a busy 2-core machine its default 20 s can run out.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn raw corpora into fine-tuning data, train, evaluate, and prove what the fine-tune did.")
err = Console(stderr=True)


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="datasets/<domain>/recipe.yaml", exists=True, dir_okay=False),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (dataset/, exports/, manifest.json, ...)"),
    strict: bool = typer.Option(False, help="exit non-zero if any input record is rejected"),
    seed: int | None = typer.Option(None, help="override the recipe's seed"),
    llm_base_url: str | None = typer.Option(None, "--llm-base-url", help="OpenAI-compatible endpoint for augmentation"),
    llm_model: str | None = typer.Option(None, "--llm-model", help="model name at that endpoint"),
    runner: str = typer.Option("local", help="local (threads) or dask (shards in parallel on a Dask cluster)"),
    dask_address: str | None = typer.Option(None, help="an existing Dask scheduler, e.g. tcp://host:8786"),
) -> None:
    """Build a fine-tuning dataset from the corpora a recipe names (a Prefect flow)."""
    from tuneforge.flows.build import with_runner

    summary = with_runner(runner, dask_address)(recipe_path=str(recipe), out=str(out), strict=strict, seed=seed,
                                                llm_base_url=llm_base_url, llm_model=llm_model)
    c = summary["counts"]
    typer.echo(f"input {c['input']}  kept {c['kept']}  rejected {c['rejected']}  deduplicated {c['deduplicated']}  "
               f"splits {c['splits']}  -> {out}")
    if strict and c["rejected"]:
        err.print(f"[red]--strict: {c['rejected']} input records rejected; see {out}/rejects.jsonl[/red]")
        raise typer.Exit(1)


# Sub-commands owned by later stages register here; their modules import heavy libraries only inside
# the commands, so `tuneforge --help` stays fast.
def _register() -> None:
    from tuneforge.eval.cli import register as register_eval
    from tuneforge.flows.cli import register as register_flows
    from tuneforge.templates.cli import app as templates_app
    from tuneforge.trainers.cli import train_command

    app.add_typer(templates_app, name="templates")
    app.command("train")(train_command)
    register_eval(app)
    register_flows(app)


_register()


def main() -> None:
    try:
        app()
    except TuneforgeError as e:
        err.print(f"[red]error:[/red] {e}")
        sys.exit(2)


if __name__ == "__main__":
    main()
