"""LLM-judge win rate of tuned vs base on the same held-out prompts, through the augmentation engine's client.

Any OpenAI-compatible endpoint (the `judge.llm` block is an augment `llm:` block: base_url, model,
api_key_env, concurrency, retries); replies are cached in the augment response cache, so a re-run costs
nothing. Each pair is judged twice, once with the base answer shown first and once with the tuned answer
first, to cancel the judge's position bias. Per order the tuned answer scores 1 (wins), 0.5 (tie) or 0;
a pair's score is the mean of its two orders (a win in one order and a loss in the other is a tie). The win
rate is the mean pair score in percent (ties count half), with a percentile bootstrap CI over pairs.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.common.errors import TuneforgeError

TEMPLATE_VERSION = "eval-judge-v1"
SCHEMA = {"type": "object", "properties": {"winner": {"type": "string", "enum": ["A", "B", "tie"]},
                                           "reason": {"type": "string"}}, "required": ["winner"]}
DEFAULT_PROMPT = (
    "You are an impartial judge. Compare two assistant answers to the same user request. Judge helpfulness, "
    "correctness, faithfulness to the request and fluency (the request may be in Chinese; answer in either "
    "language). Do not let the order of the answers or their length decide. If they are equally good, say tie.\n\n"
    "[User request]\n{question}\n\n[Answer A]\n{answer_a}\n\n[Answer B]\n{answer_b}\n\n"
    "Reply with one JSON object: {{\"winner\": \"A\" | \"B\" | \"tie\", \"reason\": \"one sentence\"}}"
)
SCHEMA_LINE = "\nJSON Schema: " + json.dumps(SCHEMA)  # for endpoints that only take json_object


def parse_verdict(text: str) -> str | None:
    """"A", "B" or "tie" from the judge's reply (JSON `winner`, else `[[A]]`-style or a bare word)."""
    try:
        obj = json.loads(text)
        if isinstance(obj, dict) and isinstance(obj.get("winner"), str):
            w = obj["winner"].strip()
            return "tie" if w.lower() in ("tie", "c", "equal", "draw") else w.upper() if w.upper() in "AB" else None
    except (json.JSONDecodeError, TypeError):
        pass
    m = re.search(r"\[\[(A|B|C|tie)\]\]", text, re.I) or re.search(r"\b(A|B|tie)\b", text.strip()[:20], re.I)
    if not m:
        return None
    w = m.group(1)
    return "tie" if w.lower() in ("tie", "c") else w.upper()


