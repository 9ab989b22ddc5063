"""Excluding records by id: a rebuild without the training records an attribution ranked highest (issue 36).

`exclude: {file: attribution.jsonl, top: K}` (or `top_percent: P`) in a recipe, or `tuneforge build --exclude
FILE --exclude-top K`, reads the ranked file (`tuneforge attribute` writes it: one JSON object a line with at
least `rank`, `id` and `score`, highest score first) before any work, takes its first K rows, and the build
drops the records with those ids, each one a line of rejects.jsonl (reason `excluded_by_attribution`, its
rank, score and the line of the file that named it).

Record ids are hashes of provenance (source name, file relative to the recipe, line or index, the sub-record),
so the same recipe over the same data gives the same ids in every build: a ranking made on build N names the
records of build N+1. Where the build drops them, and why there, is in docs/clean.md ("Excluding records").
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, model_validator

from tuneforge.common.errors import RecipeError
from tuneforge.common.records import Record, reject_record

REASON = "excluded_by_attribution"
STAGE = "exclude"
SHOWN_UNKNOWN = 10  # unknown ids listed in the manifest (all are counted)


class ExcludeConfig(BaseModel):
    """The recipe's `exclude:` block."""

    model_config = ConfigDict(extra="forbid")
    file: str = Field(description="a ranked attribution.jsonl (`tuneforge attribute`), relative to the recipe")
    top: int | None = Field(None, ge=0, description="exclude the first `top` rows (ranks 1..top)")
    top_percent: float | None = Field(None, ge=0, le=100, description="exclude the first `top_percent`% of the "
                                                                       "rows, rounded down")

    @model_validator(mode="after")
    def _one(self) -> ExcludeConfig:
        if (self.top is None) == (self.top_percent is None):
            raise ValueError("exclude: give exactly one of `top` (a number of records) or `top_percent`")
        return self


def from_flags(file: str | os.PathLike | None, top: int | None, top_percent: float | None,
               recipe_dir: Path, recipe: ExcludeConfig | None) -> ExcludeConfig | None:
    """The exclusion `--exclude FILE --exclude-top K | --exclude-top-percent P` ask for: the flags replace the
    recipe's block (a flag left out keeps the recipe's value); FILE is relative to the working directory and
    kept relative to the recipe, as a recipe writes it, so both ways give the same build."""
    if file is None and top is None and top_percent is None:
        return recipe
    if file is None and recipe is None:
        raise RecipeError("--exclude-top/--exclude-top-percent need --exclude FILE (or `exclude:` in the recipe)")
    if top is not None and top_percent is not None:
        raise RecipeError("give one of --exclude-top and --exclude-top-percent")
    path = _relative_to(file, recipe_dir) if file is not None else recipe.file  # type: ignore[union-attr]
    if top is None and top_percent is None:
        if recipe is None:
            raise RecipeError("--exclude needs --exclude-top K or --exclude-top-percent P (how many of its "
                              "highest-ranked records to drop)")
        top, top_percent = recipe.top, recipe.top_percent
    try:
        return ExcludeConfig(file=Path(path).as_posix(), top=top, top_percent=top_percent)
    except ValueError as e:
        raise RecipeError(f"--exclude: {e}") from None


def exclusion_path(cfg: ExcludeConfig, recipe_dir: Path) -> Path:
    """The file an exclusion reads: `file` joined to the recipe's folder as the user named it, `..` taken
    lexically, so a folder reached through a symlink keeps the neighbours the user sees. The build, `tuneforge
    check` and the recipe's fingerprint all go through here, so they read and hash the same file."""
    return Path(os.path.normpath(Path(recipe_dir) / cfg.file))


