"""Fast unit tests of the augmentation engine's parts: config, selection, pacing, parsing, grounding, cache."""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from tuneforge.augment import AugmentConfig, load_config, run_augment
from tuneforge.augment.cache import CachedResponse, ResponseCache, cache_key
from tuneforge.augment.config import StepConfig
from tuneforge.augment.endpoint import EMBEDDED_ENDPOINT, public_url, resolve_endpoint
from tuneforge.augment.limits import RateLimiter, backoff_delay, parse_retry_after
from tuneforge.augment.ops.grounding import Vocabulary, price_cap, rating_floor, short_name, ungrounded
from tuneforge.augment.request_types import Redactor
from tuneforge.augment.select import draw, sample, select
from tuneforge.augment.structured import clean_text, extract_json
from tuneforge.common.errors import RecipeError
from tuneforge.common.records import new_record, provenance


def _msgs(n: int, source: str = "s") -> list[dict]:
    return [new_record("messages", provenance(source, "f.jsonl", i, i),
                       messages=[{"role": "user", "content": f"问{i}"}, {"role": "assistant", "content": "答"}])
            for i in range(n)]


# -- config ---------------------------------------------------------------------------------------------
def test_config_names_the_bad_field():
    with pytest.raises(RecipeError, match=r"augment\.llm\.temprature"):
        load_config({"llm": {"temprature": 0.5}})
    with pytest.raises(RecipeError, match=r"steps\.0\.op"):
        load_config({"steps": [{"op": "rewrit"}]})
    with pytest.raises(RecipeError, match=r"steps\[0\] \(rewrite\)\.params\.stlye"):
        load_config({"steps": [{"op": "rewrite", "params": {"stlye": "x"}}]})
    with pytest.raises(RecipeError, match="not an earlier step"):
        load_config({"steps": [{"op": "judge_filter", "select": {"from_steps": ["kb_queries"]}}, {"op": "kb_queries"}]})


def test_config_defaults_and_names():
    cfg = AugmentConfig.model_validate({"steps": [{"op": "rewrite"}, {"op": "rewrite"}, {"op": "kb_queries"}]})
    assert [s.name for s in cfg.steps] == ["rewrite", "rewrite_1", "kb_queries"]
    assert cfg.llm.api_key_env == "OPENAI_API_KEY" and cfg.llm.max_attempts >= 1


def test_no_steps_touches_nothing():
    recs = _msgs(3)
    res = run_augment(recs, AugmentConfig(), progress=False)
    assert res.records == recs and res.usage["requests"] == 0 and res.failures == []


# -- selection ------------------------------------------------------------------------------------------
def test_selection_is_deterministic_and_bounded():
    recs = [*_msgs(200), new_record("text", provenance("t", "t.txt", 0, 0), text="x")]
    step = StepConfig.model_validate({"op": "rewrite", "name": "rw", "select": {"p": 0.3}})
    a = select(recs, step, 7, {}, ("messages",))
    assert a == select(list(recs), step, 7, {}, ("messages",))
    assert 30 < len(a) < 90 and all(recs[i]["kind"] == "messages" for i in a)
    assert a != select(recs, step, 8, {}, ("messages",))
    limited = StepConfig.model_validate({"op": "rewrite", "name": "rw", "select": {"p": 0.3}, "limit": 10})
    b = select(recs, limited, 7, {}, ("messages",))
    assert len(b) == 10 and set(b) <= set(a) and b == sorted(b)
    # created records are only taken when asked for
    made = {recs[0]["id"]: "kb_queries"}
    step_all = StepConfig.model_validate({"op": "rewrite", "name": "rw"})
    assert 0 not in select(recs, step_all, 7, made, ("messages",))
    step_made = StepConfig.model_validate({"op": "rewrite", "name": "rw", "select": {"from_steps": ["kb_queries"]}})
    assert select(recs, step_made, 7, made, ("messages",)) == [0]
    by_source = StepConfig.model_validate({"op": "rewrite", "name": "rw", "select": {"sources": ["nope"]}})
    assert select(recs, by_source, 7, {}, ("messages",)) == []



