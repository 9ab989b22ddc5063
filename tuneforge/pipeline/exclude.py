"""Excluding attributed records in a pipeline (issue 36): the build step's `exclude:` and the search knob
`exclude_top_percent` ("drop the top P% of the ranking").

A trial with the knob trains on a build of its own, `OUT/data-exclude/<hash>` (one per distinct percentage,
cached like every step and shared by the trials that ask for it); P = 0 trains on the shared `OUT/data`.
Evaluation stays on `OUT/data`'s held-out split: an exclusion drops training records without moving any group
between splits (docs/clean.md), so every trial and the base are scored on the same questions.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path
from typing import Any

from tuneforge.clean.exclude import ExcludeConfig, load_exclusion
from tuneforge.common.errors import RecipeError
from tuneforge.common.io import sha256_file
from tuneforge.pipeline.search_config import EXCLUDE_KNOB as KNOB


def build_args(cfg: ExcludeConfig | None, base: Path) -> dict[str, Any]:
    """The `build()` keywords for an exclusion whose file is relative to `base` (the pipeline's folder)."""
    if cfg is None:
        return {}
    return {"exclude": str((base / cfg.file).resolve()), "exclude_top": cfg.top,
            "exclude_top_percent": cfg.top_percent}


def build_key(args: dict[str, Any]) -> dict[str, Any]:
    """What the build step's cache key adds for an exclusion: the file's content and how much is taken."""
    if not args:
        return {}
    return {"exclude": {"sha256": sha256_file(args["exclude"]), "top": args.get("exclude_top"),
                        "top_percent": args.get("exclude_top_percent")}}


def search_file(cfg: Any, base: Path) -> Path | None:
    """The ranking the knob takes its percentage of: `search.exclude`, relative to the pipeline."""
    if cfg.search is None or cfg.search.exclude is None:
        return None
    return (base / cfg.search.exclude).resolve()


def check_search(cfg: Any, base: Path) -> None:
    """Before the first step: the knob has a readable, well-formed ranking, and the build step excludes
    nothing of its own (the knob says what each trial drops)."""
    if cfg.search is None or KNOB not in cfg.search.space():
        return
    if cfg.build.exclude is not None:
        raise RecipeError(f"search: the {KNOB} knob decides what each trial excludes; drop `build.exclude`")
    f = search_file(cfg, base)
    assert f is not None  # SearchSpec requires `exclude` with the knob
    load_exclusion(ExcludeConfig(file=str(f), top_percent=0), base)


def trial_build(steps: Any, plan: Any, pipeline: str, params: dict[str, Any], build: Any) -> dict[str, Any] | None:
    """The trial's own build when its knob excludes something (a cached step), else None (the shared one)."""
    p = params.get(KNOB)
    if not p:
        return None
    f = search_file(plan.cfg, Path(pipeline).parent)
    assert f is not None
    args = {"exclude": str(f), "exclude_top": None, "exclude_top_percent": float(p)}
    key = build_key(args)
    h = hashlib.sha256(f"{key['exclude']['sha256']}:{float(p)!r}".encode()).hexdigest()[:12]
    out = plan.root / "data-exclude" / h
    b = plan.cfg.build
    return steps(f"data-exclude/{h}", "build", build, out / "manifest.json",
                 {"recipe": plan.recipe_fingerprint, "build": b.model_dump(mode="json"), **key},
                 recipe=str(plan.recipe), out=str(out), runner=b.runner, dask_address=b.dask_address,
                 llm_base_url=b.llm_base_url, llm_model=b.llm_model, augment_limit=b.augment_limit, **args)


def with_dataset(plan: Any, data: dict[str, Any] | None) -> Any:
    """The plan with every training stage reading `data`'s build (the evaluation keeps OUT/data)."""
    if data is None:
        return plan
    stages = [dataclasses.replace(s, config=s.config.model_copy(update={"dataset": Path(data["out"])}))
              for s in plan.train]
    return dataclasses.replace(plan, train=stages)


__all__ = ["KNOB", "build_args", "build_key", "check_search", "search_file", "trial_build", "with_dataset"]
