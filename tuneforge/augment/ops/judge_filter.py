"""`judge_filter`: a judge scores each record 1-10 with a rubric; records under the threshold are dropped."""

from __future__ import annotations

from pydantic import Field

from tuneforge.augment.client import ItemState
from tuneforge.augment.ops.base import Operator, OpParams, Outcome, Score, StepContext
from tuneforge.augment.structured import ask, schema_line
from tuneforge.common.records import Record


class JudgeParams(OpParams):
    threshold: float = Field(6, ge=1, le=10)
    rubric: str | None = None


def record_messages(rec: Record) -> list[dict]:
    if rec["kind"] == "messages":
        return rec["messages"]
    if rec["kind"] == "preference":
        return rec["prompt"] + rec["chosen"]
    if rec["kind"] == "text":
        return [{"role": "document", "content": rec["text"]}]
    return [{"role": "row", "content": str(rec.get("row"))}]


class JudgeFilter(Operator):
    name = "judge_filter"
    Params = JudgeParams

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: JudgeParams = ctx.params
        prompt = ctx.render(messages=record_messages(rec), kind=rec["kind"], rubric=p.rubric, schema=schema_line(Score))
        verdict, key = await ask(ctx, item, [{"role": "user", "content": prompt}], schema=Score)
        if verdict.score < p.threshold:
            return Outcome(drop=f"judge_filter: score {verdict.score} < {p.threshold:g} ({verdict.reason[:200]})")
        entry = ctx.op_entry([key], score=verdict.score, reason=verdict.reason[:500])
        return Outcome(replace=ctx.modified(rec, entry))
