"""`rewrite`: rewrite chosen roles' turns in a new style, keeping the meaning; originals go to `meta`."""

from __future__ import annotations

import re

from tuneforge.augment.ops.base import Operator, Outcome, StepContext, gather_all
from tuneforge.augment.params import RewriteParams
from tuneforge.augment.request_types import ItemState
from tuneforge.augment.structured import ask
from tuneforge.common.records import Record

_NUMBER = re.compile(r"\d+(?:\.\d+)?")


def check_rewrite(original: str):
    """Meaning kept, crudely but checkably: every number survives, and the length stays in proportion."""

    def check(text: str) -> None:
        missing = [n for n in _NUMBER.findall(original) if n not in _NUMBER.findall(text)]
        if missing:
            raise ValueError(f"the rewrite drops the numbers {', '.join(missing)} of the original; keep every fact")
        if len(text) > max(4 * len(original), len(original) + 200):
            raise ValueError("the rewrite is far longer than the original; output only the rewritten sentence")

    return check


class Rewrite(Operator):
    Params = RewriteParams

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: RewriteParams = ctx.params
        msgs = rec["messages"]
        targets = [i for i, m in enumerate(msgs) if m["role"] in p.roles and m["content"].strip()]
        if p.turns == "first":
            targets = targets[:1]
        elif p.turns == "last":
            targets = targets[-1:]
        if not targets:
            return Outcome(skipped="no_turn_of_roles")

        async def one(i: int) -> tuple[str, str]:
            context = msgs[max(0, i - p.context_turns):i] if p.context_turns else []
            prompt = ctx.render(text=msgs[i]["content"], role=msgs[i]["role"], context=context)
            return await ask(ctx, item, [{"role": "user", "content": prompt}], check=check_rewrite(msgs[i]["content"]))

        results = await gather_all(*(one(i) for i in targets))
        out = ctx.modified(rec, ctx.op_entry([k for _, k in results], turns=targets))
        originals = out["meta"].setdefault("originals", [])
        for i, (text, _) in zip(targets, results, strict=True):
            originals.append({"step": ctx.step.name, "op": self.name, "index": i, "role": msgs[i]["role"],
                              "content": msgs[i]["content"]})
            out["messages"][i]["content"] = text
        return Outcome(replace=out)
