"""The pipeline's hyperparameter search (issue 17): knobs -> overrides, then one tiny search on the embedded
SmolLM2 (CPU): two trials of which one is pruned by construction, the chosen one linked at OUT/final, and a
re-run (through `tuneforge run`) that is all cache hits."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml

from tuneforge.common.errors import RecipeError
from tuneforge.pipeline.config import PipelineConfig, load_pipeline
from tuneforge.pipeline.search_config import SearchSpec
from tuneforge.pipeline.search_trial import params_hash, trial_overrides

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



@pytest.mark.parametrize("trials", [None, 4])
def test_a_mapping_grid_runs_to_its_end_under_ask_and_tell(tmp_path, trials):
    """Each point of a mapping grid once (a seeded subset under a smaller budget), and no error at the last
    `tell`: Optuna's GridSampler stopped the study there, which raises outside `study.optimize`."""
    from tuneforge.pipeline.search import _suggest, make_study
    from tuneforge.pipeline.search_config import encode

    spec = SearchSpec.model_validate({"grid": {"lora_r": [4, 8], "learning_rate": [1e-4, 2e-4, 3e-4]},
                                      "trials": trials})
    space = spec.space()
    study = make_study(spec, space, "grid", tmp_path)
    seen = []
    for _ in range(spec.budget()):
        t = study.ask()
        seen.append(encode(_suggest(t, space)))
        study.tell(t, 1.0)
    product = [encode({"lora_r": r, "learning_rate": lr}) for r in (4, 8) for lr in (1e-4, 2e-4, 3e-4)]
    assert len(seen) == len(set(seen)) == (trials or 6) and set(seen) <= set(product)
    again = make_study(spec, space, "grid", tmp_path)  # seeded: the same order
    assert [encode(_suggest(again.ask(), space)) for _ in range(spec.budget())] == seen


def test_pareto_why_and_report_on_synthetic_trials(tmp_path):
    """Without a model: the Pareto marks, the reasons and the report's scatter."""
    from tuneforge.pipeline.search_report import write_search_report
    from tuneforge.pipeline.search_stats import pareto, why

    def trial(n, state, gain=None, tuned=None, change=None, reason=None):
        t = {"number": n, "hash": f"h{n}", "params": {"learning_rate": n}, "state": state, "reason": reason,
             "general": {"change": change, "ci": [change - 5, change + 5]} if change is not None else {}}
        if gain is not None:
            t["domain"] = {"gain": gain, "tuned": tuned, "ci": [gain - 1, gain + 1]}
        return t

    trials = [trial(0, "complete", 2.0, 12.0, -1.0), trial(1, "complete", 1.0, 11.0, 0.0),
              trial(2, "complete", 0.5, 10.5, -2.0), trial(3, "failed_gate", 5.0, 15.0, -30.0, "failed the gate"),
              trial(4, "pruned", change=-40.0, reason="pruned at the cheap forgetting check: ceval")]
    pareto(trials)
    assert [t.get("pareto") for t in trials] == [True, True, False, True, None]
    chosen = trials[0]
    for t in trials:
        t["chosen"] = t is chosen
        t["why"] = why(t, chosen, "rougeL")
    assert trials[1]["why"] == "held-out rougeL 11 below the chosen trial's 12"
    assert trials[3]["why"] == "failed the gate" and trials[4]["why"].startswith("pruned")
    results = {"pipeline": "p", "search": {"objective_metric": "rougeL", "sampler_used": "TPESampler", "seed": 0,
                                           "budget": 5, "prune": None},
               "trials": trials, "chosen": {"number": 0, "hash": "h0", "params": {}}, "final": "final",
               "base": {"heldout": {"rougeL": 10.0}}, "steps": {"ran": ["build"], "reused": []}}
    write_search_report(tmp_path, results)
    html = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert html.count("<tr") == 6 and 'class="chosen"' in html and "data:image/png;base64," in html

# --- one tiny search on the embedded model ------------------------------------------------------------------

PRUNED_POINT = {"learning_rate": 1e-4, "forgetting.tolerance": -1000.0, "forgetting.alpha": 1.01}


