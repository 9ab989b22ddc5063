"""End-to-end eval on the real SmolLM2 (CPU): engines agree, CLI runs, compare, forgetting, reports render."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.cli import app
from tuneforge.common.io import read_jsonl

pytestmark = pytest.mark.slow
runner = CliRunner()


def _cli(*args: str) -> str:
    res = runner.invoke(app, list(args))
    assert res.exit_code == 0, f"{args}: {res.output}\n{res.exception!r}"
    return res.output


@pytest.mark.newest
def test_native_engine_agrees_with_lm_eval(smollm2_path, shared, tmp_path):
    """Same model, same C-Eval questions and prompts: per-question predictions of both engines.

    On this 2-core CI machine the check runs 30 val questions of two subjects, 1-shot (the few-shot prefix
    goes through the KV cache path all the same); benchmarks/eval.py runs all 1,346 5-shot on a GPU.
    """
    from tuneforge.eval.lmeval import run_lm_eval
    from tuneforge.eval.models import load_for_eval
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.suites import load_suite

    lm = load_for_eval(str(smollm2_path), device="cpu")
    suite = load_suite(f"ceval:{shared / 'ceval'}", subjects=["art_studies", "basic_medicine"])
    native = NativeEngine(lm.model, lm.tokenizer, "cpu", batch_size=8).score_suite(suite, 1, 15)
    ref, _ = run_lm_eval(lm.model, [suite], k=1, limit=15, workdir=tmp_path, tokenizer=lm.tokenizer,
                         batch_size=8)
    a = {r["uid"]: r["pred"] for r in native}
    b = {r["uid"]: r["pred"] for r in ref}
    assert set(a) == set(b) and len(a) == 30
    agreement = sum(a[u] == b[u] for u in a) / len(a)
    print(f"native vs lm-eval agreement: {100 * agreement:.1f}% of {len(a)} questions")
    assert agreement >= 0.98
    # the generated lm-eval task reuses lm-eval's own ceval config
    yml = next((tmp_path / "lm_eval_tasks" / "ceval" / "art_studies").glob("*.yaml")).read_text(encoding="utf-8")
    assert "lm_eval/tasks/ceval/_default_ceval_yaml" in yml and "考试" in yml


def test_eval_cli_native_and_lm_eval_runs_then_compare(smollm2_path, tmp_path):
    a, b = tmp_path / "eval-1shot", tmp_path / "eval-0shot-lm-eval"
    out = _cli("eval", "--model", str(smollm2_path), "--benchmark", "ceval", "--benchmark", "cmmlu",
               "--subjects", "law,jurisprudence", "--shots", "1", "--limit", "3", "--out", str(a))
    assert "ceval: accuracy" in out and "cmmlu: accuracy" in out
    _cli("eval", "--model", str(smollm2_path), "--benchmark", "ceval", "--subjects", "law,discrete_mathematics",
         "--shots", "0", "--limit", "2", "--engine", "lm-eval", "--out", str(b))
    res = json.loads((a / "results.json").read_text(encoding="utf-8"))
    assert res["model"] == str(smollm2_path) and res["adapter"] is None
    ce = res["suites"]["ceval"]
    assert ce["n"] == 3 and 0 <= ce["accuracy"] <= 100 and ce["subjects"]["law"]["n"] == 3
    assert ce["categories"] == {"Humanities": {"accuracy": ce["accuracy"], "n": 3}} and ce["hard"] is None
    preds = read_jsonl(a / "predictions.jsonl")
    assert len(preds) == 6 and all(p["pred"] in "ABCD" and len(p["logits"]) == 4 for p in preds)
    assert sum(p["correct"] for p in preds if p["suite"] == "ceval") == round(ce["accuracy"] * 3 / 100)
    res_b = json.loads((b / "results.json").read_text(encoding="utf-8"))
    assert res_b["engine"] == "lm-eval" and res_b["suites"]["ceval"]["n"] == 4
    assert res_b["suites"]["ceval"]["hard"]["subjects"] == ["discrete_mathematics"]
    assert len(read_jsonl(b / "predictions.jsonl")) == 4 and (b / "lm_eval_tasks").is_dir()
    cmp = tmp_path / "compare"
    out = _cli("compare", str(a), str(b), "--out", str(cmp))
    res_cmp = json.loads((cmp / "results.json").read_text(encoding="utf-8"))
    # the two runs scored different questions (other subjects, limits, suites): only one is ranked
    board, others = res_cmp["leaderboard"], res_cmp["not_comparable"]
    assert [e["path"] for e in board] == [str(a)] and [e["path"] for e in others] == [str(b)]
    assert board[0]["run"] == f"{smollm2_path.name} (eval-1shot)"  # model name; the folder tells twins apart
    assert board[0]["suites"]["ceval"] == ce["accuracy"] and board[0]["n"]["ceval"] == 3
    assert "not ranked (other questions)" in out
    html = (cmp / "report.html").read_text(encoding="utf-8")
    assert "eval-1shot" in html and "data:image/png;base64," in html
    assert "| rank | run |" in (cmp / "report.md").read_text(encoding="utf-8")


def test_ceval_test_split_writes_official_submission(smollm2_path, shared, tmp_path):
    from tuneforge.eval import run_eval

    root = tmp_path / "ceval"
    (root / "dev").mkdir(parents=True)
    (root / "test").mkdir()
    shutil.copy(shared / "ceval" / "subject_mapping.json", root)
    shutil.copy(shared / "ceval" / "dev" / "law_dev.csv", root / "dev")
    lines = (shared / "ceval" / "val" / "law_val.csv").read_text(encoding="utf-8").splitlines()[:4]
    # the released test split has no answer column
    (root / "test" / "law_test.csv").write_text("\n".join(ln.rsplit(",", 1)[0] for ln in lines) + "\n",
                                                encoding="utf-8")
    res = run_eval({"suites": [{"benchmark": f"ceval:{root}", "split": "test", "shots": 1}]},
                   out=tmp_path / "run", model=str(smollm2_path), report=False)
    sub = json.loads((tmp_path / "run" / "submission_ceval.json").read_text(encoding="utf-8"))
    assert list(sub) == ["law"] and list(sub["law"]) == ["0", "1", "2"]
    assert all(v in "ABCD" for v in sub["law"].values())
    assert res["suites"]["ceval"]["accuracy"] is None


def _lora(smollm2_path: Path, out: Path) -> Path:
    """A real PEFT LoRA adapter with non-zero weights (so the tuned model differs from the base)."""
    import torch
    from peft import LoraConfig, get_peft_model

    from tuneforge.common.models import load_causal_lm

    torch.manual_seed(0)
    model = load_causal_lm(str(smollm2_path), dtype=torch.float32)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=64, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(out)
    return out


def test_forgetting_cli_with_adapter_and_report_renders_in_chromium(smollm2_path, tmp_path):
    adapter = _lora(smollm2_path, tmp_path / "adapter")
    cfg = tmp_path / "forget.yaml"
    cfg.write_text("perplexity:\n  limit: 2\n  max_length: 64\nforgetting:\n  bootstrap: 1000\n", encoding="utf-8")
    out = tmp_path / "forget"
    text = _cli("forgetting", "--base", str(smollm2_path), "--adapter", str(adapter), "--suites", "ceval,mmlu",
                "--subjects", "law,marxism,anatomy", "--shots", "0", "--limit", "2", "--config", str(cfg),
                "--out", str(out))
    assert "verdict:" in text
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    fg = res["forgetting"]
    assert res["adapter"] == str(adapter) and fg["base"] == str(smollm2_path)
    assert set(fg["suites"]) == {"ceval", "mmlu"}
    ce = fg["suites"]["ceval"]
    # 4 questions cannot show a 1-point drop: under-powered, so inconclusive with the n it would need
    assert fg["verdict"] == "inconclusive" and ce["verdict"] in ("inconclusive", "forgetting")
    assert ce["mde"] > 1 and fg["mde"]["ceval"] == ce["mde"] and ce["tier"] == "critical"
    assert ce["n"] == 4 and set(ce["categories"]) == {"Humanities", "Social Science"}
    assert ce["ci_low"] <= ce["delta"] <= ce["ci_high"] and 0 <= ce["p_value"] <= 1
    base = {r["uid"]: r for r in read_jsonl(out / "base" / "predictions.jsonl")}
    tuned = {r["uid"]: r for r in read_jsonl(out / "tuned" / "predictions.jsonl")}
    lost = [u for u in base if base[u]["suite"] == "ceval" and base[u]["correct"] and not tuned[u]["correct"]]
    assert sorted(f["uid"] for f in ce["flips"]) == sorted(lost) and ce["lost"] == len(lost)
    assert any(base[u]["logits"] != tuned[u]["logits"] for u in base)  # the adapter changed the model
    assert fg["perplexity"]["base"] > 1 and fg["perplexity"]["tuned"] > 1
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Catastrophic-forgetting check" in md and (out / "figures" / "forgetting_deltas.png").is_file()

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "headless Chromium is needed for this check: bash scripts/setup.sh installs Debian's chromium"
    dom = subprocess.run([chromium, "--headless", "--no-sandbox", "--disable-gpu", "--virtual-time-budget=5000",
                          "--dump-dom", (out / "report.html").as_uri()], capture_output=True, text=True,
                         timeout=120, check=True).stdout
    decoded = re.search(r'data-images-decoded="(\d+)/(\d+)"', dom)
    assert decoded, dom[:500]
    n_ok, n_img = int(decoded.group(1)), int(decoded.group(2))
    assert n_img >= 2 and n_ok == n_img  # every inline plot decoded
    assert dom.count("<table") >= 4 and "McNemar p" in dom and "law" in dom


def test_heldout_generation_on_a_built_dataset(smollm2_path, shared, tmp_path):
    from datasets import Dataset, DatasetDict
    from tuneforge.eval import run_eval

    rows = json.loads((shared / "chatglm-efficient-tuning" / "oaast_sft_zh.json").read_text(encoding="utf-8"))[:40]
    recs = [{"id": str(i), "meta": "{}", "messages": [{"role": "user", "content": r["instruction"]},
                                                      {"role": "assistant", "content": r["output"]}]}
            for i, r in enumerate(rows)]
    build = tmp_path / "build"
    DatasetDict({"train": Dataset.from_list(recs[:30]), "validation": Dataset.from_list(recs[30:35]),
                 "test": Dataset.from_list(recs[35:])}).save_to_disk(str(build / "dataset"))
    (build / "manifest.json").write_text(json.dumps({"datasets": {"messages": "dataset"}, "template": "chatml"}),
                                         encoding="utf-8")
    res = run_eval({"heldout": {"dataset": str(build), "limit": 3, "max_new_tokens": 12, "batch_size": 3}},
                   out=tmp_path / "ho", model=str(smollm2_path))
    ho = res["heldout"]
    assert ho["template"] == "chatml" and ho["split"] == "test" and ho["metrics"]["n"] == 3
    assert {"bleu4", "rouge1", "rouge2", "rougeL", "exact_match"} <= set(ho["metrics"])
    outs = read_jsonl(tmp_path / "ho" / "heldout_outputs.jsonl")
    assert [o["reference"] for o in outs] == [r["output"] for r in rows[35:38]]
    assert all(o["prompt"].startswith("<|im_start|>") and o["output"] for o in outs)
    assert "Held-out domain evaluation" in (tmp_path / "ho" / "report.html").read_text(encoding="utf-8")
