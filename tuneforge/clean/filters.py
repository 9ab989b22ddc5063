"""Record filters as small objects of datatrove's shape: `filter(record)` returns True to keep the record, or
(False, "key: detail") to drop it (the key is what the manifest counts). `builtin_filters` makes the ones the
recipe's thresholds turn on, in their fixed order; a user's own filters (clean/custom.py) run after them, and
`first_failure` asks each in turn, so the first failing one is the reason.

A filter whose threshold is unset is not made. Language is decided by script counting (Han characters vs
Latin words), so no model is downloaded.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol

from tuneforge.clean.config import FilterConfig, LanguageConfig
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


def badwords_path(cfg: Any, recipe_dir: Path) -> Path | None:
    """The recipe's badwords file (relative to the recipe), or None."""
    if not cfg.badwords:
        return None
    p = Path(cfg.badwords)
    return p if p.is_absolute() else recipe_dir / p


def badwords_digest(cfg: Any, recipe_dir: Path) -> str | None:
    """sha256 of the badwords file's bytes, for the cache keys: the recipe names only its path, and an edited
    list must clean again (None: no list; "missing": unreadable, which the build reports when it loads it)."""
    p = badwords_path(cfg, recipe_dir)
    if p is None:
        return None
    try:
        return hashlib.sha256(p.read_bytes()).hexdigest()
    except OSError:
        return "missing"


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


class Filter(Protocol):
    """What the clean stage calls: True keeps the record; False or (False, reason) drops it."""

    name: str

    def filter(self, rec: Record) -> bool | tuple[bool, str]: ...


def first_failure(filters: Sequence[Filter], rec: Record) -> str | None:
    """The reason of the first filter that drops `rec` (a bare False is reported as the filter's name)."""
    for f in filters:
        res = f.filter(rec)
        if res is True:
            continue
        if isinstance(res, tuple):
            if not res[0]:
                return res[1]
        elif not res:
            return f.name
    return None


class Empty:
    name = "empty"

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        for i, role, text in turns_of(rec):
            if role != "system" and (not text or text.isspace()):
                return False, f"empty: {role} turn {i} is empty"
        return True


class SpeakerMarkers:
    name = "speaker_marker"

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        found = speaker_marker(rec)
        return (False, found) if found else True


def _bounds(n: int, lo: int | None, hi: int | None, unit: str, short: str, long: str, turn: str = "",
            where: str = "") -> str | None:
    """`too_short: 3 chars < min_chars 5` (`turn_...: user turn 1 has 3 chars < min_turn_chars 5`), or None."""
    if lo and n < lo:
        return f"{turn}{short}: {where}{n} {unit} < min_{turn}{unit} {lo}"
    if hi and n > hi:
        return f"{turn}{long}: {where}{n} {unit} > max_{turn}{unit} {hi}"
    return None


class Lengths:
    """The whole record's length, then each non-system turn's, in characters or in tokens of one tokenizer
    (counted once a record for both checks)."""

    name = "length"

    def __init__(self, unit: str, lo: int | None, hi: int | None, turn_lo: int | None, turn_hi: int | None,
                 tokenizer: str | None = None) -> None:
        self.unit, self.lo, self.hi, self.turn_lo, self.turn_hi = unit, lo, hi, turn_lo, turn_hi
        self.words = ("too_short", "too_long") if unit == "chars" else ("too_few_tokens", "too_many_tokens")
        self.tokenizer_ref = tokenizer

    @cached_property
    def tokenizer(self) -> Any:
        from tuneforge.common.models import load_tokenizer

        return load_tokenizer(self.tokenizer_ref)

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        turns = turns_of(rec)
        texts = [t for _, _, t in turns]
        sizes = [len(ids) for ids in self.tokenizer(texts, add_special_tokens=False)["input_ids"]] \
            if self.tokenizer_ref else [len(t) for t in texts]
        why = _bounds(sum(sizes), self.lo, self.hi, self.unit, *self.words)
        for (i, role, _), k in zip(turns, sizes, strict=True):
            if why is not None:
                break
            if role != "system":
                why = _bounds(k, self.turn_lo, self.turn_hi, self.unit, *self.words, "turn_", f"{role} turn {i} has ")
        return True if why is None else (False, why)


