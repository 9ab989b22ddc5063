"""tuneforge's public Python API: the CLI's verbs as functions. None needs a Prefect server; each returns a
typed result that is also the plain dict its JSON file holds. Heavy libraries (torch, TRL, datasets) load
only when a function that needs them runs, so `import tuneforge` stays quick."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tuneforge.common.results import BuildResult, PipelineResult, Result

PathLike = str | Path


class TrainResult(Result):
    """One training stage (OUT/run.json plus where things are): `final` (adapter or model folder), `merged`,
    `adapter` (bool), `steps`, `final_loss`, `train_rows`, `metrics` (metrics.jsonl), `plot`."""

    run_dir: str
    final: str
    merged: str | None
    adapter: bool
    steps: int


class EvalResult(Result):
    """OUT/results.json of an evaluation: per-suite accuracy with n and CIs (`suites`), the held-out block,
    perplexity, and for a forgetting check the `forgetting` block with its verdict."""

    suites: dict[str, Any]


def build(recipe: PathLike, out: PathLike, **options: Any) -> BuildResult:
    """Build the dataset a recipe describes into `out` (sharded over every core; `runner="dask"` with
    `dask_address=` for a cluster). Options are those of `tuneforge build`: seed, strict, llm_base_url,
    llm_model, augment_limit, runner, workers, dask_address, shard_mb, shard_records, force, allow_outside,
    progress, exclude, exclude_top, exclude_top_percent. Returns the manifest. Call it under
    `if __name__ == "__main__":` in a script (worker processes re-import the main module)."""
    from tuneforge.builder import build as _build

    return _build(recipe, out, **options)


def train(config: PathLike | dict[str, Any], out: PathLike, *, resume: bool = False, merge: bool = False,
          **options: Any) -> TrainResult:
    """Train one stage (sft, pt, rm, dpo, kto, ppo, grpo, ...) from a config file or dict into `out`; relative
    paths in a dict resolve against the working directory, in a file against the file's folder."""
    from tuneforge.trainers import train as _train

    return TrainResult(_train(config, out, resume=resume, merge=merge, **options))


def evaluate(config: PathLike | dict[str, Any] | None = None, *, out: PathLike, model: str | None = None,
             adapter: str | None = None, **overrides: Any) -> EvalResult:
    """Evaluate one model on the configured suites, held-out data and perplexity; writes results.json,
    predictions.jsonl and report.html under `out`."""
    from tuneforge.eval import run_eval

    return EvalResult(run_eval(config, out=out, model=model, adapter=adapter, **overrides))


def forgetting(base: str, tuned: str | None = None, *, out: PathLike, adapter: str | None = None,
               config: PathLike | dict[str, Any] | None = None, suites: Sequence[str] | None = None,
               **overrides: Any) -> EvalResult:
    """Compare base and tuned on the same questions (paired tests, CIs); `result["forgetting"]["verdict"]`."""
    from tuneforge.eval import run_forgetting

    return EvalResult(run_forgetting(base, tuned, out=out, adapter=adapter, config=config,
                                     suites=list(suites) if suites else None, **overrides))


def compare(runs: Sequence[PathLike], out: PathLike) -> Result:
    """A leaderboard over evaluation or pipeline run folders, written to `out` (compare.html/.md/.json)."""
    from tuneforge.eval import compare_runs

    return Result(compare_runs(list(runs), out))


def run_pipeline(pipeline: PathLike, out: PathLike, *, overrides: dict[str, Any] | None = None) -> PipelineResult:
    """Build, train, evaluate, check forgetting and report, each step cached on content (a re-run with
    nothing changed reuses every step). Raises TuneforgeError when the forgetting gate fails."""
    from tuneforge.pipeline import run_pipeline as _run

    return _run(pipeline, out, overrides=overrides)


def get_template(name: str | Path, *, tokenizer: Any = None, **overrides: Any) -> Any:
    """A chat template (`ChatTemplate`) by registered name (`chatml`, `alpaca`, `chatglm2`, ...), `tokenizer`
    (the model's own; pass tokenizer=), or a path to a `.jinja` file; keywords override declaration fields."""
    from tuneforge.templates import get_template as _get

    return _get(name, tokenizer=tokenizer, **overrides)


def list_templates() -> list[str]:
    """The registered chat template names."""
    from tuneforge.templates import list_templates as _list

    return _list()


def operators() -> dict[str, type]:
    """Augmentation operators by the name a recipe's `op:` gives, with their parameter models."""
    from tuneforge.augment.ops import OPERATORS

    return {name: op.Params for name, op in OPERATORS.items()}


def benchmarks() -> list[str]:
    """Benchmark suites a config can name without a path (the samples shipped in the package), plus the
    layouts that take one (`ceval:PATH`, `cmmlu:PATH`, `mmlu:PATH`, `mcq:FILE`)."""
    from tuneforge.eval.suites import SHIPPED

    shipped = sorted(p.name for p in SHIPPED.iterdir() if p.is_dir() and p.name != "general_text")
    return [*shipped, "ceval:PATH", "cmmlu:PATH", "mmlu:PATH", "mcq:FILE"]
