"""Record filters: each returns a reason `key: detail` (the key is what the manifest counts) or None.

Thresholds come from the recipe; a filter whose threshold is unset does not run. Language is decided by
script counting (Han characters vs Latin words), so no model is downloaded.
"""

from __future__ import annotations

import re
from functools import cached_property
from pathlib import Path
from typing import Any

from tuneforge.clean.config import FilterConfig
from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.records import Record, responses_of, turns_of

_HAN = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\U00020000-\U0003134f]")
_LATIN_WORD = re.compile(r"[A-Za-z\u00c0-\u024f]+")
_OTHER = re.compile(r"[\u3040-\u30ff\uac00-\ud7af]|[^\W\d_A-Za-z\u00c0-\u024f\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff"
                    r"\uac00-\ud7af\uf900-\ufaff\U00020000-\U0003134f]+")

REFUSALS = [
    r"\bas an? (?:ai|artificial intelligence)(?: language model| model| assistant| chatbot)?\b",
    r"^(?:i'?m|i am) (?:sorry|afraid),? (?:but )?(?:i|as)\b",
    r"^(?:sorry|i apologi[sz]e),? (?:but )?i (?:can(?:no|')t|am unable|'m unable)",
    r"\bi (?:cannot|can't|can not|am unable to|'m unable to|am not able to) "
    r"(?:help|assist|provide|fulfil|fulfill|comply|answer|generate)",
    r"作为(?:一个|一名|一款)?(?:AI|ai|人工智能)(?:语言模型|模型|助手|程序)?",
    r"^(?:很|非常)?(?:抱歉|对不起)[，,。！!]?\s*(?:但是?)?我?(?:无法|不能|没有办法|没法)",
    r"我(?:只是|仅仅是|是)(?:一个|一名|一款)?(?:AI|ai|人工智能)(?:语言模型|模型|助手|程序)",
    r"我(?:无法|不能)(?:回答|提供|协助|帮助|满足)(?:你|您)?(?:的)?(?:这个|该|此)?(?:问题|请求|要求)",
]
PLACEHOLDERS = {"", "无", "暂无", "略", "同上", "空", "无回答", "无答案", "不知道", "na", "n/a", "none", "null",
                "nil", "nan", "todo", "tbd", "noinput", "nooutput", "noanswer", "placeholder"}
_NOT_WORD = re.compile(r"[\W_]+")
# A transcript's speaker marker at the start of a line: left inside a turn, it is a conversation that was not
# split into turns (Anthropic HH: "\nHuman: ..." inside an Assistant reply). The word in running text is not one.
SPEAKER_MARKER = re.compile(r"^[ \t]*(Human|Assistant|User|用户|助手)[ \t]*[:：]", re.MULTILINE)


def speaker_marker(rec: Record) -> str | None:
    """`speaker_marker: assistant turn 4 line 3 starts with 'Human:'`, or None."""
    for i, role, text in turns_of(rec):
        m = SPEAKER_MARKER.search(text)
        if m:
            line = text.count("\n", 0, m.start()) + 1
            return f"speaker_marker: {role} turn {i} line {line} starts with {m.group().strip()!r}"
    return None


def language_of(text: str, min_share: float) -> tuple[str, float, float]:
    """(zh|en|mixed|other, Han share, Latin share) counting Han characters and Latin words as units."""
    han = len(_HAN.findall(text))
    latin = len(_LATIN_WORD.findall(text))
    other = len(_OTHER.findall(text))
    total = han + latin + other
    if not total:
        return "other", 0.0, 0.0
    zh, en = han / total, latin / total
    if zh >= min_share:
        return "zh", zh, en
    if en >= min_share:
        return "en", zh, en
    if zh + en >= min_share:
        return "mixed", zh, en
    return "other", zh, en


def repeat_ratio(text: str, n: int) -> float:
    """Share of character n-grams that repeat an earlier one (0 for text too short to tell)."""
    s = re.sub(r"\s+", "", text)
    total = len(s) - n + 1
    if total < 2 * n:
        return 0.0
    return 1.0 - len({s[i:i + n] for i in range(total)}) / total


