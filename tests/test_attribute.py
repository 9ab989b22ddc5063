"""`tuneforge attribute`: the planted records come first, too few lost questions gives no ranking, a re-run is
served from the cache; and the score's sign and intervals on hand-made gradients."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from attribution_plant import general_rows, plant_rows, write_recipe  # tests/attribution_plant.py

REPO = Path(__file__).resolve().parents[1]
CEVAL_SAMPLE = REPO / "datasets" / "benchmarks" / "ceval"


def _cli(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=900)


def test_harm_sign_and_bootstrap() -> None:
    """A record whose gradient points against a lost question's loss gradient lowers its loss (no harm); one
    along it... the sign: harm = -<g_record, g_question>, so a record that raises the question's loss is positive."""
    from tuneforge.attribute.scoring import group_totals, harm_matrix, record_scores, subject_harm

    q = np.array([[1.0, 0.0], [0.8, 0.6]])  # two lost questions' loss gradients
    t = np.array([[-1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # against, along, orthogonal to the first
    h = harm_matrix([t], [q], [1.0])
    assert h[0, 0] == pytest.approx(1.0) and h[1, 0] == pytest.approx(-1.0) and h[2, 0] == pytest.approx(0.0)
    sc = record_scores(h, iters=200, seed=0)
    assert np.argmax(sc["score"]) == 0
    assert all(lo <= s <= hi for s, lo, hi in zip(sc["score"], sc["ci_low"], sc["ci_high"], strict=True))
    tot = group_totals(["a", "b", "b"], sc["draws"], sc["score"])
    assert list(tot) == ["a", "b"] and tot["b"]["records"] == 2
    subj = subject_harm(["a", "b", "b"], ["law", "law"], h, iters=200)
    assert subj["a"]["law"]["lost"] == 2 and subj["a"]["law"]["ci_low"] <= subj["a"]["law"]["mean_harm"]
    one = subject_harm(["a", "b", "b"], ["law", "art"], h, iters=200)
    assert one["a"]["art"]["ci_low"] is None  # one lost question: no interval, not a zero-width one
    # two checkpoints: the weights scale each one's contribution
    h2 = harm_matrix([t, t], [q, -q], [0.75, 0.25])
    assert np.allclose(h2, 0.5 * h)


PLANT_TRAIN = {"base_model": "embedded:smollm2", "stage": "sft", "max_length": 128,
               "splits": {"train": "train", "eval": None}, "lora": {"r": 4, "alpha": 8, "dropout": 0.0},
               "args": {"max_steps": 6, "per_device_train_batch_size": 2, "logging_steps": 1, "learning_rate": 3e-3,
                        "warmup_steps": 0, "save_strategy": "steps", "save_steps": 3, "dataloader_num_workers": 0,
                        "gradient_checkpointing": False}}  # TracIn over checkpoint-3 and final
PLANT_CHECK = {"chat": True, "perplexity": {"limit": 1, "max_length": 16},
               "suites": [{"benchmark": f"ceval:{CEVAL_SAMPLE}", "shots": 0, "limit": 4,
                           "subjects": ["law", "legal_professional", "marxism", "art_studies", "basic_medicine"]}]}


@pytest.fixture(scope="module")
def plant_pipeline(shared, smollm2_path, tmp_path_factory) -> dict:
    """build -> train -> forgetting -> attribute as a pipeline (the attribute step on CPU's default, one backward a
    record): a LoRA trained on general chat rows plus C-Eval-shaped rows always answered `A`, its forgetting
    check, and the step's ranking. The CLI tests attribute the same check again (OUT/forgetting), batched: one
    build, training and check for the file."""
    pytest.importorskip("dattri", reason="the attribute extra (pip install 'tuneforge[attribute]')")
    import yaml

    from tuneforge.pipeline.run import run_pipeline

    root = tmp_path_factory.mktemp("plant")
    recipe = write_recipe(root / "recipe", {"general": general_rows(shared, 4, max_chars=120),
                                            "plant": plant_rows(shared / "ceval", ["law", "marxism"], 4)})
    (root / "train.yaml").write_text(yaml.safe_dump(PLANT_TRAIN), "utf-8")
    (root / "check.yaml").write_text(yaml.safe_dump(PLANT_CHECK), "utf-8")
    pipe = {"name": "plant", "build": {"recipe": str(recipe)}, "train": [{"name": "sft", "config": "train.yaml"}],
            "forgetting": {"config": "check.yaml", "gate": "warn"}, "attribute": {"proj_dim": 64, "min_lost": 2}}
    (root / "pipe.yaml").write_text(yaml.safe_dump(pipe), "utf-8")
    res = run_pipeline(root / "pipe.yaml", root / "out")
    lost = sum(len(b["flips"]) for b in res["forgetting"]["suites"].values())
    assert lost >= 2, f"the plant made only {lost} lost questions: the fixture no longer exercises attribution"
    return {"root": root, "out": root / "out", "recipe": recipe, "res": res}


@pytest.fixture(scope="module")
def planted(plant_pipeline) -> Path:
    """The pipeline's folder laid out as the CLI tests read it: forget/ (the check), data/ (the build), recipe/."""
    root = plant_pipeline["root"]
    for name, target in (("forget", plant_pipeline["out"] / "forgetting"), ("data", plant_pipeline["out"] / "data")):
        (root / name).symlink_to(target, target_is_directory=True)
    return root


@pytest.mark.slow
def test_cli_ranks_the_plant_first_and_reruns_from_cache(planted, tmp_path) -> None:
    out = tmp_path / "attr"
    r = _cli("attribute", str(planted / "forget"), "--out", str(out), "--min-lost", "2", "--proj-dim", "64",
             "--no-cache", "--per-example", "batched")  # CUDA's default path; the pipeline test runs CPU's loop
    assert r.returncode == 0, r.stderr[-2000:]
    assert "attributed" in r.stdout and "from the cache" not in r.stdout
    rows = [json.loads(x) for x in (out / "attribution.jsonl").read_text("utf-8").splitlines()]
    data = json.loads((planted / "data" / "manifest.json").read_text("utf-8"))
    assert len(rows) == data["counts"]["splits"]["train"] == 8  # every trained record ranked once
    assert [x["rank"] for x in rows] == list(range(1, 9))
    assert [x["score"] for x in rows] == sorted((x["score"] for x in rows), reverse=True)
    assert {x["source"] for x in rows} == {"general", "plant"}
    assert all(x["file"].endswith(f"{x['source']}.jsonl") and isinstance(x["line"], int) for x in rows)
    assert all(x["ci_low"] <= x["score"] <= x["ci_high"] for x in rows)
    top = [x["source"] for x in rows[:4]]
    assert top.count("plant") >= 3, rows  # the records that teach `A` whatever the question
    plant_lost = [x["lost"] for x in rows if x["source"] == "plant"]
    assert all(lost and all("/" in q for q in lost) for lost in plant_lost)
    totals = json.loads((out / "totals.json").read_text("utf-8"))
    assert totals["sources"]["plant"]["total"] > totals["sources"]["general"]["total"]
    assert set(totals["augment"]) == {"none"} and "plant" in totals["subjects"]
    assert sum(totals["histogram"]["counts"]) == 8
    report = (out / "report.md").read_text("utf-8")
    assert "## Top records" in report and "## Which subjects each source hurt" in report
    summary = json.loads((out / "attribution.json").read_text("utf-8"))
    # records and lost questions in batches; the same gradients as the loop (test_attribute_batched.py)
    assert summary["timing"]["per_example"] == "batched"
    assert summary["timing"]["checkpoints"] == 2  # checkpoint-3 and the final adapter, weighted by their steps' lr
    ck = summary["checkpoints"]
    assert [c["name"] for c in ck] == ["checkpoint-3", "final"] and sum(c["weight"] for c in ck) == pytest.approx(1)
    summary = json.loads((out / "attribution.json").read_text("utf-8"))
    assert summary["status"] == "ranked" and summary["cache"]["hit"] is False

    # the user's next step: rebuild without the top 4 (`build --exclude`), each of them a reject with its rank
    rebuilt = tmp_path / "rebuilt"
    r3 = _cli("build", str(planted / "recipe" / "recipe.yaml"), "--out", str(rebuilt), "--no-prefect",
              "--exclude", str(out / "attribution.jsonl"), "--exclude-top", "4")
    assert r3.returncode == 0, r3.stderr[-2000:]
    rejects = [json.loads(x) for x in (rebuilt / "rejects.jsonl").read_text("utf-8").splitlines()]
    excluded = {x["raw"]["id"]: x for x in rejects if x["reason"].startswith("excluded_by_attribution")}
    assert set(excluded) == {x["id"] for x in rows[:4]}
    assert all((x["source"], x["line"]) == (y["source"], y["line"]) for y in rows[:4] for x in [excluded[y["id"]]])
    m = json.loads((rebuilt / "manifest.json").read_text("utf-8"))["counts"]
    assert m["splits"]["train"] == 4 and m["input"] == m["kept"] + m["rejected"] + m["deduplicated"]

    again = tmp_path / "again"
    r2 = _cli("attribute", str(planted / "forget"), "--out", str(again), "--min-lost", "2", "--proj-dim", "64",
              "--per-example", "batched")
    assert r2.returncode == 0, r2.stderr[-2000:]
    assert "from the cache" in r2.stdout
    assert json.loads((again / "attribution.json").read_text("utf-8"))["cache"]["hit"] is True
    assert (again / "attribution.jsonl").read_bytes() == (out / "attribution.jsonl").read_bytes()
    # the key moves with the method's settings and with the lost-question set (no model needed to see it)
    from tuneforge.attribute import inputs as inp
    from tuneforge.attribute.run import Method, _key

    fdir, res = inp.forgetting_results(planted / "forget")
    adapter, run_dir = inp.training_run(res)
    lost, n, _ = inp.lost_questions(res)
    ins = inp.Inputs(fdir, res, res["model"], adapter, run_dir, lost, n)
    cfg = inp.train_config(run_dir)
    ins.data_hash, ins.checkpoints = inp.data_hash(run_dir, cfg), inp.checkpoints(run_dir, adapter)
    assert summary["cache"]["key"] == _key(ins, cfg, Method(proj_dim=64, per_example="batched"))
    assert _key(ins, cfg, Method(proj_dim=32, per_example="batched")) != summary["cache"]["key"]
    ins.lost = lost[1:]
    assert _key(ins, cfg, Method(proj_dim=64, per_example="batched")) != summary["cache"]["key"]


@pytest.mark.slow
def test_too_few_lost_questions_makes_no_ranking(planted, tmp_path) -> None:
    out = tmp_path / "attr"
    r = _cli("attribute", str(planted / "forget"), "--out", str(out), "--min-lost", "1000")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "no ranking was made" in r.stdout
    assert not (out / "attribution.jsonl").exists()
    s = json.loads((out / "attribution.json").read_text("utf-8"))
    assert s["status"] == "too_few_lost" and s["lost"] >= 2 and s["min_lost"] == 1000
    # a check that lost nothing: the same answer, whatever the threshold
    fdir = tmp_path / "forget"
    res = json.loads((planted / "forget" / "results.json").read_text("utf-8"))
    for block in res["forgetting"]["suites"].values():
        block["flips"] = []
    fdir.mkdir()
    (fdir / "results.json").write_text(json.dumps(res), "utf-8")
    r = _cli("attribute", str(fdir), "--out", str(tmp_path / "none"), "--min-lost", "1")
    assert r.returncode == 0 and "lost 0 question(s)" in r.stdout
    assert not (tmp_path / "none" / "attribution.jsonl").exists()


def test_not_a_forgetting_folder_is_a_user_error(tmp_path) -> None:
    r = _cli("attribute", str(tmp_path), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no forgetting check found" in r.stderr


def test_pipeline_attribute_step() -> None:
    from pydantic import ValidationError

    from tuneforge.pipeline.config import PipelineConfig, pipeline_extras

    base = {"name": "p", "build": {"recipe": "r.yaml"}, "train": [{"name": "sft", "config": "c.yaml"}],
            "forgetting": {"config": "f.yaml"}}
    cfg = PipelineConfig.model_validate({**base, "attribute": {"proj_dim": 128}})
    assert cfg.attribute is not None and cfg.attribute.proj_dim == 128 and cfg.attribute.min_lost == 5
    assert "attribute" in pipeline_extras(cfg)
    assert "attribute" not in pipeline_extras(PipelineConfig.model_validate(base))
    with pytest.raises(ValidationError, match="top_k"):
        PipelineConfig.model_validate({**base, "attribute": {"top_k": 3}})


@pytest.mark.slow
def test_pipeline_attribute_step_runs_after_the_check(plant_pipeline) -> None:
    """build -> train -> forgetting -> attribute as a pipeline: OUT/attribute/ ranks the plant first, and a re-run
    reuses the step."""
    from tuneforge.pipeline.run import run_pipeline

    out, res = plant_pipeline["out"], plant_pipeline["res"]
    a = res["attribution"]
    assert a["status"] == "ranked" and a["records"] == 8
    summary = json.loads((out / "attribute" / "attribution.json").read_text("utf-8"))
    assert summary["timing"]["per_example"] == "one backward a record"  # auto on CPU
    rows = [json.loads(x) for x in (out / "attribute" / "attribution.jsonl").read_text("utf-8").splitlines()]
    assert [x["source"] for x in rows[:4]].count("plant") >= 3
    again = run_pipeline(plant_pipeline["root"] / "pipe.yaml", out)
    assert "attribute" in again["steps"]["reused"]