def test_sample_is_the_rule_the_build_and_select_share():
    """Below `p`, then the `limit` smallest draws (ties: the earlier candidate), returned in candidate order;
    `limit=False` (a step that also takes created records, limited later among those) keeps every draw below p."""
    ids = [f"id-{i}" for i in range(300)]
    step = StepConfig.model_validate({"op": "rewrite", "name": "rw", "select": {"p": 0.5}, "limit": 7})
    below = [i for i, rid in enumerate(ids) if draw(3, "rw", rid) < 0.5]
    smallest = sorted(sorted(below, key=lambda i: (draw(3, "rw", ids[i]), i))[:7])
    assert sample(step, 3, ids) == smallest
    assert sample(step, 3, ids, limit=False) == below and 100 < len(below) < 200
    assert sample(step, 3, []) == []
    recs = _msgs(300)
    assert select(recs, step, 3, {}, ("messages",)) == sample(step, 3, [r["id"] for r in recs])

# -- pacing ---------------------------------------------------------------------------------------------
def test_backoff_grows_with_jitter_and_cap():
    d = [backoff_delay(a, 1.0, 8.0) for a in (1, 2, 3, 4, 5, 6)]
    assert 0.5 <= d[0] <= 1.0 and 1.0 <= d[1] <= 2.0 and 4.0 <= d[5] <= 8.0


def test_retry_after_forms():
    assert parse_retry_after({"retry-after": "2"}) == 2.0
    assert parse_retry_after({"retry-after-ms": "250", "retry-after": "9"}) == 0.25
    assert parse_retry_after({}) is None
    assert parse_retry_after({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}) == 0.0
    assert parse_retry_after({"retry-after": "soon"}) is None


def test_rate_limiter_paces_requests_per_minute():
    async def go() -> float:
        lim = RateLimiter(rpm=6000)  # 100/s, bucket of one second
        t = time.monotonic()
        for _ in range(150):
            await lim.acquire()
        return time.monotonic() - t

    assert 0.4 <= asyncio.run(go()) <= 1.5


def test_rate_limiter_paces_tokens_per_minute():
    async def go() -> float:
        lim = RateLimiter(tpm=60_000)  # 1,000 tokens a second
        t = time.monotonic()
        for _ in range(6):
            await lim.acquire(500)
        return time.monotonic() - t

    assert 1.5 <= asyncio.run(go()) <= 3.0  # 3,000 tokens: one second's bucket, then two seconds of refill


def test_rate_limiter_pause_holds_everyone():
    async def go() -> float:
        lim = RateLimiter()
        lim.pause(0.3)
        t = time.monotonic()
        await asyncio.gather(*(lim.acquire() for _ in range(5)))
        return time.monotonic() - t

    assert asyncio.run(go()) >= 0.28


# -- parsing --------------------------------------------------------------------------------------------
def test_extract_json_tolerates_fences_and_prose():
    assert extract_json('好的：\n```json\n{"a": 1}\n```') == {"a": 1}
    assert extract_json('Sure! {"a": {"b": [1, 2]}} hope it helps') == {"a": {"b": [1, 2]}}
    # a reply that is JSON as it stands is taken whole, whatever fences its strings hold
    whole = '{"answer": "write ```{}``` for an empty object"}'
    assert extract_json(whole) == {"answer": "write ```{}``` for an empty object"}
    with pytest.raises(ValueError):
        extract_json('{"a": 1')
    assert clean_text(" 改写：“今晚有空房吗？” ") == "今晚有空房吗？"
    with pytest.raises(ValueError):
        clean_text("  ")


# -- grounding ------------------------------------------------------------------------------------------
ROW = {"名称": "北京贵都大酒店", "酒店类型": "高档型", "地址": "北京西城区广安门内大街217号", "电话": "010-51979888",
       "酒店设施": ["吹风机", "健身房", "早餐服务免费"], "价格": 1354, "评分": 4.7}
FIELDS = {"name": "名称", "price": "价格", "rating": "评分", "facilities": "酒店设施", "categories": ["酒店类型"]}


def _vocab() -> Vocabulary:
    return Vocabulary(names={"北京贵都大酒店", "北京饭店"}, facilities={"吹风机", "健身房", "室内游泳池", "早餐服务"},
                      categories={"酒店类型": {"高档型", "经济型"}})


def test_slot_helpers():
    assert short_name("北京贵都大酒店") == "贵都"
    assert short_name("瑞尔威连锁饭店(北京西客站店)") == "瑞尔威连锁"
    assert short_name("北京饭店") == "北京饭店"
    assert price_cap(1354) == 1400 and price_cap(1400) == 1500
    assert rating_floor(4.7) == 4.5


