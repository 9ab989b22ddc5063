"""Prompt-only sources (`kind: prompt`): questions without answers are ingested as prompts, answered by the
`answer` step, cleaned like any text, and become conversations; what is not answered is a reject with its
reason, file and line, and the counts reconcile."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge.common.errors import RecipeError, SourceError
from tuneforge.ingest import SourceConfig, ingest
from tuneforge.recipe import parse_recipe


def _ruozhiba(shared: Path, n: int) -> list[str]:
    rows = json.loads((shared / "chinese-llama-alpaca-3" / "ruozhiba_qa2449_gpt4o.json").read_text(encoding="utf-8"))
    return [r["instruction"] for r in rows[:n]]


def _questions_file(path: Path, questions: list[str]) -> Path:
    """An alpaca file with the answers taken out: `instruction` and an empty `input`, no `output`."""
    path.write_text(json.dumps([{"instruction": q, "input": ""} for q in questions], ensure_ascii=False, indent=1),
                    encoding="utf-8")
    return path


def test_prompt_layouts_are_read_as_prompts(tmp_path, shared):
    qs = _ruozhiba(shared, 3)
    _questions_file(tmp_path / "alpaca.json", qs)
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"prompt": q}, ensure_ascii=False) for q in qs) + "\n",
                                      encoding="utf-8")
    (tmp_path / "q.txt").write_text("\n".join(qs) + "\n", encoding="utf-8")
    (tmp_path / "q.csv").write_text("id,question\n" + "\n".join(f"{i},{q}" for i, q in enumerate(qs)) + "\n",
                                    encoding="utf-8")
    (tmp_path / "m.jsonl").write_text(
        json.dumps({"messages": [{"role": "system", "content": "be brief"}, {"role": "user", "content": qs[0]}]},
                   ensure_ascii=False) + "\n"
        + json.dumps({"messages": [{"role": "user", "content": qs[1]}, {"role": "assistant", "content": "x"}]},
                     ensure_ascii=False) + "\n", encoding="utf-8")
    sources = [SourceConfig(name="alpaca", path="alpaca.json", kind="prompt"),
               SourceConfig(name="plain", path="p.jsonl", kind="prompt"),
               SourceConfig(name="txt", path="q.txt", kind="prompt"),
               SourceConfig(name="csv", path="q.csv", kind="prompt", columns={"prompt": "question"}),
               SourceConfig(name="msgs", path="m.jsonl", format="prompt")]
    res = ingest(sources, tmp_path)
    assert all(r["kind"] == "prompt" for r in res.records)
    by_source: dict[str, list] = {}
    for r in res.records:
        by_source.setdefault(r["meta"]["source"], []).append(r)
    for name in ("alpaca", "plain", "txt", "csv"):
        assert [r["messages"] for r in by_source[name]] == [[{"role": "user", "content": q}] for q in qs], name
    assert by_source["msgs"][0]["messages"][0] == {"role": "system", "content": "be brief"}
    assert res.sources["msgs"]["format"] == "prompt" and len(by_source["msgs"]) == 1
    (bad,) = res.rejects  # a conversation that already ends with an answer is not a prompt
    assert bad["file"] == "m.jsonl" and bad["line"] == 2 and "should end with a user turn" in bad["reason"]


def test_prompts_are_declared_not_guessed(tmp_path, shared):
    _questions_file(tmp_path / "alpaca.json", _ruozhiba(shared, 3))
    with pytest.raises(SourceError, match="cannot tell the format"):
        ingest([SourceConfig(name="alpaca", path="alpaca.json")], tmp_path)
    with pytest.raises(ValueError, match="kind: prompt"):
        SourceConfig(name="a", path="alpaca.json", kind="prompt", format="alpaca")


def test_prompt_source_without_answer_step_is_a_recipe_error(tmp_path, shared):
    data = {"name": "p", "sources": [{"name": "qs", "path": "q.json", "kind": "prompt"}]}
    with pytest.raises(RecipeError, match="no `augment:` step with `op: answer` selects it"):
        parse_recipe(data)
    other = {**data, "augment": {"steps": [{"op": "answer", "select": {"sources": ["other"]}}]}}
    with pytest.raises(RecipeError, match="qs"):
        parse_recipe(other)
    parse_recipe({**data, "augment": {"steps": [{"op": "answer"}]}})  # takes prompts by default
    _questions_file(tmp_path / "q.json", _ruozhiba(shared, 2))
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(data), encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "tuneforge.cli", "build", str(tmp_path / "r.yaml"), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True)
    assert r.returncode == 2 and "op: answer" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert not (tmp_path / "out" / "manifest.json").exists()


def _reply(body: dict) -> str:
    """What the loopback endpoint answers, by the question's marker."""
    q = body["messages"][-1]["content"]
    if "Q-FAIL" in q:
        return ""  # an empty reply: invalid, and with no repair round the answer fails
    if "Q-SHORT" in q:
        return "ok"  # under min_turn_chars: the generated text fails the clean stage's filter
    if "Q-MARK" in q:
        return "好的。\nHuman: 再问一个"  # a transcript leftover in the reply: flagged, kept
    return f"答：ＡＢＣ１２３，电话 13812345678（{len(q)}）"  # full-width letters, a phone number


