"""The transcript source format: a dialogue as speaker-tagged strings, its adapter and the detection that
proposes the recipe lines for it (a transcript is never guessed: which tag is the user is the user's call)."""

from __future__ import annotations

import re
from typing import Any

from tuneforge.common.errors import RecipeError
from tuneforge.common.records import Record, new_record
from tuneforge.ingest.fields import Context, Invalid, _check_dialogue, _field, _system, _text


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