def test_grounding_accepts_row_facts_and_rejects_others():
    v = _vocab()
    ok = "北京贵都大酒店是高档型酒店，每晚1354元，评分4.7，有健身房和早餐服务，没有室内游泳池，电话010-51979888。"
    assert ungrounded(ok, "预算1400以内", ROW, v, FIELDS, {"1400"}) == []
    assert any("999" in p for p in ungrounded("贵都每晚999元", "", ROW, v, FIELDS))
    assert any("室内游泳池" in p for p in ungrounded("贵都有室内游泳池", "", ROW, v, FIELDS))
    assert any("北京饭店" in p for p in ungrounded("推荐北京饭店", "", ROW, v, FIELDS))
    assert any("经济型" in p for p in ungrounded("这是一家经济型酒店", "", ROW, v, FIELDS))


# -- endpoint, secrets, cache ---------------------------------------------------------------------------
def test_endpoint_precedence():
    cfg = AugmentConfig.model_validate({"llm": {"base_url": "http://recipe:1/v1", "model": "r"}}).llm
    env = {"OPENAI_BASE_URL": "http://env:2/v1", "OPENAI_API_KEY": "sk-env-key"}
    assert resolve_endpoint(cfg, "http://cli:3/v1", "c", env).base_url == "http://cli:3/v1"
    spec = resolve_endpoint(cfg, None, None, env)
    assert (spec.base_url, spec.label, spec.api_key) == ("http://recipe:1/v1", "r", "sk-env-key")
    bare = AugmentConfig().llm
    assert resolve_endpoint(bare, None, "m", env).base_url == "http://env:2/v1"
    emb = resolve_endpoint(bare, None, None, {})
    assert emb.embedded == "smollm2" and emb.public_url == EMBEDDED_ENDPOINT and emb.label == "embedded:smollm2"
    with pytest.raises(RecipeError, match="API key"):
        resolve_endpoint(bare, None, "gpt-4o-mini", {})
    assert public_url("https://user:pw@host:8443/v1?api-key=s") == "https://host:8443/v1"


def test_redactor_removes_key_and_bearer_tokens():
    r = Redactor(["sk-secret-123"])
    assert r("error for Bearer abc.def and sk-secret-123") == "error for Bearer *** and ***"


def test_cache_persists_and_keys_differ(tmp_path):
    k1 = cache_key("m", [{"role": "user", "content": "a"}], {"temperature": 0.7}, "v1")
    assert k1 != cache_key("m", [{"role": "user", "content": "a"}], {"temperature": 0.7}, "v2")
    assert k1 != cache_key("m2", [{"role": "user", "content": "a"}], {"temperature": 0.7}, "v1")
    c = ResponseCache(tmp_path / "c.sqlite")
    c.put(k1, "m", CachedResponse("你好", 3, 2, "stop"))
    assert c.get(k1).content == "你好"
    c.close()
    c2 = ResponseCache(tmp_path / "c.sqlite")
    assert c2.get(k1) == CachedResponse("你好", 3, 2, "stop") and len(c2) == 1
    assert c2.get("missing") is None
    c2.close()
    assert json.loads(json.dumps({"ok": True}))


def test_a_missing_template_fails_before_any_request(tmp_path):
    from tuneforge.templates.loader import TemplateError

    cfg = AugmentConfig.model_validate({"llm": {"base_url": "http://127.0.0.1:9/v1", "model": "m"},
                                        "cache": str(tmp_path / "c.sqlite"),
                                        "steps": [{"op": "rewrite"}, {"op": "answer", "template": "mine.jinja"}]})
    with pytest.raises(TemplateError, match=r"mine\.jinja"):
        run_augment(_msgs(2), cfg, recipe_dir=tmp_path, progress=False)  # port 9: any request would fail otherwise


# -- params registry and the records table ---------------------------------------------------------------
def test_config_imports_no_operator_and_params_validate_once():
    import subprocess
    import sys

    code = ("import sys, tuneforge.augment.config as c; "
            "assert not [m for m in sys.modules if m.startswith(('tuneforge.augment.ops', 'tuneforge.augment.client'))]; "
            "s = c.load_config({'steps': [{'op': 'rewrite', 'params': {'turns': 'last'}}]}).steps[0]; "
            "assert s.op_params.turns == 'last' and s.op_params is s.op_params")
    subprocess.run([sys.executable, "-c", code], check=True)
    from tuneforge.augment.ops import OPERATORS
    from tuneforge.augment.params import OPS, PARAMS

    assert tuple(OPERATORS) == OPS and all(OPERATORS[n].Params is PARAMS[n] and OPERATORS[n].name == n for n in OPS)


