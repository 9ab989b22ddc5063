"""Reading a `tuneforge build` output folder: the manifest, the dataset kind a stage needs, replay mixing."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.io import read_json_file
from tuneforge.trainers.config import TrainConfig
from tuneforge.trainers.stage_table import STAGE_TABLE


def pinned(folder: Path) -> Path:
    """The build output's live version (its manifest's real folder): the manifest and the datasets are read
    from it, so a build that replaces the output meanwhile cannot pair an old manifest with a new dataset."""
    return Path(os.path.realpath(Path(folder) / "manifest.json")).parent


def read_manifest(folder: Path) -> dict[str, Any]:
    return read_json_file(Path(folder) / "manifest.json",
                          f"{folder} is not a `tuneforge build` output: no manifest.json")


def dataset_folder(folder: Path, manifest: dict, kinds: tuple[str, ...], stage: str) -> tuple[str, Path]:
    """The first dataset kind the stage accepts that the build produced."""
    present = manifest.get("datasets") or {}
    for kind in kinds:
        if kind in present:
            return kind, Path(folder) / present[kind]
    have = ", ".join(present) or "none"
    raise RecipeError(f"stage {stage!r} needs a {' or '.join(kinds)} dataset; {folder} has: {have}")


def load_split(path: Path, split: str) -> Any:
    from datasets import load_from_disk

    dd = load_from_disk(str(path))
    if split not in dd:
        raise RecipeError(f"split {split!r} not in {path} (have {', '.join(dd)})")
    return dd[split]


def load_stage_data(config: TrainConfig) -> dict[str, Any]:
    """{"kind", "train", "eval" (or None), "manifest"} for the config's stage, replay already mixed in."""
    folder = pinned(config.dataset)
    manifest = read_manifest(folder)
    kind, path = dataset_folder(folder, manifest, STAGE_TABLE[config.stage].kinds, config.stage)
    train = load_split(path, config.splits.train)
    ev = None
    if config.splits.eval:
        from datasets import load_from_disk

        dd = load_from_disk(str(path))
        ev = dd[config.splits.eval] if config.splits.eval in dd and len(dd[config.splits.eval]) else None
    if len(train) == 0:
        raise TuneforgeError(f"{path} split {config.splits.train!r} is empty")
    if config.replay:
        train = mix_replay(train, config, kind)
    return {"kind": kind, "train": train, "eval": ev, "manifest": manifest}


def mix_replay(train: Any, config: TrainConfig, kind: str) -> Any:
    """Add general data so it makes up `ratio` of the training set (sampled with the run's seed)."""
    from datasets import concatenate_datasets

    spec = config.replay
    folder = pinned(spec.dataset)
    manifest = read_manifest(folder)
    _, rpath = dataset_folder(folder, manifest, (kind,), f"{config.stage} (replay)")
    general = load_split(rpath, spec.split)
    want = max(1, round(len(train) * spec.ratio / (1 - spec.ratio)))
    general = general.shuffle(seed=config.seed)
    if want > len(general):  # sample with repetition when the general set is small
        reps = -(-want // len(general))
        general = concatenate_datasets([general] * reps)
    general = general.select(range(want)).select_columns(train.column_names).cast(train.features)
    return concatenate_datasets([train, general]).shuffle(seed=config.seed)


def prompt_and_reference(row: dict) -> tuple[list[dict], str]:
    """A conversational prompt (up to the last assistant turn) and that turn's text as the reference."""
    if "messages" in row and row["messages"] is not None:
        msgs = row["messages"]
        last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
        if last is None:
            return msgs, ""
        return msgs[:last], msgs[last]["content"]
    return row["prompt"], (row["chosen"][0]["content"] if row.get("chosen") else "")
