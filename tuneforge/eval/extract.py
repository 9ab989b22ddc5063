"""Reading the chosen option out of a generated answer: reasoning stripped, then a fixed cascade of patterns.

The cascade (docs/eval.md) tries, in order, and stops at the first level that finds a letter (the end of
turn markers such as `<|im_end|>` are removed first):

1. `boxed`     — `\\boxed{B}` (the last one);
2. `statement` — an explicit answer statement, the first one: Chinese `答案是B`, `答案为：B`, `正确答案：(B)`,
                 `故选B`, `所以选 B`, `应选B`, `选择B`; English `Answer: B`, `The answer is (B)`,
                 `the correct answer is option B`, `I choose B`;
3. `option`    — `选项B` / `B选项` / `option B` (the first one);
4. `paren`     — a parenthesised letter `(B)` / `（B）` (the first one);
5. `lead`      — the output opens with an option label (`B. 北京`, `B、`, `B`) on a line of its own that is
                 not followed by another label line (an opening "A. …\nB. …" restates the options);
6. `letter`    — the last standalone option letter (not part of a word: `B.` and `B、` count, `Bob` and the
                 article in `A cat` do not);
7. `text`      — the text of exactly one option appears in the output (an option that is a substring of
                 another found option does not count separately).

Levels 6 and 7 are skipped when the output restates the options (label lines of two or more different
letters, "A. …\nB. …"): an echo of the question is no answer.

Nothing found means `None`: the question counts as wrong and as `unextracted`; nothing is guessed.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tuneforge.common.mcq import OPTION_LETTERS

THINK_PAIRS: list[tuple[str, str]] = [("<think>", "</think>"), ("<thinking>", "</thinking>"),
                                      ("<|begin_of_thought|>", "<|end_of_thought|>"), ("◁think▷", "◁/think▷")]


def reasoning_markers(tokenizer: Any = None) -> list[tuple[str, str]]:
    """`<think>`-style pairs, plus any open/close pair among the tokenizer's own added tokens whose name says
    think/thought/reason (e.g. `<|begin_of_thought|>`/`<|end_of_thought|>`, `<seed:think>`/`</seed:think>`)."""
    pairs = list(THINK_PAIRS)
    if tokenizer is None:
        return pairs
    try:
        added = [t.content if hasattr(t, "content") else str(t)
                 for t in getattr(tokenizer, "added_tokens_decoder", {}).values()]
    except Exception:
        added = []
    names = [a for a in added if re.search(r"think|thought|reason", a, re.I)]
    for a in names:
        close = None
        if a.startswith("<") and not a.startswith("</"):
            close = "</" + a[1:]
        for o, c in (("begin", "end"), ("start", "end")):
            if o in a:
                close = close if close in names else a.replace(o, c)
        if close and close in names and (a, close) not in pairs:
            pairs.append((a, close))
    return pairs


def strip_reasoning(text: str, markers: list[tuple[str, str]] | None = None) -> str:
    """Remove every `open … close` span; an open marker never closed (the output ran out while thinking)
    removes everything after it. A close marker with no open one (templates that pre-fill `<think>` in the
    prompt) removes everything before it."""
    for open_, close in markers or THINK_PAIRS:
        while open_ in text:
            i = text.index(open_)
            j = text.find(close, i + len(open_))
            text = text[:i] if j == -1 else text[:i] + text[j + len(close):]
        if close in text:
            text = text[text.rindex(close) + len(close):]
    return text.strip()


_END_MARKS = re.compile(r"<\|(?:im_end|endoftext|eot_id|end|end_of_text)\|>|</s>|<end_of_turn>|<eos>")
_L = "[A-D]"
_NOT_WORD_BEFORE = r"(?<![A-Za-z])"
_NOT_WORD_AFTER = r"(?![A-Za-z])"
_OPEN = r"[\(（\[【]?\s*"
_BOXED = re.compile(r"\\boxed\s*\{\s*(?:\\text\{)?\s*[\(（]?(" + _L + r")[\)）]?\s*\}?\s*\}")
_STATEMENT = re.compile(
    r"(?:"
    r"(?:正确)?答案(?:应该|应当|应)?(?:[是为选：:]\s*)+(?:选项|选)?\s*" + _OPEN +
    r"|(?:故|所以|因此|因而|则|应|应当|应该|我)(?:选择|选)\s*(?:选项)?\s*" + _OPEN +
    r"|(?:^|[\s，。,；;:：])选(?:择|中)?[：:]?\s*" + _OPEN +
    r"|(?i:\b(?:final\s+|correct\s+|the\s+)*answer\s*(?:is|:|=|would\s+be|should\s+be)\s*(?:option\s+|choice\s+)?)" + _OPEN +
    r"|(?i:\b(?:I\s+(?:would\s+)?(?:choose|pick|select)|correct\s+(?:option|choice)\s+is)\s*(?:option\s+)?)" + _OPEN +
    r")(" + _L + r")" + _NOT_WORD_AFTER,
    re.M,
)
_OPTION = re.compile(r"选项(?:字母)?\s*[是为：:]?\s*" + _OPEN + "(" + _L + r")" + _NOT_WORD_AFTER + r"|" +
                     _NOT_WORD_BEFORE + r"(" + _L + r")\s*选项"
                     r"|(?i:\boption\s+)(" + _L + r")" + _NOT_WORD_AFTER)
# a line that labels an option: "A. …", "B、…", "C: …", "(D) …"
_LABEL = re.compile(r"^\s*[\(（]?(" + _L + r")(?:[\.．、:：\)）]|\s*$)", re.M)
_PAREN = re.compile(r"[\(（]\s*(" + _L + r")\s*[\)）]")
# not the English article ("A cat"): a letter followed by a lower-case word is prose, not an option
_LETTER = re.compile(_NOT_WORD_BEFORE + "(" + _L + ")" + _NOT_WORD_AFTER + r"(?!\s+[a-z])")
LEVELS = ("boxed", "statement", "option", "paren", "lead", "letter", "text")


@dataclass(frozen=True)
class Extraction:
    letter: str | None
    method: str | None  # one of LEVELS, None when unextracted
    answer_text: str  # the output after reasoning was stripped


def _first(rx: re.Pattern, text: str) -> str | None:
    m = rx.search(text)
    return next((g for g in m.groups() if g), None) if m else None


def _norm(s: str) -> str:
    return re.sub(r"[\s。．.，,；;：:！!？?\"'“”‘’()（）]", "", s).lower()


def _by_text(text: str, options: tuple[str, ...] | list[str] | None) -> str | None:
    if not options:
        return None
    out = _norm(text)
    found = [i for i, o in enumerate(options) if _norm(o) and _norm(o) in out]
    # an option contained in another found option ("3" inside "30") is not a match of its own
    found = [i for i in found if not any(j != i and _norm(options[i]) in _norm(options[j]) for j in found)]
    return OPTION_LETTERS[found[0]] if len(found) == 1 else None


def extract_answer(output: str, options: tuple[str, ...] | list[str] | None = None,
                   markers: list[tuple[str, str]] | None = None) -> Extraction:
    """The option letter a generated answer gives, and which cascade level found it."""
    text = strip_reasoning(_END_MARKS.sub("\n", output), markers)
    boxed = _BOXED.findall(text)
    if boxed:
        return Extraction(boxed[-1], "boxed", text)
    for method, rx in (("statement", _STATEMENT), ("option", _OPTION), ("paren", _PAREN)):
        got = _first(rx, text)
        if got:
            return Extraction(got, method, text)
    lines = [ln for ln in text.splitlines() if ln.strip()]
    first = _LABEL.match(lines[0]) if lines else None
    if first and not (len(lines) > 1 and _LABEL.match(lines[1])):
        return Extraction(first.group(1), "lead", text)
    # the options restated ("A. …\nB. …"): neither their letters nor their texts are an answer
    if len(set(_LABEL.findall(text))) >= 2:
        return Extraction(None, None, text)
    letters = _LETTER.findall(text)
    if letters:
        return Extraction(letters[-1], "letter", text)
    got = _by_text(text, options)
    return Extraction(got, "text" if got else None, text)
