"""Fast tests of the eval stage: the C-Eval prompt layout, scoring, the forgetting statistics, config errors."""

from __future__ import annotations

import numpy as np
import pytest

from tuneforge.common.errors import TuneforgeError
from tuneforge.eval.prompts import chat_messages, completion_prompt
from tuneforge.eval.scoring import submission, summarize
from tuneforge.eval.stats import FORGETTING, IMPROVED, NO_CHANGE, compare_paired, mcnemar_exact
from tuneforge.eval.suites import CEVAL_HARD, load_suite

GOLDEN_1SHOT = (
    "以下是中国关于计算机网络考试的单项选择题，请选出其中的正确答案。\n"
    "\n"
    "下列设备属于资源子网的是____。\n"
    "A. 计算机软件\n"
    "B. 网桥\n"
    "C. 交换机\n"
    "D. 路由器\n"
    "答案：A\n"
    "\n"
    "使用位填充方法，以01111110为位首flag，数据为011011111111111111110010，求问传送时要添加几个0____\n"
    "A. 1\n"
    "B. 2\n"
    "C. 3\n"
    "D. 4\n"
    "答案："
)


def test_prompt_matches_official_ceval_layout_exactly():
    suite = load_suite("ceval", subjects=["computer_network"])
    item = suite.items("computer_network")[0]
    text = completion_prompt(suite.subject_name("computer_network"), suite.shots("computer_network", 1), item,
                             suite.style)
    assert text == GOLDEN_1SHOT
    zero = completion_prompt(suite.subject_name("computer_network"), [], item, suite.style)
    assert zero == GOLDEN_1SHOT.split("\n\n")[0] + "\n\n" + GOLDEN_1SHOT.split("\n\n")[2]
    five = completion_prompt(suite.subject_name("computer_network"), suite.shots("computer_network", 5), item,
                             suite.style)
    assert five.count("答案：") == 6 and five.endswith("答案：") and five.count("\n\n") == 6


def test_chat_mode_puts_header_in_system_and_shots_as_turns():
    suite = load_suite("ceval", subjects=["law"])
    msgs = chat_messages(suite.subject_name("law"), suite.shots("law", 2), suite.items("law")[0], suite.style)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[0]["content"] == "以下是中国关于法学考试的单项选择题，请选出其中的正确答案。"
    assert msgs[2]["content"] in "ABCD" and msgs[-1]["content"].endswith("\n答案：")


def test_suites_load_shipped_samples_and_reject_bad_specs(tmp_path):
    ce = load_suite("ceval")
    assert ce.split == "val" and "law" in ce.subjects and "legal_professional" in ce.subjects
    assert ce.hard == ["discrete_mathematics"]
    assert set(CEVAL_HARD) >= set(ce.hard) and len(CEVAL_HARD) == 8
    cm = load_suite("cmmlu")
    assert cm.split == "test" and cm.category("jurisprudence") == "Humanities"
    mm = load_suite("mmlu", subjects=["anatomy"])
    assert mm.style.cue == "Answer:" and mm.subject_name("anatomy") == "anatomy"
    with pytest.raises(TuneforgeError, match="unknown subjects"):
        load_suite("ceval", subjects=["no_such_subject"])
    with pytest.raises(TuneforgeError, match="unknown suite"):
        load_suite("gsm8k")
    with pytest.raises(TuneforgeError, match="folder not found"):
        load_suite(f"ceval:{tmp_path / 'missing'}")
    exam = tmp_path / "exam.jsonl"
    exam.write_text('{"q": "1+1=?", "A": "1", "B": "2", "C": "3", "D": "4", "ans": "B"}\n', encoding="utf-8")
    own = load_suite(f"mcq:{exam}", columns={"question": "q", "answer": "ans"})
    assert own.items(own.subjects[0])[0].answer == "B" and own.shots(own.subjects[0], 5) == []


def _row(subject, category, correct, uid):
    return {"suite": "ceval", "subject": subject, "category": category, "id": uid, "uid": f"{subject}/val/{uid}",
            "answer": "A", "pred": "A" if correct else "B", "correct": correct}


