"""Corpus layouts users bring, on real samples: HH preference transcripts and speaker-tagged dialogues."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.common.errors import TuneforgeError
from tuneforge.ingest import ingest
from tuneforge.ingest.config import SourceConfig

HH = Path(__file__).parent / "data" / "hh_rlhf" / "harmless-base-test-first100.jsonl"


def _hh_rows() -> list[dict]:
    return [json.loads(x) for x in HH.read_text(encoding="utf-8").splitlines()]


def test_hh_is_detected_and_split_at_the_shared_prefix(tmp_path):
    (tmp_path / "hh.jsonl").write_bytes(HH.read_bytes())
    res = ingest([SourceConfig(name="hh", path="hh.jsonl")], tmp_path)
    assert res.sources["hh"]["format"] == "hh"
    assert len(res.records) + len(res.rejects) == 100
    assert len(res.records) >= 95, [r["reason"] for r in res.rejects]
    rows = _hh_rows()
    for rec in res.records:
        raw = rows[rec["meta"]["line"] - 1]
        assert rec["kind"] == "preference" and rec["prompt"][-1]["role"] == "user"
        # The prompt is the shared prefix, and chosen/rejected what follows it, nothing invented.
        assert raw["chosen"].endswith(rec["chosen"][-1]["content"])
        assert raw["rejected"].endswith(rec["rejected"][-1]["content"])
        assert rec["prompt"][0]["content"] in raw["chosen"] and rec["prompt"][0]["content"] in raw["rejected"]
    for r in res.rejects:  # e.g. chosen == rejected: no preference pair, said so
        assert r["reason"] and r["line"]


def test_transcript_as_one_tagged_text_on_hh(tmp_path):
    """The HH `chosen` field read as a single-text transcript with configurable tags."""
    (tmp_path / "hh.jsonl").write_bytes(HH.read_bytes())
    cfg = SourceConfig(name="t", path="hh.jsonl", format="transcript",
                       options={"field": "chosen", "speakers": {"Human:": "user", "Assistant:": "assistant"}})
    res = ingest([cfg], tmp_path)
    assert len(res.records) + len(res.rejects) == 100 and len(res.records) >= 95
    rec = res.records[0]
    assert [m["role"] for m in rec["messages"]][:2] == ["user", "assistant"]
    assert rec["messages"][0]["content"] == "what are some pranks with a pen i can do?"


def _crosswoz_tagged(shared: Path, n: int = 30) -> list[dict]:
    """CrossWOZ's real dialogues written as customer-service logs: each turn a `用户：`/`客服：` string."""
    data = json.loads((shared / "crosswoz" / "val_first100.json").read_text(encoding="utf-8"))
    rows = []
    for _, d in list(data.items())[:n]:
        tag = {"usr": "用户：", "sys": "客服："}
        rows.append({"history": [tag[m["role"]] + m["content"] for m in d["messages"]]})
    return rows


def test_tagged_strings_are_proposed_then_read(shared, tmp_path):
    rows = _crosswoz_tagged(shared)
    (tmp_path / "log.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    # Auto-detection cannot guess the roles; it proposes the recipe lines to add.
    with pytest.raises(TuneforgeError) as e:
        ingest([SourceConfig(name="log", path="log.jsonl")], tmp_path)
    assert "format: transcript" in str(e.value) and "用户：" in str(e.value) and "客服：" in str(e.value)
    cfg = SourceConfig(name="log", path="log.jsonl", format="transcript",
                       options={"speakers": {"用户：": "user", "客服：": "assistant"}})
    res = ingest([cfg], tmp_path)
    assert len(res.records) == len(rows) and not res.rejects
    first = res.records[0]["messages"]
    assert first[0]["role"] == "user" and not first[0]["content"].startswith("用户")
    assert len(first) == len(rows[0]["history"])


def test_tagged_transcript_with_bracket_tags_and_an_untagged_turn(tmp_path):
    rows = [{"history": ["[客户] 我想咨询离婚财产怎么分", "[律师] 婚后财产原则上平均分割。"]},
            {"history": ["[客户] 你好", "没有标签的一句"]}]
    (tmp_path / "law.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    cfg = SourceConfig(name="law", path="law.jsonl", format="transcript",
                       options={"speakers": {"[客户]": "user", "[律师]": "assistant"}})
    res = ingest([cfg], tmp_path)
    assert len(res.records) == 1 and len(res.rejects) == 1
    assert res.rejects[0]["line"] == 2 and "speaker tag" in res.rejects[0]["reason"]


def test_readme_shows_the_record_kinds_table():
    from tuneforge.common.records import kinds_table

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert kinds_table() in readme
