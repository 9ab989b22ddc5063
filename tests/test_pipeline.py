"""Orchestration: the train-then-eval pipeline (caching, gate), schedules, new domains, the law domain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import time
import uuid
from pathlib import Path

import pytest
import yaml

from tuneforge.pipeline.gate import gate_decision

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def prefect_api():
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def _small_recipe(tmp_path: Path) -> Path:
    """The shipped Chinese instruction sample, 40 records a source, no tokenizer statistics."""
    data = yaml.safe_load((REPO / "datasets/zh_instruct/recipe.yaml").read_text(encoding="utf-8"))
    for s in data["sources"]:
        s["path"] = str((REPO / "datasets/zh_instruct" / s["path"]).resolve())
        s["limit"] = 40
        s["allow_outside"] = True
    data["card"] = {"tokenizer": None}
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


def _mtime(p: Path) -> float:
    return p.stat().st_mtime_ns


def _sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: int = 900,
        log: bool = False) -> str:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr if log else p.stdout


def _installed_wheel(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """tuneforge's wheel installed into a fresh venv outside the clone; the venv and an environment without the
    clone on its path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PREFECT_API_URL", "VIRTUAL_ENV")}
    dist = tmp_path / "dist"
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO, "-w", dist,
        cwd=tmp_path)
    wheel = next(dist.glob("tuneforge-*.whl"))
    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    # The dependencies are the test environment's (no network for a second torch); the path line adds its
    # site-packages without running its .pth files, so the clone's editable install is not on the path.
    site = Path(_sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    # (without PYTHONPATH: a clone on it, with the egg-info the wheel build leaves, reads as installed)
    _sh(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path, env=env)
    return venv, env


# The installed package's own pipeline and quick overrides, as `tuneforge demo --quick` runs them.
_DEMO = """import json, sys
from tuneforge.common.resources import asset
from tuneforge.orchestration import DEMO_QUICK
pipe, out, what = str(asset("pipelines", "demo.yaml")), sys.argv[1], sys.argv[2]
changed = {**DEMO_QUICK, "evaluate": {"heldout": {"limit": 1, "max_new_tokens": 8}}}
if what == "flow":
    from tuneforge.flows.pipeline import pipeline_flow
    print("steps:", json.dumps(pipeline_flow(pipeline=pipe, out=out, overrides=changed)["steps"]))
else:
    from tuneforge import run_pipeline
    from tuneforge.common.errors import TuneforgeError
    strict = {**changed, "forgetting": {**DEMO_QUICK["forgetting"], "tolerance": -100.0, "alpha": 1.01,
                                        "gate": "fail"}}
    try:
        run_pipeline(pipe, out, overrides=strict)
    except TuneforgeError as e:
        print("raised:", e)
"""


@pytest.mark.slow
def test_demo_pipeline_quick_cache_and_gate(prefect_api, tmp_path):
    """The shipped demo pipeline in its CI size (`tuneforge demo --quick`) as a user runs it: from a wheel
    installed into a fresh venv outside the clone, in another folder (shipped data is package data, not files
    beside the clone): augmentation through `transformers serve`, LoRA SFT, held-out and forgetting evaluations,
    the report; then re-runs through the same installed package (one demo run for both: it was two tests)."""
    venv, env = _installed_wheel(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    where = _sh(venv / "bin" / "python", "-c", "import tuneforge; print(tuneforge.__file__)", cwd=elsewhere,
                env=env).strip()
    assert Path(where).is_relative_to(venv), where
    tuneforge = venv / "bin" / "tuneforge"
    log = _sh(tuneforge, "demo", "--quick", "--out", "demo", cwd=elsewhere, env=env, log=True)
    assert "forgetting verdict: inconclusive" in log and "steps: 5 ran, 0 reused" in log
    # A clean log: no bytecode or pickling dumps, no repeated CPU pin_memory warnings.
    assert "LOAD_FAST" not in log and "RESUME" not in log and "pin_memory" not in log, log[-3000:]
    assert "FutureWarning" not in log and "DeprecationWarning" not in log, log[-3000:]  # issue 35
    out = elsewhere / "demo"
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (out / "report.html").is_file() and saved["gate"]["policy"] == "warn"
    # The verdict is the gate's reading of the forgetting block, and 9 questions cannot show a drop.
    assert saved["gate"] == gate_decision(saved["forgetting"], "warn")
    assert saved["forgetting"]["verdict"] == "inconclusive"
    assert saved["steps"]["reused"] == [] and "build" in saved["steps"]["ran"]
    assert saved["forgetting"]["suites"]["ceval"]["n"] == 6 and saved["forgetting"]["suites"]["cmmlu"]["n"] == 3
    assert saved["train"][0]["steps"] == 2 and (out / "train/sft/final/adapter_config.json").is_file()
    assert saved["build"]["counts"]["kept"] > 0 and set(saved["evaluations"]) == {"base", "tuned"}
    usage = json.loads((out / "data/manifest.json").read_text(encoding="utf-8"))["augment_usage"]
    # Requests, or cache hits from an earlier session ($TUNEFORGE_HOME persists per checkout).
    assert usage["requests"] + usage["cached"] > 0 and usage["endpoint"].startswith("embedded")
    marks = {p: _mtime(out / p) for p in ("data/manifest.json", "train/sft/final/adapter_model.safetensors",
                                          "eval/tuned/results.json", "forgetting/results.json")}

    # Nothing changed: `tuneforge demo --quick` on the same folder is all cache hits, nothing rewritten.
    t = time.perf_counter()
    cli = _sh(tuneforge, "demo", "--quick", "--out", "demo", cwd=elsewhere, env=env, timeout=600)
    assert "forgetting verdict:" in cli and f"report: {Path('demo') / 'report.html'}" in cli
    assert "steps: 0 ran, 5 reused" in cli
    assert {p: _mtime(out / p) for p in marks} == marks
    print(f"cached re-run through the CLI: {time.perf_counter() - t:.1f} s")

    # Only the evaluation settings change: only the evaluation runs again, here as a Prefect flow, which
    # shares the plain API's cache.
    flow = _sh(venv / "bin" / "python", "-c", _DEMO, "demo", "flow", cwd=elsewhere,
               env={**env, "PREFECT_API_URL": prefect_api})
    flowed = json.loads(next(x for x in flow.splitlines() if x.startswith("steps: "))[7:])
    assert sorted(flowed["ran"]) == ["evaluate/base", "evaluate/tuned"]
    for p in ("data/manifest.json", "train/sft/final/adapter_model.safetensors", "forgetting/results.json"):
        assert _mtime(out / p) == marks[p], p
    assert _mtime(out / "eval/tuned/results.json") != marks["eval/tuned/results.json"]

    # The gate: a tolerance no fine-tune can meet makes the verdict `forgetting`; `fail` fails the run.
    raised = _sh(venv / "bin" / "python", "-c", _DEMO, "demo", "strict", cwd=elsewhere, env=env)
    assert "raised: forgetting gate failed" in raised, raised[-2000:]
    failed = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert failed["gate"]["passed"] is False and failed["gate"]["verdict"] == "forgetting"
    assert failed["gate"]["reasons"]

    # `new-domain` from the installed package: the pipeline names configs the new domain holds itself.
    _sh(tuneforge, "new-domain", "legal", cwd=elsewhere, env=env)
    pipe = (elsewhere / "pipelines" / "legal.yaml").read_text(encoding="utf-8")
    assert "../datasets/legal/train-sft.yaml" in pipe and (elsewhere / "datasets/legal/train-sft.yaml").is_file()


def test_gate_decision():
    block = {"verdict": "forgetting", "suites": {
        "ceval": {"verdict": "forgetting", "delta": -5.2, "ci_low": -7.9, "ci_high": -2.6, "p_value": 0.0004},
        "cmmlu": {"verdict": "no significant change", "delta": -0.4, "ci_low": -2.0, "ci_high": 1.1,
                  "p_value": 0.7}}}
    fail = gate_decision(block, "fail")
    assert fail["passed"] is False and len(fail["reasons"]) == 1 and fail["reasons"][0].startswith("ceval: accuracy -5.20")
    assert gate_decision(block, "warn")["passed"] is True
    ok = gate_decision({"verdict": "no significant change", "suites": {}}, "fail")
    assert ok["passed"] is True
    ppl = gate_decision({"verdict": "no significant change", "suites": {},
                         "perplexity": {"verdict": "forgetting", "change_pct": 25.0, "tolerance_pct": 10.0}}, "fail")
    assert ppl["passed"] is True and "perplexity on general text rose +25.0%" in ppl["reasons"][-1]


def test_gate_decision_keeps_its_old_contract():
    assert gate_decision(None, "fail").items() >= {"passed": True, "policy": "fail", "verdict": None,
                                                   "reasons": ["no forgetting check was run"]}.items()
    old = {"verdict": "forgetting", "suites": {"ceval": {"verdict": "forgetting", "delta": -3.0, "ci_low": -5.0,
                                                          "ci_high": -1.0, "p_value": 0.001}}}
    g = gate_decision(old, "warn")
    assert g["passed"] and g["reasons"][0].startswith("ceval: accuracy -3.00 points")
    assert not gate_decision(old, "fail")["passed"]


@pytest.mark.slow
def test_schedule_serves_a_deployment_that_runs(prefect_api, tmp_path):
    """`tuneforge schedule` serves the pipeline; a run of its deployment completes on the Prefect server."""
    from prefect.deployments import run_deployment

    pipe = tmp_path / "p.yaml"
    _small_recipe(tmp_path)
    pipe.write_text(yaml.safe_dump({"name": "nightly", "build": {"recipe": "recipe.yaml"}}), encoding="utf-8")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    proc = subprocess.Popen([sys.executable, "-m", "tuneforge.cli", "schedule", str(pipe), "--cron", "0 3 * * *",
                             "--out", str(tmp_path / "nightly")], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + 240
        listed = ""
        while time.time() < deadline and "nightly" not in listed:
            time.sleep(3)
            listed = subprocess.run([sys.executable, "-m", "tuneforge.cli", "schedule", "--list"], env=env,
                                    capture_output=True, text=True).stdout
        assert "nightly" in listed and "0 3 * * *" in listed, listed
        run = run_deployment("tuneforge-pipeline/nightly", timeout=600)
        assert run.state.is_completed(), run.state
        assert (tmp_path / "nightly" / "data" / "manifest.json").is_file()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_new_domain_from_template(tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app
    from tuneforge.recipe import load_recipe

    r = CliRunner().invoke(app, ["new-domain", "customer_service", "--root", str(tmp_path)])
    assert r.exit_code == 0, r.output
    d = tmp_path / "datasets" / "customer_service"
    recipe, _ = load_recipe(d / "recipe.yaml")
    assert recipe.name == "customer_service" and recipe.sources[0].name == "customer_service_sft"
    assert (tmp_path / "pipelines" / "customer_service.yaml").is_file() and not (d / "pipeline.yaml").exists()
    assert "__DOMAIN__" not in "".join(p.read_text(encoding="utf-8") for p in d.rglob("*") if p.is_file())
    again = CliRunner().invoke(app, ["new-domain", "customer_service", "--root", str(tmp_path)])
    assert again.exit_code != 0


@pytest.mark.slow
def test_law_domain_is_only_recipe_and_data(prefect_api, tmp_path):
    """The second domain adds no code: its folder is recipe, data and notes, and it builds pre-training
    text plus instruction pairs made by `question_from_passage` (here through a loopback endpoint)."""
    from fake_openai_server import FakeOpenAIServer  # tests/ is on sys.path under pytest

    from tuneforge.flows.build import build_flow

    law = REPO / "datasets" / "law"
    assert {p.suffix for p in law.rglob("*") if p.is_file()} <= {".yaml", ".json", ".jsonl", ".md", ".jinja"}

    def answer(body: dict) -> str:
        """A grounded question/answer pair: the answer is the passage's first clause."""
        passage = body["messages"][-1]["content"].split("文段：", 1)[-1].strip()
        clause = passage.split("。")[0][-30:]  # (the prompt's own first sentence would make 4 duplicates)
        return json.dumps({"pairs": [{"question": "这段材料说了什么？", "answer": clause}]}, ensure_ascii=False)

    with FakeOpenAIServer(responder=answer) as srv:
        m = build_flow(recipe_path=str(law / "recipe.yaml"), out=str(tmp_path / "law"),
                       llm_base_url=srv.base_url, llm_model=f"fake-{uuid.uuid4().hex}")  # a fresh cache key
    assert set(m["datasets"]) == {"messages", "text"}
    assert m["counts"]["input"] == m["counts"]["kept"] + m["counts"]["rejected"] + m["counts"]["deduplicated"]
    assert m["counts"]["reasons"].get("refusal", 0) + m["counts"]["reasons"].get("placeholder", 0) == 5
    assert m["counts"]["records"]["generated"] == 4
    rows = [json.loads(line) for split in ("train", "validation", "test")
            for line in (tmp_path / f"law/exports/openai/{split}.jsonl").read_text(encoding="utf-8").splitlines()]
    made = [r for r in rows if r["messages"][0]["content"] == "这段材料说了什么？"]
    assert len(made) == 4 and all(r["messages"][-1]["content"] for r in made)