def test_summary_is_the_mean_over_subjects_as_ceval_computes_it():
    rows = ([_row("law", "Humanities", i < 3, str(i)) for i in range(4)]
            + [_row("discrete_mathematics", "STEM", i < 1, str(i)) for i in range(2)]
            + [_row("logic", "Humanities", i < 1, str(i)) for i in range(4)])
    s = summarize(rows, "ceval")
    assert s["accuracy"] == round((75 + 50 + 25) / 3, 2)  # the mean of the subjects, not 5/10 pooled
    assert s["micro_accuracy"] == 50.0
    assert s["categories"]["Humanities"] == {"accuracy": 50.0, "n": 8}  # (75 + 25) / 2 over its subjects
    assert s["categories"]["STEM"] == {"accuracy": 50.0, "n": 2}
    assert s["hard"]["accuracy"] == 50.0 and s["hard"]["subjects"] == ["discrete_mathematics"]
    assert submission(rows)["law"] == {"0": "A", "1": "A", "2": "A", "3": "B"}


def _paired(n, base_right, lost, gained, seed=0):
    """Constructed outcomes: `base_right` correct before; `lost` of those wrong after; `gained` fixed."""
    rng = np.random.default_rng(seed)
    base = np.zeros(n, bool)
    base[:base_right] = True
    tuned = base.copy()
    tuned[:lost] = False
    tuned[base_right:base_right + gained] = True
    perm = rng.permutation(n)
    return list(base[perm]), list(tuned[perm])


def test_planted_five_point_drop_over_1000_questions_is_flagged():
    base, tuned = _paired(1000, 600, lost=70, gained=20)  # -5.0 points
    r = compare_paired(base, tuned, tolerance=1.0, alpha=0.05)
    assert r.delta == pytest.approx(-5.0)
    assert r.lost == 70 and r.gained == 20
    assert r.ci_high < 0 < -r.ci_low  # the 95% interval excludes zero
    assert -7.5 < r.ci_low < r.delta < r.ci_high < -2.5
    assert r.p_value < 1e-5
    assert r.verdict == FORGETTING


def test_noise_is_not_flagged_and_gains_are_reported():
    base, tuned = _paired(1000, 600, lost=30, gained=30)  # flips both ways, no net change
    r = compare_paired(base, tuned)
    assert r.delta == 0 and r.p_value == 1.0 and r.verdict == NO_CHANGE
    assert r.ci_low < 0 < r.ci_high
    base, tuned = _paired(1000, 600, lost=25, gained=15)  # -1 point: noise at this n
    assert compare_paired(base, tuned).verdict == NO_CHANGE
    base, tuned = _paired(1000, 600, lost=10, gained=60)
    assert compare_paired(base, tuned).verdict == IMPROVED


def test_significant_but_small_drop_is_within_tolerance():
    base, tuned = _paired(5000, 3000, lost=40, gained=0)  # -0.8 points, p tiny
    r = compare_paired(base, tuned, tolerance=1.0)
    assert r.p_value < 0.001 and r.verdict == NO_CHANGE
    assert compare_paired(base, tuned, tolerance=0.5).verdict == FORGETTING


def test_mcnemar_matches_exact_binomial():
    from scipy.stats import binomtest

    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(12, 3) == pytest.approx(binomtest(3, 15, 0.5).pvalue)
    assert mcnemar_exact(12, 3) == mcnemar_exact(3, 12)


def test_config_errors_name_the_field(tmp_path):
    from tuneforge.common.errors import RecipeError
    from tuneforge.eval.config import load_config

    bad = tmp_path / "eval.yaml"
    bad.write_text("suites:\n  - benchmark: ceval\n    shots: many\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"suites\.0\.shots"):
        load_config(bad)
    bad.write_text("engine: vllm\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="engine"):
        load_config(bad)


def test_shipped_example_configs_validate():
    from pathlib import Path

    from tuneforge.eval.config import load_config

    files = sorted((Path(__file__).resolve().parents[1] / "configs").glob("eval*.yaml"))
    assert files
    for f in files:
        cfg = load_config(f)
        for sc in cfg.suites:
            if ":" not in sc.benchmark:
                load_suite(sc.benchmark, subjects=sc.subjects)


def test_heldout_scores_chinese_by_character_and_word():
    from tuneforge.eval.heldout import score, tokens

    assert tokens("合同 无效。", "char") == ["合", "同", "无", "效", "。"]
    assert "合同" in tokens("合同无效的情形", "word")
    same = score(["合同无效的情形包括欺诈"], ["合同无效的情形包括欺诈"], "char")
    assert same["bleu4"] == pytest.approx(100.0) and same["rouge1"] == 100.0 and same["rougeL"] == 100.0
    part = score(["合同无效"], ["合同有效"], "char")
    assert part["rouge1"] == 75.0 and part["rouge2"] < 50 and part["exact_match"] == 0.0
    assert score(["是。"], ["是"], "char")["exact_match"] == 100.0  # punctuation ignored for exact match
