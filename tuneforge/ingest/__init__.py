"""Ingest: the corpora a recipe names, planned into shards, each read into canonical records or rejects.

`plan_files` resolves and checks each source's paths; `plan_file` (one call per file, on any worker) hashes
a file, cuts it into parts and detects its format; `shards_of` turns the plans into units of work; and
`ShardReader` reads one shard, item by item, with exact file, line and index provenance. `ingest` reads
every source into memory through these same steps (for `tuneforge check`, library use and tests), and
`source_figures` gives the per-source figures that both it and the build's manifest report.
"""

from __future__ import annotations

import dataclasses
import glob
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.errors import SourceError
from tuneforge.common.records import Record, provenance, reject
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.cuts import Sharding
from tuneforge.ingest.fields import Context, Invalid
from tuneforge.ingest.formats import FORMATS, detect, fill_placeholders
from tuneforge.ingest.parts import ARROW_MARKERS, SUFFIX_TYPES, Bad, Item, Part
from tuneforge.ingest.plan import FilePlan
from tuneforge.ingest.plan import plan_file as _plan_file
from tuneforge.ingest.readers import read
from tuneforge.ingest.transcript import propose_transcript

__all__ = ["FilePlan", "IngestResult", "Shard", "ShardReader", "Sharding", "SourceConfig", "empty_files", "ingest",
           "plan_file", "plan_files", "shards_of", "source_figures"]

DETECT_SAMPLE = 20


def rel_path(path: Path, base: Path) -> str:
    try:
        return path.resolve().relative_to(base.resolve()).as_posix()
    except ValueError:
        return os.path.relpath(path.resolve(), base.resolve())


def _inside(path: Path, folder: Path) -> bool:
    try:
        path.resolve().relative_to(folder.resolve())
        return True
    except ValueError:
        return False


def resolve_files(cfg: SourceConfig, base: Path, allow_outside: bool = False) -> list[Path]:
    """Files of a source (see `_resolve`)."""
    return [f for f, _real in _resolve(cfg, base, allow_outside)]


def _resolve(cfg: SourceConfig, base: Path, allow_outside: bool = False) -> list[tuple[Path, str]]:
    """Files of a source: a file, a directory (recursively, known file types), a glob, or a saved dataset.
    Each real file once, in order; a path outside the recipe folder needs `allow_outside`. Neither a folder
    nor `**` is walked into a symbolically linked folder (a link cycle would never end)."""
    patterns = [cfg.path] if isinstance(cfg.path, str) else list(cfg.path)
    files: list[Path] = []
    for pattern in patterns:
        p = Path(pattern).expanduser()
        p = p if p.is_absolute() else base / p
        if any(ch in pattern for ch in "*?["):
            matched = _glob(p)
            files += [m for m in matched if m.is_file()]
            if not matched:
                raise SourceError(f"source {cfg.name!r}: no file matches {pattern!r} (relative to {base})")
        elif p.is_dir() and (cfg.file_type == "arrow" or any((p / m).exists() for m in ARROW_MARKERS)):
            files.append(p)
        elif p.is_dir():
            found = sorted((f for f in p.rglob("*") if f.suffix.lower() in SUFFIX_TYPES and f.is_file()),
                           key=_order)
            if not found:
                raise SourceError(f"source {cfg.name!r}: directory {p} holds no readable files")
            files += found
        elif p.exists():
            files.append(p)
        else:
            raise SourceError(f"source {cfg.name!r}: {p} does not exist")
    seen: set[str] = set()
    unique = []
    root = os.path.realpath(base)
    for f in files:
        real = os.path.realpath(f)  # once a file: 20,000 small files made six resolves each a second-long wait
        if real in seen:
            continue
        seen.add(real)
        if not (allow_outside or cfg.allow_outside) and not (real == root or real.startswith(root + os.sep)):
            raise SourceError(f"source {cfg.name!r}: {f} is outside the recipe's folder {base.resolve()}; set "
                              f"`allow_outside: true` on the source (or pass --allow-outside) to read it")
        unique.append((f, real))
    return unique


