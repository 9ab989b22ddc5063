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


def build(recipe: PathLike, out: PathLike, *, seed: int | None = None, strict: bool = False,
          llm_base_url: str | None = None, llm_model: str | None = None, augment_limit: int | None = None,
          runner: str = "auto", workers: int | None = None, dask_address: str | None = None,
          executor: Any = None, shard_mb: float | None = None, shard_records: int | None = None,
          force: bool = False, allow_outside: bool = False, progress: bool = False,
          exclude: PathLike | None = None, exclude_top: int | None = None,
          exclude_top_percent: float | None = None) -> BuildResult:
    """Build the dataset a recipe describes into `out` (sharded over every core; `runner="dask"` with
    `dask_address=` for a cluster); the options are those of `tuneforge build` (docs/python-api.md). With
    `strict=True` it raises StrictError, after writing the output, where `--strict` exits non-zero: an augment
    step failed every item, or an input record was rejected. Returns the manifest. Call it under
    `if __name__ == "__main__":` in a script (worker processes re-import the main module)."""
    from tuneforge.builder import build as _build

    return _build(recipe, out, seed=seed, strict=strict, llm_base_url=llm_base_url, llm_model=llm_model,
                  augment_limit=augment_limit, runner=runner, workers=workers, dask_address=dask_address,
                  executor=executor, shard_mb=shard_mb, shard_records=shard_records, force=force,
                  allow_outside=allow_outside, progress=progress, exclude=exclude, exclude_top=exclude_top,
                  exclude_top_percent=exclude_top_percent)


def train(config: PathLike | dict[str, Any], out: PathLike, *, resume: bool = False, merge: bool = False,
          strict: bool | None = None) -> TrainResult:
    """Train one stage (sft, pt, rm, dpo, kto, ppo, grpo, ...) from a config file or dict into `out`; relative
    paths in a dict resolve against the working directory, in a file against the file's folder. `strict`
    (default: the config's `truncation.strict`): raise before training if any row cannot fit max_length."""
    from tuneforge.trainers import train as _train

    return TrainResult(_train(config, out, resume=resume, merge=merge, strict=strict))


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