class Repetition:
    name = "repetition"

    def __init__(self, max_ratio: float, n: int) -> None:
        self.max_ratio, self.n = max_ratio, n

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        for i, role, text in turns_of(rec):
            r = repeat_ratio(text, self.n)
            if r > self.max_ratio:
                return False, (f"repetition: {role} turn {i} repeats {r:.2f} of its {self.n}-grams "
                               f"> max_repeat_ngram_ratio {self.max_ratio}")
        return True


class Language:
    name = "language"

    def __init__(self, cfg: LanguageConfig) -> None:
        self.cfg = cfg

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        lang, zh, en = language_of("\n".join(t for _, _, t in turns_of(rec)), self.cfg.min_share)
        if lang not in self.cfg.allow:
            return False, f"language: {lang} (Han {zh:.2f}, Latin {en:.2f}) not in allow {self.cfg.allow}"
        return True


class Badwords:
    name = "badword"

    def __init__(self, pattern: re.Pattern) -> None:
        self.pattern = pattern

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        for i, role, text in turns_of(rec):
            m = self.pattern.search(text)
            if m:
                return False, f"badword: {role} turn {i} contains {m.group()!r}"
        return True


class Refusals:
    """Responses that are placeholders or refusals (`placeholder`, `refusal`), response by response."""

    name = "refusal"

    def __init__(self, extra: list[str]) -> None:
        try:
            self.patterns = [re.compile(p, re.IGNORECASE | re.MULTILINE) for p in REFUSALS + extra]
        except re.error as e:
            raise RecipeError(f"clean.filters.refusal_patterns: bad regex: {e}") from None

    def filter(self, rec: Record) -> bool | tuple[bool, str]:
        for i, text in responses_of(rec):
            if _NOT_WORD.sub("", text.strip().lower()) in PLACEHOLDERS:
                return False, f"placeholder: response turn {i} is {text.strip()[:20]!r}"
            for p in self.patterns:
                m = p.search(text)
                if m:
                    return False, f"refusal: response turn {i} says {m.group()!r}"
        return True


BUILTIN_KEYS = frozenset({"empty", "speaker_marker", "too_short", "too_long", "turn_too_short", "turn_too_long",
                          "too_few_tokens", "too_many_tokens", "turn_too_few_tokens", "turn_too_many_tokens",
                          "repetition", "language", "badword", "placeholder", "refusal"})


def builtin_filters(cfg: FilterConfig, recipe_dir: Path) -> list[Filter]:
    """The filters the recipe's thresholds turn on, in the fixed order the docs give (`empty` always).
    Fails early on a bad badwords file or refusal pattern."""
    out: list[Filter] = [Empty()]
    if cfg.speaker_markers == "reject":
        out.append(SpeakerMarkers())
    if cfg.min_chars or cfg.max_chars or cfg.min_turn_chars or cfg.max_turn_chars:
        out.append(Lengths("chars", cfg.min_chars, cfg.max_chars, cfg.min_turn_chars, cfg.max_turn_chars))
    if cfg.token_filters:
        out.append(Lengths("tokens", cfg.min_tokens, cfg.max_tokens, cfg.min_turn_tokens, cfg.max_turn_tokens,
                           cfg.tokenizer))
    if cfg.max_repeat_ngram_ratio is not None:
        out.append(Repetition(cfg.max_repeat_ngram_ratio, cfg.repeat_ngram))
    if cfg.language is not None:
        out.append(Language(cfg.language))
    if (p := badwords_path(cfg, recipe_dir)) is not None:
        words = load_badwords(p)
        if words is not None:
            out.append(Badwords(words))
    refusals = Refusals(cfg.refusal_patterns)  # a bad pattern is an error even while drop_refusals is off
    if cfg.drop_refusals:
        out.append(refusals)
    return out
