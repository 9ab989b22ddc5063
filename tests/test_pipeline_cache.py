"""The pipeline's step cache keys on content: config, inputs and the source of the stages a step runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]

RUN = """
import sys
from tuneforge import run_pipeline
res = run_pipeline(sys.argv[1], sys.argv[2])
print("RAN", ",".join(res.steps["ran"]), "REUSED", ",".join(res.steps["reused"]))
"""


def _build_only_pipeline(tmp_path: Path) -> Path:
    data = tmp_path / "domain"
    data.mkdir()
    rows = [{"instruction": f"问题 {i}：酒店几点退房？", "input": "", "output": f"第 {i} 家酒店中午 12 点前退房。"}
            for i in range(30)]
    (data / "qa.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (data / "recipe.yaml").write_text(yaml.safe_dump({
        "name": "cachetest", "sources": [{"name": "qa", "path": "qa.json", "format": "alpaca"}],
        "card": {"tokenizer": None}}), encoding="utf-8")
    pipe = tmp_path / "pipe.yaml"
    pipe.write_text(yaml.safe_dump({"name": "cachetest", "build": {"recipe": "domain/recipe.yaml"}}), encoding="utf-8")
    return pipe


def _run(code_root: Path, pipe: Path, out: Path) -> str:
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    env.pop("PREFECT_API_URL", None)
    p = subprocess.run([sys.executable, "-c", RUN, str(pipe), str(out)], capture_output=True, text=True,
                       env=env, timeout=300, cwd=code_root)
    assert p.returncode == 0, p.stderr[-3000:]
    line = [x for x in p.stdout.splitlines() if x.startswith("RAN")][-1]
    return line


def test_editing_a_stage_module_reruns_the_step_that_uses_it(tmp_path):
    code = tmp_path / "code"
    shutil.copytree(REPO / "tuneforge", code / "tuneforge", symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    pipe, out = _build_only_pipeline(tmp_path), tmp_path / "run"
    assert _run(code, pipe, out) == "RAN build REUSED "
    assert _run(code, pipe, out) == "RAN  REUSED build"
    # An edit to a module of a stage that a later step uses (training) leaves the build's key alone ...
    trainer = code / "tuneforge" / "trainers" / "config.py"
    trainer.write_text(trainer.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    assert _run(code, pipe, out) == "RAN  REUSED build"
    # ... an edit to a build stage's module re-runs the build.
    clean = code / "tuneforge" / "clean" / "normalize.py"
    clean.write_text(clean.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")
    assert _run(code, pipe, out) == "RAN build REUSED "


def _edit(f: Path) -> None:
    f.write_text(f.read_text(encoding="utf-8") + "\n# edited\n", encoding="utf-8")


def test_step_keys_follow_config_inputs_and_source(tmp_path, monkeypatch):
    from tuneforge.common import source_hash as sh
    from tuneforge.pipeline.cache import StepCache, step_key

    base = step_key("evaluate", config={"suites": ["ceval"]}, model="m")
    assert step_key("evaluate", config={"suites": ["ceval"]}, model="m") == base
    assert step_key("evaluate", config={"suites": ["cmmlu"]}, model="m") != base
    assert step_key("evaluate", config={"suites": ["ceval"]}, model="other") != base
    copy = tmp_path / "tuneforge"
    shutil.copytree(REPO / "tuneforge", copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    monkeypatch.setattr(sh, "ROOT", copy)
    sh.source_hash.cache_clear()
    assert step_key("evaluate", config={"suites": ["ceval"]}, model="m") == base
    _edit(copy / "eval" / "runner.py")
    sh.source_hash.cache_clear()
    assert step_key("evaluate", config={"suites": ["ceval"]}, model="m") != base
    sh.source_hash.cache_clear()

    cache = StepCache(tmp_path / "run")
    output = tmp_path / "run" / "x"
    cache.put("evaluate/tuned", base, {"out": "x"})
    assert cache.get("evaluate/tuned", base, output) is None  # its output has gone: recompute
    output.mkdir(parents=True)
    assert cache.get("evaluate/tuned", base, output) == {"out": "x"}
    assert cache.get("evaluate/tuned", "other-key", output) is None


def test_pipeline_report_shows_the_evaluate_steps_own_suites(tmp_path):
    from tuneforge.pipeline.report import write_pipeline_report

    for model, acc in (("base", 40.0), ("tuned", 55.0)):
        d = tmp_path / "eval" / model
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps({"suites": {"law_exam": {"accuracy": acc, "n": 20}}}),
                                        encoding="utf-8")
    write_pipeline_report(tmp_path, {"pipeline": "law", "build": {"counts": {}}, "train": []})
    md = (tmp_path / "report.md").read_text(encoding="utf-8")
    assert "law_exam" in md and "55.0" in md and "40.0" in md


def _keys(**parts) -> dict[str, str]:
    from tuneforge.common import source_hash as sh
    from tuneforge.pipeline.cache import STEP_CODE, step_key

    sh.source_hash.cache_clear()
    return {kind: step_key(kind, **parts) for kind in STEP_CODE}


def test_each_key_covers_the_code_its_step_runs_and_nothing_else(tmp_path, monkeypatch):
    """An edit to the build's runtime re-runs builds only; to a trainer, training only; to the evaluation's
    code, the evaluations only; to a module every step imports, every step."""
    from tuneforge.common import source_hash as sh

    copy = tmp_path / "tuneforge"
    shutil.copytree(REPO / "tuneforge", copy, ignore=shutil.ignore_patterns("__pycache__", "assets"))
    monkeypatch.setattr(sh, "ROOT", copy)
    before = _keys(config={"x": 1})
    for edited, changed in [
        ("builder/executor.py", {"build"}),
        ("builder/forkserver_exit.py", {"build"}),
        ("trainers/config.py", {"train", "attribute"}),
        ("templates/prompts/question_from_passage.en.jinja", {"build", "train", "evaluate", "forgetting", "attribute"}),
        ("eval/native.py", {"evaluate", "forgetting", "attribute"}),
        ("clean/normalize.py", {"build"}),
        ("common/errors.py", {"build", "train", "evaluate", "forgetting", "attribute"}),
        ("common/lineage.py", {"train", "evaluate", "forgetting", "attribute"}),
        ("attribute/scoring.py", {"attribute"}),
        ("cli.py", set()),
        ("pipeline/run.py", set()),
    ]:
        _edit(copy / edited)
        after = _keys(config={"x": 1})
        assert {k for k in after if after[k] != before[k]} == changed, edited
        before = after
    sh.source_hash.cache_clear()


def test_the_import_scan_sees_every_form_of_import(tmp_path):
    from tuneforge.common.source_hash import code_modules

    pkg = tmp_path / "tuneforge"
    for name, text in {
        "__init__.py": "from tuneforge.api import run\n",
        "api.py": "def run():\n    from tuneforge import late\n",
        "late.py": "",
        "a/__init__.py": "",
        "a/one.py": "from . import two\nfrom .sub import (\n    three,  # a comment\n    four as f,\n)\n",
        "a/two.py": "def f():\n    import tuneforge.b.x as bx\n",
        "a/sub/__init__.py": "from tuneforge.b import y\n",
        "a/sub/three.py": "from ..two import f\n",
        "a/sub/four.py": "",
        "b/__init__.py": "def g():\n    from tuneforge.c import z\n",
        "b/x.py": "", "b/y.py": "", "c/__init__.py": "", "c/z.py": "", "unused.py": "",
    }.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text, encoding="utf-8")
    got = code_modules("tuneforge.a.one", root=pkg)
    # the parents run on import (tuneforge, tuneforge.a, tuneforge.b): only their top-level imports are followed,
    # so neither the root's lazy `late` nor b's lazy `c.z` is in; b.y (imported by a.sub at its top) is.
    assert got == sorted(["tuneforge", "tuneforge.api", "tuneforge.a", "tuneforge.a.one", "tuneforge.a.two",
                          "tuneforge.a.sub", "tuneforge.a.sub.three", "tuneforge.a.sub.four", "tuneforge.b",
                          "tuneforge.b.x", "tuneforge.b.y"])


def _named_modules(tree) -> list[tuple[str, bool]]:
    """Strings in a module that name a tuneforge module (or, for an f-string, start one: a prefix)."""
    import ast

    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr) and node.values and isinstance(node.values[0], ast.Constant):
            head = str(node.values[0].value)
            if head.startswith("tuneforge.") and head.endswith("."):
                out.append((head, True))
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("tuneforge."):
            out.append((node.value, False))
    return out


def test_every_module_started_by_name_is_in_the_key():
    """A module that starts another by its name (python -m, a fork-server preload, a lazy attribute) has it in
    its job's code: imported anyway, listed in BY_NAME, or declared never run (NOT_RUN)."""
    import ast

    from tuneforge.common import source_hash as sh

    sh.source_hash.cache_clear()
    missing = []
    for f in sorted((REPO / "tuneforge").rglob("*.py")):
        rel = f.relative_to(REPO).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        if name in ("tuneforge.common.source_hash", "tuneforge.pipeline.cache"):
            continue  # the tables themselves: names as data
        covered = set(sh.code_modules(name)) | set(sh.NOT_RUN.get(name, ()))
        for named, prefix in _named_modules(ast.parse(f.read_text(encoding="utf-8"))):
            if prefix:
                ok = any(m.startswith(named) for m in sh.BY_NAME.get(name, ()))
            else:
                ok = sh.module_file(named) is None or named in covered or f"{named}.__main__" in covered
            if not ok:
                missing.append(f"{name}: {named}")
    assert not missing, f"add these to BY_NAME (or NOT_RUN) in tuneforge/common/source_hash.py: {missing}"


def test_the_docs_say_exactly_what_each_key_covers():
    """docs/orchestration.md's table of what each step's key covers is the import scan's answer."""
    from tuneforge.common import source_hash as sh
    from tuneforge.pipeline.cache import STEP_CODE

    sh.source_hash.cache_clear()
    doc = (REPO / "docs" / "orchestration.md").read_text(encoding="utf-8")
    for kind, entries in STEP_CODE.items():
        by: dict[str, set[str]] = {}
        for m in sh.code_modules(*entries):
            rel = sh.module_file(m).relative_to(sh.ROOT)
            by.setdefault(rel.parent.as_posix(), set()).add(rel.stem)
        parts = []
        for pkg, names in sorted(by.items()):
            if pkg == ".":
                parts += [f"`{n}.py`" for n in sorted(names)]
            elif names == {p.stem for p in (sh.ROOT / pkg).glob("*.py")}:
                parts.append(f"`{pkg}/`")
            else:
                parts.append(f"`{pkg}/` ({', '.join(sorted(names))})")
        row = f"| {kind} | {'; '.join(parts)} |"
        assert row in doc, f"docs/orchestration.md should have the row\n{row}"
