"""Engine mechanics on a tiny random Llama (SmolLM2's tokenizer): prefix cache vs whole prompts, bf16 vs fp32
with fp32 re-scoring of close calls, generate mode end to end, eval-config paths, and compare's table."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import read_jsonl


@pytest.fixture(scope="module")
def engines(tiny, shared):
    from tuneforge.eval.models import load_for_eval
    from tuneforge.eval.suites import load_suite

    lm32 = load_for_eval(str(tiny), device="cpu")
    lm16 = load_for_eval(str(tiny), device="cpu", dtype="bfloat16")
    suite = load_suite(f"ceval:{shared / 'ceval'}", subjects=["law", "logic", "art_studies", "basic_medicine"])
    return lm32, lm16, suite


def test_whole_prompts_match_the_prefix_cache_path(engines):
    from tuneforge.eval.native import NativeEngine

    lm32, _, suite = engines
    cached = NativeEngine(lm32.model, lm32.tokenizer, "cpu", batch_size=8, prefix_cache=True).score_suite(suite, 5, 8)
    eng = NativeEngine(lm32.model, lm32.tokenizer, "cpu", batch_size=8, prefix_cache=False)
    whole = eng.score_suite(suite, 5, 8)
    assert [r["pred"] for r in cached] == [r["pred"] for r in whole] and len(whole) == 32
    assert all(abs(a - b) < 1e-3 for x, y in zip(cached, whole, strict=True)
               for a, b in zip(x["logits"], y["logits"], strict=True))
    assert eng.stats["cached_tokens"] == 0


def test_bf16_agrees_with_fp32_and_rescoring_removes_close_call_flips(engines):
    """CPU bf16 (where torch runs it): the same engine in bf16 vs float32, per question."""
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.precision import _margin

    lm32, lm16, suite = engines
    ref = NativeEngine(lm32.model, lm32.tokenizer, "cpu", batch_size=8).score_suite(suite, 5, 8)
    half = NativeEngine(lm16.model, lm16.tokenizer, "cpu", batch_size=8, prefix_cache=False).score_suite(suite, 5, 8)
    flips = [(a, b) for a, b in zip(ref, half, strict=True) if a["pred"] != b["pred"]]
    print(f"bf16 vs fp32 on CPU: {len(ref) - len(flips)}/{len(ref)} agree")
    assert len(flips) <= 0.1 * len(ref)
    assert all(_margin(b["logits"]) < 0.5 for _, b in flips)  # bf16 flips only close calls
    eng = NativeEngine(lm16.model, lm16.tokenizer, "cpu", batch_size=8, prefix_cache=False,
                       rescore_model=lm32.model, rescore_margin=0.5)
    fixed = eng.score_suite(suite, 5, 8)
    assert [r["pred"] for r in fixed] == [r["pred"] for r in ref]
    assert eng.stats["rescored"] == sum(r.get("rescored", False) for r in fixed) > 0


def test_generate_mode_end_to_end_counts_unextracted(tiny, tmp_path):
    from tuneforge.eval import run_eval

    exam = tmp_path / "civil_law_quiz.jsonl"
    exam.write_text("".join(json.dumps({"question": f"第{i}题：合同何时成立？", "A": "要约", "B": "承诺生效时",
                                        "C": "签字时", "D": "付款时", "answer": "B"}, ensure_ascii=False) + "\n"
                            for i in range(4)), encoding="utf-8")
    res = run_eval({"mode": "generate", "generation": {"max_new_tokens": 6, "batch_size": 4},
                    "suites": [{"benchmark": f"mcq:{exam}"}, {"benchmark": "ceval", "subjects": ["law"], "limit": 2,
                                                              "shots": 1, "mode": "logits"}]},
                   out=tmp_path / "run", model=str(tiny))
    quiz = res["suites"]["civil_law_quiz"]
    assert quiz["mode"] == "generate" and list(quiz["subjects"]) == ["civil_law_quiz"]  # not "default"
    sub = quiz["subjects"]["civil_law_quiz"]
    assert sub["n"] == 4 and quiz["unextracted"] == sub["unextracted"]
    assert sum(quiz["extraction"].values()) == 4
    assert res["suites"]["ceval"]["mode"] == "logits" and "unextracted" not in res["suites"]["ceval"]
    rows = [r for r in read_jsonl(tmp_path / "run" / "predictions.jsonl") if r["suite"] == "civil_law_quiz"]
    assert all({"output", "extracted", "extraction"} <= set(r) for r in rows)
    assert all((r["extracted"] is None) == (r["extraction"] is None) for r in rows)
    assert all(r["correct"] is False for r in rows if r["extracted"] is None)  # counted wrong, not guessed
    html = (tmp_path / "run" / "report.html").read_text(encoding="utf-8")
    assert "unextracted" in html and "Sample generated answers" in html


def test_mcq_paths_resolve_against_the_config_file_and_are_checked_first(tmp_path, monkeypatch):
    from tuneforge.eval import run_eval
    from tuneforge.eval.config import load_config

    (tmp_path / "conf" / "exams").mkdir(parents=True)
    exam = tmp_path / "conf" / "exams" / "quiz.csv"
    exam.write_text("question,A,B,C,D,answer\n1+1?,1,2,3,4,B\n", encoding="utf-8")
    cfg_file = tmp_path / "conf" / "eval.yaml"
    cfg_file.write_text("suites:\n  - benchmark: mcq:exams/quiz.csv\n", encoding="utf-8")
    monkeypatch.chdir(tmp_path)  # not the config's folder
    cfg = load_config(cfg_file)
    assert cfg.suites[0].benchmark == f"mcq:{exam.resolve()}"
    assert load_config({"suites": [{"benchmark": "mcq:exams/quiz.csv"}]}, base_dir=tmp_path / "conf") \
        .suites[0].benchmark == f"mcq:{exam.resolve()}"
    assert load_config(cfg_file, model="x").model == "x"  # overrides still apply
    cfg_file.write_text("suites:\n  - benchmark: mcq:exams/missing.csv\n", encoding="utf-8")
    # fails before any model loads: the model named here does not exist
    with pytest.raises(TuneforgeError, match=r"missing\.csv does not exist .*relative to that file's folder"):
        run_eval(cfg_file, out=tmp_path / "out", model="/no/such/model")


def _result(tmp_path: Path, name: str, model: str, adapter: str | None, suites: dict) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "results.json").write_text(json.dumps({"model": model, "adapter": adapter, "suites": suites}),
                                    encoding="utf-8")
    return d


def test_compare_ranks_only_runs_on_the_same_questions(tmp_path):
    from tuneforge.eval.compare import compare_runs

    def ce(acc, q="q1", n=100):
        return {"accuracy": acc, "n": n, "questions": q, "categories": {"STEM": {"accuracy": acc, "n": n},
                                                                        "Humanities": {"accuracy": acc, "n": 1}},
                "hard": {"accuracy": acc, "n": 8}}

    quiz = {"accuracy": 70.0, "n": 20, "questions": "z", "categories": {"Other": {"accuracy": 70.0, "n": 20}},
            "hard": None}
    a = _result(tmp_path, "run-a", "embedded:smollm2", None, {"ceval": ce(30.0), "quiz": quiz})
    b = _result(tmp_path, "run-b", "embedded:smollm2", "runs/law/adapter", {"ceval": ce(35.0), "quiz": quiz})
    c = _result(tmp_path, "run-c", "Qwen/Qwen2.5-0.5B", None, {"ceval": ce(50.0, q="other", n=10), "quiz": quiz})
    res = compare_runs([a, b, c], tmp_path / "cmp")
    board = res["leaderboard"]
    assert [e["run"] for e in board] == ["embedded:smollm2 + adapter", "embedded:smollm2"]
    assert board[0]["n"] == {"ceval": 100, "quiz": 20}
    assert [e["run"] for e in res["not_comparable"]] == ["Qwen2.5-0.5B"]
    md = (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    assert "| rank | run | ceval | ceval n | quiz | quiz n |" in md
    assert "## quiz by category" not in md  # one category, no Hard: no table of columns it does not have
    assert "C-Eval Hard" in md.split("## ceval by category")[1]
    assert "not checked" in md and "–" not in md.split("## Leaderboard")[1].split("##")[0]
    assert "Not ranked: other questions" in md


def test_eval_cli_mode_generate(tiny, tmp_path):
    from typer.testing import CliRunner

    from tuneforge.cli import app

    out = tmp_path / "gen"
    res = CliRunner().invoke(app, ["eval", "--model", str(tiny), "--benchmark", "ceval", "--subjects", "law",
                                   "--limit", "2", "--shots", "0", "--mode", "generate", "--cot",
                                   "--max-new-tokens", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "ceval: accuracy" in res.output and "unextracted" in res.output
    r = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert r["suites"]["ceval"]["mode"] == "generate" and r["suites"]["ceval"]["cot"] is True
    assert r["config"]["generation"]["max_new_tokens"] == 4
