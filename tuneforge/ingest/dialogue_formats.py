"""Source formats of conversations and single replies: Alpaca, ShareGPT, OpenAI messages (and KTO's labelled
ones), ChatGLM, prompt/completion, CrossWOZ dialogues and `kind: prompt` questions. One family of layouts a
module; `formats.FORMATS` registers them."""

from __future__ import annotations

from typing import Any

from tuneforge.common.records import Record, new_record
from tuneforge.ingest.fields import (
    Context,
    Invalid,
    _check_dialogue,
    _field,
    _instruction_prompt,
    _openai_messages,
    _pairs_to_messages,
    _preference,
    _role_order,
    _sharegpt_messages,
    _system,
    _text,
    _type_name,
)


def alpaca(obj: dict, ctx: Context) -> list[Record]:
    msgs = _system(obj, ctx) + _pairs_to_messages(_field(obj, "history", ctx, required=False), "history")
    msgs.append({"role": "user", "content": _instruction_prompt(obj, ctx)})
    msgs.append({"role": "assistant", "content": _text(_field(obj, "output", ctx), "output")})
    return [new_record("messages", ctx.meta, messages=msgs)]


def sharegpt(obj: dict, ctx: Context) -> list[Record]:
    msgs = _sharegpt_messages(_field(obj, "conversations", ctx), ctx, "conversations")
    system = _system(obj, ctx)
    if system and msgs[0]["role"] != "system":
        msgs = system + msgs
    tools = _field(obj, "tools", ctx, required=False)
    if "chosen" in obj or "chosen" in ctx.cfg.columns:
        # LLaMA-Factory's sharegpt preference layout: conversations is the prompt, chosen/rejected one turn each.
        chosen = _sharegpt_messages([_field(obj, "chosen", ctx)], ctx, "chosen")
        rejected = _sharegpt_messages([_field(obj, "rejected", ctx)], ctx, "rejected")
        return [_preference(msgs, chosen, rejected, ctx)]
    rec = new_record("messages", ctx.meta, messages=_check_dialogue(msgs, ctx))
    if tools:
        rec["meta"]["tools"] = tools if isinstance(tools, str) else str(tools)
    return [rec]


def messages(obj: dict, ctx: Context) -> list[Record]:
    msgs = _openai_messages(_field(obj, "messages", ctx), "messages")
    label = _field(obj, "label", ctx, required=False)
    if label is not None:
        # TRL's unpaired preference (KTO): a completion marked desirable or not.
        if not isinstance(label, bool):
            raise Invalid(f"field 'label' should be true or false, got {label!r}")
        msgs = _check_dialogue(msgs, ctx)
        return [new_record("unpaired", ctx.meta, prompt=msgs[:-1], completion=msgs[-1:], label=label)]
    return [new_record("messages", ctx.meta, messages=_check_dialogue(msgs, ctx))]


def chatglm(obj: dict, ctx: Context) -> list[Record]:
    msgs = _pairs_to_messages(_field(obj, "history", ctx, required=False), "history")
    msgs.append({"role": "user", "content": _text(_field(obj, "prompt", ctx), "prompt")})
    msgs.append({"role": "assistant", "content": _text(_field(obj, "response", ctx), "response")})
    return [new_record("messages", ctx.meta, messages=_system(obj, ctx) + msgs)]


def completion(obj: dict, ctx: Context) -> list[Record]:
    msgs = [{"role": "user", "content": _text(_field(obj, "prompt", ctx), "prompt")},
            {"role": "assistant", "content": _text(_field(obj, "completion", ctx), "completion")}]
    return [new_record("messages", ctx.meta, messages=_system(obj, ctx) + msgs)]


def prompt(obj: Any, ctx: Context) -> list[Record]:
    """A question with no answer yet (a source with `kind: prompt`): `messages`/`conversations` ending in a user
    turn, `prompt`, `question`, `instruction` (+ `input`), or `text` (a line of a .txt file, a CSV column;
    `columns: {prompt: my_column}` names another field). Answer fields the file may also hold are not read."""
    if isinstance(obj, str):
        obj = {"prompt": obj}
    if not isinstance(obj, dict):
        raise Invalid(f"expected a JSON object or a string with the question, got {_type_name(obj)}")
    name = next((n for n in ("prompt", "messages", "conversations", "instruction", "question", "text", "content")
                 if n in ctx.cfg.columns), None)
    name = name or next((n for n in ("prompt", "messages", "conversations", "instruction", "question", "text",
                                     "content") if obj.get(n) is not None), None)
    if name is None:
        raise Invalid(f"no question field (prompt, messages, conversations, instruction, question, text) in a "
                      f"`kind: prompt` source; fields seen: {', '.join(sorted(map(str, obj))[:12]) or 'none'}")
    if name in ("messages", "conversations"):
        value = _field(obj, name, ctx)
        msgs = (_sharegpt_messages(value, ctx, name) if name == "conversations"
                else _openai_messages(value, name))
        msgs = _role_order(_system(obj, ctx) + msgs if msgs[0]["role"] != "system" else msgs, ctx)
        if msgs[-1]["role"] != "user":
            raise Invalid(f"a prompt's {name!r} should end with a user turn, not a {msgs[-1]['role']} turn")
    else:
        text = (_instruction_prompt(obj, ctx) if name == "instruction"
                else _text(_field(obj, name, ctx), name))
        msgs = [*_system(obj, ctx), {"role": "user", "content": text}]
    return [new_record("prompt", ctx.meta, messages=msgs)]


def crosswoz(obj: dict, ctx: Context) -> list[Record]:
    """CrossWOZ dialogues (usr/sys turns); `options.domains` keeps only dialogues about those domains."""
    turns = _field(obj, "messages", ctx)
    if not isinstance(turns, list) or not turns:
        raise Invalid("field 'messages' should be a non-empty list of turns")
    wanted = ctx.cfg.options.get("domains")
    if wanted:
        goal = obj.get("goal") or []
        domains = {g[1] for g in goal if isinstance(g, list) and len(g) > 1}
        match = ctx.cfg.options.get("domain_match", "any")
        ok = domains <= set(wanted) if match == "all" else bool(domains & set(wanted))
        if not ok:
            raise Invalid(f"filtered: dialogue domains {sorted(domains)} do not match {wanted} ({match})")
    roles = {"usr": "user", "sys": "assistant"}
    msgs = []
    for i, t in enumerate(turns):
        if not isinstance(t, dict) or not isinstance(t.get("role"), str) or t.get("role") not in roles:
            raise Invalid(f"messages[{i}] should have role usr or sys")
        msgs.append({"role": roles[t["role"]], "content": _text(t.get("content"), f"messages[{i}].content")})
    rec = new_record("messages", ctx.meta, messages=_check_dialogue(msgs, ctx))
    rec["meta"]["dialogue_type"] = obj.get("type")
    return [rec]
