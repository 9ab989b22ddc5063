"""Text normalisation: each step is a switch in the recipe, and the defaults never change meaning.

Chinese text uses full-width punctuation (，。！？：；（）) as its normal form, so NFKC and the full-width
step keep those marks where a CJK character stands beside them and only fold them inside Latin text.
"""

from __future__ import annotations

import re
import unicodedata
from html.parser import HTMLParser

from tuneforge.clean.config import NormalizeConfig

# Full-width ASCII block U+FF01..U+FF5E maps to U+0021..U+007E.
_FW_OFFSET = 0xFEE0


def _class_body(ranges: tuple[tuple[int, int], ...]) -> str:
    """The body of a regex character class holding these code point ranges."""
    return "".join(f"\\u{lo:04x}-\\u{hi:04x}" for lo, hi in ranges)


_FW_ALNUM_RANGES = ((0xFF10, 0xFF19), (0xFF21, 0xFF3A), (0xFF41, 0xFF5A))  # ０-９ Ａ-Ｚ ａ-ｚ
_FW_ALNUMS = _class_body(_FW_ALNUM_RANGES)
_FW_ALNUM = re.compile(f"[{_FW_ALNUMS}]")
_FW_ALNUM_TABLE = {c: c - _FW_OFFSET for lo, hi in _FW_ALNUM_RANGES for c in range(lo, hi + 1)}
_FW_MARK_RANGES = ((0xFF01, 0xFF0F), (0xFF1A, 0xFF20), (0xFF3B, 0xFF40), (0xFF5B, 0xFF5E))
_FW_MARKS = _class_body(_FW_MARK_RANGES)
_FW_PUNCT = re.compile(f"[{_FW_MARKS}]")
_FW_PUNCT_CHARS = frozenset(chr(c) for lo, hi in _FW_MARK_RANGES for c in range(lo, hi + 1))
_FW_OPEN = {"\uff08": "\uff09", "\uff3b": "\uff3d", "\uff5b": "\uff5d"}  # （） ［］ ｛｝
_FW_CLOSE = {c: o for o, c in _FW_OPEN.items()}
_FW_BRACKET = re.compile("[\uff08\uff09\uff3b\uff3d\uff5b\uff5d]")
_FW_BRACKET_CHARS = frozenset("\uff08\uff09\uff3b\uff3d\uff5b\uff5d")
_CJK_CLASS = (r"\u2e80-\u2fff\u3000-\u303f\u3040-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff"
              r"\uac00-\ud7af\uf900-\ufaff\ufe30-\ufe4f\uff5f-\uff65\U00020000-\U0003134f")
_CJK = re.compile(f"[{_CJK_CLASS}]")
# After a full-width mark: no CJK character touches it (the look-behind spans the mark: a pattern opening
# with it would be tested at every position, at twice the cost), nor is the nearest character after it that
# is not a space or a mark CJK (a variable-width look-ahead, possessive so it never backtracks). The look
# further back is Python's (a look-behind has one width).
_LONE_AFTER_MARK = f"(?<![{_CJK_CLASS}].)(?![{_CJK_CLASS}])(?![\\s{_FW_MARKS}]*+[{_CJK_CLASS}])"
_FW_PUNCT_FOLD = re.compile(f"[{_FW_MARKS}]{_LONE_AFTER_MARK}")
# The same, or a full-width letter or digit (group 1 is set): one leading character class, so that the
# engine skips ahead (an alternation of two patterns scans a third slower than both searches apart).
_FW_ALNUM_OR_FOLD = re.compile(f"[{_FW_ALNUMS}{_FW_MARKS}]"
                               f"(?:(?<={_FW_ALNUM.pattern})()|{_LONE_AFTER_MARK})")
