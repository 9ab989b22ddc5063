"""`answer`: fill in missing assistant replies, or regenerate existing ones, from the turns before them."""

from __future__ import annotations

from tuneforge.augment.ops.base import Operator, Outcome, StepContext, gather_all
from tuneforge.augment.params import AnswerParams
from tuneforge.augment.request_types import ItemState
from tuneforge.augment.structured import ask
from tuneforge.common.records import Record


class Answer(Operator):
    """A `prompt` record (a question from a `kind: prompt` source) is always filled, whatever the mode, and comes
    back as `messages`."""

    Params = AnswerParams
    default_kinds = ("messages", "prompt")
    creates = ("messages",)

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: AnswerParams = ctx.params
        msgs = [dict(m) for m in rec["messages"]]
        if p.mode == "fill" or rec["kind"] == "prompt":
            targets = [i for i, m in enumerate(msgs) if m["role"] == "assistant" and not m["content"].strip()]
            if msgs and msgs[-1]["role"] == "user":
                msgs.append({"role": "assistant", "content": ""})
                targets.append(len(msgs) - 1)
        else:
            targets = [i for i, m in enumerate(msgs) if m["role"] == "assistant"]
        if p.turns == "last":
            targets = targets[-1:]
        if not targets:
            return Outcome(skipped="nothing_to_answer")
        system = next((m["content"] for m in msgs if m["role"] == "system"), None)
        head = [{"role": "system", "content": ctx.render(system=system).strip()}]

        async def one(i: int) -> tuple[str, str]:
            context = [m for m in msgs[:i] if m["role"] != "system"]
            return await ask(ctx, item, head + context)

        results = await gather_all(*(one(i) for i in targets))
        out = ctx.modified(rec, ctx.op_entry([k for _, k in results], turns=targets))
        originals = out["meta"].setdefault("originals", [])
        out["messages"] = msgs
        out["kind"] = "messages"
        for i, (text, _) in zip(targets, results, strict=True):
            originals.append({"step": ctx.step.name, "op": self.name, "index": i, "role": "assistant",
                              "content": msgs[i]["content"] or None})
            msgs[i]["content"] = text
        return Outcome(replace=out)
