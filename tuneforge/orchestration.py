"""The CLI's pipeline verbs: run, demo, schedule, server (docs/orchestration.md). Each runs the pipeline's
plain function or, with --prefect (or PREFECT_API_URL), its Prefect flow, so this module sits above both
`tuneforge/pipeline/` and `tuneforge/flows/` (flows hold no logic; this is where the choice is made);
`tuneforge.cli` registers the verbs. Heavy imports stay inside the commands."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path

import typer

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.extras import require
from tuneforge.common.resources import asset

PREFECT_HELP = "run as a Prefect flow (default: only when PREFECT_API_URL is set)"


def use_prefect(flag: bool | None) -> bool:
    """Run as a Prefect flow when asked, or when a Prefect API is configured (PREFECT_API_URL)."""
    return bool(os.environ.get("PREFECT_API_URL")) if flag is None else flag


def _run(pipeline: Path, out: Path, overrides: dict | None, prefect: bool | None) -> dict:
    """The pipeline through the plain API, or as a Prefect flow when asked (or PREFECT_API_URL is set)."""
    from tuneforge.pipeline import load_pipeline

    if use_prefect(prefect):
        require("a Prefect run (--prefect or PREFECT_API_URL)", "prefect")
    if load_pipeline(pipeline, overrides)[0].search is not None:  # a `search:` block: the trials (issue 17)
        return _run_search(pipeline, out, overrides, use_prefect(prefect))
    if use_prefect(prefect):
        from tuneforge.flows.pipeline import pipeline_flow

        return pipeline_flow(pipeline=str(pipeline.resolve()), out=str(out), overrides=overrides)
    from tuneforge.pipeline import run_pipeline

    return run_pipeline(pipeline, out, overrides=overrides)


def _run_search(pipeline: Path, out: Path, overrides: dict | None, prefect: bool) -> dict:
    """The pipeline's hyperparameter search (tuneforge/pipeline/search.py), plain or as a flow."""
    if prefect:
        from tuneforge.flows.pipeline import search_flow

        return search_flow(pipeline=str(pipeline.resolve()), out=str(out), overrides=overrides)
    from tuneforge.pipeline.search import run_search

    return run_search(pipeline, out, overrides=overrides)


def _search_summary(out: Path, res: dict, seconds: float) -> str:
    chosen = res.get("chosen") or {}
    lines = [f"report: {out / 'report.html'}", f"results: {out / 'results.json'}",
             f"steps: {len(res['steps']['ran'])} ran, {len(res['steps']['reused'])} reused  time: {seconds:.0f} s"]
    for t in res["trials"]:
        d, g = t.get("domain") or {}, t.get("general") or {}
        lines.append(f"trial {t['number']} {t['hash']} {t['state']:<11} {t['params']}  domain gain {d.get('gain')} "
                     f"general change {g.get('change')}{'  <- chosen' if t.get('chosen') else ''}")
    lines.append(f"chosen: trial {chosen.get('number')} -> {res.get('final')}")
    return "\n".join(lines)


def _summary(out: Path, res: dict, seconds: float) -> str:
    if res.get("kind") == "search":
        return _search_summary(out, res, seconds)
    from tuneforge.pipeline.gate import gate_line

    steps = res.get("steps") or {}
    model = (res.get("model") or {}).get("summary")
    return (f"report: {out / 'report.html'}\nresults: {out / 'results.json'}\n"
            f"steps: {len(steps.get('ran', []))} ran, {len(steps.get('reused', []))} reused  "
            f"time: {seconds:.0f} s\n" + (f"model: {model}\n" if model else "") + gate_line(res.get("gate")))


def run_command(
    pipeline: Path = typer.Argument(..., exists=True, dir_okay=False, help="pipelines/<name>.yaml"),
    out: Path = typer.Option(..., "--out", "-o", help="run folder (data/, train/, eval/, forgetting/, report.html)"),
    prefect: bool | None = typer.Option(None, "--prefect/--no-prefect", help=PREFECT_HELP),
) -> None:
    """Run a pipeline: build → train → evaluate → forgetting gate → report, each step cached on content."""
    t = time.perf_counter()
    res = _run(pipeline, out, None, prefect)
    typer.echo(_summary(out, res, time.perf_counter() - t))


