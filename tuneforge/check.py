"""`tuneforge check FILE`: validate a recipe, a training config, an eval config or a pipeline without running
anything (no model loads, no build, no request): its schema, every path it names, its templates, and that each
step's input exists or is made by an earlier step. Every error is listed, not only the first.

The checks are the ones the commands themselves run before their first step (the stages' own loaders and
path checks), gathered per part so one broken part does not hide the next.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from tuneforge.common.config import read_yaml_mapping
from tuneforge.common.errors import TuneforgeError

Kind = Literal["recipe", "train", "eval", "pipeline"]
KINDS: tuple[str, ...] = ("recipe", "train", "eval", "pipeline")
EVAL_KEYS = {"suites", "heldout", "perplexity", "forgetting", "judge", "engine", "mode", "generation"}
SAMPLE = [{"role": "system", "content": "You are helpful."}, {"role": "user", "content": "你好"},
          {"role": "assistant", "content": "你好！"}, {"role": "user", "content": "Hi"}]


@dataclass
class Report:
    kind: str
    path: Path
    errors: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def part(self, where: str, fn: Callable[[], Any]) -> Any:
        """Run one check; its error is recorded under `where` and the other parts still run."""
        try:
            return fn()
        except TuneforgeError as e:
            text = " ".join(str(e).split())
            self.errors.append(text if not where or text.startswith(where) else f"{where}: {text}")
        return None

    @property
    def ok(self) -> bool:
        return not self.errors


def detect_kind(data: dict[str, Any]) -> Kind:
    """By the keys a file has: `build` a pipeline, `sources` a recipe, `stage` a training config, suites or
    held-out/perplexity/forgetting blocks an eval config."""
    if "build" in data:
        return "pipeline"
    if "sources" in data:
        return "recipe"
    if "stage" in data:
        return "train"
    if EVAL_KEYS & set(data):
        return "eval"
    raise TuneforgeError("cannot tell what this file is (no `build`, `sources`, `stage` or eval key such as "
                         "`suites`); pass --kind recipe|train|eval|pipeline")


def check_file(path: str | Path, kind: str | None = None) -> Report:
    path = Path(path)
    data = read_yaml_mapping(path, "file")
    if kind is not None and kind not in KINDS:
        raise TuneforgeError(f"--kind {kind!r}: one of {', '.join(KINDS)}")
    report = Report(kind or detect_kind(data), path)
    {"recipe": _recipe, "train": _train, "eval": _eval, "pipeline": _pipeline}[report.kind](report)
    return report


def _chat_template(name: str, where: str, report: Report) -> None:
    """The chat template exists and renders a sample conversation (the sandboxed Jinja2 it trains with)."""
    from tuneforge.templates import get_template

    def render() -> None:
        tpl = get_template(name)
        tpl.render(SAMPLE)
        tpl.render(SAMPLE, add_generation_prompt=True)

    report.part(f"{where} {name!r}", render)


def check_recipe(path: Path, report: Report, where: str = "recipe") -> None:
    from tuneforge.augment.ops.base import load_template
    from tuneforge.augment.run import OPERATORS
    from tuneforge.ingest import resolve_files
    from tuneforge.recipe import load_recipe

    loaded = report.part(where, lambda: load_recipe(path))
    if loaded is None:
        return
    recipe, base = loaded
    files = 0
    for src in recipe.sources:
        found = report.part(where, lambda s=src: resolve_files(s, base))  # the message names the source
        files += len(found or [])
    names = [recipe.template] + [f.split(":", 1)[1] for f in recipe.formats if f.startswith("template:")]
    for name in dict.fromkeys(names):
        _chat_template(str(base / name) if name.endswith(".jinja") else name, f"{where} template", report)
    if recipe.exclude is not None:
        check_exclude(recipe.exclude, base, f"{where} exclude", report)
    steps = recipe.augment.steps if recipe.augment else []
    for st in steps:
        ref = st.template or f"{OPERATORS[st.op].default_template or st.op}.{st.lang}"
        report.part(f"{where} augment step {st.name!r} template {ref!r}", lambda r=ref: load_template(r, base))
    report.notes.append(f"{where}: {len(recipe.sources)} sources ({files} files), template {recipe.template}, "
                        f"{len(steps)} augment steps")


def check_exclude(cfg: Any, base: Path, where: str, report: Report) -> None:
    """The ranked attribution file an exclusion names is readable and well formed (as the build reads it)."""
    from tuneforge.clean.exclude import load_exclusion

    ex = report.part(where, lambda: load_exclusion(cfg, base))
    if ex is not None:
        report.notes.append(f"{where}: {len(ex.selected)} of the {ex.rows} ranked records of {cfg.file}")


def _recipe(report: Report) -> None:
    check_recipe(report.path, report)


def _dataset_kind(config: Any) -> str:
    """The training config's dataset has the kind its stage reads, and the template exists."""
    from tuneforge.trainers.data import dataset_folder, read_manifest
    from tuneforge.trainers.stage_table import STAGE_TABLE

    manifest = read_manifest(config.dataset)
    dataset_folder(config.dataset, manifest, STAGE_TABLE[config.stage].kinds, config.stage)
    name = config.template or manifest.get("template")
    if not name:
        raise TuneforgeError("no `template` in the config and none declared in the dataset manifest")
    return name


