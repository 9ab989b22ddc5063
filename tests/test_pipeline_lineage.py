"""Multi-stage pipelines measure the model training produced: stages build on each other, every evaluation
records the lineage of the weights it scored, and the forgetting check's perplexity is that of the final
model loaded by hand (sft merged then dpo; pt merged then sft)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from tuneforge.common.errors import RecipeError, TuneforgeError

REPO = Path(__file__).resolve().parents[1]


def _recipe(tmp_path: Path, shared: Path) -> Path:
    """Instructions, preference pairs and raw text from the real corpora, a few of each."""
    sources = [
        {"name": "alpaca_zh", "path": str(shared / "llamafactory/alpaca_zh_demo.json"), "limit": 24},
        {"name": "dpo_zh", "path": str(shared / "llamafactory/dpo_zh_demo.json"), "limit": 24},
        {"name": "c4", "path": str(shared / "llamafactory/c4_demo.jsonl"), "limit": 24},
    ]
    for s in sources:
        s["allow_outside"] = True
    p = tmp_path / "recipe.yaml"
    p.write_text(yaml.safe_dump({"name": "mix", "sources": sources, "formats": ["openai"],
                                 "card": {"tokenizer": None}}, allow_unicode=True), encoding="utf-8")
    return p


def _config(tmp_path: Path, name: str, stage: str, **extra) -> str:
    cfg = {"base_model": "embedded:smollm2", "dataset": "unused", "stage": stage, "template": "chatml",
           "max_length": 128, "peft": {"method": "lora", "r": 4, "alpha": 8, "target_modules": "all-linear"},
           "truncation": {"max_drop_share": 1.0},
           "args": {"max_steps": 2, "per_device_train_batch_size": 2, "learning_rate": 5e-3, "logging_steps": 1,
                    "save_steps": 100, "seed": 1}, **extra}
    p = tmp_path / f"{name}.yaml"
    p.write_text(yaml.safe_dump(cfg), encoding="utf-8")
    return p.name


def _pipeline(tmp_path: Path, shared: Path, stages: list[tuple[str, str]], **forgetting) -> Path:
    recipe = _recipe(tmp_path, shared)
    (tmp_path / "forgetting.yaml").write_text(yaml.safe_dump({
        "suites": [{"benchmark": "ceval", "subjects": ["law"], "shots": 0, "limit": 2}],
        "perplexity": {"limit": 3, "max_length": 64}, "batch_size": 4}), encoding="utf-8")
    train = [{"name": n, "config": _config(tmp_path, n, st, **({"args": {"max_steps": 2, "beta": 0.1,
                                                                      "per_device_train_batch_size": 2,
                                                                      "learning_rate": 5e-3, "seed": 1}}
                                                            if st == "dpo" else {}))}
             for n, st in stages]
    p = tmp_path / "pipe.yaml"
    p.write_text(yaml.safe_dump({"name": "two", "build": {"recipe": recipe.name}, "train": train,
                                 "forgetting": {"config": "forgetting.yaml", "gate": "warn", **forgetting}}),
                 encoding="utf-8")
    return p


def _by_hand(model: str, adapter: str | None, texts: list[str], max_length: int) -> float:
    """Perplexity of a model assembled here with transformers + PEFT, independent of the pipeline."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.eval.perplexity import perplexity

    tok = AutoTokenizer.from_pretrained(model)
    m = AutoModelForCausalLM.from_pretrained(model, dtype=torch.float32)
    if adapter:
        m = PeftModel.from_pretrained(m, adapter).merge_and_unload()
    m.eval()
    return perplexity(m, tok, texts, "cpu", max_length)["perplexity"]


@pytest.mark.slow
@pytest.mark.newest
@pytest.mark.parametrize("stages", [[("sft", "sft"), ("dpo", "dpo")], [("pt", "pt"), ("sft", "sft")]],
                         ids=["sft-then-dpo", "pt-then-sft"])
def test_forgetting_scores_the_final_model(tmp_path, shared, stages):
    from tuneforge import run_pipeline
    from tuneforge.common.lineage import weights_sha256
    from tuneforge.eval.perplexity import load_texts

    pipe = _pipeline(tmp_path, shared, stages)
    out = tmp_path / "run"
    res = run_pipeline(pipe, out)
    first, second = (out / "train" / n for n, _ in stages)
    # The second stage trained on the first stage's merged model, and the check scored merged + adapter.
    assert json.loads((second / "final" / "adapter_config.json").read_text())["base_model_name_or_path"] == \
        str(first / "merged")
    lineage = res["forgetting_lineage"]["tuned"]
    assert [e["kind"] for e in lineage["model"]] == ["base", "merged"]
    assert lineage["model"][1]["sha256"] == weights_sha256(first / "merged")
    assert lineage["adapter"]["sha256"] == weights_sha256(second / "final")
    assert res["model"]["summary"].endswith(f"{stages[0][1]} (merged) + {stages[1][1]} adapter")
    saved = json.loads((out / "forgetting" / "results.json").read_text(encoding="utf-8"))
    texts = load_texts(None, 3)
    by_hand = _by_hand(str(first / "merged"), str(second / "final"), texts, 64)
    assert saved["perplexity"]["perplexity"] == pytest.approx(by_hand, rel=1e-5)
    base_only = _by_hand(str(first / "merged"), None, texts, 64)
    assert abs(by_hand - base_only) > 1e-6  # the adapter changes the model: the check could tell them apart
    # An inconclusive check is a warning, said on the gate, never a silent pass.
    assert res["gate"]["status"] == "warn" and res["gate"]["verdict"] == "inconclusive"
    assert res["forgetting_sizing"]["can_conclude"] is False
    assert (out / "report.html").read_text(encoding="utf-8").count(lineage["adapter"]["sha256"][:16]) >= 1