def _relative_to(file: str | os.PathLike, recipe_dir: Path) -> str:
    """FILE (relative to the working directory) as a path that `exclusion_path` turns back into the very file
    the user named: relative to the recipe's folder as the user sees it (neither side resolved, so a symlinked
    folder or a symlinked file stays as named), or, where no such path leads there (a `..` after a symlink
    in FILE), its absolute real path."""
    try:
        rel = os.path.relpath(os.path.abspath(file), os.path.abspath(recipe_dir))
    except ValueError:  # another drive (Windows)
        return os.path.realpath(file)
    back = os.path.normpath(Path(recipe_dir) / rel)
    try:
        same = os.path.samefile(back, file)
    except OSError:  # a missing file: keep what was named, the build says it cannot read it
        same = not os.path.exists(file)
    return rel if same else os.path.realpath(file)


@dataclass(frozen=True)
class Row:
    """One excluded row of the ranking."""

    rank: int
    score: float
    line: int  # the line of the exclusion file that named it


@dataclass
class Exclusion:
    """The validated file and the rows chosen from it."""

    cfg: ExcludeConfig
    sha256: str
    rows: int
    selected: dict[str, Row] = field(default_factory=dict)

    def summary(self) -> dict[str, Any]:
        return {"file": self.cfg.file, "sha256": self.sha256, "top": self.cfg.top,
                "top_percent": self.cfg.top_percent, "rows": self.rows, "selected": len(self.selected)}


def count_of(cfg: ExcludeConfig, rows: int) -> int:
    """How many rows the config takes: `top` (at most all of them), or `top_percent` of them rounded down,
    so an exclusion never drops more than it says."""
    if cfg.top is not None:
        return min(cfg.top, rows)
    return math.floor(rows * (cfg.top_percent or 0) / 100 + 1e-9)


