"""Ingest: read the corpora a recipe names and turn every input record into canonical records or rejects."""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.errors import SourceError
from tuneforge.common.io import sha256_file
from tuneforge.common.records import Record, provenance, reject
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.formats import FORMATS, Context, Invalid, detect, fill_placeholders
from tuneforge.ingest.readers import ARROW_MARKERS, SUFFIX_TYPES, Bad, FileInfo, Item, read

__all__ = ["IngestResult", "Shard", "SourceConfig", "ingest", "ingest_shard", "merge", "plan_shards", "resolve_files"]

DETECT_SAMPLE = 20


@dataclass
class IngestResult:
    records: list[Record] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # file (relative to the recipe) -> sha256
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def _rel(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return os.path.relpath(path.resolve(), base.resolve())


def resolve_files(cfg: SourceConfig, base: Path) -> list[Path]:
    """Files of a source: a file, a directory (recursively, known file types), a glob, or a saved dataset."""
    patterns = [cfg.path] if isinstance(cfg.path, str) else list(cfg.path)
    files: list[Path] = []
    for pattern in patterns:
        p = base / pattern
        if any(ch in pattern for ch in "*?["):
            matched = sorted(Path(m) for m in glob.glob(str(p), recursive=True))
            files += [m for m in matched if m.is_file()]
            if not matched:
                raise SourceError(f"source {cfg.name!r}: no file matches {pattern!r} (relative to {base})")
        elif p.is_dir() and (cfg.file_type == "arrow" or any((p / m).exists() for m in ARROW_MARKERS)):
            files.append(p)
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in SUFFIX_TYPES)
            if not found:
                raise SourceError(f"source {cfg.name!r}: directory {p} holds no readable files")
            files += found
        elif p.is_file():
            files.append(p)
        else:
            raise SourceError(f"source {cfg.name!r}: {p} does not exist")
    return files


def _convert(fmt: str, item: Item, cfg: SourceConfig, rel: str, variables: dict[str, str]) -> list[Record]:
    meta = provenance(cfg.name, rel, item.line, item.index, item.key)
    meta["input"] = None  # set below from the record's group, which is the input's own id
    recs = FORMATS[fmt].convert(item.data, Context(cfg, meta, variables))
    for r in recs:
        r["meta"]["input"] = r["meta"]["group"]
        if cfg.fill_placeholders:
            fill_placeholders(r, variables, cfg.name)
    return recs


@dataclass(frozen=True)
class Shard:
    """A unit of ingest work: one file of a source (all of a source's files when it has a `limit`)."""

    source: SourceConfig
    files: tuple[str, ...]


def plan_shards(sources: list[SourceConfig], base: Path) -> list[Shard]:
    """Shards in recipe and file order; merging their results in this order gives the same build whether
    they ran one after another or in parallel on a Dask cluster."""
    shards = []
    for cfg in sources:
        if cfg.format != "auto" and cfg.format not in FORMATS:
            raise SourceError(f"source {cfg.name!r}: unknown format {cfg.format!r}; known: {', '.join(FORMATS)}")
        files = [str(f) for f in resolve_files(cfg, base)]
        if cfg.limit is not None:
            shards.append(Shard(cfg, tuple(files)))
        else:
            shards += [Shard(cfg, (f,)) for f in files]
    return shards


