"""The request path against the loopback fault-injection server: faults, retries, cache, resume, secrets."""

from __future__ import annotations

import itertools
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_openai_server import FakeOpenAIServer, Plan  # tests/ is on sys.path under pytest
from fake_openai_server import default_responder as fake_default

from tuneforge.augment import AugmentConfig, run_augment
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.records import new_record, provenance

REPO = Path(__file__).resolve().parents[1]
SECRET = "sk-test-DO-NOT-LEAK-4242"
PLAIN = "一二三四五六七八九十甲乙丙丁戊己庚辛壬癸"  # no digits: rewrite keeps every number trivially


def convs(n: int, source: str = "demo") -> list[dict]:
    return [new_record("messages", provenance(source, "d.jsonl", i, i), messages=[
        {"role": "user", "content": f"我想订一间安静的房间，{PLAIN[i % 20]}{PLAIN[i // 20 % 20]}{PLAIN[i // 400 % 20]}"},
        {"role": "assistant", "content": "好的，请问您什么时候入住？"}]) for i in range(n)]


def config(url: str, tmp: Path, steps: list[dict], **llm) -> AugmentConfig:
    # json_schema: the fake server answers JSON requests with an instance of the schema they carry
    base = {"base_url": url, "model": "fake-model", "concurrency": 8, "timeout_s": 2.0, "max_attempts": 4,
            "backoff_base_s": 0.01, "backoff_max_s": 0.05, "response_format": "json_schema"}
    base.update(llm)
    return AugmentConfig.model_validate({"llm": base, "cache": str(tmp / "cache.sqlite"), "steps": steps})


@pytest.fixture
def server():
    srv = FakeOpenAIServer(Plan(hang_s=3.0, retry_after=0.05, seed=1)).start()
    yield srv
    srv.stop()


def test_twenty_percent_faults_complete_and_reconcile(server, tmp_path):
    server.plan.update({"fault_rate": 0.2})
    recs = convs(150)
    cfg = config(server.base_url, tmp_path, [{"op": "rewrite", "params": {"context_turns": 0}}],
                 timeout_s=0.5, concurrency=16)
    res = run_augment(recs, cfg, progress=False)
    c = res.counts["rewrite"]
    assert c["selected"] == 150 and c["done"] + c["failed"] + c["skipped"] == 150
    assert sum(server.stats.faults.values()) > 20 and len(server.stats.faults) >= 5  # every kind was injected
    # Every HTTP attempt is counted; one cancelled (a hedge's loser, a deadline) before its request reached the
    # server is counted by the client only, so on a busy machine the server may have seen fewer.
    assert res.usage["requests"] == c["attempts"] >= server.stats.chat >= c["done"]
    assert c["retries"] > 0 and c["done"] >= 140
    failed = {f["record_id"]: f for f in res.failures}
    assert len(failed) == c["failed"]
    by_id = {r["id"]: r for r in res.records}
    assert len(res.records) == 150  # nothing dropped silently
    for r in recs:
        out = by_id[r["id"]]
        if r["id"] in failed:
            assert out == r and failed[r["id"]]["reason"] and failed[r["id"]]["attempts"] >= 1
        else:
            assert out["meta"]["ops"][-1]["op"] == "rewrite"
            assert out["meta"]["originals"][0]["content"] == r["messages"][0]["content"]


def test_exhausted_attempts_are_failures_with_reasons(server, tmp_path, monkeypatch, caplog, capsys):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    server.plan.update({"fault_rate": 1.0, "faults": ["500"]})  # its error body echoes the Authorization header
    caplog.set_level(logging.DEBUG, logger="tuneforge.augment")
    res = run_augment(convs(5), config(server.base_url, tmp_path, [{"op": "rewrite"}], max_attempts=3), progress=True)
    assert res.counts["rewrite"]["failed"] == 5 and server.stats.chat == 15
    assert all(f["attempts"] == 3 and "HTTP 500" in f["reason"] for f in res.failures)
    # the key was sent, and appears nowhere we write
    assert f"Bearer {SECRET}" in server.stats.auth
    assert "Bearer ***" in res.failures[0]["reason"]
    dumped = json.dumps([res.records, res.failures, res.counts, res.usage, res.rejects], ensure_ascii=False)
    assert SECRET not in dumped and SECRET not in caplog.text
    out = capsys.readouterr()
    assert SECRET not in out.out + out.err
    for f in tmp_path.iterdir():
        assert SECRET.encode() not in f.read_bytes(), f