# Invisible characters that only ever get in the way (ZWSP, word joiner, BOM, soft hyphen, bidi marks).
_INVISIBLE = re.compile(r"[\u00ad\u180e\u200b\u200e\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")
# ZWJ/ZWNJ are meaningful inside emoji sequences and some scripts; drop them only between ASCII/CJK.
_JOINER = re.compile(r"(?<=[\x00-\x7f\u3000-\u9fff])[\u200c\u200d](?=[\x00-\x7f\u3000-\u9fff])")
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")
# Any character the three passes above would touch (one search decides whether they run at all).
_ANY_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u00ad\u180e\u200b-\u200f\u202a-\u202e\u2060-\u2064"
                          r"\u2066-\u2069\ufeff]")

_SP = r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000]"
_INNER_SPACES = re.compile(rf"(?<=\S){_SP}{{2,}}|(?<=\S)[\t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000](?!{_SP})")
_TRAILING = re.compile(rf"{_SP}+$", re.M)
_BLANK_LINES = re.compile(r"\n(?:[ \t]*\n){2,}")
# Whatever `_fold` would change: a run of spaces, a space that is not U+0020, a space before a line end. One
# leading character class (not an alternation) lets the regex engine skip ahead: a third of the time.
_NEEDS_FOLD = re.compile(r"[ \t\u00a0\u1680\u2000-\u200a\u202f\u205f\u3000](?:(?<! )|(?=[ \n]|\Z))")
_FENCE = re.compile(r"^\s*(```|~~~)")

_TAG = re.compile(r"</?[A-Za-z][A-Za-z0-9]*(\s[^<>]*)?/?>|<!--|&(#\d+|#x[0-9a-fA-F]+|[A-Za-z]+);")
_BLOCK_TAGS = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "table", "ul", "ol",
               "blockquote", "pre", "section", "article", "hr"}
_SKIP_TAGS = {"script", "style", "head", "noscript"}


def _nfkc(text: str) -> str:
    """NFKC everywhere except full-width punctuation, which `_fullwidth` decides on by context."""
    if text.isascii() or unicodedata.is_normalized("NFKC", _FW_PUNCT.sub("", text)):
        return text  # every part between the marks is already normal (the common case, decided in C)
    parts = _FW_PUNCT.split(text)
    marks = _FW_PUNCT.findall(text)
    out = [unicodedata.normalize("NFKC", parts[0])]
    for mark, part in zip(marks, parts[1:], strict=True):
        out.append(mark)
        out.append(unicodedata.normalize("NFKC", part))
    return "".join(out)


def _fullwidth(text: str, alnum: bool = True) -> str:
    """Full-width letters and digits to ASCII (`alnum`: after NFKC none are left), and full-width marks
    where no CJK character stands near them."""
    # One scan finds both (the letters and digits are rare, and fold first). Every full-width mark touching a
    # CJK character stays: the common case, decided in C. A mark with a CJK neighbour further back stays too.
    fold = set()
    for m in (_FW_ALNUM_OR_FOLD if alnum else _FW_PUNCT_FOLD).finditer(text):
        i = m.start()
        if m.lastindex:  # a full-width letter or digit: fold them all, then look at the marks again
            return _fullwidth(text.translate(_FW_ALNUM_TABLE), alnum=False)
        # The pattern saw that no CJK character touches the mark, so only a space or mark before it can lead
        # to one further back; testing that here spares most marks the call (0.5 us a record on the corpus).
        if not (i and (text[i - 1].isspace() or text[i - 1] in _FW_PUNCT_CHARS) and _cjk_near(text, i, -1)):
            fold.add(i)
    if any(text[i] in _FW_BRACKET_CHARS for i in fold):  # only a folded bracket can have a kept partner
        fold -= _kept_partners(text, fold)
    if not fold:
        return text
    out, last = [], 0
    for i in sorted(fold):
        out += [text[last:i], chr(ord(text[i]) - _FW_OFFSET)]
        last = i + 1
    out.append(text[last:])
    return "".join(out)