def test_judge_reads_every_kind_from_the_records_table():
    from tuneforge.augment.ops.judge_filter import record_messages

    meta = provenance("s", "f", 0, 0)
    u = new_record("unpaired", meta, prompt=[{"role": "user", "content": "q"}],
                   completion=[{"role": "assistant", "content": "a"}], label=True)
    assert [m["content"] for m in record_messages(u)] == ["q", "a", "True"]
    p = new_record("preference", meta, prompt=[{"role": "user", "content": "q"}],
                   chosen=[{"role": "assistant", "content": "c"}], rejected=[{"role": "assistant", "content": "r"}])
    assert [m["content"] for m in record_messages(p)] == ["q", "c"]
    assert record_messages(new_record("text", meta, text="doc")) == [{"role": "document", "content": "doc"}]


def test_key_exhausted_headers_and_durations():
    from tuneforge.augment.limits import parse_duration, parse_key_exhausted

    assert parse_duration("6m0s") == 360.0 and parse_duration("20ms") == 0.02 and parse_duration("1.5") == 1.5
    assert parse_duration("soon") is None
    assert parse_key_exhausted({"retry-after": "2"}) is None  # a 429 about this request alone
    assert parse_key_exhausted({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "1s"}) == 1.0
    assert parse_key_exhausted({"x-ratelimit-remaining-tokens": "0", "retry-after": "3"}) == 3.0


def test_progress_projects_time_and_cost_left():
    from tuneforge.augment.progress import StepProgress, projection

    assert projection(0, 10, 5.0, 0.0) == (None, None)
    assert projection(5, 20, 10.0, 0.5) == (30.0, 1.5)
    bar = StepProgress(False)
    bar.begin("s", 4)
    assert "left ~" in bar.stats(2, 0, 0, 2, 0.2) and "$0.2000" in bar.stats(2, 0, 0, 2, 0.2)


def test_hedge_point_is_p95_with_a_floor():
    from tuneforge.augment.hedging import Latency

    lat = Latency()
    for _ in range(19):
        lat.observe(0.1)
    assert lat.hedge_after() is None  # too few samples
    lat.observe(0.1)
    assert lat.hedge_after() == pytest.approx(0.15)  # steady latency: 1.5x the median, not the p95
    for x in [1.0] * 10 + [0.1] * 170:
        lat.observe(x)
    assert lat.hedge_after() == pytest.approx(1.0)  # a slow tail: its p95


def test_window_bounds_in_flight_and_lets_a_copy_go_first():
    """The in-flight window: never more than its size, a hedge copy gets the next free slot before requests
    queued earlier, and a waiter cancelled before or just after it was handed a slot leaks nothing."""
    import asyncio

    from tuneforge.augment.limits import Window

    async def main() -> None:
        w = Window(2)
        order: list[str] = []
        inside = [0, 0]  # now, most

        async def use(name: str, first: bool = False, hold: float = 0.01) -> None:
            async with w.slot(first=first):
                inside[0] += 1
                inside[1] = max(inside[1], inside[0])
                order.append(name)
                await asyncio.sleep(hold)
                inside[0] -= 1

        holders = [asyncio.ensure_future(use(f"h{i}", hold=0.05)) for i in range(2)]
        await asyncio.sleep(0)
        queued = [asyncio.ensure_future(use(f"q{i}")) for i in range(3)]
        await asyncio.sleep(0)
        copy = asyncio.ensure_future(use("copy", first=True))
        doomed = asyncio.ensure_future(use("doomed"))
        await asyncio.sleep(0)
        assert w.locked()
        doomed.cancel()  # cancelled while it waits
        await asyncio.gather(*holders, *queued, copy, return_exceptions=True)
        assert order[:3] == ["h0", "h1", "copy"] and order[3:] == ["q0", "q1", "q2"], order
        assert inside[1] == 2 and w.free == 2 and not w.locked()
        # handed a slot and cancelled before it ran: the slot passes on
        w2 = Window(1)
        await w2._acquire(False)
        late = asyncio.ensure_future(w2._acquire(False))
        await asyncio.sleep(0)
        w2._release()  # hands the slot to `late` ...
        late.cancel()  # ... which is cancelled before it wakes
        await asyncio.gather(late, return_exceptions=True)
        assert w2.free == 1

    asyncio.run(main())