def bootstrap_ci(scores: list[float], iters: int = 10000, seed: int = 0, level: float = 0.95) -> tuple[float, float]:
    x = np.asarray(scores, dtype=np.float64)
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(iters, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return 100.0 * float(lo), 100.0 * float(hi)


def pair_score(tuned_first: str | None, base_first: str | None) -> float | None:
    """Tuned's score over both orders: in `tuned_first` the tuned answer is A, in `base_first` it is B."""
    if tuned_first is None or base_first is None:
        return None
    s1 = {"A": 1.0, "tie": 0.5, "B": 0.0}[tuned_first]
    s2 = {"B": 1.0, "tie": 0.5, "A": 0.0}[base_first]
    return (s1 + s2) / 2


def summarize(pairs: list[dict], iters: int, seed: int) -> dict:
    scored = [p for p in pairs if p["score"] is not None]
    scores = [p["score"] for p in scored]
    res: dict[str, Any] = {"n": len(scored), "failed": len(pairs) - len(scored),
                           "wins": sum(s > 0.5 for s in scores), "ties": sum(s == 0.5 for s in scores),
                           "losses": sum(s < 0.5 for s in scores)}
    if scores:
        lo, hi = bootstrap_ci(scores, iters, seed)
        consistent = sum((p["tuned_first"] == "A") == (p["base_first"] == "B") and
                         (p["tuned_first"] == "tie") == (p["base_first"] == "tie") for p in scored)
        res.update(win_rate=round(100.0 * float(np.mean(scores)), 2), ci_low=round(lo, 2), ci_high=round(hi, 2),
                   position_consistency=round(100.0 * consistent / len(scored), 2),
                   first_position_preferred=round(100.0 * sum(
                       (p["tuned_first"] == "A") + (p["base_first"] == "A") for p in scored) / (2 * len(scored)), 2))
    else:
        res.update(win_rate=None, ci_low=None, ci_high=None, position_consistency=None)
    return res


def _question(row: dict) -> str:
    return row.get("question") or row.get("prompt") or ""


async def _judge_all(pairs: list[tuple[dict, dict]], jc: Any, cache_file: Path,
                     on_request: Callable[[int], None] | None = None) -> list[dict]:
    from tuneforge.augment.cache import ResponseCache
    from tuneforge.augment.client import LLM
    from tuneforge.augment.config import LLMConfig
    from tuneforge.augment.endpoint import resolve_endpoint
    from tuneforge.augment.request_types import ItemState, RequestFailed, Tally

    llm_cfg = LLMConfig.model_validate({"temperature": 0.0, "max_tokens": 256, **jc.llm})
    spec = resolve_endpoint(llm_cfg)
    cache = ResponseCache(cache_file)
    llm = LLM(llm_cfg, spec, cache)
    tally = Tally()
    template = jc.prompt or DEFAULT_PROMPT
    try:
        await llm.resolve_model()
        sampling = llm.sampling()

        async def one(question: str, a: str, b: str) -> str | None:
            text = template.format(question=question, answer_a=a, answer_b=b) + SCHEMA_LINE
            msgs = [{"role": "user", "content": text}]
            try:
                reply = await llm.complete(msgs, sampling, template_version=TEMPLATE_VERSION, tally=tally,
                                           item=ItemState(), json_schema=("judgment", SCHEMA))
            except RequestFailed:
                return None
            finally:
                if on_request is not None:
                    on_request(1)
            return parse_verdict(reply.content)

        jobs = []
        for b, t in pairs:
            q = _question(t)
            jobs.append(one(q, t["output"], b["output"]))  # tuned shown first
            jobs.append(one(q, b["output"], t["output"]))  # base shown first
        verdicts = await asyncio.gather(*jobs)
    finally:
        await llm.aclose()
        cache.close()
    out = []
    for i, (_b, t) in enumerate(pairs):
        tf, bf = verdicts[2 * i], verdicts[2 * i + 1]
        out.append({"id": t["id"], "tuned_first": tf, "base_first": bf, "score": pair_score(tf, bf)})
    usage = llm.usage
    out_usage = {"requests": usage.requests, "cached": usage.cached, "endpoint": spec.public_url,
                 "model": spec.label}
    return [*out, {"_usage": out_usage}]


def judge_win_rate(base_rows: list[dict], tuned_rows: list[dict], jc: Any, *, cache: str | Path | None = None,
                   progress: Callable[[str], None] | None = None) -> dict:
    """Win rate of tuned over base on the held-out prompts both answered (matched by id)."""
    from tuneforge.common.home import tuneforge_home

    base = {r["id"]: r for r in base_rows}
    pairs = [(base[t["id"]], t) for t in tuned_rows if t["id"] in base]
    if jc.limit:
        pairs = pairs[: jc.limit]
    if not pairs:
        raise TuneforgeError("judge: base and tuned have no held-out prompts in common")
    cache_file = Path(cache or getattr(jc, "cache", None) or tuneforge_home() / "augment" / "cache.sqlite")
    cache_file.parent.mkdir(parents=True, exist_ok=True)
    from tuneforge.eval.progress import Counter

    with Counter("judge", 2 * len(pairs), "requests", progress) as bar:  # each pair judged in both orders
        got = asyncio.run(_judge_all(pairs, jc, cache_file, bar.advance))
    usage = got.pop()["_usage"]
    return {**summarize(got, jc.bootstrap, jc.seed), "judge": usage["model"], "endpoint": usage["endpoint"],
            "requests": usage["requests"], "cached": usage["cached"], "pairs": got,
            "note": ("each pair judged in both orders (tuned first, base first); per pair the tuned answer "
                     "scores the mean over the two orders of 1 win / 0.5 tie / 0 loss; win rate = mean score "
                     f"in percent, 95% percentile bootstrap CI over pairs ({jc.bootstrap} resamples)")}
