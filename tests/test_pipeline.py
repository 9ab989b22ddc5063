"""Orchestration: the train-then-eval pipeline (caching, gate), schedules, new domains, the law domain."""

from __future__ import annotations

import json
import os
import subprocess
import sys
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


@pytest.mark.slow
def test_demo_pipeline_quick_cache_and_gate(prefect_api, tmp_path):
    """The shipped demo pipeline in its CI size (`tuneforge demo --quick`): augmentation through
    `transformers serve`, LoRA SFT, held-out and forgetting evaluations, the report; then re-runs."""
    from tuneforge import run_pipeline
    from tuneforge.common.errors import TuneforgeError
    from tuneforge.flows.pipeline import pipeline_flow
    from tuneforge.orchestration import DEMO_QUICK

    pipe, out = str(REPO / "pipelines" / "demo.yaml"), tmp_path / "demo"
    res = run_pipeline(pipe, out, overrides=DEMO_QUICK)  # the plain API: no Prefect server
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (out / "report.html").is_file() and saved["gate"]["policy"] == "warn"
    # The verdict is the gate's reading of the forgetting block, and 9 questions cannot show a drop.
    assert saved["gate"] == gate_decision(saved["forgetting"], "warn")
    assert saved["forgetting"]["verdict"] == "inconclusive" and res.verdict == "inconclusive"
    assert res.steps["reused"] == [] and "build" in res.steps["ran"]
    assert saved["forgetting"]["suites"]["ceval"]["n"] == 6 and saved["forgetting"]["suites"]["cmmlu"]["n"] == 3
    assert res["train"][0]["steps"] == 2 and (out / "train/sft/final/adapter_config.json").is_file()
    assert set(saved["evaluations"]) == {"base", "tuned"}
    usage = json.loads((out / "data/manifest.json").read_text(encoding="utf-8"))["augment_usage"]
    # Requests, or cache hits from an earlier session ($TUNEFORGE_HOME persists per checkout).
    assert usage["requests"] + usage["cached"] > 0 and usage["endpoint"].startswith("embedded")
    marks = {p: _mtime(out / p) for p in ("data/manifest.json", "train/sft/final/adapter_model.safetensors",
                                          "eval/tuned/results.json", "forgetting/results.json")}

    # Nothing changed: `tuneforge demo --quick` on the same folder is all cache hits, nothing rewritten.
    t = time.perf_counter()
    cli = subprocess.run([sys.executable, "-m", "tuneforge.cli", "demo", "--quick", "--out", str(out)],
                         env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"},
                         capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-3000:]
    assert "forgetting verdict:" in cli.stdout and str(out / "report.html") in cli.stdout
    assert "steps: 0 ran, 5 reused" in cli.stdout
    assert {p: _mtime(out / p) for p in marks} == marks
    print(f"cached re-run through the CLI: {time.perf_counter() - t:.1f} s")

    # Only the evaluation settings change: only the evaluation runs again, here as a Prefect flow, which
    # shares the plain API's cache.
    changed = {**DEMO_QUICK, "evaluate": {"heldout": {"limit": 1, "max_new_tokens": 8}}}
    flowed = pipeline_flow(pipeline=pipe, out=str(out), overrides=changed)
    assert sorted(flowed["steps"]["ran"]) == ["evaluate/base", "evaluate/tuned"]
    for p in ("data/manifest.json", "train/sft/final/adapter_model.safetensors", "forgetting/results.json"):
        assert _mtime(out / p) == marks[p], p
    assert _mtime(out / "eval/tuned/results.json") != marks["eval/tuned/results.json"]

    # The gate: a tolerance no fine-tune can meet makes the verdict `forgetting`; `fail` fails the run.
    strict = {**changed, "forgetting": {**DEMO_QUICK["forgetting"], "tolerance": -100.0, "alpha": 1.01,
                                        "gate": "fail"}}
    with pytest.raises(TuneforgeError, match="forgetting gate failed"):
        run_pipeline(pipe, out, overrides=strict)
    failed = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert failed["gate"]["passed"] is False and failed["gate"]["verdict"] == "forgetting"
    assert failed["gate"]["reasons"]


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
