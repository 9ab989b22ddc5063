"""Checks that a knowledge-base answer states only what its row says (numbers, categories, names, facilities).

The model is not trusted: a number in the answer must occur in the row (or in the user's own query), a
facility or category from the knowledge base's vocabulary must be the row's own (unless negated: "没有健身房"),
and no other row's name may appear.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field

NUMBER = re.compile(r"\d+(?:\.\d+)?")
_NEGATION = ("没有", "不提供", "无", "不含", "暂无", "不带", "not ", "no ", "without ")
_PAREN = re.compile(r"[（(][^（()）]*[)）]")
_SUFFIXES = ("国际大酒店", "国际酒店", "大酒店", "酒店式公寓", "服务公寓", "精品酒店", "商务酒店", "快捷酒店",
             "酒店", "宾馆", "大厦", "饭店", "公寓", "旅馆", "客栈", "招待所")


def numbers(text: str) -> set[str]:
    return {_norm(n) for n in NUMBER.findall(text)}


def _norm(n: str) -> str:
    return n.rstrip("0").rstrip(".") if "." in n else n.lstrip("0") or "0"


def short_name(name: str, strip_prefixes: tuple[str, ...] = ("北京",)) -> str:
    """`北京贵都大酒店` -> `贵都`: what people call a hotel in conversation (the full name if nothing is left)."""
    full = _PAREN.sub("", name).strip() or name
    s = full
    for pre in strip_prefixes:
        if s.startswith(pre):
            s = s[len(pre):]
    for suf in _SUFFIXES:
        if s.endswith(suf):
            s = s[: -len(suf)]
            break
    return s if len(s) >= 2 else full


def price_cap(price: float) -> int:
    """The next round hundred strictly above the price."""
    return int(math.floor(price / 100) + 1) * 100


def rating_floor(rating: float) -> float:
    return math.floor(rating * 2) / 2


@dataclass
class Vocabulary:
    """Terms from every kb row seen, for spotting claims the row does not make."""

    names: set[str] = field(default_factory=set)
    facilities: set[str] = field(default_factory=set)
    categories: dict[str, set[str]] = field(default_factory=dict)


def _negated(text: str, start: int) -> bool:
    before = text[max(0, start - 6):start].lower()
    return any(before.endswith(neg) or neg in before for neg in _NEGATION)


def ungrounded(answer: str, query: str, row: dict, vocab: Vocabulary, fields: dict[str, str],
               allowed_numbers: set[str] = frozenset()) -> list[str]:
    """What the answer states that the row does not; empty when grounded."""
    import json

    problems = []
    row_text = json.dumps(row, ensure_ascii=False)
    ok_numbers = numbers(row_text) | numbers(query) | {_norm(n) for n in allowed_numbers}
    bad = sorted(numbers(answer) - ok_numbers)
    if bad:
        problems.append(f"the numbers {', '.join(bad)} are not in the row")
    name = str(row.get(fields["name"], ""))
    for other in vocab.names:
        if other != name and other not in name and other in answer:
            problems.append(f"it names another place, {other}")
            break
    own = [str(f) for f in row.get(fields["facilities"], []) or []]
    for fac in sorted(vocab.facilities, key=len, reverse=True):
        for m in re.finditer(re.escape(fac), answer):
            if not any(fac in g for g in own) and not _negated(answer, m.start()):
                problems.append(f"the row does not list the facility {fac}")
                break
    for key, values in vocab.categories.items():
        own_value = str(row.get(key, ""))
        for v in values:
            if v != own_value and v not in own_value and v in answer:
                problems.append(f"{key} is {own_value}, not {v}")
    return problems