def load_badwords(path: Path) -> re.Pattern | None:
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except OSError as e:
        raise TuneforgeError(f"clean.filters.badwords: cannot read {path}: {e.strerror or e}") from None
    words = sorted({w.strip() for w in lines if w.strip() and not w.lstrip().startswith("#")},
                   key=lambda w: (-len(w), w))
    if not words:
        return None
    alts = [rf"\b{re.escape(w)}\b" if re.fullmatch(r"[\w\s'-]+", w, re.ASCII) else re.escape(w) for w in words]
    return re.compile("|".join(alts), re.IGNORECASE)


class Filters:
    """All configured filters, applied in a fixed order so the first failing reason is the one reported."""

    def __init__(self, cfg: FilterConfig, recipe_dir: Path) -> None:
        self.cfg = cfg
        self.badwords = None
        if cfg.badwords:
            p = Path(cfg.badwords)
            self.badwords = load_badwords(p if p.is_absolute() else recipe_dir / p)
        try:
            self.refusals = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in REFUSALS + cfg.refusal_patterns]
        except re.error as e:
            raise RecipeError(f"clean.filters.refusal_patterns: bad regex: {e}") from None

    @cached_property
    def tokenizer(self) -> Any:
        from tuneforge.common.models import load_tokenizer

        return load_tokenizer(self.cfg.tokenizer)

    def check(self, rec: Record) -> str | None:
        c = self.cfg
        turns = turns_of(rec)
        for i, role, text in turns:
            if role != "system" and (not text or text.isspace()):
                return f"empty: {role} turn {i} is empty"
        if c.speaker_markers == "reject" and (found := speaker_marker(rec)):
            return found
        total = sum(len(t) for _, _, t in turns)
        if c.min_chars and total < c.min_chars:
            return f"too_short: {total} chars < min_chars {c.min_chars}"
        if c.max_chars and total > c.max_chars:
            return f"too_long: {total} chars > max_chars {c.max_chars}"
        for i, role, text in turns:
            if role == "system":
                continue
            if c.min_turn_chars and len(text) < c.min_turn_chars:
                return f"turn_too_short: {role} turn {i} has {len(text)} chars < min_turn_chars {c.min_turn_chars}"
            if c.max_turn_chars and len(text) > c.max_turn_chars:
                return f"turn_too_long: {role} turn {i} has {len(text)} chars > max_turn_chars {c.max_turn_chars}"
        if c.token_filters:
            counts = [len(ids) for ids in self.tokenizer([t for _, _, t in turns], add_special_tokens=False)["input_ids"]]
            n = sum(counts)
            if c.min_tokens and n < c.min_tokens:
                return f"too_few_tokens: {n} tokens < min_tokens {c.min_tokens}"
            if c.max_tokens and n > c.max_tokens:
                return f"too_many_tokens: {n} tokens > max_tokens {c.max_tokens}"
            for (i, role, _), k in zip(turns, counts, strict=True):
                if role == "system":
                    continue
                if c.min_turn_tokens and k < c.min_turn_tokens:
                    return f"turn_too_few_tokens: {role} turn {i} has {k} tokens < min_turn_tokens {c.min_turn_tokens}"
                if c.max_turn_tokens and k > c.max_turn_tokens:
                    return f"turn_too_many_tokens: {role} turn {i} has {k} tokens > max_turn_tokens {c.max_turn_tokens}"
        if c.max_repeat_ngram_ratio is not None:
            for i, role, text in turns:
                r = repeat_ratio(text, c.repeat_ngram)
                if r > c.max_repeat_ngram_ratio:
                    return (f"repetition: {role} turn {i} repeats {r:.2f} of its {c.repeat_ngram}-grams "
                            f"> max_repeat_ngram_ratio {c.max_repeat_ngram_ratio}")
        if c.language is not None:
            lang, zh, en = language_of("\n".join(t for _, _, t in turns), c.language.min_share)
            if lang not in c.language.allow:
                return f"language: {lang} (Han {zh:.2f}, Latin {en:.2f}) not in allow {c.language.allow}"
        if self.badwords is not None:
            for i, role, text in turns:
                m = self.badwords.search(text)
                if m:
                    return f"badword: {role} turn {i} contains {m.group()!r}"
        if c.drop_refusals:
            for i, text in responses_of(rec):
                if _NOT_WORD.sub("", text.strip().lower()) in PLACEHOLDERS:
                    return f"placeholder: response turn {i} is {text.strip()[:20]!r}"
                for p in self.refusals:
                    m = p.search(text)
                    if m:
                        return f"refusal: response turn {i} says {m.group()!r}"
        return None
