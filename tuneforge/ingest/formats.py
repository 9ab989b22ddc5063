"""Source formats: one adapter per corpus layout, each turning a raw item into canonical records.

An adapter either returns records or raises `Invalid` with a reason a person understands; the ingest
stage turns that into a line of rejects.jsonl with the file and line. Adding a layout is adding one entry
to `FORMATS`; a corpus with odd field names needs only `columns:` in the recipe.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.common.errors import RecipeError
from tuneforge.common.records import Record, map_texts, new_record
from tuneforge.ingest.config import SourceConfig


class Invalid(Exception):
    """A record that cannot be used, with the reason."""


@dataclass
class Context:
    cfg: SourceConfig
    meta: dict
    variables: dict[str, str]


# ---------------------------------------------------------------- field helpers

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


# ---------------------------------------------------------------- adapters

def alpaca(obj: dict, ctx: Context) -> list[Record]:
    msgs = _system(obj, ctx) + _pairs_to_messages(_field(obj, "history", ctx, required=False), "history")
    msgs.append({"role": "user", "content": _instruction_prompt(obj, ctx)})
    msgs.append({"role": "assistant", "content": _text(_field(obj, "output", ctx), "output")})
    return [new_record("messages", ctx.meta, messages=msgs)]


def ranked(obj: dict, ctx: Context) -> list[Record]:
    """Responses ranked best-first (oaast_rm_zh): every better/worse pair becomes one preference record."""
    outputs = _field(obj, "output", ctx)
    if not isinstance(outputs, list) or len(outputs) < 2:
        raise Invalid("field 'output' should be a list of at least two responses, best first")
    texts = [_text(o, f"output[{i}]") for i, o in enumerate(outputs)]
    prompt = (_system(obj, ctx) + _pairs_to_messages(_field(obj, "history", ctx, required=False), "history")
              + [{"role": "user", "content": _instruction_prompt(obj, ctx)}])
    mode = ctx.cfg.options.get("ranked_pairs", "all")
    if mode == "all":
        pairs = [(i, j) for i in range(len(texts)) for j in range(i + 1, len(texts))]
    elif mode == "best_vs_rest":
        pairs = [(0, j) for j in range(1, len(texts))]
    elif mode == "adjacent":
        pairs = [(i, i + 1) for i in range(len(texts) - 1)]
    else:
        raise RecipeError(f"source {ctx.cfg.name}: options.ranked_pairs must be all, best_vs_rest or adjacent")
    recs = []
    for k, (i, j) in enumerate(pairs):
        if texts[i].strip() == texts[j].strip():
            continue
        rec = new_record("preference", ctx.meta, sub=k, prompt=prompt,
                         chosen=[{"role": "assistant", "content": texts[i]}],
                         rejected=[{"role": "assistant", "content": texts[j]}])
        rec["meta"]["rank"] = [i, j]
        recs.append(rec)
    if not recs:
        raise Invalid("all ranked responses are identical; no preference pair")
    return recs


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


def document(obj: dict, ctx: Context) -> list[Record]:
    """Raw text (`text`/`content`), or a document rendered from a table row by `options.template` (Jinja2,
    sandboxed), so knowledge-base tables can become continued pre-training text by recipe alone."""
    template = ctx.cfg.options.get("template")
    if template is not None:
        from tuneforge.templates.loader import TemplateError, render_string

        if not isinstance(obj, dict):
            raise Invalid("options.template needs records that are objects")
        try:
            text = render_string(template, **obj)
        except TemplateError as e:
            raise Invalid(f"options.template: {e}") from None
        return [new_record("text", ctx.meta, text=_text(text.strip(), "rendered text"))]
    name = "text" if ("text" in ctx.cfg.columns or "text" in obj) else "content"
    return [new_record("text", ctx.meta, text=_text(_field(obj, name, ctx), name))]


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


def preference(obj: dict, ctx: Context) -> list[Record]:
    """Pairs as strings (prompt/instruction + chosen/rejected) or as full conversations."""
    c, r = _field(obj, "chosen", ctx), _field(obj, "rejected", ctx)
    if isinstance(c, list) and isinstance(r, list):
        cm, rm = _openai_messages(c, "chosen"), _openai_messages(r, "rejected")
        explicit = _field(obj, "prompt", ctx, required=False)
        if explicit is not None:
            prompt = (_openai_messages(explicit, "prompt") if isinstance(explicit, list)
                      else [{"role": "user", "content": _text(explicit, "prompt")}])
            return [_preference(prompt, cm, rm, ctx)]
        prompt, cm, rm = _split_prompt(cm, rm)
        if not prompt:
            raise Invalid("chosen and rejected share no prompt turns")
        return [_preference(prompt, cm, rm, ctx)]
    if "prompt" in obj or "prompt" in ctx.cfg.columns:
        user = _text(_field(obj, "prompt", ctx), "prompt")
    else:
        user = _instruction_prompt(obj, ctx)
    prompt = [*_system(obj, ctx), {"role": "user", "content": user}]
    return [_preference(prompt, [{"role": "assistant", "content": _text(c, "chosen")}],
                        [{"role": "assistant", "content": _text(r, "rejected")}], ctx)]


def message_pairs(obj: dict, ctx: Context) -> list[Record]:
    """LLaMA-Factory v1 layout: `chosen_messages` / `rejected_messages`, content as typed parts."""
    cm = _openai_messages(_field(obj, "chosen_messages", ctx), "chosen_messages")
    rm = _openai_messages(_field(obj, "rejected_messages", ctx), "rejected_messages")
    prompt, c, r = _split_prompt(cm, rm)
    if not prompt:
        raise Invalid("chosen_messages and rejected_messages share no prompt turns")
    return [_preference(prompt, c, r, ctx)]


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


def kb(obj: Any, ctx: Context) -> list[Record]:
    """Knowledge-base rows: CrossWOZ `[name, {...}]` pairs or plain objects, kept structured."""
    if isinstance(obj, list) and len(obj) == 2 and isinstance(obj[1], dict):
        row = dict(obj[1])
        row.setdefault("名称", obj[0])
    elif isinstance(obj, dict):
        row = dict(obj)
    else:
        raise Invalid("a knowledge-base row should be an object or a [name, {fields}] pair")
    if not row:
        raise Invalid("knowledge-base row is empty")
    return [new_record("kb", ctx.meta, row=row)]


def _speaker_table(ctx: Context) -> list[tuple[str, str]]:
    speakers = ctx.cfg.options.get("speakers")
    if not isinstance(speakers, dict) or not speakers:
        raise RecipeError(f"source {ctx.cfg.name!r}: format transcript needs options.speakers, a mapping of "
                          f"speaker tag to role, e.g. {{\"[客户]\": user, \"[律师]\": assistant}}")
    bad = {k: v for k, v in speakers.items() if v not in ("user", "assistant", "system")}
    if bad:
        raise RecipeError(f"source {ctx.cfg.name!r}: options.speakers roles must be user, assistant or system; "
                          f"got {bad}")
    return sorted(((str(k), v) for k, v in speakers.items()), key=lambda kv: -len(kv[0]))


def _tagged(text: str, table: list[tuple[str, str]]) -> tuple[str, str] | None:
    stripped = text.lstrip()
    for tag, role in table:
        if stripped.startswith(tag):
            return role, stripped[len(tag):].strip()
    return None


def transcript(obj: dict, ctx: Context) -> list[Record]:
    """A dialogue as speaker-tagged strings (`["[客户] …", "[律师] …"]`, `用户：`/`客服：`, `Q:`/`A:`), or one text
    whose lines start with the tags (a line without a tag continues the turn above). `options.speakers` maps
    each tag to a role; `options.field` names the field (default `history`, or `columns: {transcript: …}`)."""
    table = _speaker_table(ctx)
    name = ctx.cfg.options.get("field") or ("transcript" if "transcript" in ctx.cfg.columns else "history")
    value = _field(obj, name, ctx)
    known = ", ".join(repr(t) for t, _ in table)
    msgs: list[dict] = []
    if isinstance(value, str):
        for n, line in enumerate(value.split("\n"), start=1):
            hit = _tagged(line, table)
            if hit is not None:
                msgs.append({"role": hit[0], "content": hit[1]})
            elif msgs:
                msgs[-1]["content"] += "\n" + line
            elif line.strip():
                raise Invalid(f"field {name!r} line {n} comes before any speaker tag ({known})")
    elif isinstance(value, list) and value:
        for i, turn in enumerate(value):
            hit = _tagged(_text(turn, f"{name}[{i}]"), table)
            if hit is None:
                raise Invalid(f"{name}[{i}] starts with no known speaker tag ({known}): {str(turn)[:40]!r}")
            msgs.append({"role": hit[0], "content": hit[1]})
    else:
        raise Invalid(f"field {name!r} should be a list of tagged strings or one tagged text")
    msgs = [{"role": m["role"], "content": _text(m["content"].strip(), f"{name} ({m['role']} turn)")} for m in msgs]
    system = _system(obj, ctx)
    if system and (not msgs or msgs[0]["role"] != "system"):
        msgs = system + msgs
    return [new_record("messages", ctx.meta, messages=_check_dialogue(msgs, ctx))]


_HH_TURN = re.compile(r"\n\n(Human|Assistant):[ ]?")


def _hh_messages(text: Any, name: str) -> list[dict]:
    text = _text(text, name)
    parts = _HH_TURN.split(text)
    if len(parts) < 3 or parts[0].strip():
        raise Invalid(f"field {name!r} is not an HH transcript (\\n\\nHuman: … \\n\\nAssistant: …)")
    roles = {"Human": "user", "Assistant": "assistant"}
    return [{"role": roles[parts[i]], "content": parts[i + 1].strip()} for i in range(1, len(parts), 2)]


def hh(obj: dict, ctx: Context) -> list[Record]:
    """Anthropic HH-RLHF layout: `chosen`/`rejected` are whole transcripts; the prompt is their shared
    leading turns, chosen/rejected what follows (the last assistant turns)."""
    cm = _hh_messages(_field(obj, "chosen", ctx), "chosen")
    rm = _hh_messages(_field(obj, "rejected", ctx), "rejected")
    prompt, c, r = _split_prompt(cm, rm)
    if not prompt or prompt[-1]["role"] != "user":
        raise Invalid("chosen and rejected share no prompt ending in a Human turn")
    if not c or not r or c[0]["role"] != "assistant" or r[0]["role"] != "assistant":
        raise Invalid("chosen or rejected does not continue the prompt with an Assistant turn")
    for m in c + r:
        if not m["content"]:
            raise Invalid("an Assistant reply is empty")
    return [_preference(_role_order(prompt, ctx), c, r, ctx)]


# ---------------------------------------------------------------- registry and detection

@dataclass(frozen=True)
class Format:
    name: str
    convert: Callable[[Any, Context], list[Record]]
    detect: Callable[[Any], bool]


def _keys(obj: Any) -> set[str]:
    return set(obj) if isinstance(obj, dict) else set()


DOC_EXTRA = {"id", "title", "url", "meta", "source", "timestamp"}

FORMATS: dict[str, Format] = {f.name: f for f in [
    Format("kb", kb, lambda o: isinstance(o, list) and len(o) == 2 and isinstance(o[0], str)
           and isinstance(o[1], dict)),
    Format("crosswoz", crosswoz, lambda o: {"messages", "goal"} <= _keys(o) and isinstance(o["messages"], list)
           and bool(o["messages"]) and isinstance(o["messages"][0], dict) and o["messages"][0].get("role") in ("usr", "sys")),
    Format("message_pairs", message_pairs, lambda o: {"chosen_messages", "rejected_messages"} <= _keys(o)),
    Format("sharegpt", sharegpt, lambda o: "conversations" in _keys(o) and isinstance(o["conversations"], list)),
    Format("hh", hh, lambda o: {"chosen", "rejected"} <= _keys(o) and isinstance(o["chosen"], str)
           and o["chosen"].startswith("\n\nHuman:")),
    Format("preference", preference, lambda o: {"chosen", "rejected"} <= _keys(o)),
    Format("ranked", ranked, lambda o: {"instruction", "output"} <= _keys(o) and isinstance(o["output"], list)),
    Format("alpaca", alpaca, lambda o: {"instruction", "output"} <= _keys(o)),
    Format("messages", messages, lambda o: "messages" in _keys(o) and isinstance(o["messages"], list)),
    Format("chatglm", chatglm, lambda o: {"prompt", "response"} <= _keys(o)),
    Format("completion", completion, lambda o: {"prompt", "completion"} <= _keys(o)),
    Format("transcript", transcript, lambda o: False),  # proposed by `propose_transcript`, never guessed
    Format("prompt", prompt, lambda o: False),  # declared with `kind: prompt`, never guessed
    Format("document", document, lambda o: ("text" in _keys(o) and isinstance(o["text"], str))
           or ("content" in _keys(o) and isinstance(o["content"], str) and _keys(o) - {"content"} <= DOC_EXTRA)),
]}


def detect(samples: list[Any]) -> str | None:
    """The format most of the first records match, in FORMATS order (most specific first)."""
    votes: dict[str, int] = {}
    for obj in samples:
        for f in FORMATS.values():
            if f.detect(obj):
                votes[f.name] = votes.get(f.name, 0) + 1
                break
    if not votes:
        return None
    return max(votes, key=lambda k: votes[k])


_TAG = re.compile(r"^\s*(\[[^\]\n]{1,12}\]|【[^】\n]{1,12}】|[^\s:：\[\]]{1,12}[:：])")


def propose_transcript(samples: list[Any]) -> str | None:
    """Recipe lines for `format: transcript` when most sampled records hold speaker-tagged strings."""
    for name in ("history", "dialogue", "conversation", "conversations", "transcript", "text", "content"):
        tags: dict[str, int] = {}
        order: list[str] = []
        hits = total = 0
        for obj in samples:
            value = obj.get(name) if isinstance(obj, dict) else None
            if isinstance(value, str):
                value = value.split("\n")
            if not isinstance(value, list) or not value:
                continue
            total += 1
            found = [m.group(1) for v in value if isinstance(v, str) and (m := _TAG.match(v))]
            if len(found) >= max(2, len([v for v in value if isinstance(v, str) and v.strip()]) // 2):
                hits += 1
                for t in found:
                    if t not in tags:
                        order.append(t)
                    tags[t] = tags.get(t, 0) + 1
        if total and hits * 2 > total and 2 <= len(tags) <= 6:
            top = sorted(order, key=lambda t: -tags[t])[:2]
            first, second = sorted(top, key=order.index)
            roles = ", ".join(f'"{t}": {r}' for t, r in ((first, "user"), (second, "assistant")))
            return (f"format: transcript\noptions: {{field: {name}, speakers: {{{roles}}}}}\n"
                    f"(speaker tags seen: {', '.join(order[:6])}; check which tag is the user)")
    return None


PLACEHOLDER = re.compile(r"<([A-Z][A-Z_]*)>|\{\{\s*(\w+)\s*\}\}")


def fill_placeholders(rec: Record, variables: dict[str, str], source: str) -> Record:
    """Replace `<NAME>` / `{{name}}` with recipe variables; an unknown name is a recipe error, not data loss."""
    lookup = {k.lower(): v for k, v in variables.items()}

    def sub(m: re.Match) -> str:
        key = (m.group(1) or m.group(2)).lower()
        if key not in lookup:
            raise RecipeError(f"source {source!r} uses placeholder {m.group(0)} but the recipe's `variables` has "
                              f"no {key!r}")
        return lookup[key]

    return map_texts(rec, lambda text: PLACEHOLDER.sub(sub, text))
