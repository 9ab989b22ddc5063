"""What every source-format adapter shares: a field read as the recipe's `columns:` maps it, text and content
checks, the turn lists (history pairs, ShareGPT and OpenAI messages), role order and the preference record.
Apart from the adapters (`dialogue_formats`, `preference_formats`, `transcript`) so each adapter module holds
one family of layouts and all read fields the same way."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tuneforge.common.records import Record, new_record
from tuneforge.ingest.config import SourceConfig


class Invalid(Exception):
    """A record that cannot be used, with the reason."""


@dataclass
class Context:
    cfg: SourceConfig
    meta: dict
    variables: dict[str, str]


def _field(obj: dict, name: str, ctx: Context, *, required: bool = True, default: Any = None) -> Any:
    if not isinstance(obj, dict):
        raise Invalid(f"expected a JSON object with field {name!r}, got {_type_name(obj)}")
    src = ctx.cfg.columns.get(name, name)
    if src not in obj or obj[src] is None:
        if required:
            mapped = f" (mapped from {src!r})" if src != name else ""
            raise Invalid(f"missing field {name!r}{mapped}")
        return default
    return obj[src]


def _type_name(value: Any) -> str:
    return {type(None): "null", bool: "true/false", int: "a number", float: "a number", str: "text",
            list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _has_surrogate(value: str) -> bool:
    """UTF-8 cannot encode a lone surrogate: the encoder (C speed) answers before the regex looks where."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return True
    return False


def _text(value: Any, name: str, *, allow_empty: bool = False) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)
    if not isinstance(value, str):
        raise Invalid(f"field {name!r} should be text, got {_type_name(value)}")
    if not allow_empty and (not value or value.isspace()):
        raise Invalid(f"field {name!r} is empty")
    if not value.isascii() and _has_surrogate(value) and (m := _SURROGATE.search(value)):
        raise Invalid(f"field {name!r} holds a lone surrogate U+{ord(m.group()):04X} at character {m.start()} "
                      f"(broken UTF-16 escape), which is not text")
    return value


def _content(value: Any, name: str) -> str:
    """Message content: a string, or OpenAI/LLaMA-Factory content parts [{type: text, text|value}]."""
    if isinstance(value, list):
        parts = []
        for p in value:
            if not isinstance(p, dict) or p.get("type", "text") != "text":
                raise Invalid(f"field {name!r} has a non-text content part; only text is supported")
            parts.append(_text(p.get("text", p.get("value")), name, allow_empty=True))
        value = "".join(parts)
    return _text(value, name)


def _role_order(messages: list[dict], ctx: Context | None) -> list[dict]:
    """A system turn only first; two user (or two assistant) turns in a row are merged into one, joined by a
    newline (`role_order: merge`, the default; counted in `meta.ops`) or reject the record
    (`role_order: reject`). Nothing is invented: a conversation that opens with the assistant stays so, and
    formats that need a user first skip it with a reason."""
    out: list[dict] = []
    merged = 0
    for i, m in enumerate(messages):
        if m["role"] == "system" and i > 0:
            raise Invalid(f"turn {i + 1} is a system turn; only the first turn may be one")
        if out and m["role"] == out[-1]["role"] and m["role"] in ("user", "assistant"):
            if ctx is not None and ctx.cfg.role_order == "reject":
                raise Invalid(f"turns {i} and {i + 1} are both {m['role']} turns (role_order: reject)")
            out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + m["content"]}
            merged += 1
            continue
        out.append(m)
    if merged and ctx is not None:
        ctx.meta.setdefault("ops", []).append(f"ingest:merged_turns:{merged}")
    return out


def _check_dialogue(messages: list[dict], ctx: Context | None = None) -> list[dict]:
    messages = _role_order(messages, ctx)
    if not any(m["role"] == "assistant" for m in messages):
        raise Invalid("conversation has no assistant turn")
    if messages[-1]["role"] not in ("assistant",):
        raise Invalid(f"conversation ends with a {messages[-1]['role']} turn, not an assistant reply")
    return messages


def _pairs_to_messages(history: Any, name: str) -> list[dict]:
    if history in (None, ""):
        return []
    if not isinstance(history, list):
        raise Invalid(f"field {name!r} should be a list of [question, answer] pairs")
    out: list[dict] = []
    for i, pair in enumerate(history):
        if not isinstance(pair, (list, tuple)) or len(pair) != 2:
            raise Invalid(f"field {name!r} item {i} should be a [question, answer] pair")
        out.append({"role": "user", "content": _text(pair[0], f"{name}[{i}][0]")})
        out.append({"role": "assistant", "content": _text(pair[1], f"{name}[{i}][1]")})
    return out


def _system(obj: dict, ctx: Context) -> list[dict]:
    system = _field(obj, "system", ctx, required=False)
    if system in (None, ""):
        return []
    return [{"role": "system", "content": _text(system, "system")}]


def _instruction_prompt(obj: dict, ctx: Context) -> str:
    instruction = _text(_field(obj, "instruction", ctx), "instruction")
    extra = _field(obj, "input", ctx, required=False, default="")
    extra = _text(extra, "input", allow_empty=True) if extra is not None else ""
    return f"{instruction}\n{extra}" if extra.strip() else instruction


SHAREGPT_ROLES = ("user", "assistant", "system", "tool")


def _sharegpt_messages(turns: Any, ctx: Context, name: str) -> list[dict]:
    t = ctx.cfg.tags
    roles = {t.user_tag: "user", t.assistant_tag: "assistant", t.system_tag: "system",
             t.observation_tag: "tool", t.function_tag: "assistant", "user": "user", "assistant": "assistant",
             "tool": "tool", "function": "tool"}
    if not isinstance(turns, list) or not turns:
        raise Invalid(f"field {name!r} should be a non-empty list of turns")
    out = []
    for i, turn in enumerate(turns):
        if not isinstance(turn, dict):
            raise Invalid(f"{name}[{i}] should be an object with {t.role_tag!r} and {t.content_tag!r}")
        who = turn.get(t.role_tag)
        if not isinstance(who, str) or who not in roles:
            raise Invalid(f"{name}[{i}] has unknown role {who!r}")
        msg = {"role": roles[who], "content": _content(turn.get(t.content_tag), f"{name}[{i}].{t.content_tag}")}
        out.append(msg)
    return out


def _openai_messages(value: Any, name: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise Invalid(f"field {name!r} should be a non-empty list of messages")
    out = []
    for i, m in enumerate(value):
        if not isinstance(m, dict):
            raise Invalid(f"{name}[{i}] should be an object with 'role' and 'content'")
        role = m.get("role")
        if not isinstance(role, str) or role not in SHAREGPT_ROLES:
            raise Invalid(f"{name}[{i}] has unknown role {role!r}")
        out.append({"role": role, "content": _content(m.get("content"), f"{name}[{i}].content")})
    return out


def _preference(prompt: list[dict], chosen: list[dict], rejected: list[dict], ctx: Context) -> Record:
    if not chosen or not rejected:
        raise Invalid("chosen or rejected is empty")
    if chosen == rejected:
        raise Invalid("chosen and rejected are identical; no preference")
    return new_record("preference", ctx.meta, prompt=prompt, chosen=chosen, rejected=rejected)


def _split_prompt(chosen: list[dict], rejected: list[dict]) -> tuple[list[dict], list[dict], list[dict]]:
    """TRL's implicit prompt: the shared leading turns of two full conversations."""
    k = 0
    while k < min(len(chosen), len(rejected)) - 1 and chosen[k] == rejected[k]:
        k += 1
    return chosen[:k], chosen[k:], rejected[k:]