def test_retry_after_is_honoured(server, tmp_path):
    server.plan.update({"fault_rate": 0.5, "faults": ["429"], "retry_after": 0.3})
    res = run_augment(convs(8), config(server.base_url, tmp_path, [{"op": "rewrite"}], concurrency=1,
                                       max_attempts=8, backoff_base_s=0.0, backoff_max_s=0.0), progress=False)
    assert res.counts["rewrite"]["done"] == 8
    log = server.stats.log
    waits = []
    for n, a in enumerate(log):
        if a["fault"] == "429":
            retry = next(b for b in log[n + 1:] if b["key"] == a["key"])
            waits.append(retry["t"] - a["t"])
            # the 429 is about that request: others go on meanwhile (the window has one slot: it was free)
            assert any(b["key"] != a["key"] for b in log[n + 1:] if b["t"] < retry["t"]) or retry is log[n + 1]
    assert waits and min(waits) >= 0.28  # backoff is 0 here: only Retry-After can explain the wait
    others = [b["t"] - a["t"] for a, b in itertools.pairwise(log) if a["fault"] == "429" and b["key"] != a["key"]]
    assert others and min(others) < 0.1  # and it paused nobody else


def test_a_spent_key_pauses_every_worker(server, tmp_path):
    server.plan.update({"fault_rate": 0.3, "faults": ["429"], "retry_after": 0.3, "key_exhausted": True})
    res = run_augment(convs(8), config(server.base_url, tmp_path, [{"op": "rewrite"}], concurrency=1,
                                       max_attempts=10, backoff_base_s=0.0, backoff_max_s=0.0), progress=False)
    assert res.counts["rewrite"]["done"] == 8
    log = server.stats.log
    waits = [b["t"] - a["t"] for a, b in itertools.pairwise(log) if a["fault"] == "429"]
    # x-ratelimit-remaining-requests: 0 holds every request back until the reset (0.3 s), not just the one
    assert waits and min(waits) >= 0.25


def test_hangs_time_out(server, tmp_path):
    server.plan.update({"fault_rate": 1.0, "faults": ["hang"]})
    t = time.monotonic()
    res = run_augment(convs(2), config(server.base_url, tmp_path, [{"op": "rewrite"}], timeout_s=0.3,
                                       max_attempts=2), progress=False)
    assert time.monotonic() - t < 3
    assert [f["reason"].split(" ")[0] for f in res.failures] == ["timeout", "timeout"]


def test_second_run_makes_zero_requests(server, tmp_path):
    steps = [{"op": "rewrite", "limit": 6}, {"op": "extend_turns", "select": {"p": 0.5}},
             {"op": "preference", "limit": 4, "params": {"k": 2}}, {"op": "judge_filter", "limit": 5},
             {"op": "answer", "limit": 3, "params": {"mode": "regenerate"}}]
    recs = convs(20)
    first = run_augment(recs, config(server.base_url, tmp_path, steps), seed=3, progress=False)
    n = server.stats.chat
    assert n > 20 and first.usage["requests"] == n
    second = run_augment(recs, config(server.base_url, tmp_path, steps), seed=3, progress=False)
    assert server.stats.chat == n and second.usage["requests"] == 0
    assert second.usage["cached"] == first.usage["cached"] + first.usage["completions"]
    assert json.dumps(second.records, sort_keys=True) == json.dumps(first.records, sort_keys=True)
    assert second.rejects == first.rejects
    # another seed samples other records: new requests
    run_augment(recs, config(server.base_url, tmp_path, steps), seed=4, progress=False)
    assert server.stats.chat > n


