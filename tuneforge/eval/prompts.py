"""C-Eval's answer-only prompt layout, shared by the native engine and the generated lm-eval tasks.

Source: hkust-nlp/ceval `resources/tutorial.md` (completion and chat modes) and
`code/evaluator_series/evaluators/llama.py` (`format_example`, `generate_few_shot_prompt`). MMLU-style suites
use the same shape with MMLU's English header and `Answer:` cue.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.mcq import LETTERS, MCQItem
from tuneforge.eval.suites import CEVAL_STYLE, PromptStyle


def header(subject_name: str, style: PromptStyle = CEVAL_STYLE) -> str:
    return style.header.format(subject=subject_name)


def format_question(item: MCQItem, style: PromptStyle = CEVAL_STYLE) -> str:
    """`question\\nA. …\\nB. …\\nC. …\\nD. …\\n答案：` (as many letters as the question has options); the
    question is used as written (not stripped)."""
    lines = [item.question] + [f"{letter}. {opt}" for letter, opt in zip(item.letters, item.options, strict=True)]
    return "\n".join(lines) + "\n" + style.cue


def completion_prefix(subject_name: str, shots: list[MCQItem], style: PromptStyle = CEVAL_STYLE) -> str:
    """Header, a blank line, then each dev example with its answer and a blank line."""
    text = header(subject_name, style) + "\n\n"
    for shot in shots:
        text += format_question(shot, style) + style.answer_sep + str(shot.answer) + "\n\n"
    return text


def completion_prompt(subject_name: str, shots: list[MCQItem], item: MCQItem,
                      style: PromptStyle = CEVAL_STYLE) -> str:
    return completion_prefix(subject_name, shots, style) + format_question(item, style)


def chat_messages(subject_name: str, shots: list[MCQItem], item: MCQItem,
                  style: PromptStyle = CEVAL_STYLE) -> list[dict[str, str]]:
    """Chat mode: the header as the system message, each shot a hard-coded user/assistant turn."""
    msgs = [{"role": "system", "content": header(subject_name, style)}]
    for shot in shots:
        msgs.append({"role": "user", "content": format_question(shot, style)})
        msgs.append({"role": "assistant", "content": str(shot.answer)})
    msgs.append({"role": "user", "content": format_question(item, style)})
    return msgs


def chat_renderer(tokenizer: Any, template: str | None = None) -> Callable[[list[dict]], str]:
    """messages -> prompt text through the templates stage, else the tokenizer's own chat template."""
    name = template or "tokenizer"
    try:
        from tuneforge.templates import get_template  # the templates stage, built alongside
    except ImportError:
        get_template = None
    if get_template is not None:
        tpl = get_template(name, tokenizer=tokenizer) if name == "tokenizer" else get_template(name)
        return lambda msgs: tpl.render(msgs, add_generation_prompt=True)
    if name != "tokenizer":
        from tuneforge.common.errors import TuneforgeError

        raise TuneforgeError(f"chat template {name!r} needs the templates stage (tuneforge.templates.get_template)")
    return lambda msgs: tokenizer.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)


def letter_token_ids(tokenizer: Any, context: str, sep: str, letters: tuple[str, ...] = LETTERS) -> list[int]:
    """The token each answer letter becomes right after `context` (joint tokenization, as lm-eval does)."""
    base = tokenizer(context, add_special_tokens=False).input_ids
    ids = []
    for letter in letters:
        full = tokenizer(context + sep + letter, add_special_tokens=False).input_ids
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise TuneforgeError(f"answer letter {letter!r} is not a single token after the prompt for this "
                                 "tokenizer; use --engine lm-eval")
        ids.append(full[-1])
    return ids