def test_a_later_stage_cannot_start_from_the_base(tmp_path, shared):
    from tuneforge.pipeline.config import plan_pipeline

    pipe = _pipeline(tmp_path, shared, [("sft", "sft"), ("dpo", "dpo")])
    data = yaml.safe_load(pipe.read_text())
    data["train"][1]["from_previous"] = False
    pipe.write_text(yaml.safe_dump(data))
    with pytest.raises(RecipeError, match="'sft' would reach no evaluation"):
        plan_pipeline(pipe, tmp_path / "run")
    data["train"][1].pop("from_previous")
    pipe.write_text(yaml.safe_dump(data))
    plan = plan_pipeline(pipe, tmp_path / "run")
    assert [s.from_previous for s in plan.train] == [False, True]


def test_an_adapter_on_other_weights_is_refused(tmp_path, smollm2_path):
    """eval_lineage refuses an adapter whose lineage names other base weights, before any model loads."""
    from tuneforge.common.io import write_json
    from tuneforge.common.lineage import eval_lineage

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text("{}")
    (adapter / "adapter_model.safetensors").write_bytes(b"not really weights")
    write_json(adapter / "lineage.json", {"model": [{"kind": "merged", "stage": "sft", "sha256": "0" * 64}],
                                          "adapter": {"stage": "dpo"}})
    with pytest.raises(TuneforgeError, match=r"was trained on sft \(merged\).*pass the model it was trained on"):
        eval_lineage("embedded:smollm2", str(adapter))
    write_json(adapter / "lineage.json", {"model": eval_lineage("embedded:smollm2", None)["model"],
                                          "adapter": {"stage": "dpo"}})
    ok = eval_lineage("embedded:smollm2", str(adapter))
    assert ok["summary"] == "embedded:smollm2 + dpo adapter" and ok["adapter"]["sha256"]


def test_a_changed_model_folder_is_caught(tmp_path, smollm2_path):
    import shutil

    from tuneforge.common.io import write_json
    from tuneforge.common.lineage import model_chain, weights_sha256

    folder = tmp_path / "merged"
    shutil.copytree(smollm2_path, folder)
    write_json(folder / "lineage.json", {"model": [{"kind": "base", "ref": "embedded:smollm2"},
                                                   {"kind": "merged", "stage": "sft",
                                                    "sha256": weights_sha256(folder)}], "adapter": None})
    assert [e["kind"] for e in model_chain(str(folder))] == ["base", "merged"]
    with open(folder / "model.safetensors", "r+b") as f:
        f.seek(-4, 2)
        f.write(b"\0\0\0\1")
    with pytest.raises(TuneforgeError, match="its weights changed after tuneforge wrote them"):
        model_chain(str(folder))


def test_gate_policy_for_an_inconclusive_check():
    from tuneforge.pipeline.gate import gate_decision, gate_line

    block = {"verdict": "inconclusive", "suites": {"ceval": {"verdict": "inconclusive", "note": "needs 783"}}}
    warn = gate_decision(block, "fail")
    assert warn["passed"] and warn["status"] == "warn" and "ceval: inconclusive, needs 783" in warn["reasons"]
    assert gate_line(warn).startswith("gate: WARN (forgetting verdict: inconclusive;")
    fail = gate_decision(block, "fail", "fail")
    assert not fail["passed"] and fail["status"] == "fail"
    passed = gate_decision(block, "fail", "pass")
    assert passed["passed"] and passed["status"] == "pass" and "on_inconclusive: pass" in passed["reasons"][0]
    drop = {"verdict": "forgetting", "suites": {"ceval": {"verdict": "forgetting", "delta": -5.0, "ci_low": -8.0,
                                                          "ci_high": -2.0, "p_value": 0.001}}}
    assert gate_decision(drop, "warn", "fail")["status"] == "warn"
    assert gate_decision(drop, "fail", "pass")["status"] == "fail"
    ok = gate_decision({"verdict": "no significant change", "suites": {}}, "fail", "fail")
    assert ok["passed"] and ok["status"] == "pass"


def test_sizing_is_a_hard_bound():
    """The best-case bound: below it no outcome gives `no significant change`; at it, one can."""
    from tuneforge.eval.sizing import size_suite
    from tuneforge.eval.stats import NO_CHANGE, compare_paired

    s = size_suite(100, 5.0, 0.05, 0.8)
    assert not s["can_conclude"] and s["short_by_best"] == s["needed_best"] - 100
    # every outcome of 100 questions with nothing significant is inconclusive at a 5-point tolerance
    for lost in range(0, 6):
        base = [True] * 60 + [False] * 40
        tuned = [False] * lost + [True] * (60 - lost) + [False] * 40
        assert compare_paired(base, tuned, tolerance=5.0, power=0.8, iters=200).verdict != NO_CHANGE
    enough = size_suite(s["needed_best"], 5.0, 0.05, 0.8)
    assert enough["can_conclude"]
    same = [True] * 300 + [False] * (enough["n"] - 300)
    assert compare_paired(same, same, tolerance=5.0, power=0.8, iters=200).verdict == NO_CHANGE
