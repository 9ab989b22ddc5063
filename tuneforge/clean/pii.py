"""PII scrubbing for Chinese and English text: typed placeholders instead of the value, counted per type.

Numbers are only replaced when they pass the check their issuer uses (ID-card MOD 11-2 checksum and a real
birth date, bank-card Luhn), so order numbers, years and prices are left alone.
"""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Callable

from tuneforge.clean.config import PIIConfig

PLACEHOLDERS = {"email": "[EMAIL]", "id_card": "[ID_CARD]", "bank_card": "[BANK_CARD]", "phone": "[PHONE]"}

_EMAIL = re.compile(r"(?<![\w.+-])[A-Za-z0-9][A-Za-z0-9._%+-]*@[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*\.[A-Za-z]{2,24}"
                    r"(?![\w-])")
_ID_CARD = re.compile(r"(?<![0-9A-Za-z])[1-9]\d{5}(?:18|19|20)\d{2}(?:0[1-9]|1[0-2])(?:0[1-9]|[12]\d|3[01])\d{3}"
                      r"[\dXx](?![0-9A-Za-z])")
_BANK_CARD = re.compile(r"(?<![\d-])(?:\d{4}[ -]?){3}\d{4}(?:[ -]?\d{1,3})?(?![\d-])")
# Chinese mobiles (+86 optional, 3-4-4 grouping allowed) and North-American style numbers.
_PHONE = re.compile(
    r"(?<![\d+])(?:\+?86[ -]?)?1[3-9]\d(?:[ -]?\d{4}){2}(?!\d)"
    r"|(?<![\d+])(?:\+?1[ .-]?)?\(?[2-9]\d{2}\)?[ .-]\d{3}[ .-]\d{4}(?!\d)"
    r"|\+(?:[2-9]\d{0,2})[ -]?\d{2,4}(?:[ -]?\d{3,4}){2}(?!\d)")

# Every pattern below needs an `@` (email) or a run of ten digits with at most two separators between any
# two (phone, ID card, bank card); text with neither is returned untouched after one search. The gate is a
# looser run (a digit, then nine or more digits or separators): it lets through all that the patterns could
# match, and the regex engine finds it in 60% of the time.
_DIGITS = re.compile(r"\d[\d ().+-]{9,}")
_ID_WEIGHTS = (7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2)
_ID_CHECK = "10X98765432"


def valid_id_card(s: str) -> bool:
    """Chinese resident ID (GB 11643): a real birth date and the ISO 7064 MOD 11-2 check character."""
    try:
        _dt.date(int(s[6:10]), int(s[10:12]), int(s[12:14]))
    except ValueError:
        return False
    total = sum(int(c) * w for c, w in zip(s[:17], _ID_WEIGHTS, strict=True))
    return _ID_CHECK[total % 11] == s[17].upper()


def luhn(digits: str) -> bool:
    total = 0
    for i, c in enumerate(reversed(digits)):
        d = int(c)
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def _bank_ok(s: str) -> bool:
    digits = re.sub(r"\D", "", s)
    return 16 <= len(digits) <= 19 and luhn(digits)


_CHECKS: dict[str, tuple[re.Pattern, Callable[[str], bool] | None]] = {
    "email": (_EMAIL, None),
    "id_card": (_ID_CARD, valid_id_card),
    "bank_card": (_BANK_CARD, _bank_ok),
    "phone": (_PHONE, None),
}


def scrub(text: str, cfg: PIIConfig, counts: dict[str, int]) -> str:
    """Replace PII in `text`; add what was replaced to `counts` (type -> n)."""
    has_at = "@" in text
    has_digits = _DIGITS.search(text) is not None
    if not (has_at or has_digits):
        return text
    for kind, (pattern, check) in _CHECKS.items():
        if not getattr(cfg, kind) or not (has_at if kind == "email" else has_digits):
            continue
        placeholder = cfg.placeholders.get(kind, PLACEHOLDERS[kind])
        n = 0

        def repl(m: re.Match, check=check, placeholder=placeholder) -> str:
            nonlocal n
            if check is not None and not check(m.group()):
                return m.group()
            n += 1
            return placeholder

        text = pattern.sub(repl, text)
        if n:
            counts[kind] = counts.get(kind, 0) + n
    return text
