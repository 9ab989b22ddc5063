"""Templates against a real Hugging Face tokenizer (the embedded SmolLM2) and real multi-turn corpora."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.templates import IGNORE_INDEX, TemplateError, get_template, list_templates

REGISTERED = [n for n in list_templates() if n != "tokenizer"]
SMOL_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def oaast_conversations(shared: Path) -> list[list[dict]]:
    """oaast_sft_zh (ChatGLM-Efficient-Tuning): history pairs, then instruction (+ input) and output."""
    rows = json.loads((shared / "chatglm-efficient-tuning" / "oaast_sft_zh.json").read_text(encoding="utf-8"))
    out = []
    for r in rows:
        msgs = []
        for q, a in r.get("history") or []:
            msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
        q = r["instruction"] + (f"\n{r['input']}" if r.get("input") else "")
        msgs += [{"role": "user", "content": q}, {"role": "assistant", "content": r["output"]}]
        out.append(msgs)
    return out


def crosswoz_conversations(shared: Path) -> list[list[dict]]:
    """CrossWOZ dialogues: usr -> user, sys -> assistant; a trailing user turn is dropped."""
    data = json.loads((shared / "crosswoz" / "val_first100.json").read_text(encoding="utf-8"))
    out = []
    for d in data.values():
        msgs = [{"role": {"usr": "user", "sys": "assistant"}[t["role"]], "content": t["content"]}
                for t in d["messages"]]
        while msgs and msgs[-1]["role"] != "assistant":
            msgs.pop()
        out.append(msgs)
    return out


@pytest.fixture(scope="module")
def tok(smollm2_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


@pytest.fixture(scope="module")
def real(shared: Path) -> list[list[dict]]:
    oa = oaast_conversations(shared)
    cw = crosswoz_conversations(shared)
    multi = [m for m in oa if len(m) > 2]
    assert len(multi) >= 100 and len(cw) == 100
    return oa + cw


def _fresh(smollm2_path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(smollm2_path))


def _runs(labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    prev = False
    for x in labels:
        if x != IGNORE_INDEX:
            if not prev:
                runs.append([])
            runs[-1].append(x)
        prev = x != IGNORE_INDEX
    return runs


def _decode(tok, ids: list[int]) -> str:
    return tok.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)


# ------------------------------------------------------------------ SmolLM2's own template vs our chatml


def test_chatml_equals_smollm2_template_token_for_token(tok, real) -> None:
    """SmolLM2's template is ChatML plus a default system prompt: equal with that prompt made explicit."""
    assert SMOL_SYSTEM in tok.chat_template
    chatml = get_template("chatml")
    chatml_smol = get_template("chatml", default_system=SMOL_SYSTEM)
    sample = real[:40] + real[-20:]
    for msgs in sample:
        with_sys = [{"role": "system", "content": SMOL_SYSTEM}, *msgs]
        for conv, ours in ((with_sys, chatml), (msgs, chatml_smol),
                           ([{"role": "system", "content": "你是助手。"}, *msgs], chatml)):
            theirs = tok.apply_chat_template(conv, tokenize=True, return_dict=True)["input_ids"]
            assert ours.tokenize(tok, conv)["input_ids"] == list(theirs)
            assert ours.render(conv) == tok.apply_chat_template(conv, tokenize=False)
            gen = conv[:-1]
            assert ours.render(gen, add_generation_prompt=True) == \
                tok.apply_chat_template(gen, tokenize=False, add_generation_prompt=True)
    # Without the explicit system turn, plain chatml differs exactly by SmolLM2's injected system block.
    msgs = sample[0]
    assert tok.apply_chat_template(msgs, tokenize=False) == \
        f"<|im_start|>system\n{SMOL_SYSTEM}<|im_end|>\n" + chatml.render(msgs)


def test_tokenizer_template_path(tok, real) -> None:
    t = get_template("tokenizer", tokenizer=tok)
    assert t.to_hf_chat_template() == tok.chat_template and t.stop_strings == ["<|im_end|>"]
    for msgs in real[:30] + real[-10:]:
        assert t.render(msgs) == tok.apply_chat_template(msgs, tokenize=False)
        enc = t.tokenize(tok, msgs)
        assert enc["input_ids"] == list(tok.apply_chat_template(msgs, tokenize=True, return_dict=True)["input_ids"])
        replies = [m["content"] + "<|im_end|>" for m in msgs if m["role"] == "assistant"]
        assert [_decode(tok, r) for r in _runs(enc["labels"])] == replies
        # the injected default system prompt is in the input and never in the labels
        assert SMOL_SYSTEM in _decode(tok, enc["input_ids"])
    import pickle

    assert pickle.loads(pickle.dumps(t)).render(real[0]) == t.render(real[0])
    prompt, completion = t.render_prompt_completion(real[0])
    assert completion == real[0][-1]["content"] + "<|im_end|>"
    assert prompt == tok.apply_chat_template(real[0][:-1], tokenize=False, add_generation_prompt=True)


