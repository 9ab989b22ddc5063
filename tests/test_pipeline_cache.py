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


def test_step_keys_follow_config_inputs_and_source(tmp_path, monkeypatch):
    from tuneforge.common import source_hash as sh
    from tuneforge.pipeline.cache import StepCache, step_key

    base = step_key("evaluate", config={"suites": ["ceval"]}, model="m")
    assert step_key("evaluate", config={"suites": ["ceval"]}, model="m") == base
    assert step_key("evaluate", config={"suites": ["cmmlu"]}, model="m") != base
    assert step_key("evaluate", config={"suites": ["ceval"]}, model="other") != base
    copy = tmp_path / "tuneforge"
    shutil.copytree(REPO / "tuneforge" / "eval", copy / "eval")
    for part in ("common", "templates", "augment"):
        shutil.copytree(REPO / "tuneforge" / part, copy / part)
    monkeypatch.setattr(sh, "ROOT", copy)
    sh.source_hash.cache_clear()
    assert step_key("evaluate", config={"suites": ["ceval"]}, model="m") == base
    (copy / "eval" / "gate.py").write_text("# changed\n", encoding="utf-8")
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