def _train(report: Report) -> None:
    from tuneforge.trainers.config import check_paths, load_config

    config = report.part(report.path.name, lambda: load_config(report.path))
    if config is None:
        return
    report.part(report.path.name, lambda: check_paths(config))
    if report.ok:  # the dataset is there: it has what the stage reads
        template = report.part("dataset", lambda: _dataset_kind(config))
        if template:
            _chat_template(template, "template", report)
    report.notes.append(f"stage {config.stage}, base model {config.base_model}, dataset {config.dataset}")


def check_eval(config: Any, report: Report, where: str, produced: tuple[str, ...] = ()) -> None:
    """Paths (suites, held-out data, perplexity corpus) exist or are `produced` by an earlier step; own exam
    files load."""
    from tuneforge.eval.config import check_paths
    from tuneforge.eval.suites import load_suite

    report.part(where, lambda: check_paths(config, skip=produced))
    for sc in config.suites:
        if sc.benchmark.lower().startswith("mcq:") and Path(sc.benchmark[4:]).is_file():
            report.part(f"{where} suite {sc.benchmark!r}", lambda s=sc: load_suite(
                s.benchmark, subjects=s.subjects, split=s.split, columns=s.columns, style=s.style,
                strict_subjects=s.strict_subjects))


def _eval(report: Report) -> None:
    from tuneforge.eval.config import load_config

    config = report.part(report.path.name, lambda: load_config(report.path))
    if config is None:
        return
    check_eval(config, report, report.path.name)
    parts = [f"{len(config.suites)} suites"] + [b for b in ("heldout", "perplexity", "judge") if getattr(config, b)]
    report.notes.append("eval config: " + ", ".join(parts))