def schedule_command(
    pipeline: Path | None = typer.Argument(None, help="pipelines/<name>.yaml"),
    cron: str | None = typer.Option(None, help='cron schedule, e.g. "0 3 * * *"'),
    interval: int | None = typer.Option(None, help="seconds between runs"),
    out: Path | None = typer.Option(None, "--out", help="run folder (default runs/<pipeline name>)"),
    name: str | None = typer.Option(None, help="deployment name (default: the pipeline's name)"),
    list_: bool = typer.Option(False, "--list", help="list the deployments the Prefect API knows"),
) -> None:
    """Serve a pipeline as a scheduled Prefect deployment (blocks; runs appear in the Prefect UI)."""
    require("tuneforge schedule", "prefect")
    if list_:
        for d in asyncio.run(_deployments()):
            typer.echo(d)
        return
    if pipeline is None or (cron is None) == (interval is None):
        raise TuneforgeError("schedule needs a pipeline file and exactly one of --cron or --interval")
    from tuneforge.flows.pipeline import pipeline_flow
    from tuneforge.pipeline import load_pipeline

    cfg, _ = load_pipeline(pipeline)
    target = str((out or Path("runs") / cfg.name).resolve())
    pipeline_flow.serve(name=name or cfg.name, cron=cron, interval=interval,
                        parameters={"pipeline": str(pipeline.resolve()), "out": target})


async def _deployments() -> list[str]:
    from prefect.client.orchestration import get_client

    async with get_client() as client:
        deps = await client.read_deployments()
        lines = []
        for d in deps:
            scheds = ", ".join(str(getattr(s.schedule, "cron", None) or getattr(s.schedule, "interval", ""))
                               for s in (d.schedules or []))
            lines.append(f"{d.name}\t{d.id}\t{scheds or 'no schedule'}\t{d.parameters}")
        return lines or ["no deployments"]


def server_command(port: int = typer.Option(4200, help="port on 127.0.0.1")) -> None:
    """Start a local Prefect server (UI and API) on 127.0.0.1; point PREFECT_API_URL at it."""
    require("tuneforge server", "prefect")
    typer.echo(f"export PREFECT_API_URL=http://127.0.0.1:{port}/api   # in the shells that run tuneforge")
    os.execvp(sys.executable, [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1",
                               "--port", str(port)])


# `tuneforge demo --quick` (CI): the same pipeline, cut down everywhere it spends time.
DEMO_QUICK = {
    "build": {"augment_limit": 1},
    "train": [{"name": "sft", "config": "../configs/demo-sft.yaml",
               "set": {"max_length": 128, "args": {"max_steps": 2, "per_device_train_batch_size": 1}}}],
    "evaluate": {"heldout": {"limit": 2, "max_new_tokens": 8}},
    "forgetting": {"config": "../configs/demo-forgetting-quick.yaml"},
}


def demo_command(
    quick: bool = typer.Option(False, help="a reduced run (CI): fewer steps, questions and generations"),
    out: Path = typer.Option(Path("runs/demo"), "--out", help="run folder"),
    prefect: bool | None = typer.Option(None, "--prefect/--no-prefect", help=PREFECT_HELP),
) -> None:
    """The main job on the embedded defaults: no network, GPU or API key. Builds the hotel dataset (a few
    records augmented by SmolLM2 behind the embedded server), trains a LoRA SFT on the CPU, evaluates base
    and tuned, runs the forgetting check and writes OUT/report.html and OUT/results.json."""
    require("tuneforge demo", "train", "eval", "embedded")
    pipeline = asset("pipelines", "demo.yaml")
    t = time.perf_counter()
    try:
        res = _run(pipeline, out, DEMO_QUICK if quick else None, prefect)
    finally:
        typer.echo(f"demo {'(quick) ' if quick else ''}took {time.perf_counter() - t:.0f} s")
    typer.echo(_summary(out, res, time.perf_counter() - t))


def register(app: typer.Typer) -> None:
    """Add run, schedule, server and demo to the `tuneforge` app, in that order (the order of --help)."""
    app.command("run")(run_command)
    app.command("schedule")(schedule_command)
    app.command("server")(server_command)
    app.command("demo")(demo_command)
