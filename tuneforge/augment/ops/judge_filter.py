"""`judge_filter`: a judge scores each record 1-10 with a rubric; records under the threshold are dropped."""

from __future__ import annotations

from tuneforge.augment.ops.base import Operator, Outcome, Score, StepContext
from tuneforge.augment.params import JudgeParams
from tuneforge.augment.request_types import ItemState
from tuneforge.augment.structured import ask, schema_line
from tuneforge.common.records import KINDS, Record


def record_messages(rec: Record) -> list[dict]:
    """What the judge reads, from the records table: every message field except the rejected reply (the
    judge scores what would be trained on), each text field as a `document` turn, each value as a `row`."""
    k = KINDS[rec["kind"]]
    out = [m for f in k.message_fields if f != "rejected" for m in rec[f]]
    out += [{"role": "document", "content": rec[f]} for f in k.text_fields]
    out += [{"role": f, "content": str(rec[f])} for f in k.value_fields if f in rec]
    return out


class JudgeFilter(Operator):
    Params = JudgeParams

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: JudgeParams = ctx.params
        prompt = ctx.render(messages=record_messages(rec), kind=rec["kind"], rubric=p.rubric, schema=schema_line(Score))
        verdict, key = await ask(ctx, item, [{"role": "user", "content": prompt}], schema=Score)
        if verdict.score < p.threshold:
            return Outcome(drop=f"judge_filter: score {verdict.score} < {p.threshold:g} ({verdict.reason[:200]})")
        entry = ctx.op_entry([key], score=verdict.score, reason=verdict.reason[:500])
        return Outcome(replace=ctx.modified(rec, entry))
