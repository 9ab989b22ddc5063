"""Asking for an answer that must pass checks: JSON parsed and validated with pydantic, text cleaned.

An invalid reply is not retried blind: the model sees its own reply and the error, and answers again, up to
`repair_attempts` times; then the item is recorded as failed with that error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from pydantic import BaseModel, ValidationError

_FENCE = re.compile(r"```(?:json|JSON)?\s*(.*?)```", re.DOTALL)
_LABEL = re.compile(r"^\s*(?:改写后?[:：]|回复[:：]|回答[:：]|答[:：]|rewritten(?: text)?:|answer:|reply:)\s*", re.I)


class OutputInvalid(Exception):
    """The model's reply failed validation after every repair round."""


def schema_line(model: type[BaseModel]) -> str:
    """The JSON schema on one line, for a prompt's `JSON Schema:` line."""
    return json.dumps(model.model_json_schema(), ensure_ascii=False, separators=(",", ":"))


def extract_json(text: str) -> Any:
    """The JSON object in a reply, tolerating code fences and prose around it. A reply that is JSON as it
    stands (every grammar-constrained one) is taken whole: its strings may hold fences and braces of their own."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        pass
    else:
        if isinstance(value, dict):
            return value
    fenced = _FENCE.findall(text)
    candidates = [*fenced, text]
    for c in candidates:
        c = c.strip()
        start, end = c.find("{"), c.rfind("}")
        if start != -1 and end > start:
            try:
                return json.loads(c[start:end + 1])
            except json.JSONDecodeError:
                continue
    raise ValueError("the reply is not a JSON object")


def parse_json(text: str, model: type[BaseModel]) -> BaseModel:
    return model.model_validate(extract_json(text))


def clean_text(text: str) -> str:
    """Strip the wrappers weak models put around a plain answer (quotes, `Answer:` labels)."""
    t = _LABEL.sub("", text.strip()).strip()
    if len(t) >= 2 and t[0] == t[-1] and t[0] in "\"'“”「」":
        t = t[1:-1].strip()
    if len(t) >= 2 and t[0] in "“「" and t[-1] in "”」":
        t = t[1:-1].strip()
    if not t:
        raise ValueError("the reply is empty")
    return t


def describe(e: Exception) -> str:
    if isinstance(e, ValidationError):
        parts = []
        for err in e.errors()[:5]:
            loc = ".".join(str(p) for p in err["loc"]) or "(root)"
            parts.append(f"{loc}: {err['msg']}")
        return "; ".join(parts)
    return str(e)


async def ask(ctx: Any, item: Any, messages: list[dict], *, schema: type[BaseModel] | None = None,
              check: Callable[[Any], None] | None = None, sample: int = 0,
              sampling: Any = None, template_version: str | None = None,
              wire_schema: dict | None = None) -> tuple[Any, str]:
    """Send `messages`; return (validated value, cache key of the accepted reply).

    `wire_schema` is what the endpoint is sent when it is tighter than the pydantic model (a step's `n` as
    `maxItems`, say); the reply is still validated with `schema`. When the endpoint takes no `response_format`
    (`auto` fell back to `prompted`), an invalid reply gets at least one repair round."""
    msgs = list(messages)
    sampling = sampling or ctx.sampling
    js = (schema.__name__, wire_schema or schema.model_json_schema()) if schema else None
    error = ""
    rounds = ctx.llm.cfg.repair_attempts + 1
    n = 0
    while n < rounds:
        n += 1
        reply = await ctx.llm.complete(msgs, sampling, template_version=template_version or ctx.template_version,
                                       tally=ctx.tally, item=item, json_schema=js, sample=sample)
        if schema is not None and ctx.llm.structured == "prompted" and sampling.response_format == "auto":
            rounds = max(rounds, 2)
        try:
            try:
                value = parse_json(reply.content, schema) if schema else clean_text(reply.content)
            except (ValueError, ValidationError):
                if schema is not None:
                    ctx.schema_invalid += 1  # not JSON, or not an instance of the schema
                raise
            if schema is not None:
                ctx.json_replies += 1
            if check is not None:
                check(value)
            return value, reply.key
        except (ValueError, ValidationError) as e:
            error = describe(e)
            ctx.tally_invalid()
            repair = ctx.render_repair(error=error, expects_json=schema is not None)
            msgs = [*msgs, {"role": "assistant", "content": reply.content}, {"role": "user", "content": repair}]
    raise OutputInvalid(f"invalid output after {n} tries: {error}"[:500])
