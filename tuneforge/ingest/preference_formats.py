"""Source formats of preference data: ranked responses (every better/worse pair), prompt with chosen and
rejected (strings or whole conversations), LLaMA-Factory's message pairs and Anthropic HH transcripts. One
family of layouts a module; `formats.FORMATS` registers them."""

from __future__ import annotations

import re
from typing import Any

from tuneforge.common.errors import RecipeError
from tuneforge.common.records import Record, new_record
from tuneforge.ingest.fields import (
    Context,
    Invalid,
    _field,
    _instruction_prompt,
    _openai_messages,
    _pairs_to_messages,
    _preference,
    _role_order,
    _split_prompt,
    _system,
    _text,
)


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