def test_prompt_only_build_end_to_end(tmp_path, shared):
    from fake_openai_server import FakeOpenAIServer  # tests/ is on sys.path under pytest

    from datasets import load_from_disk
    from tuneforge.builder import build

    qs = _ruozhiba(shared, 8)
    rows = [{"instruction": q, "input": ""} for q in qs] + [{"instruction": qs[0], "input": ""},
                                                           {"instruction": "", "input": ""}]
    (tmp_path / "questions.json").write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    (tmp_path / "extra.txt").write_text("Q-SHORT 鸡柳是什么？\nQ-MARK 樟脑丸能吃吗？\n我的电话是 13900001111，Q-PII 能打给我吗？\n",
                                        encoding="utf-8")
    (tmp_path / "failing.jsonl").write_text('{"prompt": "Q-FAIL 一"}\n{"prompt": "Q-FAIL 二"}\n', encoding="utf-8")
    (tmp_path / "limited.txt").write_text("为什么天是蓝的？\n为什么海是咸的？\n", encoding="utf-8")
    recipe = {
        "name": "prompts_e2e",
        "sources": [{"name": "ruozhiba_q", "path": "questions.json", "kind": "prompt"},
                    {"name": "extra", "path": "extra.txt", "kind": "prompt"},
                    {"name": "failing", "path": "failing.jsonl", "kind": "prompt"},
                    {"name": "limited", "path": "limited.txt", "kind": "prompt"}],
        "clean": {"filters": {"min_turn_chars": 3}},
        "augment": {"llm": {"base_url": "http://someone:hunter2-secret@127.0.0.1:9/v1", "max_attempts": 1,
                            "repair_attempts": 0, "concurrency": 4, "timeout_s": 20},
                    "cache": "cache.sqlite",
                    "steps": [{"op": "answer", "select": {"sources": ["ruozhiba_q", "extra", "failing"]}},
                              {"op": "answer", "name": "answer_some", "select": {"sources": ["limited"]},
                               "limit": 1}]},
        "formats": ["openai"],
    }
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    srv = FakeOpenAIServer(responder=_reply).start()
    try:
        m = build(tmp_path / "recipe.yaml", tmp_path / "out", llm_base_url=srv.base_url, runner="serial")
    finally:
        srv.stop()
    out = tmp_path / "out"
    src = m["sources"]
    # ingested prompts = answered (kept) + rejected + deduplicated, per source
    assert {k: src["ruozhiba_q"][k] for k in ("input", "kept", "rejected", "deduplicated")} == \
        {"input": 10, "kept": 8, "rejected": 1, "deduplicated": 1}
    assert {k: src["extra"][k] for k in ("input", "kept", "rejected")} == {"input": 3, "kept": 2, "rejected": 1}
    assert {k: src["failing"][k] for k in ("input", "kept", "rejected")} == {"input": 2, "kept": 0, "rejected": 2}
    assert {k: src["limited"][k] for k in ("input", "kept", "rejected")} == {"input": 2, "kept": 1, "rejected": 1}
    assert m["counts"]["records"]["by_kind"].keys() == {"messages"}  # no prompt reaches a split

    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    why = {(r["source"], r["line"]): r for r in rejects}
    assert any(r["reason"] == "field 'instruction' is empty" and r["file"] == "questions.json" and r["index"] == 9
               for r in rejects)
    for line in (1, 2):
        r = why[("failing", line)]
        assert r["file"] == "failing.jsonl" and r["stage"] == "augment"
        assert r["reason"].startswith("unanswered: step 'answer' failed: invalid output")
    short = why[("extra", 1)]
    assert short["reason"].startswith("generated_turn_too_short: assistant turn 2 has 2 chars")
    assert short["stage"] == "augment" and short["raw"]["messages"][-1]["content"] == "ok"
    (unpicked,) = [r for r in rejects if r["source"] == "limited"]
    assert unpicked["reason"].startswith("unanswered: no `answer` step selected this prompt")
    assert unpicked["file"] == "limited.txt" and unpicked["line"] in (1, 2)
    assert m["counts"]["reasons"]["unanswered"] == 3 and m["counts"]["reasons"]["generated_turn_too_short"] == 1

    ds = load_from_disk(str(out / "dataset"))
    convs = [row for split in ds.values() for row in split]
    assert len(convs) == 8 + 2 + 1
    texts = json.dumps([c["messages"] for c in convs], ensure_ascii=False)
    assert all(c["messages"][-1]["role"] == "assistant" and c["messages"][-1]["content"] for c in convs)
    # generated text went through the clean stage: normalised, PII scrubbed; the question's phone before sending
    assert "ＡＢＣ" not in texts and "ABC123" in texts and "13812345678" not in texts and "13900001111" not in texts
    assert "[PHONE]" in texts
    flagged = [c for c in convs if "flags" in json.loads(c["meta"])]
    assert len(flagged) == 1 and "speaker_marker: assistant turn 2 line 2" in json.loads(flagged[0]["meta"])["flags"][0]
    gen = m["counts"]["stages"]["generated"]
    assert gen["flagged"] == {"speaker_marker": 1} and gen["rejected"] == {"generated_turn_too_short": 1}
    assert gen["pii"]["phone"] >= 1

    card = (out / "README.md").read_text(encoding="utf-8")
    assert "> **Warning:** source 'failing': no record kept: 2 of 2 input records rejected" in card
    assert "| failing | 0 | 0 | 0 | 2 | 0 |" in card
    assert "## Recipe" in card and "kind: prompt" in card and "answer_some" in card
    assert "hunter2" not in card and "someone" not in card
    assert "hunter2" not in (out / "manifest.json").read_text(encoding="utf-8")
    assert any("failing" in w and "no record kept" in w for w in m["warnings"])