def test_invalid_json_is_repaired_with_the_error_shown(server, tmp_path):
    docs = [new_record("text", provenance("doc", "t.txt", i, i), text=f"{PLAIN} 第{i}段：北京有故宫和天坛。" * 3)
            for i in range(30)]
    server.plan.update({"fault_rate": 0.3, "faults": ["bad_content"]})
    # Hedging off: on a loaded machine a hedge copy of a slow reply is a second successful request for one
    # item, and this test counts the server's successful requests against the items done.
    res = run_augment(docs, config(server.base_url, tmp_path, [{"op": "question_from_passage", "params": {"n": 2}}],
                                   repair_attempts=3, hedge=False), progress=False)
    c = res.counts["question_from_passage"]
    assert c["invalid_replies"] > 0 and c["done"] >= 25 and c["created"] == 2 * c["done"]
    repaired = [e for e in server.stats.log if e["fault"] is None]
    assert len(repaired) == c["done"]
    new = [r for r in res.records if r["kind"] == "messages"]
    assert all(r["meta"]["group"] == next(d for d in docs if d["id"] == r["meta"]["derived_from"])["meta"]["group"]
               for r in new)


def test_always_invalid_output_fails_after_repairs(server, tmp_path):
    server.plan.update({"fault_rate": 1.0, "faults": ["bad_content"]})
    docs = [new_record("text", provenance("doc", "t.txt", 0, 0), text="北京有故宫和天坛，是中国的首都。" * 3)]
    res = run_augment(docs, config(server.base_url, tmp_path, [{"op": "question_from_passage"}], repair_attempts=2),
                      progress=False)
    assert res.counts["question_from_passage"]["failed"] == 1 and server.stats.chat == 3
    assert res.failures[0]["reason"].startswith("invalid output after 3 tries")
    # the repair request carried the model's reply and the error
    assert res.records == docs


def test_judge_filter_drops_into_rejects(server, tmp_path):
    recs = convs(12)
    low = ("房间，二", "房间，三")
    server.responder = lambda body: json.dumps({"score": 3 if any(x in body["messages"][-1]["content"] for x in low)
                                                else 8, "reason": "r"})
    res = run_augment(recs, config(server.base_url, tmp_path, [{"op": "judge_filter", "params": {"threshold": 6}}]),
                      progress=False)
    c = res.counts["judge_filter"]
    assert c["dropped"] == len(res.rejects) == 2 and c["dropped"] + len(res.records) == 12
    assert all(r["stage"] == "augment" and "score 3" in r["reason"] and r["raw"]["id"] == r["id"] for r in res.rejects)
    assert all(r["meta"]["ops"][-1]["score"] == 8 for r in res.records)


def test_preference_pairs_and_ties(server, tmp_path):
    recs = convs(10)

    def judge(body: dict) -> str:
        text = body["messages"][-1]["content"]
        if "response_format" not in body:  # a sample, not a verdict
            return f"候选回复 {len(text)}"
        return json.dumps({"score": 9 if "候选回复" in text else (5 if "一一" in text else 2), "reason": "r"})

    server.responder = judge
    res = run_augment(recs, config(server.base_url, tmp_path, [{"op": "preference", "params": {"k": 1}}]),
                      progress=False)
    c = res.counts["preference"]
    pairs = [r for r in res.records if r["kind"] == "preference"]
    assert c["created"] == len(pairs) == 10 and c["dropped"] == 0
    for p in pairs:
        assert p["chosen"][0]["content"].startswith("候选回复") and p["prompt"][-1]["role"] == "user"
        assert p["meta"]["ops"][-1]["margin"] >= 1 and len(p["meta"]["ops"][-1]["scores"]) == 2
    server.responder = lambda body: (json.dumps({"score": 7, "reason": "same"}) if "response_format" in body
                                     else "另一个回复")
    res2 = run_augment(recs, config(server.base_url, tmp_path / "other", [{"op": "preference", "params": {"k": 1}}]),
                       progress=False)
    assert res2.counts["preference"]["dropped_tie"] == 10 and res2.counts["preference"]["created"] == 0


