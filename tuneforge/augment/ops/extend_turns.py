"""`extend_turns`: a copy of a conversation with follow-up questions answered, and a closing exchange."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tuneforge.augment.ops.base import Operator, Outcome, StepContext
from tuneforge.augment.params import ExtendParams
from tuneforge.augment.request_types import ItemState
from tuneforge.augment.structured import ask, schema_line
from tuneforge.common.records import Record


class Exchange(BaseModel):
    user: str = Field(min_length=1)
    assistant: str = Field(min_length=1)


class Extension(BaseModel):
    followups: list[Exchange]
    closing: Exchange | None = None


def wire_schema(followups: int, closing: bool) -> dict:
    """Extension with exactly `followups` exchanges and the closing one required when asked for, so a
    grammar-constrained endpoint cannot produce a reply the step's check would refuse."""
    schema = Extension.model_json_schema()
    schema["properties"]["followups"].update(minItems=followups, maxItems=followups)
    if closing:
        schema["properties"]["closing"] = {"$ref": "#/$defs/Exchange"}
        schema["required"] = [*schema.get("required", []), "closing"]
    return schema


class ExtendTurns(Operator):
    creates = ("messages",)
    Params = ExtendParams

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: ExtendParams = ctx.params
        msgs = rec["messages"]
        if not msgs or msgs[-1]["role"] != "assistant":
            return Outcome(skipped="does_not_end_with_assistant")

        def check(ext: Extension) -> None:
            if len(ext.followups) < p.followups:
                raise ValueError(f"give exactly {p.followups} follow-up exchanges, not {len(ext.followups)}")
            if p.closing and ext.closing is None:
                raise ValueError("the closing exchange is missing")

        prompt = ctx.render(messages=msgs, followups=p.followups, closing=p.closing, schema=schema_line(Extension))
        ext, key = await ask(ctx, item, [{"role": "user", "content": prompt}], schema=Extension, check=check,
                             wire_schema=wire_schema(p.followups, p.closing))
        added = [x for x in ext.followups[:p.followups]] + ([ext.closing] if p.closing else [])
        new = [dict(m) for m in msgs]
        for x in added:
            new += [{"role": "user", "content": x.user.strip()}, {"role": "assistant", "content": x.assistant.strip()}]
        entry = ctx.op_entry([key], followups=p.followups, closing=p.closing)
        return Outcome(created=[ctx.derive(rec, "messages", 0, entry, messages=new)])