def _glob(pattern: Path) -> list[Path]:
    """`glob` matches, sorted; `**` does not enter symbolically linked folders, so a link cycle cannot make
    the walk endless (glob's `**` follows links: `a/loop -> ..` matched `a/loop/loop/...` without end)."""
    if "**" not in pattern.parts:
        return sorted(Path(m) for m in glob.glob(str(pattern), recursive=True))
    parts = pattern.parts
    first = next(i for i, x in enumerate(parts) if any(ch in x for ch in "*?["))
    root, rest = Path(*parts[:first]), parts[first:]
    hidden_ok = any(x.startswith(".") for x in rest)
    # pathlib's `**` skips linked folders; like glob, a wildcard does not match a hidden name.
    return sorted((m for m in root.glob(str(Path(*rest)))
                   if hidden_ok or not any(x.startswith(".") for x in m.relative_to(root).parts)), key=_order)


def _order(path: Path) -> tuple[str, ...]:
    """Path order (component by component), without pathlib's slow comparisons: 20,000 files sorted in 0.1 s."""
    return path.parts


@dataclass(frozen=True)
class FileJob:
    """One file to plan, as it travels to a worker."""

    path: str
    rel: str
    source: SourceConfig
    sharding: Sharding
    variables: dict[str, str] = field(default_factory=dict)


def plan_files(sources: list[SourceConfig], base: Path, sharding: Sharding,
               allow_outside: bool = False) -> list[FileJob]:
    """Every file of every source, in recipe and file order (the order of the whole build)."""
    jobs = []
    for cfg in sources:
        if cfg.format != "auto" and cfg.format not in FORMATS:
            raise SourceError(f"source {cfg.name!r}: unknown format {cfg.format!r}; known: {', '.join(FORMATS)}")
        root = os.path.realpath(base)
        for f, real in _resolve(cfg, base, allow_outside):
            rel = real[len(root) + 1:] if real.startswith(root + os.sep) else os.path.relpath(real, root)
            jobs.append(FileJob(str(f), Path(rel).as_posix(), cfg, sharding))
    return jobs


def plan_file(job: FileJob) -> FilePlan:
    """Hash and cut one file, and settle its format (detected from its first records when `auto`)."""
    cfg = job.source
    plan = _plan_file(Path(job.path), job.rel, cfg, job.sharding)
    if plan.parts:
        fmt = cfg.format if cfg.format != "auto" else _detect(plan.parts[0], cfg, job.path)
        plan.parts = [dataclasses.replace(p, format=fmt) for p in plan.parts]
    return plan


def _detect(part: Part, cfg: SourceConfig, path: str) -> str:
    samples = []
    for item in read(part, cfg):
        if isinstance(item, Item):
            samples.append(item.data)
            if len(samples) >= DETECT_SAMPLE:
                break
    if not samples:
        return "document"  # nothing readable: every item becomes a reject with its own reason
    if cfg.columns:
        # Renamed fields: detect on the record as it looks after the mapping.
        samples = [{**s, **{k: s[v] for k, v in cfg.columns.items() if v in s}} if isinstance(s, dict) else s
                   for s in samples]
    fmt = detect(samples)
    name = Path(path).name
    keys = sorted({k for s in samples if isinstance(s, dict) for k in s})[:12]
    hint = (f"set `format:` (one of {', '.join(FORMATS)}) and, if the field names differ, `columns:` in the "
            f"recipe")
    if fmt is None:
        proposal = propose_transcript(samples)
        if proposal:
            raise SourceError(f"source {cfg.name!r}: {name} looks like a speaker-tagged dialogue; add to the "
                              f"source in the recipe:\n{proposal}")
        raise SourceError(f"source {cfg.name!r}: cannot tell the format of {name} (fields seen: "
                          f"{', '.join(keys) or 'none'}); {hint}")
    failures = []
    for i, s in enumerate(samples):
        try:
            FORMATS[fmt].convert(s, Context(cfg, provenance(cfg.name, name, None, i), {}))
        except Invalid as e:
            failures.append(str(e))
        except Exception:
            pass
    if len(failures) * 2 > len(samples):
        raise SourceError(f"source {cfg.name!r}: {name} looks like `{fmt}`, but {len(failures)} of the first "
                          f"{len(samples)} records fail as {fmt} ({failures[0]}); fields seen: "
                          f"{', '.join(keys) or 'none'}; {hint}")
    return fmt


