"""`run_augment`: the steps of a recipe's `augment:` block over the records, in order, as one async run."""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.augment.cache import ResponseCache
from tuneforge.augment.client import LLM
from tuneforge.augment.config import AugmentConfig, StepConfig, cache_path
from tuneforge.augment.endpoint import resolve_endpoint
from tuneforge.augment.ops import OPERATORS
from tuneforge.augment.ops.base import Operator, Outcome, Prompt, StepContext, load_template
from tuneforge.augment.progress import StepProgress
from tuneforge.augment.request_types import ItemState, ReplyTruncated, RequestFailed, Tally
from tuneforge.augment.select import select
from tuneforge.augment.structured import OutputInvalid
from tuneforge.common.gcpause import gc_frozen
from tuneforge.common.records import Record, reject_record

log = logging.getLogger("tuneforge.augment")


@dataclass
class AugmentResult:
    records: list[Record]
    rejects: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    counts: dict[str, dict[str, int]] = field(default_factory=dict)
    usage: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    # How JSON replies were asked for: json_schema | json_object | prompted (None: no JSON request was sent),
    # and what the capability probe saw.
    structured_output: str | None = None
    endpoint: dict[str, Any] = field(default_factory=dict)


def failed_step_warnings(manifest: dict) -> list[str]:
    """One line per augment step whose every selected item failed (a build that 'succeeds' with nothing
    generated): what failed, by kind, and where the reasons are."""
    out = []
    for name, c in (manifest.get("counts", {}).get("stages", {}).get("augment") or {}).items():
        if c.get("selected") and c.get("failed") == c["selected"]:
            kinds = ", ".join(f"{c[k]} {label}" for k, label in (("failed_truncated", "cut at max_tokens"),
                              ("failed_request", "request failed"), ("failed_invalid", "invalid reply")) if c.get(k))
            out.append(f"augment step {name!r}: all {c['selected']} items failed ({kinds}); "
                       "reasons in augment_failures.jsonl")
    return out


def run_augment(records: list[Record], cfg: AugmentConfig, recipe_dir: Path | None = None, seed: int = 42,
                llm_base_url: str | None = None, llm_model: str | None = None,
                progress: bool = True, preselected: dict[str, set[str]] | None = None) -> AugmentResult:
    """Apply every step; with no steps, the records come back untouched and no endpoint is contacted.
    `preselected` (step name -> record ids) replaces the draw for steps that take received records."""
    records = list(records)
    if not cfg.steps:
        return AugmentResult(records=records, usage=_usage(None, None))
    coro = _run(records, cfg, recipe_dir, seed, llm_base_url, llm_model, progress, preselected or {})
    with gc_frozen():
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run(coro)
        with concurrent.futures.ThreadPoolExecutor(1) as pool:  # called from inside an event loop
            return pool.submit(asyncio.run, coro).result()


def cost_usd(cfg: AugmentConfig, prompt_tokens: int, completion_tokens: int) -> float:
    return round((prompt_tokens * cfg.llm.price_per_1k_prompt
                  + completion_tokens * cfg.llm.price_per_1k_completion) / 1000, 6)


def _usage(llm: LLM | None, cfg: AugmentConfig | None, counts: dict[str, dict[str, Any]] | None = None
           ) -> dict[str, Any]:
    if llm is None or cfg is None:
        return {"requests": 0, "cached": 0, "prompt_tokens": 0, "completion_tokens": 0,
                "estimated_cost_usd": 0.0, "endpoint": None, "model": None, "structured_output": None,
                "by_op": {}}
    u = llm.usage
    by_op: dict[str, dict[str, Any]] = {}
    for c in (counts or {}).values():
        o = by_op.setdefault(c["op"], {"steps": 0, "requests": 0, "cached": 0, "prompt_tokens": 0,
                                       "completion_tokens": 0, "cost_usd": 0.0})
        o["steps"] += 1
        for k in ("cached", "prompt_tokens", "completion_tokens"):
            o[k] += c[k]
        o["requests"] += c["attempts"]
        o["cost_usd"] = round(o["cost_usd"] + c["cost_usd"], 6)
    return {"requests": u.requests, "completions": u.completions, "cached": u.cached, "hedges": u.hedges,
            "prompt_tokens": u.prompt_tokens, "completion_tokens": u.completion_tokens,
            "estimated_cost_usd": cost_usd(cfg, u.prompt_tokens, u.completion_tokens),
            "endpoint": llm.spec.public_url, "model": llm.spec.label, "structured_output": llm.structured,
            "by_op": by_op}


