"""The `tuneforge` command line: one verb per capability, each a thin call into the library.

Exit codes: 0 success, 1 `--strict` found rejects (or a gate failed), 2 a user error (bad recipe or
config, unreadable input, unusable --out), 3 an internal error. Errors print one line saying what to do;
the traceback only with `--debug`.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path

import typer

try:  # typer >= 0.22 carries its own click
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer on top of click
    from click import ClickException
from rich.console import Console
from rich.markup import escape

from tuneforge.common.errors import TuneforgeError, machine_fault
from tuneforge.orchestration import use_prefect

os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
# An ephemeral Prefect API starts in a subprocess; on a busy 2-core machine its default 20 s can run out.
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Turn raw corpora into fine-tuning data, train, evaluate, and prove what the fine-tune did.")
err = Console(stderr=True, highlight=False)
STATE = {"debug": False}


@app.callback()
def _options(debug: bool = typer.Option(False, "--debug", help="show tracebacks and third-party warnings")) -> None:
    from tuneforge.common import logs

    STATE["debug"] = debug
    logs.setup(debug)


@app.command()
def build(
    recipe: Path = typer.Argument(..., help="datasets/<domain>/recipe.yaml", exists=True, dir_okay=False),
    out: Path = typer.Option(..., "--out", "-o", help="output folder (new, empty, or an earlier output of this recipe)"),
    strict: bool = typer.Option(False, help="exit 1 if any input record is rejected; 2 if an augment step failed "
                                "every item"),
    seed: int | None = typer.Option(None, help="override the recipe's seed"),
    llm_base_url: str | None = typer.Option(None, "--llm-base-url", help="OpenAI-compatible endpoint for augmentation"),
    llm_model: str | None = typer.Option(None, "--llm-model", help="model name at that endpoint"),
    runner: str = typer.Option("auto", help="auto/processes (one worker process per core), threads, serial, dask"),
    workers: int | None = typer.Option(None, help="worker processes (default: one per core)"),
    dask_address: str | None = typer.Option(None, help="an existing Dask scheduler, e.g. tcp://host:8786"),
    shard_mb: float | None = typer.Option(None, help="target shard size in MiB for line files (default 8)"),
    shard_records: int | None = typer.Option(None, help="target records per shard for CSV/Parquet (default 20000)"),
    force: bool = typer.Option(False, help="replace an earlier output of another recipe in --out"),
    allow_outside: bool = typer.Option(False, help="allow source paths outside the recipe's folder"),
    exclude: Path | None = typer.Option(None, "--exclude", help="a ranked attribution.jsonl (tuneforge attribute): "
                                        "drop its top records (with --exclude-top or --exclude-top-percent)"),
    exclude_top: int | None = typer.Option(None, "--exclude-top", min=0, help="drop the K highest-ranked records"),
    exclude_top_percent: float | None = typer.Option(None, "--exclude-top-percent", min=0, max=100,
                                                     help="drop the top P%% of the ranked records"),
    prefect: bool | None = typer.Option(None, "--prefect/--no-prefect",
                                        help="run as a Prefect flow (default: when PREFECT_API_URL is set)"),
) -> None:
    """Build a fine-tuning dataset from the corpora a recipe names."""
    t = time.perf_counter()
    kw = {"seed": seed, "llm_base_url": llm_base_url, "llm_model": llm_model, "force": force,
          "allow_outside": allow_outside, "shard_mb": shard_mb, "shard_records": shard_records}
    if exclude is not None or exclude_top is not None or exclude_top_percent is not None:
        kw.update(exclude=None if exclude is None else str(exclude), exclude_top=exclude_top,
                  exclude_top_percent=exclude_top_percent)
    if use_prefect(prefect):
        from tuneforge.common.extras import require

        require("a Prefect build (--prefect or PREFECT_API_URL)", "prefect")
        from tuneforge.flows.build import with_runner

        m = with_runner(runner, dask_address, workers)(recipe_path=str(recipe), out=str(out), **kw)
    else:
        from tuneforge.builder import build as run_build

        m = run_build(recipe, out, runner=runner, workers=workers, dask_address=dask_address, progress=True, **kw)
    c = m["counts"]
    typer.echo(f"built {out} in {time.perf_counter() - t:.1f} s: input {c['input']} = kept {c['kept']} + rejected "
               f"{c['rejected']} + deduplicated {c['deduplicated']}; splits {c['splits']}; "
               f"datasets {', '.join(m['datasets'].values()) or 'none'}; rejects in {out / 'rejects.jsonl'}")
    from tuneforge.augment.run import failed_step_warnings

    failed_steps = failed_step_warnings(m)  # the last lines: a build with nothing generated is not a success
    for w in failed_steps:
        err.print(f"[{'red' if strict else 'yellow'}]{'error' if strict else 'warning'}:[/] {w}", soft_wrap=True)
    if strict and failed_steps:
        raise typer.Exit(2)
    if strict and c["rejected"]:
        err.print(f"[red]--strict: {c['rejected']} input records rejected; see {out}/rejects.jsonl[/red]")
        raise typer.Exit(1)


@app.command()
def check(
    file: Path = typer.Argument(..., help="a recipe, training config, eval config or pipeline (YAML)",
                                exists=True, dir_okay=False),
    kind: str | None = typer.Option(None, "--kind", help="recipe | train | eval | pipeline (default: by its keys)"),
) -> None:
    """Validate a file without running anything: schema, paths, templates, each step's input. Exit 2 lists
    every error."""
    from tuneforge.check import check_file

    report = check_file(file, kind)
    if not report.ok:
        err.print(f"[red]{file}: {len(report.errors)} error(s) in this {report.kind}:[/red]", soft_wrap=True)
        for e in report.errors:
            err.print(f"  - {e}", markup=False, soft_wrap=True)
        raise typer.Exit(2)
    typer.echo(f"{file}: {report.kind} ok" + "".join(f"; {n}" for n in report.notes))


def new_domain(
    name: str = typer.Argument(..., help="the new domain's name (a folder under datasets/)"),
    root: Path = typer.Option(Path("."), help="the project folder holding datasets/ and pipelines/"),
) -> None:
    """Start a new domain from the commented template: recipe, prompt, eval, training and forgetting configs
    (to edit) and a pipeline naming them, each path relative to the file that holds it."""
    from tuneforge.new_domain import new_domain as make

    target, pipe = make(name, root)
    typer.echo(f"created {target}/ and {pipe}; put your data under {target}/data and edit recipe.yaml")


# Sub-commands owned by later stages register here; their modules import heavy libraries only inside
# the commands, so `tuneforge --help` stays fast.
def _register() -> None:
    from tuneforge.attribute.cli import register as register_attribute
    from tuneforge.envinfo import env_command
    from tuneforge.eval.cli import register as register_eval
    from tuneforge.orchestration import register as register_orchestration
    from tuneforge.templates.cli import app as templates_app
    from tuneforge.trainers.cli import train_command

    app.add_typer(templates_app, name="templates")
    app.command("train")(train_command)
    register_eval(app)
    register_orchestration(app)
    app.command("new-domain")(new_domain)
    register_attribute(app)
    app.command("env")(env_command)


_register()


def main() -> None:
    """Run a command; turn every failure into one line and an exit code (tracebacks with --debug)."""
    command = typer.main.get_command(app)
    try:
        code = command.main(standalone_mode=False)
        sys.exit(code if isinstance(code, int) else 0)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except ClickException as e:  # a usage error: a missing file, an unknown option
        e.show()
        sys.exit(2)
    except TuneforgeError as e:
        if STATE["debug"]:
            traceback.print_exc()
        err.print(f"[red]error:[/red] {escape(str(e))}", soft_wrap=True)  # one line; [extra] is not markup
        sys.exit(2)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    except Exception as e:
        if STATE["debug"]:
            traceback.print_exc()
        if fix := machine_fault(e):  # a full disk, a quota, a permission: the user's to fix, not a bug
            err.print(f"[red]error:[/red] {fix}")
            sys.exit(2)
        err.print(f"[red]internal error:[/red] {type(e).__name__}: {str(e)[:500]}\n"
                  f"This is a bug in tuneforge, not in your data. Re-run with --debug for the traceback and "
                  f"report it.")
        sys.exit(3)


if __name__ == "__main__":
    main()