@dataclass(frozen=True)
class Shard:
    """A unit of work: parts of one source's files (all of them, in order, when the source has a `limit`)."""

    index: int
    source: SourceConfig
    parts: tuple[Part, ...]


PACK_FILES = 4096  # small files in one shard at most


def shards_of(plans: list[tuple[SourceConfig, FilePlan]], sharding: Sharding | None = None) -> list[Shard]:
    """Shards in build order; reading them in this order gives the records of a single-process read.

    Consecutive small files of a source (each one part) share a shard of up to `target_bytes`: a shard per
    file made 20,000 small files 20,000 units of work, each with its own scratch files and task overhead."""
    target = (sharding or Sharding()).target_bytes
    shards: list[Shard] = []
    limited: dict[str, list[Part]] = {}
    order: list[tuple[str, SourceConfig | None, Part | None]] = []
    for cfg, plan in plans:
        for part in plan.parts:
            if cfg.limit is not None:
                if cfg.name not in limited:
                    order.append((cfg.name, cfg, None))
                limited.setdefault(cfg.name, []).append(part)
            else:
                order.append((cfg.name, cfg, part))
    sizes = {plan.path: plan.size for _cfg, plan in plans
             if len(plan.parts) == 1 and plan.file_type not in ("arrow", "parquet")}
    pack: list[Part] = []
    pack_bytes = 0
    pack_cfg: SourceConfig | None = None

    def flush() -> None:
        nonlocal pack, pack_bytes
        if pack:
            assert pack_cfg is not None
            shards.append(Shard(len(shards), pack_cfg, tuple(pack)))
        pack, pack_bytes = [], 0

    for name, cfg, part in order:
        assert cfg is not None
        small = part is not None and part.path in sizes
        if not small or cfg is not pack_cfg or pack_bytes + sizes[part.path] > target or len(pack) >= PACK_FILES:
            flush()
        if small:
            assert part is not None
            pack_cfg = cfg
            pack.append(part)
            pack_bytes += sizes[part.path]
            continue
        parts = tuple(limited[name]) if part is None else (part,)
        shards.append(Shard(len(shards), cfg, parts))
    flush()
    return shards


@dataclass
class Input:
    """What one input item (a line, row or array element) became."""

    seq: int
    records: list[Record]
    reject: dict | None = None


@dataclass
class ShardStats:
    input: int = 0
    rejected: int = 0
    records: int = 0
    formats: list[str] = field(default_factory=list)
    encodings: dict[str, str] = field(default_factory=dict)


def _convert(fmt: str, item: Item, cfg: SourceConfig, rel: str, variables: dict[str, str]) -> list[Record]:
    meta = provenance(cfg.name, rel, item.line, item.index, item.key)
    recs = FORMATS[fmt].convert(item.data, Context(cfg, meta, variables))
    out = []
    for r in recs:
        r["meta"]["input"] = r["meta"]["group"]  # the input's own id: every record made from it shares it
        out.append(fill_placeholders(r, variables, cfg.name) if cfg.fill_placeholders else r)
    return out