async def _run(records: list[Record], cfg: AugmentConfig, recipe_dir: Path | None, seed: int,
               llm_base_url: str | None, llm_model: str | None, progress: bool,
               preselected: dict[str, set[str]]) -> AugmentResult:
    t0 = time.monotonic()
    spec = resolve_endpoint(cfg.llm, llm_base_url, llm_model)
    cache = ResponseCache(cache_path(cfg, recipe_dir))
    llm = LLM(cfg.llm, spec, cache)
    result = AugmentResult(records=records)
    input_ids = {r["id"] for r in records}
    made_by: dict[str, str] = {}
    try:
        # Every template loads before the first request: a typo fails the run before it costs anything.
        prompts = {s.name: load_template(s.template or f"{OPERATORS[s.op].default_template or s.op}.{s.lang}",
                                         recipe_dir) for s in cfg.steps}
        repair = {lang: load_template(f"repair.{lang}", None) for lang in ("zh", "en")}
        await llm.resolve_model()
        with StepProgress(progress) as bar:
            for step in cfg.steps:
                records = await _step(step, records, cfg, llm, prompts[step.name], seed, made_by, input_ids,
                                      repair[step.lang], bar, result, preselected.get(step.name))
    finally:
        await llm.aclose()
        cache.close()
    result.records = records
    result.usage = _usage(llm, cfg, result.counts)
    result.structured_output = llm.structured
    result.endpoint = {"url": llm.spec.public_url, "model": llm.spec.label, "structured_output": llm.structured,
                       "configured": cfg.llm.response_format, "probe": llm.structured_probe, "hedging": llm.hedging}
    result.seconds = round(time.monotonic() - t0, 3)
    return result


async def _step(step: StepConfig, records: list[Record], cfg: AugmentConfig, llm: LLM, prompt: Prompt,
                seed: int, made_by: dict[str, str], input_ids: set[str], repair: Prompt, bar: StepProgress,
                result: AugmentResult, preselected: set[str] | None = None) -> list[Record]:
    op: Operator = OPERATORS[step.op]
    params = step.op_params
    tally = Tally()
    price = (cfg.llm.price_per_1k_prompt, cfg.llm.price_per_1k_completion)
    ctx = StepContext(step=step, params=params, llm=llm, sampling=llm.sampling(step.llm), prompt=prompt,
                      repair=repair, seed=seed, tally=tally)
    op.prepare(ctx, records)
    chosen = select(records, step, seed, made_by, op.default_kinds, preselected)
    counts: Counter = Counter(selected=len(chosen), done=0, failed=0, skipped=0, created=0, dropped=0)
    outcomes: dict[int, Outcome] = {}
    bar.begin(step.name, len(chosen))

    # Two item slots per in-flight request: an item waiting on its second request keeps the window full. An
    # item sleeping before a retry gives its slot up (ItemState.sleep), so retries never stall the queue.
    slots = asyncio.Semaphore(max(1, 2 * cfg.llm.concurrency))
    tasks: set[asyncio.Task] = set()
    failure: list[BaseException] = []
    left = [len(chosen)]
    finished = asyncio.Event()  # set when every item is done, or one failed the whole step

    async def one(i: int, item: ItemState) -> None:
        try:
            outcomes[i] = await op.run(ctx, records[i], item)
            counts["done"] += 1
        except (RequestFailed, OutputInvalid) as e:
            counts["failed"] += 1
            reason = llm.redact(str(e))
            counts["failed_invalid" if isinstance(e, OutputInvalid) else
                   "failed_truncated" if isinstance(e, ReplyTruncated) else "failed_request"] += 1
            result.failures.append({"step": step.name, "record_id": records[i]["id"], "reason": reason,
                                    "attempts": item.attempts})
        except BaseException as e:  # EndpointFailed, a template error: the step stops
            failure.append(e)
        finally:
            slots.release()
            left[0] -= 1
            if left[0] == 0 or failure:
                finished.set()
        cost = (tally.prompt_tokens * price[0] + tally.completion_tokens * price[1]) / 1000
        bar.update(counts["done"], counts["failed"], tally.cached, tally.attempts, cost, counts["failed_truncated"])

    try:
        for i in chosen:
            await slots.acquire()
            if failure:
                break
            t = asyncio.create_task(one(i, ItemState(slot=slots)))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
        if chosen:
            await finished.wait()
        if failure:
            raise failure[0]
    except BaseException:  # EndpointFailed, Ctrl-C: stop the other items too
        for t in list(tasks):
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise

    out: list[Record] = []
    for i, rec in enumerate(records):
        o = outcomes.get(i)
        if o is None:
            out.append(rec)
            continue
        if o.skipped:
            counts["skipped"] += 1
            counts[f"skipped_{o.skipped}"] += 1
        if o.discarded:
            counts["dropped"] += 1
            counts[f"dropped_{o.discarded}"] += 1
        if o.drop:
            counts["dropped"] += 1
            if rec["id"] in input_ids:
                result.rejects.append(reject_record(rec, o.drop, stage="augment", step=step.name))
            continue
        out.append(o.replace if o.replace is not None else rec)
        for new in o.created:
            made_by[new["id"]] = step.name
            out.append(new)
        counts["created"] += len(o.created)
    result.failures.sort(key=lambda f: (f["step"], f["record_id"]))
    counts.update(requested=tally.requested, cached=tally.cached, attempts=tally.attempts, retries=tally.retries,
                  hedges=tally.hedges, invalid_replies=ctx.invalid, json_valid=ctx.json_replies,
                  json_invalid=ctx.schema_invalid, prompt_tokens=tally.prompt_tokens,
                  completion_tokens=tally.completion_tokens)
    result.counts[step.name] = {"op": step.op, **counts,
                                "cost_usd": cost_usd(cfg, tally.prompt_tokens, tally.completion_tokens)}
    log.info("augment step %s: %s", step.name, dict(counts))
    return out
