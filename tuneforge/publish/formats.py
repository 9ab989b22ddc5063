"""Export formats: each a small writer from a canonical record to one JSON line, or None when the record's
shape cannot be said in that format (the count of such records is reported, never hidden).

`template:<name>` renders conversations through a registered chat template (ChatML, ChatGLM rounds,
the Alpaca prompt, ...) into `text` plus the last turn's `prompt`/`completion`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tuneforge.common.errors import RecipeError
from tuneforge.common.io import dumps
from tuneforge.common.records import Record


class NotRepresentable(Exception):
    """The record has a shape this format cannot express (e.g. tool turns in Alpaca)."""


def _alpaca(rec: Record) -> dict:
    msgs = rec["messages"]
    if len(msgs) == 2 and msgs[0]["role"] == "user" and msgs[1]["role"] == "assistant":  # one exchange
        return {"instruction": msgs[0]["content"], "input": "", "output": msgs[1]["content"], "history": []}
    system = msgs[0]["content"] if msgs[0]["role"] == "system" else None
    turns = msgs[1:] if system is not None else msgs
    if len(turns) % 2 or any(m["role"] != ("user", "assistant")[i % 2] for i, m in enumerate(turns)):
        raise NotRepresentable("alpaca needs alternating user/assistant turns")
    pairs = [[turns[i]["content"], turns[i + 1]["content"]] for i in range(0, len(turns), 2)]
    row = {"instruction": pairs[-1][0], "input": "", "output": pairs[-1][1], "history": pairs[:-1]}
    if system is not None:
        row["system"] = system
    return row


SHAREGPT_TAGS = {"user": "human", "assistant": "gpt", "system": "system", "tool": "observation"}


def _sharegpt_turns(msgs: list[dict]) -> list[dict]:
    return [{"from": SHAREGPT_TAGS[m["role"]], "value": m["content"]} for m in msgs if m["role"] != "system"]


def _sharegpt(rec: Record) -> dict:
    if rec["kind"] == "preference":
        # LLaMA-Factory's preference layout: the prompt as conversations, one chosen and one rejected turn.
        if len(rec["chosen"]) != 1 or len(rec["rejected"]) != 1:
            raise NotRepresentable("sharegpt preference needs a single chosen and rejected turn")
        row = {"conversations": _sharegpt_turns(rec["prompt"]),
               "chosen": _sharegpt_turns(rec["chosen"])[0], "rejected": _sharegpt_turns(rec["rejected"])[0]}
        msgs = rec["prompt"]
    else:
        msgs = rec["messages"]
        turns = [m["role"] for m in msgs if m["role"] != "system"]
        if turns[0] != "user":
            raise NotRepresentable("sharegpt needs the conversation to open with a user turn")
        row = {"conversations": _sharegpt_turns(msgs)}
    if msgs and msgs[0]["role"] == "system":
        row["system"] = msgs[0]["content"]
    return row


def _openai(rec: Record) -> dict:
    return {"messages": rec["messages"]}


def _trl(rec: Record) -> dict:
    if rec["kind"] == "preference":
        return {"prompt": rec["prompt"], "chosen": rec["chosen"], "rejected": rec["rejected"]}
    return {"prompt": rec["prompt"], "completion": rec["completion"], "label": rec["label"]}


def _text(rec: Record) -> dict:
    return {"text": rec["text"]}


@dataclass(frozen=True)
class Writer:
    name: str
    kinds: tuple[str, ...]
    row: Callable[[Record], dict]
    folder: str


WRITERS: dict[str, Writer] = {w.name: w for w in [
    Writer("openai", ("messages",), _openai, "openai"),
    Writer("alpaca", ("messages",), _alpaca, "alpaca"),
    Writer("sharegpt", ("messages", "preference"), _sharegpt, "sharegpt"),
    Writer("trl_preference", ("preference", "unpaired"), _trl, "trl_preference"),
    Writer("text", ("text",), _text, "text"),
]}
TEMPLATE_PREFIX = "template:"


def _template_writer(name: str) -> Writer:
    from tuneforge.templates import TemplateError, get_template

    tmpl = get_template(name)

    def row(rec: Record) -> dict:
        try:
            prompt, completion = tmpl.render_prompt_completion(rec["messages"])
            return {"text": tmpl.render(rec["messages"]), "prompt": prompt, "completion": completion}
        except TemplateError as e:  # a template that cannot express the record (tool turns, ...)
            raise NotRepresentable(f"template {name}: {e}") from e

    return Writer(f"{TEMPLATE_PREFIX}{name}", ("messages",), row, f"text-{name}")


def check_format(name: str) -> None:
    if name.startswith(TEMPLATE_PREFIX):
        from tuneforge.templates import list_templates

        tname = name[len(TEMPLATE_PREFIX):]
        if tname not in list_templates():
            raise ValueError(f"unknown chat template {tname!r}; known: {', '.join(list_templates())}")
    elif name not in WRITERS:
        raise ValueError(f"unknown format {name!r}; known: {', '.join(WRITERS)}, or template:<name>")


def get_writer(name: str) -> Writer:
    if name.startswith(TEMPLATE_PREFIX):
        return _template_writer(name[len(TEMPLATE_PREFIX):])
    if name not in WRITERS:
        raise RecipeError(f"unknown format {name!r}")
    return WRITERS[name]


def export_row(writer: Writer, rec: Record, meta_json: str | None = None) -> dict[str, Any]:
    """One export row: `id`, the format's fields, and `meta` (provenance, as a JSON string like the datasets'
    `meta` column, so every row has the same columns; `meta_json` when the caller has it); raises
    NotRepresentable."""
    return {"id": rec["id"], **writer.row(rec), "meta": dumps(rec["meta"]) if meta_json is None else meta_json}