def test_tokenizer_template_without_chat_template(tok, smollm2_path) -> None:
    bare = _fresh(smollm2_path)
    bare.chat_template = None
    with pytest.raises(TemplateError, match="no chat_template"):
        get_template("tokenizer", tokenizer=bare)


# ------------------------------------------------------------------ export: apply_chat_template reproduces render


@pytest.mark.parametrize("name", REGISTERED)
def test_export_reproduces_rendering_and_masks(name: str, smollm2_path: Path, real) -> None:
    tok = _fresh(smollm2_path)
    t = get_template(name)
    tok.chat_template = t.to_hf_chat_template()
    for msgs in real[:15] + real[-5:]:
        assert tok.apply_chat_template(msgs, tokenize=False) == t.render(msgs)
        assert tok.apply_chat_template(msgs[:-1], tokenize=False, add_generation_prompt=True) == \
            t.render(msgs[:-1], add_generation_prompt=True)
        out = tok.apply_chat_template(msgs, tokenize=True, return_dict=True, return_assistant_tokens_mask=True)
        ours = t.tokenize(tok, msgs)
        assert list(out["input_ids"]) == ours["input_ids"]
        assert list(out["assistant_masks"]) == [int(x != IGNORE_INDEX) for x in ours["labels"]]


# ------------------------------------------------------------------ masks on real multi-turn data


@pytest.mark.slow
@pytest.mark.parametrize("name", [*REGISTERED, "tokenizer"])
def test_masks_give_back_replies_on_real_data(name: str, smollm2_path: Path, real) -> None:
    """Decoding the trained label runs gives exactly each assistant reply plus its end of turn."""
    tok = _fresh(smollm2_path)
    t = get_template(name, tokenizer=tok) if name == "tokenizer" else get_template(name)
    added = t.add_special_tokens(tok)
    assert not t.missing_special_tokens(tok), added
    prefix, eot = t.decl.reply_prefix, t.decl.eot
    checked = 0
    for k, msgs in enumerate(real):
        enc = t.tokenize(tok, msgs)
        assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["attention_mask"])
        assert all(lab in (IGNORE_INDEX, i) for lab, i in zip(enc["labels"], enc["input_ids"], strict=True))
        replies = [prefix + m["content"] + eot for m in msgs if m["role"] == "assistant"]
        assert [_decode(tok, r) for r in _runs(enc["labels"])] == replies
        if k % 7 == 0:
            last = t.tokenize(tok, msgs, train_on="last")
            assert last["input_ids"] == enc["input_ids"]
            assert [_decode(tok, r) for r in _runs(last["labels"])] == replies[-1:]
        checked += len(replies)
    assert checked > 1500


def test_max_length_truncates_all_three(tok, real) -> None:
    enc = get_template("chatml").tokenize(tok, real[0], max_length=16)
    assert len(enc["input_ids"]) == len(enc["labels"]) == len(enc["attention_mask"]) == 16
    with pytest.raises(TemplateError, match="train_on"):
        get_template("chatml").tokenize(tok, real[0], train_on="first")


def test_boundary_merge_is_reported(smollm2_path: Path, caplog) -> None:
    """Without '</s>' as one token, SmolLM2 merges '</s><s>' across a llama2 reply edge; we say so."""
    tok = _fresh(smollm2_path)
    msgs = [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
            {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]
    from tuneforge.templates import masking

    masking._warned.discard("llama2")
    with caplog.at_level("WARNING"):
        get_template("llama2").tokenize(tok, msgs)
    assert "cross a reply boundary" in caplog.text
    assert get_template("llama2").missing_special_tokens(tok) == ["<s>", "</s>"]


def test_tokenizer_template_golden(tok) -> None:
    """The `tokenizer` path on SmolLM2's own template, with the same cases as the registered goldens."""
    from test_templates import CASES, _golden  # sibling test module (pytest puts tests/ on sys.path)

    t = get_template("tokenizer", tokenizer=tok)
    for case, msgs in CASES.items():
        _golden("tokenizer-smollm2", case, t.render(msgs))
        _golden("tokenizer-smollm2", f"{case}.generation", t.render(msgs[:-1], add_generation_prompt=True))
