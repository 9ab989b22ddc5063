"""The JSON readers: JSON Lines (orjson where its answer is exactly `json.loads`') and JSON files (a top-level
array streamed element by element, or a range of its elements the planner found, or one object). Apart from
the other file types because exact parsing and line numbers inside one big text are their own problem."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson

from tuneforge.common.errors import SourceError
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.parts import (
    Bad,
    Item,
    Part,
    decode_part,
    line_text,
    part_lines,
    read_part_bytes,
    too_big,
)


def parse_json(text: str) -> tuple[Any, str | None]:
    """(value, None) or (None, reason): malformed JSON, nesting too deep, or a number too long to hold."""
    try:
        return json.loads(text), None
    except json.JSONDecodeError as e:
        return None, f"malformed JSON: {e.msg} at column {e.colno}"
    except RecursionError:
        return None, "malformed JSON: nested too deeply to read"
    except ValueError as e:  # an integer of more than 4300 digits
        return None, f"malformed JSON: {e}"


_SLOW = object()


def _exact_fast(raw: bytes) -> Any:
    """A UTF-8 line parsed by orjson (about twice as fast as `json` with the decode), or `_SLOW` where its
    answer could differ from `json.loads`: any error (json has its own messages, and reads NaN, lone
    surrogate escapes and 1e400) and any float (orjson reads an integer beyond 64 bits as one)."""
    try:
        value = orjson.loads(raw)
        return _SLOW if _has_float(value) else value
    except (orjson.JSONDecodeError, RecursionError):
        return _SLOW


def _has_float(v: Any) -> bool:
    t = type(v)
    if t is dict:
        v = v.values()
    elif t is not list:
        return t is float
    for x in v:
        tx = type(x)
        if tx is str:
            continue
        if tx is float or ((tx is dict or tx is list) and _has_float(x)):
            return True
    return False


def read_jsonl(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    utf8 = part.encoding.split("|", 1)[0] in ("utf-8", "utf-8-sig")
    for n, raw in part_lines(part):
        if not raw.strip():
            continue
        if reason := too_big(len(raw), cfg):
            yield Bad(reason, raw[:2000].decode("utf-8", "replace") + "…", line=n)
            continue
        if utf8 and (value := _exact_fast(raw)) is not _SLOW:
            yield Item(value, line=n)
            continue
        line = line_text(raw, part)
        if line is None:
            yield Bad(f"line is not valid text in the file's encoding ({part.encoding.split('|')[0]})",
                      raw.decode("utf-8", "replace"), line=n)
            continue
        value, reason = parse_json(line)
        yield Bad(reason, line, line=n) if reason else Item(value, line=n)


def _skip_ws(text: str, pos: int) -> int:
    n = len(text)
    while pos < n and text[pos] in " \t\r\n":
        pos += 1
    return pos


class _LineCounter:
    """1-based line of an offset in `text`, for forward scans in linear time."""

    def __init__(self, text: str, first_line: int) -> None:
        self.text, self.pos, self.line = text, 0, first_line

    def __call__(self, pos: int) -> int:
        self.line += self.text.count("\n", self.pos, pos)
        self.pos = pos
        return self.line


def read_json(part: Part, cfg: SourceConfig) -> Iterator[Item | Bad]:
    text = decode_part(read_part_bytes(part), part)
    if part.start == 0 and text.startswith("\ufeff"):
        text = text[1:]
    dec = json.JSONDecoder()
    line_of = _LineCounter(text, part.first_line)
    if not part.whole:  # a range of array elements, found by the planner
        yield from _stream_array(text, 0, dec, cfg, line_of, part.first_index, part.last)
        return
    pos = _skip_ws(text, 0)
    if text.startswith("[", pos):
        yield from _stream_array(text, pos + 1, dec, cfg, line_of, 0, True)
        return
    try:
        obj, end = dec.raw_decode(text, pos)
    except json.JSONDecodeError as e:
        yield Bad(f"malformed JSON: {e.msg} at line {e.lineno} column {e.colno}; nothing in this file could "
                  f"be read", text, line=e.lineno)
        return
    except (RecursionError, ValueError) as e:
        yield Bad(f"malformed JSON: {'nested too deeply' if isinstance(e, RecursionError) else e}; nothing in "
                  f"this file could be read", text, line=1)
        return
    if _skip_ws(text, end) < len(text):
        # Several values one after another: the file is JSON Lines with a .json name (e.g. AdvertiseGen).
        yield from read_jsonl(part, cfg)
        return
    field = cfg.options.get("json_field")
    if field is not None:
        if not isinstance(obj, dict) or not isinstance(obj.get(field), list):
            raise SourceError(f"{part.path}: options.json_field={field!r} but the file has no list under that key")
        for i, item in enumerate(obj[field]):
            yield Item(item, index=i)
    elif isinstance(obj, dict) and len(obj) > 1 and all(isinstance(v, dict) for v in obj.values()):
        # A mapping of id -> record (CrossWOZ dialogues): each value is a record, its key kept as provenance.
        for i, (k, v) in enumerate(obj.items()):
            yield Item(v, index=i, key=str(k))
    else:
        yield Item(obj, line=line_of(pos), index=0)


def _stream_array(text: str, pos: int, dec: json.JSONDecoder, cfg: SourceConfig, line_of: _LineCounter,
                  first_index: int, last: bool) -> Iterator[Item | Bad]:
    """Decode array elements one by one so a damaged tail loses only itself, with its line named."""
    i = first_index
    n = len(text)
    while True:
        pos = _skip_ws(text, pos)
        if pos >= n:
            if last:
                yield Bad("truncated JSON: the array is not closed", "", line=line_of(pos), index=i)
            return
        if text[pos] == "]":
            return
        start = pos
        try:
            obj, end = dec.raw_decode(text, pos)
        except (json.JSONDecodeError, RecursionError, ValueError) as e:
            what = f"{e.msg} at line {e.lineno} column {e.colno}" if isinstance(e, json.JSONDecodeError) else (
                "nested too deeply" if isinstance(e, RecursionError) else str(e))
            yield Bad(f"malformed JSON in array element {i}: {what}; the rest of the file "
                      f"({n - start:,} characters) could not be read", text[start:], line=line_of(start), index=i)
            return
        line = line_of(start)
        if reason := too_big(end - start, cfg):
            yield Bad(reason, text[start:start + 2000] + "…", line=line, index=i)
        else:
            yield Item(obj, line=line, index=i)
        i += 1
        pos = _skip_ws(text, end)
        if pos < n and text[pos] == ",":
            pos += 1
        elif pos < n and text[pos] == "]":
            return
        elif pos < n or last:
            yield Bad(f"malformed JSON after array element {i - 1}: expected ',' or ']'", text[pos:],
                      line=line_of(pos), index=i)
            return
