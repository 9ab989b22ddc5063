"""LLM-judge win rate, tuned vs base, through the augment client against a loopback OpenAI-compatible server."""

from __future__ import annotations

import json
import re

import pytest
from fake_openai_server import FakeOpenAIServer  # tests/ is on sys.path under pytest

from tuneforge.eval.config import JudgeConfig
from tuneforge.eval.judge import bootstrap_ci, judge_win_rate, pair_score, parse_verdict

_ANS = re.compile(r"\[Answer A\]\n(.*?)\n\n\[Answer B\]\n(.*?)\n\nReply", re.S)


JUDGED: list[int] = []  # judge prompts answered (the client's structured-output probe is not one)


def biased_judge(body: dict) -> str:
    """Prefers the answer with more '好'; on a tie always says A (a position bias to cancel)."""
    m = _ANS.search(body["messages"][-1]["content"])
    if m is None:  # the engine's first-contact probe of json_schema support
        return json.dumps({"ok": True})
    JUDGED.append(1)
    a, b = m.groups()
    if a.count("好") == b.count("好"):
        return json.dumps({"winner": "A", "reason": "first one"})
    return json.dumps({"winner": "A" if a.count("好") > b.count("好") else "B", "reason": "better"})


def _rows(outputs: list[str]) -> list[dict]:
    return [{"id": f"q{i}", "question": f"问题{i}", "output": o} for i, o in enumerate(outputs)]


def test_both_orders_cancel_position_bias_and_cache_answers_reruns(tmp_path):
    base = _rows(["好"] * 2 + ["一般"] * 6 + ["好好"] * 2)
    tuned = _rows(["好好"] * 2 + ["一般"] * 6 + ["好"] * 2)  # 2 better, 6 equal (bias only), 2 worse
    srv = FakeOpenAIServer(responder=biased_judge).start()
    try:
        jc = JudgeConfig(llm={"base_url": srv.base_url, "model": "judge-1"}, cache=str(tmp_path / "judge.sqlite"),
                         bootstrap=2000)
        JUDGED.clear()
        res = judge_win_rate(base, tuned, jc)
        assert len(JUDGED) == 20 and 20 <= res["requests"] <= 21  # 10 pairs, both orders (and the client's probe)
        assert srv.stats.chat - len(JUDGED) <= 1
        assert res["n"] == 10 and res["failed"] == 0
        assert (res["wins"], res["ties"], res["losses"]) == (2, 6, 2)
        assert res["win_rate"] == 50.0  # the biased "A" on equal answers cancels out: ties, not wins
        assert res["ci_low"] < 50.0 < res["ci_high"]
        assert res["position_consistency"] == 40.0 and res["first_position_preferred"] == 80.0
        assert res["judge"] == "judge-1" and res["endpoint"].startswith("http://127.0.0.1:")
        seen = srv.stats.chat
        again = judge_win_rate(base, tuned, jc)  # cached: no judge request reaches the endpoint
        assert len(JUDGED) == 20 and srv.stats.chat - seen <= 1
        assert again["cached"] == 20 and again["win_rate"] == 50.0
    finally:
        srv.stop()


def test_a_clearly_better_tuned_model_wins_with_a_ci_above_half(tmp_path):
    base = _rows(["一般"] * 30)
    tuned = _rows(["好"] * 24 + ["一般"] * 6)
    srv = FakeOpenAIServer(responder=biased_judge).start()
    try:
        jc = JudgeConfig(llm={"base_url": srv.base_url, "model": "j"}, cache=str(tmp_path / "c.sqlite"))
        res = judge_win_rate(base, tuned, jc)
    finally:
        srv.stop()
    assert res["win_rate"] == pytest.approx(100 * (24 + 0.5 * 6) / 30)
    assert res["ci_low"] > 50.0


def test_verdict_parsing_and_scores():
    assert parse_verdict('{"winner": "B", "reason": "x"}') == "B"
    assert parse_verdict('{"winner": "tie"}') == "tie"
    assert parse_verdict("[[A]] because") == "A"
    assert parse_verdict("no idea") is None
    assert pair_score("A", "B") == 1.0 and pair_score("B", "A") == 0.0
    assert pair_score("A", "A") == 0.5 and pair_score("tie", "B") == 0.75 and pair_score(None, "A") is None
    lo, hi = bootstrap_ci([1.0] * 10)
    assert lo == hi == 100.0


def test_forgetting_run_judges_tuned_against_base_on_heldout(smollm2_path, shared, tmp_path):
    """run_forgetting with `heldout:` and `judge:`: both models generate, the judge compares, the report shows it."""
    from eval_tiny import tiny_model_dir

    from datasets import Dataset, DatasetDict
    from tuneforge.eval import run_forgetting

    base = tiny_model_dir(smollm2_path, tmp_path / "base", seed=0)
    tuned = tiny_model_dir(smollm2_path, tmp_path / "tuned", seed=1)
    rows = json.loads((shared / "chatglm-efficient-tuning" / "oaast_sft_zh.json").read_text(encoding="utf-8"))[:8]
    recs = [{"id": str(i), "meta": "{}", "messages": [{"role": "user", "content": r["instruction"]},
                                                      {"role": "assistant", "content": r["output"]}]}
            for i, r in enumerate(rows)]
    build = tmp_path / "build"
    DatasetDict({"train": Dataset.from_list(recs[:4]), "test": Dataset.from_list(recs[4:])}).save_to_disk(
        str(build / "dataset"))
    (build / "manifest.json").write_text(json.dumps({"datasets": {"messages": "dataset"}, "template": "chatml"}),
                                         encoding="utf-8")
    srv = FakeOpenAIServer(responder=lambda body: '{"winner": "tie"}').start()
    try:
        cfg = {"suites": [{"benchmark": "ceval", "subjects": ["law"], "limit": 2, "shots": 0}],
               "perplexity": {"limit": 2, "max_length": 32},
               "heldout": {"dataset": str(build), "max_new_tokens": 6, "batch_size": 4},
               "judge": {"llm": {"base_url": srv.base_url, "model": "judge"}, "cache": str(tmp_path / "j.sqlite"),
                         "bootstrap": 200}}
        res = run_forgetting(str(base), str(tuned), out=tmp_path / "forget", config=cfg)
    finally:
        srv.stop()
    j = res["judge"]
    assert j["n"] == 4 and j["ties"] == 4 and j["win_rate"] == 50.0 and 8 <= srv.stats.chat <= 9
    assert "LLM-judge win rate" in (tmp_path / "forget" / "report.md").read_text(encoding="utf-8")
