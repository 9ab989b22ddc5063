"""`question_from_passage`: question/answer pairs grounded in a raw document (self-instruct style)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from tuneforge.augment.ops.base import Operator, Outcome, StepContext
from tuneforge.augment.params import QuestionParams
from tuneforge.augment.request_types import ItemState
from tuneforge.augment.structured import ask, schema_line
from tuneforge.common.records import Record


class QA(BaseModel):
    question: str = Field(min_length=2)
    answer: str = Field(min_length=1)


class QAList(BaseModel):
    pairs: list[QA] = Field(min_length=1)


def wire_schema(n: int) -> dict:
    """QAList with at most `n` pairs: a grammar-constrained endpoint then stops where the step would cut."""
    schema = QAList.model_json_schema()
    schema["properties"]["pairs"]["maxItems"] = n
    return schema


class QuestionFromPassage(Operator):
    Params = QuestionParams
    default_kinds = ("text",)
    creates = ("messages",)

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: QuestionParams = ctx.params
        passage = rec["text"].strip()[:p.max_chars]
        if len(passage) < p.min_chars:
            return Outcome(skipped="passage_too_short")

        def check(qa: QAList) -> None:
            for x in qa.pairs:
                if x.question.strip() == x.answer.strip():
                    raise ValueError("an answer repeats its question; answer it from the passage")

        prompt = ctx.render(passage=passage, n=p.n, schema=schema_line(QAList))
        qa, key = await ask(ctx, item, [{"role": "user", "content": prompt}], schema=QAList, check=check,
                            wire_schema=wire_schema(p.n))
        entry = ctx.op_entry([key])
        created = [ctx.derive(rec, "messages", k, entry, messages=[
            {"role": "user", "content": x.question.strip()}, {"role": "assistant", "content": x.answer.strip()}])
            for k, x in enumerate(qa.pairs[:p.n])]
        return Outcome(created=created)