def _pipeline(tmp: Path) -> Path:
    """zh_instruct (40 records a source, no augmentation), 1-step LoRA SFT, 2 held-out examples, a 1-shot
    forgetting check on 2 questions a subject; two grid points, the second pruned by construction (a
    tolerance and alpha under which any model 'forgets')."""
    recipe = yaml.safe_load((REPO / "datasets/zh_instruct/recipe.yaml").read_text(encoding="utf-8"))
    for s in recipe["sources"]:
        s["path"] = str((REPO / "datasets/zh_instruct" / s["path"]).resolve())
        s["limit"] = 40
        s["allow_outside"] = True
    recipe["card"] = {"tokenizer": None}
    # Its own folder: the recipe's fingerprint hashes every *.jinja under the recipe's folder, and the trials'
    # saved tokenizers (chat_template.jinja) must not land there.
    (tmp / "recipe").mkdir()
    (tmp / "recipe" / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    (tmp / "forgetting.yaml").write_text(yaml.safe_dump({
        "suites": [{"benchmark": "ceval", "subjects": ["law", "computer_network"], "shots": 1, "limit": 2},
                   {"benchmark": "cmmlu", "subjects": ["jurisprudence"], "shots": 1, "limit": 2}],
        "perplexity": {"limit": 1, "max_length": 64}}), encoding="utf-8")
    pipe = {
        "name": "search-test", "build": {"recipe": "recipe/recipe.yaml"},
        "train": [{"name": "sft", "config": str(REPO / "configs/demo-sft.yaml"),
                   "set": {"max_length": 128, "args": {"max_steps": 1, "per_device_train_batch_size": 1,
                                                      "warmup_steps": 0, "save_steps": 100}}}],
        "evaluate": {"heldout": {"limit": 2, "max_new_tokens": 8, "batch_size": 2}},
        "forgetting": {"config": "forgetting.yaml", "gate": "fail"},
        "search": {"grid": [{"learning_rate": 1e-4}, PRUNED_POINT],
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
    assert saved["kind"] == "search" and len(saved["trials"]) == 2
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
    assert "data:image/png;base64," in html and "Pareto" in html and html.count("<tr") == 3
    assert saved["steps"]["ran"].count("build") == 1  # built once for the whole search
    # the base's side of the forgetting checks: evaluated once for the full check and once for the prune
    # check, before the trials, then read by each trial (both trials ran the prune check)
    assert len([s for s in saved["steps"]["ran"] if s.startswith("forgetting-base/")]) == 2
    assert not list((out / "trials").rglob("base/predictions.jsonl"))
    assert all(t["steps"]["ran"] and not any("base" in s for s in t["steps"]["ran"]) for t in saved["trials"])
    print(f"search of 2 trials: {seconds:.0f} s; trial seconds {[t['seconds'] for t in saved['trials']]}")


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


@pytest.mark.slow
def test_search_as_prefect_flow_with_trial_subflows(searched):
    """Under Prefect the search is a flow and each trial a subflow (here on the cached search: no step
    re-runs, so it is quick); the flow runs are in the API."""
    import asyncio

    from prefect.testing.utilities import prefect_test_harness

    from tuneforge.flows.pipeline import search_flow

    pipe, out, first, _ = searched
    with prefect_test_harness(server_startup_timeout=180):
        res = search_flow(pipeline=str(pipe), out=str(out))

        async def names() -> list[str]:
            from prefect.client.orchestration import get_client

            async with get_client() as client:
                runs = await client.read_flow_runs()
                flows = {f.id: f.name for f in await client.read_flows()}
                return sorted(flows[r.flow_id] + ":" + r.name for r in runs)

        runs = asyncio.run(names())
    assert res["chosen"] == first["chosen"] and res["steps"]["ran"] == []
    trials = [r for r in runs if r.startswith("tuneforge-search-trial:")]
    assert len(trials) == 2 and any(r.startswith("tuneforge-search:") for r in runs), runs
    assert {r.split(":", 1)[1] for r in trials} == {f"trial-{t['number']}-{t['hash']}" for t in first["trials"]}