def load_exclusion(cfg: ExcludeConfig, recipe_dir: Path) -> Exclusion:
    """Read and check the whole file (before the build does any work); a bad one is a RecipeError naming the
    line and what is wrong with it."""
    path = exclusion_path(cfg, recipe_dir)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise RecipeError(f"exclude: cannot read {path}: {e.strerror or e}") from None
    where = f"exclude file {path}"
    rows: list[tuple[str, Row]] = []
    seen: dict[str, int] = {}
    last = math.inf
    for n, raw in enumerate(data.split(b"\n"), start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RecipeError(f"{where}: line {n} is not JSON ({e}); {_SHAPE}") from None
        rid, rank, score = _fields(obj, where, n)
        if rank != len(rows) + 1:
            raise RecipeError(f"{where}: line {n} has rank {rank}, expected {len(rows) + 1} (ranks count 1, 2, 3, "
                              f"... in file order); {_SHAPE}")
        if score > last:
            raise RecipeError(f"{where}: line {n} has score {score} above the previous row's {last} (rows are "
                              f"sorted by score, highest first); {_SHAPE}")
        if rid in seen:
            raise RecipeError(f"{where}: line {n} repeats id {rid!r} of line {seen[rid]}")
        seen[rid] = n
        last = score
        rows.append((rid, Row(rank, score, n)))
    k = count_of(cfg, len(rows))
    return Exclusion(cfg, hashlib.sha256(data).hexdigest(), len(rows), dict(rows[:k]))


_SHAPE = "each line is one JSON object with at least rank (1, 2, ...), id and score, highest score first"


def _fields(obj: Any, where: str, n: int) -> tuple[str, int, float]:
    if not isinstance(obj, dict):
        raise RecipeError(f"{where}: line {n} is not a JSON object; {_SHAPE}")
    rid, rank, score = obj.get("id"), obj.get("rank"), obj.get("score")
    if not isinstance(rid, str) or not rid:
        raise RecipeError(f"{where}: line {n}: `id` should be a record id (text), got {rid!r}; {_SHAPE}")
    if not isinstance(rank, int) or isinstance(rank, bool):
        raise RecipeError(f"{where}: line {n}: `rank` should be an integer, got {rank!r}; {_SHAPE}")
    if not isinstance(score, (int, float)) or isinstance(score, bool) or not math.isfinite(score):
        raise RecipeError(f"{where}: line {n}: `score` should be a finite number, got {score!r}; {_SHAPE}")
    for name, typ in (("source", str), ("file", str), ("line", int)):
        v = obj.get(name)
        if v is not None and (not isinstance(v, typ) or isinstance(v, bool)):
            raise RecipeError(f"{where}: line {n}: `{name}` should be {typ.__name__}, got {v!r}; {_SHAPE}")
    return rid, rank, float(score)


def locate(excl: Exclusion, ids: list[Any]) -> dict[int, Row]:
    """Global position -> row, for every selected id among the build's records (`ids`: one id column a shard,
    in build order, as the clean stage wrote them)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    out: dict[int, Row] = {}
    if not excl.selected:
        return out
    wanted = pa.array(sorted(excl.selected), pa.string())
    start = 0
    for col in ids:
        hits = np.flatnonzero(pc.is_in(col, value_set=wanted).to_numpy(zero_copy_only=False))
        for i in hits.tolist():
            out[start + i] = excl.selected[col[i].as_py()]
        start += len(col)
    return out


def by_shard(found: dict[int, Row], offsets: np.ndarray) -> dict[int, dict[int, dict[str, Any]]]:
    """shard -> {row in the shard -> its ranking}: what each export task drops."""
    out: dict[int, dict[int, dict[str, Any]]] = {}
    for p, row in found.items():
        s = int(np.searchsorted(offsets, p, side="right") - 1)
        out.setdefault(s, {})[p - int(offsets[s])] = ranking(row)
    return out


def unmatched(excl: Exclusion, found: dict[int, Row]) -> dict[str, dict[str, Any]]:
    """The taken ids no input record has, with their ranking: an augment step may make a record with one."""
    ranks = {row.rank for row in found.values()}
    return {rid: ranking(row) for rid, row in excl.selected.items() if row.rank not in ranks}


def ranking(row: Row) -> dict[str, Any]:
    """What a reject row carries besides the record (`attribution`): its place in the ranking."""
    return {"rank": row.rank, "score": row.score, "line": row.line}


def reject_excluded(rec: Record, attribution: dict[str, Any]) -> dict:
    """The rejects.jsonl row of an excluded record (the record whole, as read, in `raw`)."""
    return reject_record(rec, f"{REASON}: rank {attribution['rank']}, score {attribution['score']:.6g}", STAGE,
                         attribution=attribution)


def report(excl: Exclusion, found: dict[int, Row], deduplicated: int, made: set[str]) -> tuple[dict[str, Any], list[str]]:
    """The manifest's `exclude` block and its warnings: how many selected ids matched a record this build read
    (`excluded`; `already_deduplicated` of them were duplicates of a kept record and stay rejects as such), how
    many matched a record an augment step made (`excluded_generated`), and the rest (`unknown`): ids of no
    record of this build, counted, the first few listed, and warned about; never silently ignored."""
    matched = {r.rank for r in found.values()}
    unknown = sorted((r.rank, rid) for rid, r in excl.selected.items() if r.rank not in matched and rid not in made)
    out = {**excl.summary(), "excluded": len(found) - deduplicated, "already_deduplicated": deduplicated,
           "excluded_generated": len(made), "unknown": len(unknown),
           "unknown_ids": [rid for _, rid in unknown[:SHOWN_UNKNOWN]]}
    warnings = []
    if unknown:
        warnings.append(f"exclude: {len(unknown)} of the {len(excl.selected)} ids taken from {excl.cfg.file} are "
                        "no record of this build (another recipe or data, or a record the clean stage rejected); "
                        "nothing was excluded for them")
    if excl.cfg.top is not None and excl.cfg.top > excl.rows:
        warnings.append(f"exclude: top {excl.cfg.top} asked, but {excl.cfg.file} ranks only {excl.rows} records; "
                        "all of them were taken")
    return out, warnings


__all__ = ["REASON", "ExcludeConfig", "Exclusion", "Row", "by_shard", "count_of", "from_flags", "load_exclusion",
           "locate", "ranking", "reject_excluded", "report", "unmatched"]