class ShardReader:
    """Iterate a shard's inputs in file order; `stats` holds the counts once the iteration is done."""

    def __init__(self, shard: Shard, variables: dict[str, str]) -> None:
        self.shard = shard
        self.variables = variables
        self.stats = ShardStats()

    def __iter__(self) -> Iterator[Input]:
        cfg = self.shard.source
        st = self.stats
        seq = 0
        for part in self.shard.parts:
            st.encodings[part.rel] = part.encoding
            if part.format and part.format not in st.formats:
                st.formats.append(part.format)
            for item in read(part, cfg):
                if cfg.limit is not None and st.input >= cfg.limit:
                    return
                st.input += 1
                yield self._one(item, part, cfg, seq)
                seq += 1

    def _one(self, item: Item | Bad, part: Part, cfg: SourceConfig, seq: int) -> Input:
        st = self.stats
        if isinstance(item, Bad):
            st.rejected += 1
            return Input(seq, [], reject(item.reason, stage="ingest", source=cfg.name, file=part.rel,
                                         line=item.line, index=item.index, raw=item.raw))
        try:
            recs = _convert(part.format or "document", item, cfg, part.rel, self.variables)
        except Invalid as e:
            st.rejected += 1
            return Input(seq, [], reject(str(e), stage="ingest", source=cfg.name, file=part.rel, line=item.line,
                                         index=item.index, raw=item.data, key=item.key))
        st.records += len(recs)
        return Input(seq, recs)


def source_figures(sources: list[SourceConfig], jobs: list[FileJob], plans: list[FilePlan],
                   shards: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per source, what reading it gave: its files and their encodings, input items, rejected items, records
    and the formats seen (the manifest's per-source figures start from these). `shards`: every shard's
    {source, input, rejected, records, formats}, in build order."""
    out = {cfg.name: {"input": 0, "rejected": 0, "records": 0, "files": [], "format": [], "license": cfg.license,
                      "origin": cfg.origin, "encodings": {}} for cfg in sources}
    for j, p in zip(jobs, plans, strict=True):
        out[j.source.name]["files"].append(p.rel)
        out[j.source.name]["encodings"][p.rel] = p.encoding if p.parts else None
    for sh in shards:
        o = out[sh["source"]]
        for k in ("input", "rejected", "records"):
            o[k] += sh[k]
        o["format"] += [f for f in sh["formats"] if f not in o["format"]]
    for o in out.values():
        o["format"] = ", ".join(o["format"]) or "none"
    return out


def empty_files(jobs: list[FileJob], plans: list[FilePlan]) -> list[str]:
    """A warning for every input file with nothing in it."""
    return [f"source {j.source.name!r}: {p.rel} is empty" for j, p in zip(jobs, plans, strict=True)
            if "empty" in p.warnings]


@dataclass
class IngestResult:
    """An in-memory read of every source (library use and small data; the build streams shards instead)."""

    records: list[Record] = field(default_factory=list)
    rejects: list[dict] = field(default_factory=list)
    inputs: dict[str, str] = field(default_factory=dict)  # file (relative to the recipe) -> sha256
    sources: dict[str, dict[str, Any]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)


def ingest(sources: list[SourceConfig], base_dir: Path, variables: dict[str, str] | None = None,
           sharding: Sharding | None = None, allow_outside: bool = False) -> IngestResult:
    """Read every source in recipe order into memory, through the build's own steps (plan every file, cut
    the plans into shards, read each shard) and its per-source figures: the same records, rejects and
    counts, in the same order, as a build reads."""
    res = IngestResult()
    jobs = plan_files(sources, Path(base_dir), sharding or Sharding(), allow_outside)
    plans = [plan_file(j) for j in jobs]
    read = []
    for shard in shards_of([(j.source, p) for j, p in zip(jobs, plans, strict=True)], sharding):
        reader = ShardReader(shard, variables or {})
        for inp in reader:
            res.records += inp.records
            if inp.reject is not None:
                res.rejects.append(inp.reject)
        read.append({"source": shard.source.name, **dataclasses.asdict(reader.stats)})
    res.inputs = {p.rel: p.sha256 for p in plans if p.sha256}
    res.sources = source_figures(sources, jobs, plans, read)
    res.warnings = empty_files(jobs, plans)
    return res
