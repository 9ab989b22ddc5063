"""Generation mode's answer extraction: each cascade level, reasoning stripped, and 200+ real model outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.eval.extract import extract_answer, reasoning_markers, strip_reasoning

DATA = Path(__file__).resolve().parent / "data" / "extraction_outputs.jsonl"
OPTS = ("上海", "北京", "广州", "深圳")


@pytest.mark.parametrize(("output", "letter", "method"), [
    ("答案是 B", "B", "statement"),
    ("答案是：B。", "B", "statement"),
    ("正确答案为（C）", "C", "statement"),
    ("分析如下……故选B", "B", "statement"),
    ("所以选 D。", "D", "statement"),
    ("选项B正确，因为北京是首都。", "B", "option"),
    ("B选项符合题意", "B", "option"),
    ("我认为是(B)", "B", "paren"),
    ("我认为是（D）", "D", "paren"),
    ("Answer: B", "B", "statement"),
    ("The answer is (C).", "C", "statement"),
    ("A careful look shows the correct answer is option D", "D", "statement"),
    ("Let me pick option C.", "C", "option"),
    (r"So the result is \boxed{B}", "B", "boxed"),
    (r"Answer: A ... on reflection \boxed{C}", "C", "boxed"),  # boxed outranks a statement
    ("B. 北京", "B", "lead"),
    ("A. 上海\nB. 北京\nC. 广州\n\n我选 C", "C", "statement"),
    ("A. 上海\nB. 北京\nC. 广州\nD. 深圳", None, None),  # the options restated: no answer
    ("A cat sat down. I would go with C", "C", "letter"),  # "A cat" is the article, not an option
    ("北京", "B", "text"),
    ("首都是北京。", "B", "text"),
])
def test_each_cascade_level(output, letter, method):
    got = extract_answer(output, OPTS)
    assert (got.letter, got.method) == (letter, method)


@pytest.mark.parametrize("output", [
    "无法确定",
    "I am not sure about this question.",
    "上海和北京都是大城市",  # two options' texts: ambiguous, not guessed
    "<think>B looks right but let me check",  # ran out while thinking
    "",
])
def test_unextractable_is_none_not_a_guess(output):
    got = extract_answer(output, OPTS)
    assert got.letter is None and got.method is None


def test_reasoning_is_stripped_before_extraction():
    assert extract_answer("<think>A is wrong, so is C. Answer: C?</think>答案：D", OPTS).letter == "D"
    assert strip_reasoning("<think>x</think> y <think>z</think> w") == "y  w"
    # a template that pre-fills <think> in the prompt: only the closing marker is generated
    assert extract_answer("thinking about A ...</think>\nThe answer is B", OPTS).letter == "B"

    from types import SimpleNamespace

    tok = SimpleNamespace(added_tokens_decoder={1: "<|begin_of_thought|>", 2: "<|end_of_thought|>", 3: "<|im_end|>"})
    marks = reasoning_markers(tok)
    assert ("<|begin_of_thought|>", "<|end_of_thought|>") in marks
    assert extract_answer("<|begin_of_thought|>maybe A<|end_of_thought|>选项C", OPTS, marks).letter == "C"


def _real_rows() -> list[dict]:
    return [json.loads(line) for line in DATA.read_text(encoding="utf-8").splitlines() if line.strip()]


def test_cascade_matches_hand_checked_answers_on_real_model_outputs():
    """SmolLM2 outputs on real C-Eval/MMLU questions (benchmarks/eval_extraction_data.py), each read by hand:
    `expected` is the letter the output gives, or "unextractable"."""
    rows = _real_rows()
    assert len(rows) >= 200
    assert {r["suite"] for r in rows} == {"ceval", "mmlu"}
    wrong = []
    for r in rows:
        got = extract_answer(r["output"], r["options"]).letter or "unextractable"
        if got != r["expected"]:
            wrong.append((r["uid"], r["variant"], r["output"][:120], r["expected"], got))
    agreement = 1 - len(wrong) / len(rows)
    print(f"extraction agrees with the hand check on {len(rows) - len(wrong)}/{len(rows)} outputs")
    # one known disagreement (tests/data/extraction_outputs.md); nothing else may drift
    assert agreement >= 0.99 and len(wrong) <= 1, f"{len(wrong)} of {len(rows)} disagree: {wrong[:10]}"
    # never a guess: every hand-read "unextractable" the cascade reads as a letter is a listed disagreement
    assert all(w[3] != "unextractable" or w[2].startswith("逆序成词") for w in wrong)
    assert sum(r["expected"] == "unextractable" for r in rows) > 0  # the data holds unextractable outputs too
