"""The embedded default end to end: no endpoint configured, so our local server runs the real SmolLM2, with
grammar-constrained JSON."""

from __future__ import annotations

import json

import pytest

from tuneforge.augment import AugmentConfig, run_augment
from tuneforge.augment import endpoint as endpoint_mod
from tuneforge.common.records import new_record, provenance


@pytest.mark.slow
def test_embedded_smollm2_end_to_end(smollm2_path, shared, tmp_path, monkeypatch):
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-embedded-test-should-not-leak")
    dialogues = json.loads((shared / "crosswoz" / "val_first100.json").read_text(encoding="utf-8"))
    recs = []
    for i, (tid, d) in enumerate(list(dialogues.items())[:2]):
        turns = [{"role": "user" if m["role"] == "usr" else "assistant", "content": m["content"]}
                 for m in d["messages"][:2]]
        recs.append(new_record("messages", provenance("crosswoz", "val_first100.json", None, i, tid), messages=turns))
    cfg = AugmentConfig.model_validate({
        "llm": {"max_tokens": 24, "temperature": 0.0, "concurrency": 2, "timeout_s": 180, "max_attempts": 2,
                "repair_attempts": 1},
        "cache": str(tmp_path / "cache.sqlite"),
        "steps": [{"op": "rewrite", "lang": "en", "params": {"context_turns": 0}},
                  {"op": "judge_filter", "lang": "en", "limit": 1, "params": {"threshold": 1},
                   "llm": {"max_tokens": 40}}]})
    started = []
    real_start = endpoint_mod.EmbeddedServer.start

    async def spy(self, *a, **k):
        started.append(self)
        return await real_start(self, *a, **k)

    monkeypatch.setattr(endpoint_mod.EmbeddedServer, "start", spy)
    res = run_augment(recs, cfg, seed=1, progress=False)
    assert len(started) == 1 and started[0].proc.poll() is not None  # started once, stopped at the end
    assert res.usage["endpoint"] == "embedded:local-server" and res.usage["model"] == "embedded:smollm2"
    assert res.structured_output == "json_schema" and res.endpoint["hedging"] is False
    assert res.usage["requests"] >= 3 and res.usage["completion_tokens"] > 0
    rw = res.counts["rewrite"]
    assert rw["selected"] == 2 and rw["done"] + rw["failed"] == 2
    jf = res.counts["judge_filter"]
    assert jf["selected"] == 1 and jf["done"] + jf["failed"] == 1
    for r in res.records:
        if r["meta"].get("originals"):
            assert r["messages"][0]["content"] and r["meta"]["ops"][0]["model"] == "embedded:smollm2"
    assert "sk-embedded" not in json.dumps([res.records, res.failures, res.usage], ensure_ascii=False)

    # unchanged recipe: everything from the cache, and the server is never started
    again = run_augment(recs, cfg, seed=1, progress=False)
    assert len(started) == 1 and again.usage["requests"] == 0
    assert json.dumps(again.records, sort_keys=True) == json.dumps(res.records, sort_keys=True)


@pytest.mark.slow
def test_embedded_json_is_valid_without_repairs(smollm2_path, shared, tmp_path, monkeypatch):
    """Issue 15's acceptance: question_from_passage over 30 real passages, no repair round, >= 29 done."""
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    lines = (shared / "llamafactory" / "wiki_demo.txt").read_text(encoding="utf-8").splitlines()
    docs = [new_record("text", provenance("wiki_demo", "wiki_demo.txt", i, i), text=t)
            for i, t in enumerate(lines[:30]) if t.strip()]
    assert len(docs) == 30
    cfg = AugmentConfig.model_validate({
        "llm": {"max_tokens": 96, "temperature": 0.7, "concurrency": 8, "timeout_s": 900, "max_attempts": 2,
                "repair_attempts": 0},
        "cache": str(tmp_path / "cache.sqlite"),
        "steps": [{"op": "question_from_passage", "lang": "en", "params": {"n": 1, "max_chars": 500}}]})
    res = run_augment(docs, cfg, seed=1, progress=False)
    c = res.counts["question_from_passage"]
    assert res.structured_output == "json_schema"
    assert c["selected"] == 30 and c["done"] >= 29 and c["invalid_replies"] <= 1, (c, res.failures)
    assert c["created"] == c["done"] and c["completion_tokens"] > 0
