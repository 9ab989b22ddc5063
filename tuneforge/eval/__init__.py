"""Evaluation: C-Eval-style benchmarks, held-out domain generation, the forgetting check, comparisons.

The public entry points load lazily so that the engines (native, lm-eval) import without the config layer.
"""

from typing import Any

__all__ = ["compare_runs", "load_config", "run_eval", "run_forgetting"]


def __getattr__(name: str) -> Any:
    if name == "compare_runs":
        from tuneforge.common.extras import require

        require("comparing runs", "eval", only=("matplotlib",))
        from tuneforge.eval.compare import compare_runs

        return compare_runs
    if name == "load_config":
        from tuneforge.eval.config import load_config

        return load_config
    if name in ("run_eval", "run_forgetting"):
        from tuneforge.common.extras import require

        require("evaluation", "eval")
        from tuneforge.eval import forgetting, runner

        return getattr(runner if name == "run_eval" else forgetting, name)
    raise AttributeError(name)
