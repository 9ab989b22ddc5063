"""tuneforge: raw corpora to fine-tuning data, train-then-eval runs, and proof of what the fine-tune did.

    from tuneforge import build, train, evaluate, forgetting, compare, run_pipeline

The functions are in `tuneforge.api` (docs/python-api.md); importing this package loads none of the heavy
libraries.
"""

from tuneforge.api import (
    EvalResult,
    TrainResult,
    benchmarks,
    build,
    compare,
    evaluate,
    forgetting,
    get_template,
    list_templates,
    operators,
    run_pipeline,
    train,
)
from tuneforge.common.errors import RecipeError, StrictError, TuneforgeError
from tuneforge.common.results import BuildResult, PipelineResult, Result
from tuneforge.common.version import __version__

__all__ = [
    "BuildResult",
    "EvalResult",
    "PipelineResult",
    "RecipeError",
    "Result",
    "StrictError",
    "TrainResult",
    "TuneforgeError",
    "__version__",
    "benchmarks",
    "build",
    "compare",
    "evaluate",
    "forgetting",
    "get_template",
    "list_templates",
    "operators",
    "run_pipeline",
    "train",
]