def test_kb_queries_checks_grounding(server, tmp_path, shared):
    rows = json.loads((shared / "crosswoz" / "database" / "hotel_db.json").read_text(encoding="utf-8"))[:6]
    kb = [new_record("kb", provenance("hotel_db", "hotel_db.json", None, i), row=row) for i, (_, row) in enumerate(rows)]

    def grounded(body: dict) -> str:
        prompt = body["messages"][0]["content"]
        row = json.loads(prompt.splitlines()[1])
        line = next(x for x in prompt.splitlines() if "提问必须包含这个条件" in x)
        must = re.search(r"「(.+?)」", line) or re.search(r"(\d+(?:\.\d+)?)", line)
        query = f"请问{must.group(1)}那边怎么样？"
        answer = f"{row['名称']}每晚{row['价格']}元，评分{row['评分']}。"
        if "跑题" in os.environ.get("KB_MODE", ""):
            answer += "另外它有室内游泳池，每晚只要99元。"
        return json.dumps({"query": query, "answer": answer}, ensure_ascii=False)

    server.responder = grounded
    steps = [{"op": "kb_queries", "params": {"n": 2, "constraints": ["short_name", "price_cap"]}}]
    res = run_augment(kb, config(server.base_url, tmp_path, steps), progress=False)
    c = res.counts["kb_queries"]
    assert c["done"] == 6 and c["created"] == 12, res.failures
    made = [r for r in res.records if r["kind"] == "messages"]
    assert {r["meta"]["ops"][-1]["constraint"]["type"] for r in made} == {"short_name", "price_cap"}
    assert len([r for r in res.records if r["kind"] == "kb"]) == 6  # kb rows stay
    os.environ["KB_MODE"] = "跑题"
    try:
        bad = run_augment(kb, config(server.base_url, tmp_path / "other", steps), progress=False)
    finally:
        del os.environ["KB_MODE"]
    assert bad.counts["kb_queries"]["failed"] == 6
    assert all("not grounded" in f["reason"] and "99" in f["reason"] for f in bad.failures)


def test_fatal_endpoint_errors_stop_the_run(server, tmp_path):
    with pytest.raises(TuneforgeError, match="not found"):
        run_augment(convs(3), config(server.base_url.replace("/v1", "/nope"), tmp_path, [{"op": "rewrite"}]),
                    progress=False)
    server.plan.update({"fault_rate": 1.0, "faults": ["401"]})
    with pytest.raises(TuneforgeError, match="authentication failed"):
        run_augment(convs(30), config(server.base_url, tmp_path, [{"op": "rewrite"}]), progress=False)
    assert server.stats.chat < 30  # stopped early, not once per item


KILL_SCRIPT = """
import json, sys
from pathlib import Path
from tuneforge.augment import AugmentConfig, run_augment
recs = json.loads(Path(sys.argv[1]).read_text())
cfg = AugmentConfig.model_validate(json.loads(Path(sys.argv[2]).read_text()))
run_augment(recs, cfg, progress=False)
print("FINISHED")
"""


def test_kill_nine_then_resume(server, tmp_path):
    server.plan.update({"latency": 0.25})
    recs = convs(60)
    cfg = config(server.base_url, tmp_path, [{"op": "rewrite"}], concurrency=4)
    (tmp_path / "recs.json").write_text(json.dumps(recs, ensure_ascii=False))
    (tmp_path / "cfg.json").write_text(cfg.model_dump_json())
    (tmp_path / "run.py").write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(tmp_path / "run.py"), str(tmp_path / "recs.json"),
                             str(tmp_path / "cfg.json")], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = tmp_path / "cache.sqlite"

    def rows() -> int:
        if not db.exists():
            return 0
        try:
            with sqlite3.connect(db, timeout=5) as c:
                return c.execute("SELECT COUNT(*) FROM responses").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    deadline = time.monotonic() + 60
    while rows() < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    assert b"FINISHED" not in out, err.decode()[-2000:]
    finished = rows()
    first_requests = server.stats.chat
    assert 12 <= finished < 60 and first_requests < 60
    server.stats.chat = 0
    res = run_augment(recs, cfg, progress=False)
    c = res.counts["rewrite"]
    assert c["done"] == 60 and c["failed"] == 0  # none lost
    assert c["cached"] == finished and server.stats.chat == 60 - finished  # no finished item asked again


