"""The pipeline's hyperparameter search (issue 17): knobs -> overrides, then one tiny search on the embedded
SmolLM2 (CPU): three trials of which one is pruned by construction, the chosen one linked at OUT/final, and a
re-run (through `tuneforge run`) that is all cache hits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tuneforge.common.errors import RecipeError
from tuneforge.pipeline.config import PipelineConfig, load_pipeline
from tuneforge.pipeline.search import params_hash, trial_overrides
from tuneforge.pipeline.search_config import SearchSpec

REPO = Path(__file__).resolve().parents[1]


def _cfg(**search) -> PipelineConfig:
    return PipelineConfig.model_validate({
        "name": "t", "build": {"recipe": "r.yaml"},
        "train": [{"name": "pt", "config": "pt.yaml", "set": {"args": {"max_steps": 3}}},
                  {"name": "sft", "config": "sft.yaml", "from_previous": True}],
        "evaluate": {"heldout": {"limit": 2}}, "forgetting": {"config": "f.yaml"},
        "search": search or {"knobs": {"learning_rate": [1e-4]}}})


def test_knobs_become_overrides():
    cfg = _cfg()
    over = trial_overrides(cfg, {"learning_rate": 3e-4, "lora_r": 4, "sft.max_steps": 2, "replay_ratio": 0.2,
                                 "forgetting.tolerance": 2.0, "unused": None}, replay_dataset="/data/general")
    pt, sft = over["train"]
    assert pt["set"] == {"args": {"max_steps": 3, "learning_rate": 3e-4}, "lora": {"r": 4},
                         "replay": {"ratio": 0.2, "dataset": "/data/general"}}
    assert sft["set"]["args"] == {"learning_rate": 3e-4, "max_steps": 2} and sft["from_previous"] is True
    assert over["forgetting"] == {"tolerance": 2.0}
    # The two-stage order: `sft` alone starts from the base model; epochs turn max_steps off.
    only = trial_overrides(cfg, {"order": "sft", "num_train_epochs": 2, "replay_ratio": 0})
    assert [s["name"] for s in only["train"]] == ["sft"] and only["train"][0]["from_previous"] is False
    assert only["train"][0]["set"] == {"args": {"num_train_epochs": 2.0, "max_steps": -1}, "replay": None}
    assert [s["name"] for s in trial_overrides(cfg, {"order": "pt>sft"})["train"]] == ["pt", "sft"]
    with pytest.raises(RecipeError, match="order"):
        trial_overrides(cfg, {"order": "dpo>sft"})
    with pytest.raises(RecipeError, match="knob"):
        trial_overrides(cfg, {"warmup": 3})
    assert params_hash({"a": 1, "b": 2}) == params_hash({"b": 2, "a": 1}) != params_hash({"a": 1, "b": 3})


def test_search_block_validation():
    assert SearchSpec.model_validate({"grid": {"lora_r": [4, 8], "learning_rate": [1e-4, 2e-4, 3e-4]}}).budget() == 6
    s = SearchSpec.model_validate({"grid": [{"lora_r": 4}, {"lora_r": 8, "forgetting.alpha": 0.1}]})
    assert s.budget() == 2 and s.space() == {"forgetting.alpha": [None, 0.1], "lora_r": [4, 8]}
    assert SearchSpec.model_validate({"knobs": {"learning_rate": {"low": 1e-5, "high": 1e-3, "log": True}}}).budget() == 3
    for bad in ({}, {"knobs": {"lora_r": [4]}, "grid": {"lora_r": [4]}}, {"knobs": {"lora_r": []}},
                {"knobs": {"learning_rate": {"low": 0, "high": 1, "log": True}}},
                {"knobs": {"lora_r": [4]}, "objective": {"metric": "accuracy"}}):
        with pytest.raises(ValueError):
            SearchSpec.model_validate(bad)
    cfg, _ = load_pipeline(REPO / "pipelines" / "demo-search.yaml")
    assert cfg.search is not None and cfg.search.budget() == 3 and cfg.search.prune is not None


# --- one tiny search on the embedded model ------------------------------------------------------------------

PRUNED_POINT = {"learning_rate": 1e-4, "forgetting.tolerance": -1000.0, "forgetting.alpha": 1.01}


def _pipeline(tmp: Path) -> Path:
    """zh_instruct (40 records a source, no augmentation), 1-step LoRA SFT, 2 held-out examples, a 1-shot
    forgetting check on 2 questions a subject; three grid points, the last pruned by construction (a
    tolerance and alpha under which any model 'forgets')."""
    recipe = yaml.safe_load((REPO / "datasets/zh_instruct/recipe.yaml").read_text(encoding="utf-8"))
    for s in recipe["sources"]:
        s["path"] = str((REPO / "datasets/zh_instruct" / s["path"]).resolve())
        s["limit"] = 40
    recipe["card"] = {"tokenizer": None}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    (tmp / "forgetting.yaml").write_text(yaml.safe_dump({
        "suites": [{"benchmark": "ceval", "subjects": ["law", "computer_network"], "shots": 1, "limit": 2},
                   {"benchmark": "cmmlu", "subjects": ["jurisprudence"], "shots": 1, "limit": 2}],
        "perplexity": {"limit": 1, "max_length": 64}}), encoding="utf-8")
    pipe = {
        "name": "search-test", "build": {"recipe": "recipe.yaml"},
        "train": [{"name": "sft", "config": str(REPO / "configs/demo-sft.yaml"),
                   "set": {"max_length": 64, "args": {"max_steps": 1, "per_device_train_batch_size": 1,
                                                      "warmup_steps": 0, "save_steps": 100}}}],
        "evaluate": {"heldout": {"limit": 2, "max_new_tokens": 8, "batch_size": 2}},
        "forgetting": {"config": "forgetting.yaml", "gate": "fail"},
        "search": {"grid": [{"learning_rate": 1e-4}, {"learning_rate": 5e-4}, PRUNED_POINT],
                   "objective": {"metric": "rougeL"}, "prune": {"suites": ["ceval"], "limit": 1},
                   "bootstrap": 200}}
    p = tmp / "search.yaml"
    p.write_text(yaml.safe_dump(pipe), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def searched(tmp_path_factory):
    from tuneforge.pipeline.search import run_search

    tmp = tmp_path_factory.mktemp("search")
    pipe, out = _pipeline(tmp), tmp / "out"
    t = time.perf_counter()
    res = run_search(pipe, out)
    return pipe, out, res, time.perf_counter() - t


@pytest.mark.slow
def test_search_end_to_end(searched):
    _, out, _, seconds = searched
    saved = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert saved["kind"] == "search" and len(saved["trials"]) == 3
    by_hash = {t["hash"]: t for t in saved["trials"]}
    pruned = by_hash[params_hash({"forgetting.alpha": 1.01, "forgetting.tolerance": -1000.0, "learning_rate": 1e-4})]
    assert pruned["state"] == "pruned" and "pruned at the cheap forgetting check" in pruned["reason"]
    assert pruned["general"]["from"] == "prune check" and "domain" not in pruned
    tdir = out / "trials" / pruned["hash"]
    assert (tdir / "prune" / "results.json").is_file()
    assert not (tdir / "eval").exists() and not (tdir / "forgetting").exists()  # never fully evaluated
    others = [t for t in saved["trials"] if t is not pruned and t["hash"] != pruned["hash"]]
    for t in others:
        assert t["state"] == "complete" and t["gate"]["passed"]
        assert t["domain"]["metric"] == "rougeL" and t["domain"]["n"] == 2 and len(t["domain"]["ci"]) == 2
        assert t["general"]["n"] == 6 and t["general"]["ci"][0] <= t["general"]["change"] <= t["general"]["ci"][1]
        assert t["why"]
    chosen = saved["chosen"]
    best = max(others, key=lambda t: (t["domain"]["tuned"], t["general"]["change"], -t["number"]))
    assert chosen["hash"] == best["hash"] and best["chosen"]
    final = out / "final"
    assert final.is_symlink() and final.resolve() == (out / "trials" / best["hash"] / "train/sft/final").resolve()
    assert (final / "adapter_config.json").is_file()
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "data:image/png;base64," in html and "Pareto" in html and html.count("<tr") == 4
    assert saved["steps"]["ran"].count("build") == 1  # built once for the whole search
    print(f"search of 3 trials: {seconds:.0f} s; trial seconds {[t['seconds'] for t in saved['trials']]}")


@pytest.mark.slow
def test_search_rerun_is_all_cache_hits(searched):
    """`tuneforge run` on the same pipeline and folder: nothing re-runs, the same trials and choice come back."""
    from typer.testing import CliRunner

    from tuneforge.cli import app

    pipe, out, first, _ = searched
    before = {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("*.safetensors")}
    t = time.perf_counter()
    r = CliRunner().invoke(app, ["run", str(pipe), "--out", str(out), "--no-prefect"])
    seconds = time.perf_counter() - t
    assert r.exit_code == 0, r.output
    again = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert again["steps"]["ran"] == []
    assert sorted(again["steps"]["reused"]) == sorted(first["steps"]["ran"])
    assert [(t["hash"], t["state"]) for t in again["trials"]] == [(t["hash"], t["state"]) for t in first["trials"]]
    assert again["chosen"] == first["chosen"] and "chosen: trial" in r.output
    assert before and before == {p: p.stat().st_mtime_ns for p in (out / "trials").rglob("*.safetensors")}
    print(f"re-run: {seconds:.1f} s")


@pytest.mark.slow
def test_search_trials_in_worker_processes(searched):
    """With several GPUs the trials run one a worker process (CUDA_VISIBLE_DEVICES pinned): here `gpus=2` on
    the cached search, so the workers only read the cache; each record says which worker's GPU it had."""
    from tuneforge.pipeline.search import run_search

    pipe, out, first, _ = searched
    again = run_search(pipe, out, gpus=2)
    assert again["steps"]["ran"] == [] and again["chosen"] == first["chosen"]
    assert {t["gpu"] for t in again["trials"]} <= {"0", "1"} and all("gpu" in t for t in again["trials"])
