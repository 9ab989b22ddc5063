"""`preference`: sample k responses, have a judge score every candidate, emit chosen/rejected pairs.

The original reply can be a candidate too. A tie, or a margin under `margin`, makes no pair: those are
counted, not guessed at.
"""

from __future__ import annotations

from tuneforge.augment.ops.base import Operator, Outcome, Score, StepContext, gather_all
from tuneforge.augment.params import PreferenceParams
from tuneforge.augment.request_types import ItemState
from tuneforge.augment.structured import ask, schema_line
from tuneforge.common.records import Record


class Preference(Operator):
    """The step's `template` is the judge's prompt (default `preference.<lang>`)."""
    creates = ("preference",)

    Params = PreferenceParams

    def prepare(self, ctx: StepContext, records: list[Record]) -> None:
        ctx.extra["judge"] = ctx.llm.sampling(ctx.params.judge)

    async def run(self, ctx: StepContext, rec: Record, item: ItemState) -> Outcome:
        p: PreferenceParams = ctx.params
        msgs = rec["messages"]
        last_user = max((i for i, m in enumerate(msgs) if m["role"] == "user"), default=None)
        if last_user is None:
            return Outcome(skipped="no_user_turn")
        prompt = [dict(m) for m in msgs[:last_user + 1]]
        original = msgs[last_user + 1]["content"] if last_user + 1 < len(msgs) and \
            msgs[last_user + 1]["role"] == "assistant" else None
        send = prompt
        if p.system:
            send = [{"role": "system", "content": p.system}] + [m for m in prompt if m["role"] != "system"]

        samples = await gather_all(*(ask(ctx, item, send, sample=j, template_version="sample")
                                     for j in range(1, p.k + 1)))
        candidates: list[tuple[str, str]] = []
        if p.include_original and original and original.strip():
            candidates.append(("original", original.strip()))
        candidates += [(f"sample{j}", text) for j, (text, _) in enumerate(samples, 1)]
        seen: set[str] = set()
        candidates = [c for c in candidates if not (c[1] in seen or seen.add(c[1]))]
        if len(candidates) < 2:
            return Outcome(discarded="too_few_distinct")

        judge = ctx.extra["judge"]

        async def score(text: str) -> tuple[Score, str]:
            q = ctx.render(messages=prompt, response=text, rubric=p.rubric, schema=schema_line(Score))
            return await ask(ctx, item, [{"role": "user", "content": q}], schema=Score, sampling=judge)

        verdicts = await gather_all(*(score(text) for _, text in candidates))
        scored = [{"source": src, "score": v.score, "reason": v.reason[:500]}
                  for (src, _), (v, _) in zip(candidates, verdicts, strict=True)]
        best = max(range(len(scored)), key=lambda i: scored[i]["score"])
        worst = min(range(len(scored)), key=lambda i: scored[i]["score"])
        margin = scored[best]["score"] - scored[worst]["score"]
        if margin == 0:
            return Outcome(discarded="tie")
        if margin < p.margin:
            return Outcome(discarded="low_margin")
        keys = [k for _, k in samples] + [k for _, k in verdicts]
        entry = ctx.op_entry(keys, judge_model=judge.label, scores=scored, margin=margin)
        pair = ctx.derive(rec, "preference", 0, entry, prompt=prompt,
                          chosen=[{"role": "assistant", "content": candidates[best][1]}],
                          rejected=[{"role": "assistant", "content": candidates[worst][1]}])
        return Outcome(created=[pair])
