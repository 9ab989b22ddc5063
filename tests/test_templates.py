"""Chat templates: golden renderings, the layouts checked against their upstream code, spans, errors, sandbox."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tuneforge.templates import ChatTemplate, TemplateError, get_template, list_templates, render_string
from tuneforge.templates.loader import render_prompt

GOLDEN = Path(__file__).parent / "golden" / "templates"
UPDATE = os.environ.get("TUNEFORGE_UPDATE_GOLDEN") == "1"
REGISTERED = [n for n in list_templates() if n != "tokenizer"]

SYSTEM = {"role": "system", "content": "You are a careful assistant."}
SINGLE = [{"role": "user", "content": "Name a prime number."}, {"role": "assistant", "content": "7 is prime."}]
MULTI = [
    {"role": "user", "content": "Hi!"},
    {"role": "assistant", "content": "Hello. How can I help?"},
    {"role": "user", "content": "Say it twice:\nok"},
    {"role": "assistant", "content": "ok\nok"},
]
ZH = [
    {"role": "system", "content": "你是一名旅游助手。"},
    {"role": "user", "content": "北京有哪些评分4.5分以上的景点？"},
    {"role": "assistant", "content": "推荐故宫和颐和园，评分都是4.7分。"},
    {"role": "user", "content": "故宫的门票多少钱？"},
    {"role": "assistant", "content": "旺季60元，淡季40元。"},
]
CASES = {
    "single": SINGLE,
    "single_system": [SYSTEM, *SINGLE],
    "multi": MULTI,
    "multi_system": [SYSTEM, *MULTI],
    "zh_multi_system": ZH,
    "zh_single": ZH[1:3],
}


def _golden(name: str, case: str, text: str) -> None:
    path = GOLDEN / name / f"{case}.txt"
    if UPDATE:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8", newline="")
    assert path.is_file(), f"missing golden {path}; run with TUNEFORGE_UPDATE_GOLDEN=1 and review the diff"
    assert text == path.read_bytes().decode("utf-8")


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("name", REGISTERED)
def test_golden_rendering(name: str, case: str) -> None:
    t = get_template(name)
    msgs = CASES[case]
    _golden(name, case, t.render(msgs))
    _golden(name, f"{case}.generation", t.render(msgs[:-1], add_generation_prompt=True))


def test_registry_names_and_interface() -> None:
    assert {"chatml", "qwen", "alpaca", "chatglm", "chatglm2", "chatglm3", "llama2", "llama3", "vicuna",
            "human_assistant", "tokenizer"} <= set(list_templates())
    for name in REGISTERED:
        t = get_template(name)
        assert isinstance(t, ChatTemplate) and t.name == name and t.description
        assert t.stop_strings and all(isinstance(s, str) and s for s in t.stop_strings)
        assert t.decl.eot.strip() in t.stop_strings


def test_unknown_template_lists_known_names() -> None:
    with pytest.raises(TemplateError, match=r"unknown chat template 'nope'.*chatml.*vicuna"):
        get_template("nope")
    with pytest.raises(TemplateError, match="pass tokenizer="):
        get_template("tokenizer")


@pytest.mark.parametrize("name", REGISTERED)
@pytest.mark.parametrize("case", sorted(CASES))
def test_prompt_completion_matches_generation_prompt(name: str, case: str) -> None:
    """The prompt part is what `add_generation_prompt` gives; the completion is reply + end of turn."""
    t = get_template(name)
    msgs = CASES[case]
    prompt, completion = t.render_prompt_completion(msgs)
    assert prompt == t.render(msgs[:-1], add_generation_prompt=True)
    assert completion == t.decl.reply_prefix + msgs[-1]["content"] + t.decl.eot
    assert t.render(msgs).startswith(prompt + completion)


@pytest.mark.parametrize("name", REGISTERED)
def test_spans_cover_every_reply_and_nothing_else(name: str) -> None:
    t = get_template(name)
    r = t.render_spans(ZH)
    replies = [m["content"] for m in ZH if m["role"] == "assistant"]
    assert [r.text[s:e] for s, e in r.spans] == [t.decl.reply_prefix + c + t.decl.eot for c in replies]
    outside = "".join(r.text[a:b] for a, b in zip([0] + [e for _, e in r.spans], [s for s, _ in r.spans] + [None], strict=True))
    for m in ZH:
        if m["role"] != "assistant":
            assert m["content"] in outside


# ------------------------------------------------------------------ upstream layouts, re-derived by hand


def _chatglm6b_prompt(query: str, history: list[tuple[str, str]]) -> str:
    """THUDM/ChatGLM-6B ptuning/main.py, preprocess_function_train with a history column."""
    prompt = ""
    for i, (q, a) in enumerate(history):
        prompt += f"[Round {i}]\n问：{q}\n答：{a}\n"
    return prompt + f"[Round {len(history)}]\n问：{query}\n答："


def _chatglm2_prompt(query: str, history: list[tuple[str, str]]) -> str:
    """THUDM/ChatGLM2-6B tokenization_chatglm.py build_prompt."""
    prompt = ""
    for i, (q, a) in enumerate(history):
        prompt += f"[Round {i + 1}]\n\n问：{q}\n\n答：{a}\n\n"
    return prompt + f"[Round {len(history) + 1}]\n\n问：{query}\n\n答："


def _pairs(msgs: list[dict]) -> list[tuple[str, str]]:
    turns = [m for m in msgs if m["role"] != "system"]
    return [(turns[i]["content"], turns[i + 1]["content"]) for i in range(0, len(turns), 2)]


@pytest.mark.parametrize("msgs", [SINGLE, MULTI, ZH[1:]], ids=["single", "multi", "zh"])
def test_chatglm_matches_thudm_code(msgs: list[dict]) -> None:
    pairs = _pairs(msgs)
    *history, (query, answer) = pairs
    # Without <eop> after answers (eot=""), the prompt is byte-for-byte ChatGLM-6B's / ChatGLM2-6B's.
    assert get_template("chatglm", eot="").render(msgs[:-1], add_generation_prompt=True) == \
        _chatglm6b_prompt(query, history)
    assert get_template("chatglm2", eot="").render(msgs[:-1], add_generation_prompt=True) == \
        _chatglm2_prompt(query, history)
    # With the default end of answer, each answer carries it and the round structure is unchanged.
    text = get_template("chatglm").render(msgs)
    assert text.startswith("[Round 0]\n问：") and text.endswith(answer + "<eop>")
    assert text.replace("<eop>", "") == _chatglm6b_prompt(query, history) + answer
    assert get_template("chatglm2").render(msgs).startswith("[Round 1]\n\n问：")


def test_llama2_matches_meta_layout() -> None:
    """meta-llama/llama generation.py: f"{B_INST} {q} {E_INST} {a} " wrapped in bos/eos per exchange."""
    sys_q = f"<<SYS>>\n{SYSTEM['content']}\n<</SYS>>\n\n{MULTI[0]['content']}"
    expected = (f"<s>[INST] {sys_q} [/INST] {MULTI[1]['content']} </s>"
                f"<s>[INST] {MULTI[2]['content']} [/INST] {MULTI[3]['content']} </s>")
    assert get_template("llama2").render([SYSTEM, *MULTI]) == expected


def test_vicuna_matches_fastchat_layout() -> None:
    """FastChat vicuna_v1.1, ADD_COLON_TWO: system + ' ' then 'ROLE: msg' + seps[i % 2] (' ', '</s>')."""
    t = get_template("vicuna")
    seps = [" ", "</s>"]
    ret = t.default_system + seps[0]
    for i, m in enumerate(MULTI):
        ret += ("USER" if m["role"] == "user" else "ASSISTANT") + ": " + m["content"] + seps[i % 2]
    assert t.render(MULTI) == ret
    assert t.render(MULTI[:-1], add_generation_prompt=True) == ret[: ret.rindex("ASSISTANT:") + len("ASSISTANT:")]


def test_alpaca_with_and_without_input() -> None:
    t = get_template("alpaca")
    plain = t.render(SINGLE)
    assert plain.startswith("Below is an instruction that describes a task. Write a response")
    assert "### Instruction:\nName a prime number.\n\n### Response:\n7 is prime.</s>" in plain
    with_input = [{"role": "user", "content": "Translate to French.", "input": "Good morning"},
                  {"role": "assistant", "content": "Bonjour"}]
    text = t.render(with_input)
    assert text == ("Below is an instruction that describes a task, paired with an input that provides further "
                    "context. Write a response that appropriately completes the request.\n\n"
                    "### Instruction:\nTranslate to French.\n\n### Input:\nGood morning\n\n### Response:\n"
                    "Bonjour</s>")


def test_qwen_injects_default_system_only_when_missing() -> None:
    t = get_template("qwen")
    assert t.render(SINGLE).startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n")
    assert t.render([SYSTEM, *SINGLE]).startswith(f"<|im_start|>system\n{SYSTEM['content']}<|im_end|>\n")
    assert not get_template("chatml").render(SINGLE).startswith("<|im_start|>system")


# ------------------------------------------------------------------ tools and bad input

TOOL_CHAT = [
    {"role": "user", "content": "Weather in Paris?"},
    {"role": "assistant", "content": '{"name": "weather", "arguments": {"city": "Paris"}}'},
    {"role": "tool", "content": '{"temp": 21}'},
    {"role": "assistant", "content": "It is 21 °C."},
]


def test_tool_turns() -> None:
    assert "<|im_start|>tool\n{\"temp\": 21}<|im_end|>\n" in get_template("chatml").render(TOOL_CHAT)
    assert "<|observation|>\n{\"temp\": 21}<|assistant|>" in get_template("chatglm3").render(TOOL_CHAT)
    assert "<|start_header_id|>ipython<|end_header_id|>\n\n{\"temp\": 21}<|eot_id|>" in \
        get_template("llama3").render(TOOL_CHAT)
    for name in ("alpaca", "chatglm", "chatglm2", "llama2", "vicuna", "human_assistant"):
        with pytest.raises(TemplateError, match=rf"template {name}: .*tool"):
            get_template(name).render(TOOL_CHAT)


@pytest.mark.parametrize(("msgs", "pattern"), [
    ("hello", "should be a list"),
    ([{"role": "bot", "content": "x"}], "role 'bot'"),
    ([{"role": "user"}], "role and content"),
    ([{"role": "user", "content": 3}], "content should be text"),
    ([*SINGLE, SYSTEM], r"messages\[2\] is a system turn"),
    ([{"role": "user", "content": "a\ufdd0b"}], "noncharacter"),
])
def test_bad_messages_are_clear_errors(msgs: object, pattern: str) -> None:
    with pytest.raises(TemplateError, match=pattern):
        get_template("chatml").render(msgs)  # type: ignore[arg-type]


def test_prompt_completion_needs_final_reply() -> None:
    with pytest.raises(TemplateError, match="ends with an assistant reply"):
        get_template("chatml").render_prompt_completion(SINGLE[:1])


def test_overrides() -> None:
    t = get_template("alpaca", eot="<|im_end|>", default_system="Sys.")
    assert t.render(SINGLE) == "Sys.\n\n### Instruction:\nName a prime number.\n\n### Response:\n7 is prime.<|im_end|>"
    assert t.stop_strings[0] == "<|im_end|>"
    with pytest.raises(TemplateError, match="cannot override 'colour'"):
        get_template("alpaca", colour="red")


# ------------------------------------------------------------------ user templates and the sandbox


def test_user_chat_template_file(tmp_path: Path) -> None:
    (tmp_path / "mine.jinja").write_text(
        "{% for m in messages %}{% if m['role'] == 'assistant' %}{% generation %}{{ m['content'] }}<END>"
        "{% endgeneration %}{{ '\\n' }}{% else %}{{ m['role'] | upper }}: {{ m['content'] }}\n{% endif %}{% endfor %}",
        encoding="utf-8")
    (tmp_path / "mine.yaml").write_text('name: mine\neot: "<END>"\nstop_strings: ["<END>"]\n', encoding="utf-8")
    t = get_template(tmp_path / "mine.jinja")
    assert t.name == "mine" and t.stop_strings == ["<END>"]
    assert t.render(SINGLE) == "USER: Name a prime number.\n7 is prime.<END>\n"
    assert t.render_prompt_completion(SINGLE) == ("USER: Name a prime number.\n", "7 is prime.<END>")


def test_user_chat_template_must_mark_replies(tmp_path: Path) -> None:
    path = tmp_path / "nomark.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"marked 0 trainable replies.*1 assistant"):
        get_template(path).render(SINGLE)


def test_undefined_variable_is_named(tmp_path: Path) -> None:
    path = tmp_path / "undef.jinja"
    path.write_text("{% for m in messages %}{{ m['content'] }}{{ speaker_name }}{% endfor %}", encoding="utf-8")
    with pytest.raises(TemplateError, match="'speaker_name' is undefined"):
        get_template(path).render(SINGLE)
    with pytest.raises(TemplateError, match="'topic' is undefined"):
        render_string("Write about {{ topic }} in {{ lang }}.", lang="zh")
    prompt = tmp_path / "p.jinja"
    prompt.write_text("Q: {{ question }}", encoding="utf-8")
    with pytest.raises(TemplateError, match="'question' is undefined"):
        render_prompt(prompt)
    assert render_prompt(prompt, question="why?") == "Q: why?"


@pytest.mark.parametrize("evil", [
    "{{ ''.__class__.__mro__[1].__subclasses__() }}",
    "{{ messages.__class__.__base__ }}",
    "{{ cycler.__init__.__globals__ }}",
    "{{ raise_exception.__globals__['__builtins__'] }}",
])
def test_sandbox_blocks_python_internals(tmp_path: Path, evil: str) -> None:
    path = tmp_path / "evil.jinja"
    path.write_text("{% for m in messages %}" + evil + "{% endfor %}", encoding="utf-8")
    with pytest.raises(TemplateError, match=r"template evil: blocked by the sandbox: access to attribute .* is unsafe"):
        get_template(path).render(SINGLE)
    with pytest.raises(TemplateError, match=r"(sandbox|unsafe|undefined)"):
        render_string(evil, messages=SINGLE)


def test_syntax_error_names_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.jinja"
    path.write_text("line one\n{% for m in messages %}", encoding="utf-8")
    with pytest.raises(TemplateError, match="broken: line 2"):
        get_template(path)


def test_hf_export_has_declared_values_and_generation_tags() -> None:
    src = get_template("qwen").to_hf_chat_template()
    assert '{%- set default_system = "You are a helpful assistant." -%}' in src
    assert "{%- generation -%}" in src
    assert '{%- set sep = "\\n" -%}' in get_template("chatglm").to_hf_chat_template()


def test_chat_templates_cannot_modify_messages(tmp_path: Path) -> None:
    path = tmp_path / "mutate.jinja"
    path.write_text("{% for m in messages %}{{ messages.append(m) }}{% endfor %}", encoding="utf-8")
    msgs = [dict(m) for m in SINGLE]
    with pytest.raises(TemplateError, match="blocked by the sandbox"):
        get_template(path).render(msgs)
    assert msgs == SINGLE


def test_templates_pickle() -> None:
    """datasets.map(num_proc=...) pickles the template along with the tokenize function."""
    import pickle

    for name in REGISTERED:
        t = pickle.loads(pickle.dumps(get_template(name, eot="<E>")))
        assert t.render(ZH) == get_template(name, eot="<E>").render(ZH)