def _pipeline(report: Report) -> None:
    from tuneforge.eval.config import load_config
    from tuneforge.pipeline.config import (
        _file,
        _train_stage,
        chained,
        deep_merge,
        load_pipeline,
        plan_pipeline,
    )

    loaded = report.part("pipeline", lambda: load_pipeline(report.path))
    if loaded is None:
        return
    cfg, base = loaded
    with tempfile.TemporaryDirectory() as tmp:  # where the build would write: train stages read it
        data_dir = Path(tmp) / "data"
        recipe = report.part("build: recipe", lambda: _file(base, cfg.build.recipe, "build: recipe"))
        if recipe is not None:
            check_recipe(recipe, report, f"recipe {cfg.build.recipe}")
        if cfg.build.exclude is not None:
            check_exclude(cfg.build.exclude, base, "build: exclude", report)
        from tuneforge.pipeline.exclude import check_search

        report.part("search: exclude", lambda: check_search(cfg, base))
        for i, step in enumerate(cfg.train):
            report.part(f"train step {step.name!r}",
                        lambda s=step, i=i: _train_stage(s, base, data_dir, chained(cfg.train, i)))
        evals = []
        if cfg.evaluate is not None:
            ho = cfg.evaluate.heldout
            extra = {"heldout": {**ho, "dataset": str(data_dir)}} if ho is not None else {}
            evals.append(("evaluate", cfg.evaluate.config, extra))
        if cfg.forgetting is not None:
            f = cfg.forgetting
            evals.append(("forgetting", f.config, {"suites": [{"benchmark": s} for s in f.suites]} if f.suites
                          else {}))
        for name, rel, extra in evals:
            # loaded as the plan loads it, then every path checked (the plan stops at the first)
            path = report.part(f"{name}: config", lambda r=rel, n=name: _file(base, r, f"{n}: config")) if rel \
                else base / "inline"
            if path is None:
                continue
            raw = deep_merge(read_yaml_mapping(path, "eval config") if rel else {}, extra)
            ec = report.part(f"{name}: config {rel or '(inline)'}",
                             lambda r=raw, p=path: load_config(r, base_dir=p.parent))
            if ec is not None:
                made = ("heldout.dataset",) if ec.heldout is not None and ec.heldout.dataset == str(data_dir) else ()
                check_eval(ec, report, f"{name}: config {rel or '(inline)'}", made)
        if report.ok:  # what only the whole plan knows (stage order, anything added to it)
            plan = report.part("pipeline plan", lambda: plan_pipeline(report.path, tmp))
            if plan is not None and recipe is not None:
                report.part("", lambda: _stage_inputs(recipe, plan, report))
            if plan is not None:
                stages = " -> ".join(f"{s.name} ({s.config.stage})" for s in plan.train) or "no training"
                report.notes.append(f"pipeline {cfg.name}: build, {stages}"
                                    + (", evaluate" if plan.eval_config is not None else "")
                                    + (", forgetting" if plan.forgetting_config is not None else ""))


SAMPLE_RECORDS = 50  # records read from each source to see which record kinds it gives


def recipe_kinds(recipe: Path) -> dict[str, str]:
    """The record kinds a build of `recipe` gives, each with where it comes from: the first SAMPLE_RECORDS
    records of every source (read as the build reads them) and the kinds its augment steps create."""
    from tuneforge.augment.ops import OPERATORS
    from tuneforge.ingest import ingest
    from tuneforge.recipe import load_recipe

    rc, base = load_recipe(recipe)
    sources = [s.model_copy(update={"limit": min(s.limit or SAMPLE_RECORDS, SAMPLE_RECORDS)}) for s in rc.sources]
    found: dict[str, str] = {}
    for rec in ingest(sources, base, rc.variables).records:
        found.setdefault(rec["kind"], f"source {rec['meta']['source']!r}")
    for step in rc.augment.steps if rc.augment is not None else []:
        for kind in OPERATORS[step.op].creates:
            found.setdefault(kind, f"augment step {step.name or step.op!r}")
    return found


def _stage_inputs(recipe: Path, plan: Any, report: Report) -> None:
    """Each training stage reads a dataset kind the build will make (sampled from the sources)."""
    from tuneforge.trainers.stage_table import STAGE_TABLE

    made = recipe_kinds(recipe)
    for stage in plan.train:
        wants = STAGE_TABLE[stage.config.stage].kinds
        if not any(k in made for k in wants):
            have = ", ".join(f"{k} ({w})" for k, w in sorted(made.items())) or "nothing"
            report.errors.append(f"train step {stage.name!r} (stage {stage.config.stage}) reads a "
                                 f"{' or '.join(wants)} dataset, which the build will not make: its first "
                                 f"{SAMPLE_RECORDS} records a source and its augment steps give {have}")