@pytest.mark.slow
def test_prompt_only_build_with_the_embedded_model(tmp_path, shared, smollm2_path, monkeypatch):
    """Three real questions answered by the embedded SmolLM2 (no endpoint configured)."""
    from datasets import load_from_disk
    from tuneforge.builder import build

    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    _questions_file(tmp_path / "questions.json", _ruozhiba(shared, 3))
    recipe = {"name": "prompts_embedded", "sources": [{"name": "q", "path": "questions.json", "kind": "prompt"}],
              # 16 tokens cut most answers: kept here (keep_truncated), rejected by default (test_faults_eval)
              "augment": {"llm": {"max_tokens": 16, "temperature": 0.0, "concurrency": 3, "timeout_s": 180,
                                  "max_attempts": 2, "keep_truncated": True},
                          "cache": "cache.sqlite", "steps": [{"op": "answer", "lang": "zh"}]},
              "formats": ["openai"]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    m = build(tmp_path / "recipe.yaml", tmp_path / "out", runner="serial")
    s = m["sources"]["q"]
    assert s["input"] == 3 and s["kept"] + s["rejected"] == 3 and s["kept"] >= 1
    assert m["augment_usage"]["model"] == "embedded:smollm2" and m["augment_usage"]["completion_tokens"] > 0
    ds = load_from_disk(str(tmp_path / "out" / "dataset"))
    convs = [row for split in ds.values() for row in split]
    assert len(convs) == s["kept"]
    assert all([t["role"] for t in c["messages"]][-2:] == ["user", "assistant"] and c["messages"][-1]["content"]
               for c in convs)


def test_card_recipe_text_masks_secrets(monkeypatch):
    from tuneforge.publish.card import public_recipe

    monkeypatch.setenv("MY_GATEWAY_TOKEN", "tok-1234567890")
    text = ("augment:\n  llm:\n    base_url: https://u:pw-secret@gw.example.com/v1?key=q-secret\n"
            "    api_key_env: OPENAI_API_KEY\n    api_key: sk-pasted-secret\n"
            "variables: {note: 'uses tok-1234567890'}\n# a comment about the token: keep\n")
    shown = public_recipe(text)
    for secret in ("pw-secret", "q-secret", "sk-pasted-secret", "tok-1234567890"):
        assert secret not in shown
    assert "base_url: https://gw.example.com/v1" in shown and "api_key_env: OPENAI_API_KEY" in shown
    assert "api_key: ***" in shown


def test_generated_text_that_duplicates_a_record_is_rejected(tmp_path):
    """Two different conversations rewritten into the same one: the second is a generated duplicate."""
    from fake_openai_server import FakeOpenAIServer  # tests/ is on sys.path under pytest

    from tuneforge.builder import build

    convs = [{"messages": [{"role": "user", "content": u}, {"role": "assistant", "content": "早上七点开始。"}]}
             for u in ("你好，请问早餐几点？", "请问明天的早餐什么时候开始供应呢？")]
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps(c, ensure_ascii=False) for c in convs) + "\n",
                                      encoding="utf-8")
    recipe = {"name": "gen_dup", "sources": [{"name": "c", "path": "c.jsonl"}],
              "clean": {"dedup": {"near": False}},
              "augment": {"llm": {"max_attempts": 1, "repair_attempts": 0}, "cache": "cache.sqlite",
                          "steps": [{"op": "rewrite", "params": {"context_turns": 0}}]},
              "formats": ["openai"]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    srv = FakeOpenAIServer(responder=lambda body: "你好，请问早餐几点？").start()
    try:
        m = build(tmp_path / "recipe.yaml", tmp_path / "out", llm_base_url=srv.base_url, runner="serial")
    finally:
        srv.stop()
    assert {k: m["sources"]["c"][k] for k in ("input", "kept", "rejected")} == {"input": 2, "kept": 1, "rejected": 1}
    (row,) = [json.loads(line) for line in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert row["reason"].startswith("generated_duplicate") and row["stage"] == "augment" and row["line"] == 2
    assert row["raw"]["messages"][0]["content"] == "你好，请问早餐几点？"  # the generated text, kept whole
    assert m["counts"]["stages"]["generated"]["rejected"] == {"generated_duplicate": 1}


@pytest.mark.parametrize("near", [True, False])
def test_generated_text_that_nearly_repeats_a_record_is_rejected(tmp_path, near):
    """A rewrite that comes back as a near copy of another source's conversation is a near duplicate (with the
    build's threshold, on its exact Jaccard); with near dedup off it is kept."""
    from fake_openai_server import FakeOpenAIServer  # tests/ is on sys.path under pytest

    from tuneforge.builder import build

    a = ("请问你们酒店的早餐是从早上几点开始供应的，一直到几点结束？我们一家四口明天要早点出发去机场，"
         "如果来不及在餐厅吃，能不能提前帮我们准备打包的早餐，另外前台几点可以办理退房手续？")
    b = "我想预订下周五晚上的双床房两间，请问还有空房吗？价格大概是多少，含不含早餐？"
    for name, user in (("c1", a), ("c2", b)):
        conv = {"messages": [{"role": "user", "content": user}, {"role": "assistant", "content": "早上七点开始。"}]}
        (tmp_path / f"{name}.jsonl").write_text(json.dumps(conv, ensure_ascii=False) + "\n", encoding="utf-8")
    recipe = {"name": "gen_near", "sources": [{"name": "c1", "path": "c1.jsonl"}, {"name": "c2", "path": "c2.jsonl"}],
              "clean": {"dedup": {"near": near}},
              "augment": {"llm": {"max_attempts": 1, "repair_attempts": 0}, "cache": "cache.sqlite",
                          "steps": [{"op": "rewrite", "select": {"sources": ["c2"]},
                                     "params": {"context_turns": 0}}]},
              "formats": ["openai"]}
    (tmp_path / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    srv = FakeOpenAIServer(responder=lambda body: a.replace("机场", "火车站")).start()  # c1's question, one word off
    try:
        m = build(tmp_path / "recipe.yaml", tmp_path / "out", llm_base_url=srv.base_url, runner="serial")
    finally:
        srv.stop()
    rows = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    if not near:
        assert rows == [] and m["sources"]["c2"]["kept"] == 1
        return
    assert {k: m["sources"]["c2"][k] for k in ("input", "kept", "rejected")} == {"input": 1, "kept": 0, "rejected": 1}
    (row,) = rows
    assert row["reason"].startswith("generated_near_duplicate: Jaccard") and row["stage"] == "augment"
    assert "火车站" in row["raw"]["messages"][0]["content"]
    assert m["counts"]["stages"]["generated"]["rejected"] == {"generated_near_duplicate": 1}
