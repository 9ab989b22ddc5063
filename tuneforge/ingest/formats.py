"""Source formats: one adapter per corpus layout, each turning a raw item into canonical records.

An adapter either returns records or raises `Invalid` with a reason a person understands; the ingest
stage turns that into a line of rejects.jsonl with the file and line. Adding a layout is adding one entry
to `FORMATS`; a corpus with odd field names needs only `columns:` in the recipe. This module holds the
registry, detection, placeholders and the two layouts that are not dialogues (documents, knowledge-base
rows); the dialogue, preference and transcript adapters have a module each, the helpers they share
`fields.py`.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.common.errors import RecipeError
from tuneforge.common.records import Record, map_texts, new_record
from tuneforge.ingest.dialogue_formats import (
    alpaca,
    chatglm,
    completion,
    crosswoz,
    messages,
    prompt,
    sharegpt,
)
from tuneforge.ingest.fields import Context, Invalid, _field, _text
from tuneforge.ingest.preference_formats import hh, message_pairs, preference, ranked
from tuneforge.ingest.transcript import transcript

# ---------------------------------------------------------------- layouts that are not dialogues

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
