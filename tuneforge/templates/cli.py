"""`tuneforge templates list|show|render`: see exactly what a model will be trained on."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.text import Text

from tuneforge.common.errors import TuneforgeError
from tuneforge.templates.chat_template import IGNORE_INDEX, ChatTemplate
from tuneforge.templates.registry import get_template, list_templates

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="Chat templates: list them, show one, render records with the trained part marked.")
out = Console(highlight=False, soft_wrap=True)

OPEN, CLOSE = "⟦", "⟧"
TRAINED = "bold green"

EXAMPLE = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "What is 2+2?"},
    {"role": "assistant", "content": "4."},
    {"role": "user", "content": "用中文再说一遍。"},
    {"role": "assistant", "content": "四。"},
]


def _tokenizer(ref: str | None) -> Any:
    if ref is None:
        return None
    from tuneforge.common.models import load_tokenizer

    return load_tokenizer(ref)


def _template(name: str, tok: Any) -> ChatTemplate:
    if name == "tokenizer" and tok is None:
        raise TuneforgeError("template 'tokenizer' needs --tokenizer (e.g. --tokenizer embedded:smollm2)")
    return get_template(name, tokenizer=tok)


def marked(text: str, spans: list[tuple[int, int]]) -> Text:
    """The text with each span bracketed and coloured (brackets survive when piped to a file)."""
    t = Text()
    pos = 0
    for s, e in spans:
        t.append(text[pos:s])
        t.append(OPEN, style="dim")
        t.append(text[s:e], style=TRAINED)
        t.append(CLOSE, style="dim")
        pos = e
    t.append(text[pos:])
    return t


def token_spans(tok: Any, text: str, labels: list[int]) -> list[tuple[int, int]]:
    """Character spans of the tokens that carry a label, merged where adjacent."""
    enc = tok(text, add_special_tokens=False, return_offsets_mapping=True)
    spans: list[tuple[int, int]] = []
    for (s, e), label in zip(enc["offset_mapping"], labels, strict=False):
        if label == IGNORE_INDEX or e <= s:
            continue
        if spans and s <= spans[-1][1]:
            spans[-1] = (spans[-1][0], max(e, spans[-1][1]))
        else:
            spans.append((s, e))
    return spans


def read_conversations(path: Path, limit: int) -> list[tuple[str, list[dict]]]:
    """(label, messages) for the first `limit` records that hold a conversation."""
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            rows = list(enumerate(json.loads(text), 1))
        except json.JSONDecodeError as e:
            raise TuneforgeError(f"{path}: not valid JSON: {e}") from None
    else:
        rows = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                rows.append((n, json.loads(line)))
            except json.JSONDecodeError as e:
                raise TuneforgeError(f"{path}:{n}: not valid JSON: {e.msg}") from None
    found: list[tuple[str, list[dict]]] = []
    for n, obj in rows:
        if not isinstance(obj, dict):
            continue
        if isinstance(obj.get("messages"), list):
            msgs = obj["messages"]
        elif isinstance(obj.get("prompt"), list) and isinstance(obj.get("chosen"), list):
            msgs = obj["prompt"] + obj["chosen"]
        else:
            continue
        found.append((f"{path.name}:{n}" + (f" id={obj['id']}" if "id" in obj else ""), msgs))
        if len(found) >= limit:
            break
    if not found:
        raise TuneforgeError(f"{path}: no record with a `messages` list (or prompt + chosen) found")
    return found


@app.command("list")
def list_cmd() -> None:
    """Registered templates and what they are."""
    for name in list_templates():
        if name == "tokenizer":
            out.print(f"{name:16} the model's own chat_template (needs --tokenizer)", markup=False)
            continue
        out.print(f"{name:16} {get_template(name).description}", markup=False)


@app.command()
def show(
    name: Annotated[str, typer.Argument(help="template name (tuneforge templates list) or a .jinja path")],
    hf: Annotated[bool, typer.Option("--hf", help="print the Hugging Face chat_template export instead")] = False,
    tokenizer: Annotated[str | None, typer.Option("--tokenizer", help="for the 'tokenizer' template")] = None,
) -> None:
    """A template's declaration, its Jinja2 source and an example rendering."""
    t = _template(name, _tokenizer(tokenizer))
    if hf:
        out.print(t.to_hf_chat_template(), markup=False)
        return
    d = t.decl
    for key in ("name", "description", "source", "default_system", "eot", "reply_prefix", "stop_strings",
                "trainable_roles", "tools", "special_tokens", "vars"):
        out.print(f"[bold]{key}[/bold]: ", end="")
        out.print(json.dumps(getattr(d, key), ensure_ascii=False), markup=False)
    out.print("[bold]jinja2[/bold]:")
    out.print(t.source, markup=False)
    r = t.render_spans(EXAMPLE)
    out.print(f"[bold]example[/bold] (trained part in {OPEN}{CLOSE}):")
    out.print(marked(r.text, r.spans))


@app.command("render")
def render_cmd(
    name: Annotated[str, typer.Argument(help="template name or a .jinja path")],
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="JSONL (or JSON array) with `messages`")],
    tokenizer: Annotated[str | None, typer.Option(
        "--tokenizer", help="mark trained tokens as this tokenizer splits them, e.g. embedded:smollm2")] = None,
    n: Annotated[int, typer.Option("-n", help="how many records")] = 3,
    train_on: Annotated[str, typer.Option("--train-on", help="all | last: which assistant replies are trained")] = "all",
) -> None:
    """Print the first records as the model will see them, the trained part marked ⟦like this⟧."""
    tok = _tokenizer(tokenizer)
    t = _template(name, tok)
    for label, msgs in read_conversations(file, n):
        out.rule(Text(label))
        r = t.render_spans(msgs)
        if tok is None:
            spans = r.spans[-1:] if train_on == "last" else r.spans
            out.print(marked(r.text, spans))
            continue
        enc = t.tokenize(tok, msgs, train_on=train_on)
        trained = sum(1 for x in enc["labels"] if x != IGNORE_INDEX)
        out.print(marked(r.text, token_spans(tok, r.text, enc["labels"])))
        out.print(f"[dim]{len(enc['input_ids'])} tokens, {trained} trained[/dim]")