def test_answer_fills_missing_replies(server, tmp_path):
    recs = [new_record("messages", provenance("q", "q.jsonl", i, i),
                       messages=[{"role": "user", "content": f"请问{PLAIN[i]}号房还有吗？"}]) for i in range(4)]
    server.responder = lambda body: "有的，" + body["messages"][-1]["content"][-6:]
    res = run_augment(recs, config(server.base_url, tmp_path, [{"op": "answer"}]), progress=False)
    assert res.counts["answer"]["done"] == 4
    for before, after in zip(recs, res.records, strict=True):
        assert after["id"] == before["id"] and len(after["messages"]) == 2
        assert after["messages"][1] == {"role": "assistant", "content": "有的，" + before["messages"][0]["content"][-6:]}
        assert after["meta"]["originals"][0]["content"] is None and len(before["messages"]) == 1  # input untouched
    assert server.stats.chat == 4


def test_in_flight_window_is_bounded(server, tmp_path):
    server.plan.update({"latency": 0.05})
    res = run_augment(convs(40), config(server.base_url, tmp_path, [{"op": "rewrite"}], concurrency=3), progress=False)
    assert res.counts["rewrite"]["done"] == 40 and server.stats.max_in_flight == 3


def test_a_new_domain_is_a_template_and_params(server, tmp_path):
    (tmp_path / "law_rewrite.jinja").write_text(
        "把这句话改写成{{ vars.register }}的说法，只输出改写结果：{{ text }}", encoding="utf-8")
    server.responder = lambda body: "改写：" + body["messages"][-1]["content"][-8:]
    steps = [{"op": "rewrite", "template": "law_rewrite.jinja", "params": {"vars": {"register": "法律文书"}}}]
    res = run_augment(convs(3), config(server.base_url, tmp_path, steps), recipe_dir=tmp_path, progress=False)
    assert res.counts["rewrite"]["done"] == 3
    assert all(e["template"] == "law_rewrite.jinja" for r in res.records for e in r["meta"]["ops"])
    assert res.records[0]["messages"][0]["content"] == convs(3)[0]["messages"][0]["content"][-8:]  # label stripped


# -- structured output: what the endpoint accepts, found on first contact -------------------------------------
def _docs(n: int) -> list[dict]:
    return [new_record("text", provenance("doc", "t.txt", i, i), text=f"{PLAIN} 第{i}段：北京有故宫和天坛。" * 3)
            for i in range(n)]


@pytest.mark.parametrize(("rejected", "used"), [((), "json_schema"), (("json_schema",), "json_object"),
                                                (("json_schema", "json_object"), "prompted")])
def test_capability_probe_picks_what_the_endpoint_accepts(server, tmp_path, rejected, used):
    server.plan.update({"reject_formats": list(rejected)})
    plain_json = json.dumps({"pairs": [{"question": "故宫在哪里？", "answer": "北京"}]}, ensure_ascii=False)

    def responder(body: dict) -> str:  # prompted: a first reply in prose, valid JSON once repaired
        fmt = (body.get("response_format") or {}).get("type")
        if fmt == "json_schema":
            return fake_default(body)  # an instance of the schema it was sent
        if fmt == "json_object":
            return plain_json
        return plain_json if len(body["messages"]) > 1 else "好的，问题是：故宫在哪里？"

    server.responder = responder
    cfg = config(server.base_url, tmp_path, [{"op": "question_from_passage", "params": {"n": 1}}],
                 response_format="auto", repair_attempts=0)
    res = run_augment(_docs(4), cfg, progress=False)
    c = res.counts["question_from_passage"]
    assert res.structured_output == used == res.usage["structured_output"] == res.endpoint["structured_output"]
    assert [p["format"] for p in res.endpoint["probe"]] == [*rejected, *([used] if used != "prompted" else [])]
    assert c["done"] == 4, res.failures
    sent = [e for e in server.stats.log if e["fault"] is None]
    if used == "prompted":  # one repair round even with repair_attempts: 0
        assert c["invalid_replies"] == 4 and c["attempts"] == 8
    else:
        assert c["invalid_replies"] == 0 and c["attempts"] == 4
    assert len(sent) == c["attempts"] + len(res.endpoint["probe"])  # the probe requests, then the items'
    # a re-run is answered from the cache: no probe, no request
    again = run_augment(_docs(4), cfg, progress=False)
    assert again.usage["requests"] == 0 and again.structured_output is None