def _kept_partners(text: str, fold: set[int]) -> set[int]:
    """Brackets in `fold` whose matching bracket stays full-width: a pair is folded together or not at all
    ("（第3问，编号42）" keeps its "）" although a digit stands beside it)."""
    keep: set[int] = set()
    for i in fold:
        ch = text[i]
        if ch not in _FW_BRACKET_CHARS:
            continue
        # The usual case, without walking every bracket: no bracket stands between this one and the nearest
        # possible partner, so the walk below would pair exactly these two (or find no partner).
        if ch in _FW_CLOSE:
            j = text.rfind(_FW_CLOSE[ch], 0, i)
            between = _FW_BRACKET.search(text, j + 1, i) if j >= 0 else None
        else:
            j = text.find(_FW_OPEN[ch], i + 1)
            between = _FW_BRACKET.search(text, i + 1, j) if j >= 0 else None
        if between is not None:
            return _kept_partners_walk(text, fold)
        if j >= 0 and j not in fold:
            keep.add(i)
    return keep


def _kept_partners_walk(text: str, fold: set[int]) -> set[int]:
    """`_kept_partners` by walking every bracket with a stack (a closer pairs with the opener on top)."""
    stack: list[int] = []
    keep: set[int] = set()
    for m in _FW_BRACKET.finditer(text):
        i, ch = m.start(), m.group()
        if ch in _FW_OPEN:
            stack.append(i)
        elif ch in _FW_CLOSE and stack and text[stack[-1]] == _FW_CLOSE[ch]:
            j = stack.pop()
            if (i in fold) != (j in fold):
                keep.add(i if i in fold else j)
    return keep


def _cjk_near(text: str, i: int, step: int) -> bool:
    """Is the nearest character beside position i (skipping spaces and full-width marks) CJK?"""
    j = i + step
    while 0 <= j < len(text) and (text[j].isspace() or text[j] in _FW_PUNCT_CHARS):
        j += step
    return 0 <= j < len(text) and bool(_CJK.match(text[j]))


def _controls(text: str) -> str:
    if not _ANY_CONTROL.search(text):
        return text
    text = _CONTROL.sub("", text.replace("\r\n", "\n").replace("\r", "\n"))
    return _JOINER.sub("", _INVISIBLE.sub("", text))


def _fold(text: str) -> str:
    """Prose: one space inside lines, no trailing spaces; leading indentation is left as it is."""
    if not _NEEDS_FOLD.search(text):
        return text
    text = _INNER_SPACES.sub(" ", text)
    return _TRAILING.sub("", text)


def _whitespace(text: str) -> str:
    """Fold spaces and blank lines in prose; fenced code blocks keep their spacing (only line ends trimmed)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    if "```" not in text and "~~~" not in text:
        text = _fold(text)
    else:
        out: list[str] = []
        prose: list[str] = []
        in_code = False
        for line in text.split("\n"):
            if _FENCE.match(line) or in_code:
                if prose:
                    out.append(_fold("\n".join(prose)))
                    prose = []
                out.append(line.rstrip())
                if _FENCE.match(line):
                    in_code = not in_code
            else:
                prose.append(line)
        if prose:
            out.append(_fold("\n".join(prose)))
        text = "\n".join(out)
    if "\n" in text:
        text = _BLANK_LINES.sub("\n\n", text)
    return text.strip()


class _TextExtractor(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.skip = 0

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if tag in _SKIP_TAGS:
            self.skip += 1
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_endtag(self, tag: str) -> None:
        if tag in _SKIP_TAGS:
            self.skip = max(0, self.skip - 1)
        elif tag in _BLOCK_TAGS:
            self.parts.append("\n")

    def handle_data(self, data: str) -> None:
        if not self.skip:
            self.parts.append(data)


def strip_html(text: str) -> str:
    """Unescape entities and drop tags, but only when the text has some: `a < b` stays as it is."""
    if not _TAG.search(text):
        return text
    parser = _TextExtractor()
    parser.feed(text)
    parser.close()
    return "".join(parser.parts)


def normalize_text(text: str, cfg: NormalizeConfig) -> str:
    if cfg.html:
        text = strip_html(text)
    if cfg.control_chars:
        text = _controls(text)
    text = _nfkc(text) if cfg.nfkc else unicodedata.normalize("NFC", text)
    if cfg.fullwidth_ascii:
        text = _fullwidth(text, alnum=not cfg.nfkc)
    if cfg.whitespace:
        text = _whitespace(text)
    return text
