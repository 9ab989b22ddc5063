"""Optional extras: which import each `pip install 'tuneforge[X]'` provides, and the one error a command gives
when its extra is missing.

`pip install tuneforge` is the data side only (no torch). A command that needs more calls `require(...)` before
it imports anything heavy, so a user sees the exact install line (exit 2) instead of a ModuleNotFoundError deep in
a traceback. The table mirrors `[project.optional-dependencies]` in pyproject.toml (a test keeps them equal).
"""

from __future__ import annotations

import importlib.util
from importlib.metadata import PackageNotFoundError, version

from tuneforge.common.errors import TuneforgeError

# extra -> the top-level modules tuneforge imports from it (not every package the extra installs).
EXTRAS: dict[str, tuple[str, ...]] = {
    "train": ("torch", "transformers", "trl", "peft", "accelerate", "gguf"),
    "eval": ("torch", "transformers", "peft", "gguf", "lm_eval", "scipy", "matplotlib", "sacrebleu",
             "rouge_score", "jieba"),
    "embedded": ("torch", "transformers", "gguf", "llguidance", "fastapi", "uvicorn"),
    "prefect": ("prefect", "prefect_dask"),
    "dask": ("distributed",),
    "search": ("optuna",),
    "attribute": ("dattri",),
    "gpu": ("liger_kernel",),
}


# TRL removed PPOTrainer after 1.12 (huggingface/trl#7020); the [ppo] extra holds TRL there.
PPO_LAST_TRL = (1, 12)


def trl_has_ppo() -> bool:
    """Whether the installed TRL still has PPOTrainer, read from its version (TRL itself is not imported)."""
    try:
        trl = version("trl")
    except PackageNotFoundError:
        return False
    return tuple(int(x) for x in trl.split(".")[:2]) <= PPO_LAST_TRL


class MissingExtra(TuneforgeError):
    """A command needs an optional extra that is not installed; the message is the pip line to run."""


def missing(*extras: str) -> list[str]:
    """The modules of these extras that cannot be imported here."""
    out: list[str] = []
    for extra in extras:
        for mod in EXTRAS[extra]:
            if mod not in out and importlib.util.find_spec(mod) is None:
                out.append(mod)
    return out


def present() -> list[str]:
    """The extras whose every module is importable."""
    return [e for e in EXTRAS if not missing(e)]


def install_line(*extras: str) -> str:
    return f"pip install 'tuneforge[{','.join(extras)}]'"


def require(what: str, *extras: str, only: tuple[str, ...] | None = None) -> None:
    """Raise MissingExtra (exit 2 at the CLI) naming the install line when any module of `extras` (or of `only`,
    the ones this use needs) is missing."""
    gone = [m for m in missing(*extras) if only is None or m in only]
    if gone:
        names = ", ".join(gone[:4]) + (f" and {len(gone) - 4} more" if len(gone) > 4 else "")
        raise MissingExtra(f"{what} needs {names} (not installed): {install_line(*extras)}")