def test_pinned_format_is_not_probed(server, tmp_path):
    cfg = config(server.base_url, tmp_path, [{"op": "question_from_passage"}], response_format="json_object")
    res = run_augment(_docs(2), cfg, progress=False)
    assert res.structured_output == "json_object" and res.endpoint["probe"] == []
    assert server.stats.chat == res.counts["question_from_passage"]["attempts"]


# -- speed under faults ------------------------------------------------------------------------------------
def test_hung_attempts_are_hedged_not_waited_out(server, tmp_path):
    server.plan.update({"latency": 0.02, "fault_rate": 0.05, "faults": ["hang"], "hang_s": 10.0})
    t = time.monotonic()
    res = run_augment(convs(200), config(server.base_url, tmp_path, [{"op": "rewrite"}], timeout_s=10.0,
                                         concurrency=8), progress=False)
    dt = time.monotonic() - t
    c = res.counts["rewrite"]
    # ~10 hangs of 10 s each: waiting one out takes 10 s. The window is nearly always full here: a hung
    # attempt's copy takes the next free slot ahead of the queue, and an attempt whose copy also goes quiet
    # is cut at its deadline (4x the hedge point) and retried
    assert c["done"] == 200 and c["hedges"] >= 5
    assert dt < 5.0, (dt, c)
    # with free slots, a slow attempt gets a copy; the loser is cancelled and the window stays bounded
    server.plan.update({"fault_rate": 0.1})
    t = time.monotonic()
    res = run_augment(convs(60), config(server.base_url, tmp_path / "b", [{"op": "rewrite"}], timeout_s=10.0,
                                        concurrency=80), progress=False)
    c = res.counts["rewrite"]
    assert c["done"] == 60 and c["hedges"] >= 1 and time.monotonic() - t < 5.0, c


def test_token_usage_and_cost_per_step_and_op(server, tmp_path):
    steps = [{"op": "rewrite", "limit": 4}, {"op": "judge_filter", "limit": 3, "params": {"threshold": 1}},
             {"op": "rewrite", "name": "again", "limit": 2}]
    res = run_augment(convs(6), config(server.base_url, tmp_path, steps, price_per_1k_prompt=1.0,
                                       price_per_1k_completion=2.0), progress=False)
    for name in ("rewrite", "judge_filter", "again"):
        c = res.counts[name]
        assert c["prompt_tokens"] > 0 and c["completion_tokens"] > 0
        assert c["cost_usd"] == round((c["prompt_tokens"] + 2 * c["completion_tokens"]) / 1000, 6)
    by_op = res.usage["by_op"]
    assert by_op["rewrite"]["steps"] == 2 and by_op["judge_filter"]["steps"] == 1
    assert by_op["rewrite"]["prompt_tokens"] == res.counts["rewrite"]["prompt_tokens"] + \
        res.counts["again"]["prompt_tokens"]
    assert sum(o["prompt_tokens"] for o in by_op.values()) == res.usage["prompt_tokens"]
    assert abs(sum(o["cost_usd"] for o in by_op.values()) - res.usage["estimated_cost_usd"]) < 1e-5