def ingest_shard(shard: Shard, base: Path, variables: dict[str, str], progress: Any = None) -> IngestResult:
    """Read a shard's files; with `format: auto` each file's format is detected from its first records."""
    cfg = shard.source
    result = IngestResult()
    stats: dict[str, Any] = {"input": 0, "rejected": 0, "records": 0, "files": [], "formats": [],
                             "license": cfg.license, "origin": cfg.origin, "encodings": {}}
    for name in shard.files:
        path = Path(name)
        rel = _rel(path, base)
        if path.is_file():
            result.inputs[rel] = sha256_file(path)
        stats["files"].append(rel)
        info = FileInfo()
        pending: list[Item | Bad] = []
        fmt = None if cfg.format == "auto" else cfg.format

        def emit(item: Item | Bad, fmt: str | None, rel: str = rel) -> None:
            stats["input"] += 1
            if isinstance(item, Bad):
                stats["rejected"] += 1
                result.rejects.append(reject(item.reason, stage="ingest", source=cfg.name, file=rel,
                                             line=item.line, index=item.index, raw=item.raw))
                return
            try:
                recs = _convert(fmt, item, cfg, rel, variables)
            except Invalid as e:
                stats["rejected"] += 1
                result.rejects.append(reject(str(e), stage="ingest", source=cfg.name, file=rel, line=item.line,
                                             index=item.index, raw=item.data, key=item.key))
                return
            stats["records"] += len(recs)
            result.records.extend(recs)

        for item in read(path, cfg, info):
            if cfg.limit is not None and stats["input"] + len(pending) >= cfg.limit:
                break
            if fmt is None:
                # Hold the first records back until there are enough to tell the format.
                pending.append(item)
                if sum(isinstance(p, Item) for p in pending) >= DETECT_SAMPLE:
                    fmt = _detect_or_fail(pending, cfg, path)
                    for p in pending:
                        emit(p, fmt)
                    pending = []
            else:
                emit(item, fmt)
            if progress is not None:
                progress()
        if pending:
            if fmt is None and any(isinstance(p, Item) for p in pending):
                fmt = _detect_or_fail(pending, cfg, path)
            for p in pending:
                emit(p, fmt)
        stats["encodings"][rel] = info.encoding
        if fmt and fmt not in stats["formats"]:
            stats["formats"].append(fmt)
        if info.empty:
            result.warnings.append(f"source {cfg.name!r}: {rel} is empty")
    result.sources[cfg.name] = stats
    return result


def merge(parts: list[IngestResult]) -> IngestResult:
    """Concatenate shard results in order; per-source figures are summed."""
    out = IngestResult()
    for part in parts:
        out.records += part.records
        out.rejects += part.rejects
        out.inputs.update(part.inputs)
        out.warnings += part.warnings
        for name, st in part.sources.items():
            acc = out.sources.setdefault(name, {**st, "files": [], "formats": [], "encodings": {},
                                                "input": 0, "rejected": 0, "records": 0})
            for k in ("input", "rejected", "records"):
                acc[k] += st[k]
            acc["files"] += st["files"]
            acc["encodings"].update(st["encodings"])
            acc["formats"] += [f for f in st["formats"] if f not in acc["formats"]]
    for st in out.sources.values():
        st["format"] = ", ".join(st.pop("formats")) or "none"
    return out


def _detect_or_fail(items: list[Any], cfg: SourceConfig, path: Path) -> str:
    samples = [i.data for i in items if isinstance(i, Item)]
    if cfg.columns:
        # Renamed fields: detect on the record as it looks after the mapping.
        samples = [{**s, **{k: s[v] for k, v in cfg.columns.items() if v in s}} if isinstance(s, dict) else s
                   for s in samples]
    fmt = detect(samples)
    if fmt is None:
        keys = sorted({k for s in samples if isinstance(s, dict) for k in s})[:12]
        raise SourceError(f"source {cfg.name!r}: cannot tell the format of {path.name} (fields seen: "
                          f"{', '.join(keys) or 'none'}); set `format:` (one of {', '.join(FORMATS)}) and, "
                          f"if the field names differ, `columns:` in the recipe")
    return fmt


def ingest(sources: list[SourceConfig], base_dir: Path, variables: dict[str, str] | None = None,
           progress: Any = None) -> IngestResult:
    """Read every source in recipe order; the result is deterministic for the same files and recipe."""
    return merge([ingest_shard(sh, base_dir, variables or {}, progress) for sh in plan_shards(sources, base_dir)])
