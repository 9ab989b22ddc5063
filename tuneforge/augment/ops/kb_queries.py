"""`kb_queries`: user queries with slot constraints synthesised from knowledge-base rows, with grounded answers.

The constraint (name, short name, price cap, facilities, rating) is chosen in code from the row, so the query
asks something the data can answer; the answer is checked against the row (see grounding.py) and a claim the
row does not make is sent back to the model as an error.
"""

from __future__ import annotations

from pydantic import BaseModel, Field

from tuneforge.augment.ops.base import Operator, Outcome, StepContext, gather_all
from tuneforge.augment.ops.grounding import Vocabulary, price_cap, rating_floor, short_name, ungrounded
from tuneforge.augment.params import KBFields, KBParams
from tuneforge.augment.request_types import ItemState
from tuneforge.augment.structured import ask, schema_line
from tuneforge.common.records import Record


class KBQuery(BaseModel):
    query: str = Field(min_length=2)
    answer: str = Field(min_length=1)


def plan_constraint(kind: str, row: dict, p: KBParams, rng) -> dict | None:
    """The slot a query must carry, computed from the row; None if the row lacks the field."""
    f = p.fields
    name = str(row.get(f.name) or "").strip()
    if kind == "name" and name:
        return {"type": kind, "value": name, "must_mention": [name]}
    if kind == "short_name" and name:
        short = short_name(name, tuple(p.strip_prefixes))
        return {"type": kind, "value": short, "must_mention": [short]}
    if kind == "price_cap" and isinstance(row.get(f.price), int | float):
        cap = price_cap(row[f.price])
        return {"type": kind, "value": cap, "must_mention": [str(cap)]}
    if kind == "rating" and isinstance(row.get(f.rating), int | float):
        floor = rating_floor(row[f.rating])
        return {"type": kind, "value": floor, "must_mention": [f"{floor:g}"]}
    facs = [str(x).strip() for x in row.get(f.facilities) or [] if str(x).strip()]
    if kind == "facilities" and facs:
        chosen = sorted(rng.sample(facs, min(len(facs), rng.choice([1, 2]))))
        return {"type": kind, "value": chosen, "must_mention": chosen}
    return None


class KBQueries(Operator):
    Params = KBParams
    default_kinds = ("kb",)
    creates = ("messages",)

    def prepare(self, ctx: StepContext, records: list[Record]) -> None:
        f: KBFields = ctx.params.fields
        vocab = Vocabulary()
        for r in records:
            if r["kind"] != "kb":
                continue
            row = r["row"]
            if row.get(f.name):
                vocab.names.add(str(row[f.name]))
            vocab.facilities.update(s for x in row.get(f.facilities) or [] if (s := str(x).strip()))
            for key in f.categories:
                if row.get(key):
                    vocab.categories.setdefault(key, set()).add(str(row[key]))
        ctx.extra["vocab"] = vocab

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: KBParams = ctx.params
        row = rec["row"]
        rng = ctx.rng(rec["id"])
        options = list(p.constraints)
        rng.shuffle(options)
        plans = []
        for k in range(p.n):  # a different constraint for each query, as far as the row allows
            turn = options[k % len(options):] + options[:k % len(options)]
            plan = next((c for c in (plan_constraint(o, row, p, rng) for o in turn) if c), None)
            if plan is None:
                return Outcome(skipped="row_lacks_fields")
            plans.append(plan)

        async def one(k: int, plan: dict) -> tuple[KBQuery, str]:
            def check(q: KBQuery) -> None:
                missing = [m for m in plan["must_mention"] if m not in q.query]
                if missing:
                    raise ValueError(f"the query must mention {', '.join(missing)}")
                if p.check_grounding:
                    allowed = {str(plan["value"])} if plan["type"] in ("price_cap", "rating") else set()
                    problems = ungrounded(q.answer, q.query, row, ctx.extra["vocab"], p.fields.model_dump(), allowed)
                    if problems:
                        raise ValueError("the answer is not grounded in the row: " + "; ".join(problems))

            shown = {k: v for k, v in row.items() if k not in p.omit_fields}
            prompt = ctx.render(row=shown, constraint=plan, schema=schema_line(KBQuery))
            return await ask(ctx, item, [{"role": "user", "content": prompt}], schema=KBQuery, check=check, sample=k)

        results = await gather_all(*(one(k, plan) for k, plan in enumerate(plans)))
        created = []
        for k, (plan, (q, key)) in enumerate(zip(plans, results, strict=True)):
            entry = ctx.op_entry([key], constraint={"type": plan["type"], "value": plan["value"]})
            created.append(ctx.derive(rec, "messages", k, entry, messages=[
                {"role": "user", "content": q.query.strip()}, {"role": "assistant", "content": q.answer.strip()}]))
        return Outcome(created=created)
