"""Readers and source-format adapters on the real corpora, plus every kind of bad input."""

from __future__ import annotations

import csv
import itertools
import json
from pathlib import Path

import pytest

from tuneforge.common.errors import RecipeError, SourceError
from tuneforge.ingest import SourceConfig, ingest

# (source config, detected format, input records, rejected inputs, records produced)
REAL = [
    (dict(path="crosswoz/val_first100.json", options={"domains": ["酒店"]}), "crosswoz", 100, 12, 88),
    (dict(path="crosswoz/database/hotel_db.json"), "kb", 1133, 0, 1133),
    (dict(path="llamafactory/alpaca_zh_demo.json"), "alpaca", 1000, 0, 1000),
    (dict(path="llamafactory/alpaca_en_demo.json"), "alpaca", 999, 0, 999),
    (dict(path="llamafactory/identity.json", fill_placeholders=True), "alpaca", 91, 0, 91),
    (dict(path="llamafactory/glaive_toolcall_zh_demo.json"), "sharegpt", 300, 0, 300),
    (dict(path="llamafactory/dpo_zh_demo.json"), "sharegpt", 300, 0, 300),
    (dict(path="llamafactory/dpo_en_demo.json"), "sharegpt", 300, 0, 300),
    (dict(path="llamafactory/kto_en_demo.json"), "messages", 300, 0, 300),
    (dict(path="llamafactory/v1_dpo_demo.jsonl"), "message_pairs", 10, 0, 10),
    (dict(path="llamafactory/c4_demo.jsonl"), "document", 300, 0, 300),
    (dict(path="llamafactory/wiki_demo.txt"), "document", 30, 0, 30),
    (dict(path="chatglm-efficient-tuning/self_cognition.json", fill_placeholders=True), "alpaca", 80, 0, 80),
    (dict(path="chatglm-efficient-tuning/oaast_sft_zh.json"), "alpaca", 689, 0, 689),
    (dict(path="chatglm-efficient-tuning/oaast_rm_zh.json"), "ranked", 775, 3, 1803),
    (dict(path="adgen/dev.json", format="completion", columns={"prompt": "content", "completion": "summary"}),
     "completion", 1070, 0, 1070),
    (dict(path="chinese-llama-alpaca-3/ruozhiba_qa2449_gpt4o.json"), "alpaca", 2449, 0, 2449),
    (dict(path="chinese-llama-alpaca/langchain_doc.txt"), "document", 20, 0, 20),
    (dict(path="lawgpt/example_instruction_train.json"), "document", 2, 0, 2),
    (dict(path="lawgpt/example_infer_data.jsonl"), "alpaca", 5, 0, 5),
    (dict(path="lawgpt/example_instruction_tune.json"), "alpaca", 2, 0, 2),
    (dict(path="lawgpt/criminal_charges.json", format="kb"), "kb", 483, 0, 483),
]


def run(cfgs: list[dict], base: Path, variables: dict | None = None):
    sources = [SourceConfig(name=f"s{i}", **c) for i, c in enumerate(cfgs)]
    return ingest(sources, base, variables or {"name": "小锻", "author": "tuneforge"})


@pytest.mark.parametrize(("cfg", "fmt", "n_input", "n_rejected", "n_records"), REAL,
                         ids=[c[0]["path"] for c in REAL])
def test_real_corpus(shared, cfg, fmt, n_input, n_rejected, n_records):
    res = run([cfg], shared)
    st = res.sources["s0"]
    assert (st["format"], st["input"], st["rejected"], len(res.records)) == (fmt, n_input, n_rejected, n_records)
    assert len({r["id"] for r in res.records}) == len(res.records)
    for r in res.records:
        assert r["meta"]["source"] == "s0" and r["meta"]["file"] == cfg["path"]
        assert r["meta"]["line"] is not None or r["meta"]["index"] is not None
    for rej in res.rejects:
        assert rej["reason"] and rej["file"] == cfg["path"] and (rej["line"] or rej["index"] is not None)


def test_shapes_are_trl_formats(shared):
    res = run([REAL[2][0], REAL[14][0], REAL[10][0], REAL[5][0], REAL[8][0]], shared)
    by_kind = {}
    for r in res.records:
        by_kind.setdefault(r["kind"], r)
    m = by_kind["messages"]["messages"]
    assert [x["role"] for x in m][-2:] == ["user", "assistant"]
    p = by_kind["preference"]
    assert p["prompt"][-1]["role"] == "user" and p["chosen"][0]["role"] == "assistant"
    assert p["chosen"] != p["rejected"]
    assert isinstance(by_kind["text"]["text"], str)
    assert by_kind["unpaired"]["label"] in (True, False)


def test_multiturn_history_and_tools(shared):
    res = run([dict(path="chatglm-efficient-tuning/oaast_sft_zh.json")], shared)
    raw = json.loads((shared / "chatglm-efficient-tuning/oaast_sft_zh.json").read_text(encoding="utf-8"))
    i = next(k for k, x in enumerate(raw) if len(x["history"]) >= 2)
    msgs = res.records[i]["messages"]
    assert msgs[0] == {"role": "user", "content": raw[i]["history"][0][0]}
    assert msgs[-1] == {"role": "assistant", "content": raw[i]["output"]}
    assert len(msgs) == 2 * (len(raw[i]["history"]) + 1)
    tools = run([dict(path="llamafactory/glaive_toolcall_zh_demo.json")], shared)
    roles = {m["role"] for r in tools.records for m in r["messages"]}
    assert roles == {"user", "assistant", "tool"}


def test_ranked_pairs_share_a_group(shared):
    res = run([dict(path="chatglm-efficient-tuning/oaast_rm_zh.json")], shared)
    groups = {}
    for r in res.records:
        groups.setdefault(r["meta"]["group"], []).append(r)
    multi = [g for g in groups.values() if len(g) > 1]
    assert multi, "some oaast_rm_zh records rank three or more responses"
    g = multi[0]
    assert all(x["prompt"] == g[0]["prompt"] for x in g) and len({x["id"] for x in g}) == len(g)


def test_placeholders_filled(shared):
    res = run([dict(path="chatglm-efficient-tuning/self_cognition.json", fill_placeholders=True),
               dict(path="llamafactory/identity.json", fill_placeholders=True)], shared)
    text = json.dumps([r["messages"] for r in res.records], ensure_ascii=False)
    assert "<NAME>" not in text and "{{name}}" not in text and "小锻" in text and "tuneforge" in text
    with pytest.raises(RecipeError, match="no 'author'"):
        run([dict(path="chatglm-efficient-tuning/self_cognition.json", fill_placeholders=True)], shared,
            {"name": "x"})


def _alpaca_rows(shared, n=30):
    return json.loads((shared / "llamafactory/alpaca_zh_demo.json").read_text(encoding="utf-8"))[:n]


def test_encodings(shared, tmp_path):
    rows = _alpaca_rows(shared)
    text = "\n".join(json.dumps(r, ensure_ascii=False) for r in rows) + "\n"
    (tmp_path / "gbk.jsonl").write_bytes(text.encode("gb18030"))
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + text.encode("utf-8"))
    res = run([dict(path="gbk.jsonl"), dict(path="bom.jsonl")], tmp_path)
    assert res.sources["s0"]["encodings"]["gbk.jsonl"] == "gb18030"
    assert res.sources["s1"]["encodings"]["bom.jsonl"] == "utf-8-sig"
    assert [r["messages"] for r in res.records[:30]] == [r["messages"] for r in res.records[30:]]
    assert res.records[0]["messages"][-1]["content"] == rows[0]["output"]
    # A recipe can name the encoding; a wrong one is a clear error naming the file.
    assert len(run([dict(path="gbk.jsonl", encoding="gbk")], tmp_path).records) == 30
    with pytest.raises(SourceError, match=r"gbk\.jsonl: not valid utf-8"):
        run([dict(path="gbk.jsonl", encoding="utf-8")], tmp_path)


def test_undecodable_lines_are_rejected_alone(shared, tmp_path):
    rows = _alpaca_rows(shared, 5)
    lines = [json.dumps(r, ensure_ascii=False).encode("utf-8") for r in rows]
    lines[2] = b"\xff\xfe\x00garbage\xc3"
    (tmp_path / "mixed.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    res = run([dict(path="mixed.jsonl")], tmp_path)
    assert len(res.records) == 4 and len(res.rejects) == 1
    assert res.rejects[0]["line"] == 3 and "encoding" in res.rejects[0]["reason"]


def test_bad_json_lines_and_fields(shared, tmp_path):
    rows = _alpaca_rows(shared, 6)
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    lines[1] = lines[1][:-5]                                           # malformed
    lines[2] = json.dumps({"instruction": "只有指令"}, ensure_ascii=False)  # missing output
    lines[3] = json.dumps({"instruction": 7, "output": ["x"]})         # mistyped
    lines[4] = json.dumps({**rows[4], "output": "   "}, ensure_ascii=False)  # empty
    (tmp_path / "bad.jsonl").write_text("\n".join(lines) + "\n\n", encoding="utf-8")
    res = run([dict(path="bad.jsonl", format="alpaca")], tmp_path)
    reasons = {r["line"]: r["reason"] for r in res.rejects}
    assert set(reasons) == {2, 3, 4, 5}
    assert reasons[2].startswith("malformed JSON")
    assert reasons[3] == "missing field 'output'"
    assert "should be text" in reasons[4] or "list" in reasons[4]
    assert reasons[5] == "field 'output' is empty"
    assert len(res.records) == 2 and res.sources["s0"]["input"] == 6
    assert res.rejects[0]["raw"] == lines[1]


def test_truncated_json_array_keeps_what_parses(shared, tmp_path):
    rows = _alpaca_rows(shared, 10)
    text = json.dumps(rows, ensure_ascii=False, indent=2)
    cut = text.index(rows[7]["instruction"])
    (tmp_path / "cut.json").write_text(text[:cut], encoding="utf-8")
    res = run([dict(path="cut.json")], tmp_path)
    assert len(res.records) == 7 and len(res.rejects) == 1
    assert res.rejects[0]["index"] == 7 and "malformed JSON in array element 7" in res.rejects[0]["reason"]
    assert res.records[3]["meta"]["line"] == text[: text.index(rows[3]["instruction"])].count("\n")


def test_huge_line_and_empty_file(shared, tmp_path):
    rows = _alpaca_rows(shared, 3)
    big = {**rows[1], "output": "长" * 400_000}
    (tmp_path / "big.jsonl").write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in
                                                  [rows[0], big, rows[2]]) + "\n", encoding="utf-8")
    (tmp_path / "empty.jsonl").write_text("\n  \n", encoding="utf-8")
    res = run([dict(path="big.jsonl", max_record_bytes=1_000_000), dict(path="empty.jsonl", format="alpaca")],
              tmp_path)
    assert len(res.records) == 2 and res.rejects[0]["line"] == 2
    assert "over max_record_bytes" in res.rejects[0]["reason"]
    assert res.sources["s1"]["input"] == 0 and any("empty" in w for w in res.warnings)


def test_unreadable_sources_are_clear_errors(shared, tmp_path):
    (tmp_path / "x.xml").write_text("<a/>", encoding="utf-8")
    with pytest.raises(SourceError, match=r"unknown file type '\.xml'"):
        run([dict(path="x.xml")], tmp_path)
    with pytest.raises(SourceError, match="does not exist"):
        run([dict(path="nope.json")], tmp_path)
    (tmp_path / "odd.jsonl").write_text('{"foo": 1, "bar": 2}\n', encoding="utf-8")
    with pytest.raises(SourceError, match=r"cannot tell the format of odd.jsonl \(fields seen: bar, foo\)"):
        run([dict(path="odd.jsonl")], tmp_path)
    with pytest.raises(SourceError, match="unknown format 'alpacca'"):
        run([dict(path="odd.jsonl", format="alpacca")], tmp_path)


def test_csv_tsv_and_headerless(shared, tmp_path):
    rows = _alpaca_rows(shared, 12)
    with open(tmp_path / "a.csv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["instruction", "input", "output"])
        for r in rows:
            w.writerow([r["instruction"], r["input"], r["output"]])
        w.writerow(["too", "few"])
    with open(tmp_path / "a.tsv", "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(["q", "a"])
        for r in rows:
            w.writerow([r["instruction"], r["output"]])
    res = run([dict(path="a.csv"), dict(path="a.tsv", format="completion", columns={"prompt": "q", "completion": "a"})],
              tmp_path)
    assert res.sources["s0"]["input"] == 13 and res.sources["s0"]["rejected"] == 1
    assert "expected 3 fields" in res.rejects[0]["reason"]
    assert res.records[0]["messages"][-1]["content"] == rows[0]["output"]
    assert res.records[-1]["messages"][-1]["content"] == rows[-1]["output"]
    # MMLU's dev CSVs have no header: name the columns and map them.
    mm = run([dict(path="mmlu/dev/anatomy_dev.csv", csv_header=False, format="completion",
                   csv_columns=["q", "A", "B", "C", "D", "answer"], columns={"prompt": "q", "completion": "answer"})],
             shared)
    assert len(mm.records) == 5 and mm.records[0]["messages"][-1]["content"] in "ABCD"


def test_parquet_arrow_dir_and_glob(shared, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    import datasets

    rows = _alpaca_rows(shared, 20)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    datasets.Dataset.from_list(rows).save_to_disk(str(tmp_path / "saved"))
    (tmp_path / "dir").mkdir()
    for k in range(3):
        (tmp_path / "dir" / f"p{k}.jsonl").write_text(
            "\n".join(json.dumps(r, ensure_ascii=False) for r in rows[k * 5:(k + 1) * 5]) + "\n", encoding="utf-8")
    res = run([dict(path="a.parquet"), dict(path="saved"), dict(path="dir"), dict(path="dir/p[01].jsonl")], tmp_path)
    assert [res.sources[f"s{i}"]["input"] for i in range(4)] == [20, 20, 15, 10]
    assert res.sources["s2"]["files"] == ["dir/p0.jsonl", "dir/p1.jsonl", "dir/p2.jsonl"]
    first = [r["messages"] for r in res.records[:20]]
    assert first == [r["messages"] for r in res.records[20:40]]


def test_text_units(shared):
    by_line = run([dict(path="chinese-llama-alpaca/langchain_doc.txt")], shared)
    whole = run([dict(path="chinese-llama-alpaca/langchain_doc.txt", text_unit="file")], shared)
    paras = run([dict(path="llamafactory/wiki_demo.txt", text_unit="paragraph")], shared)
    assert len(by_line.records) == 20 and len(whole.records) == 1
    assert by_line.records[1]["meta"]["line"] > 1
    assert all(r["kind"] == "text" for r in paras.records) and paras.records


def test_limit_and_ids_are_stable(shared):
    a = run([dict(path="llamafactory/alpaca_zh_demo.json", limit=50)], shared)
    b = run([dict(path="llamafactory/alpaca_zh_demo.json", limit=50)], shared)
    assert len(a.records) == 50 and [r["id"] for r in a.records] == [r["id"] for r in b.records]


def test_plan_utf8_check_agrees_with_python_across_chunk_boundaries(tmp_path, monkeypatch):
    """The planner checks UTF-8 chunk by chunk with Arrow's validator; a character cut by a chunk boundary, a
    stray byte, a surrogate or a truncated end must give exactly Python's strict verdict."""
    import random

    from tuneforge.ingest import scan

    monkeypatch.setattr(scan, "CHUNK", 7)
    rng = random.Random(0)
    path = tmp_path / "u.txt"
    cases = [b"\xed\xa0\x80", b"\xc0\xaf", b"\xf4\x90\x80\x80", "中".encode()[:2], b"ab\x80"]
    for _ in range(1500):
        b = bytearray("".join(rng.choice(["a", "中", "é", "😀", "\n"]) for _ in range(rng.randrange(30))).encode())
        if b and rng.random() < 0.5:
            b[rng.randrange(len(b))] = rng.randrange(256)
        cases.append(bytes(b[: rng.randrange(len(b) + 1)] if rng.random() < 0.2 else b))
    for data in cases:
        path.write_bytes(data)
        try:
            data.decode("utf-8")
            expected = True
        except UnicodeDecodeError:
            expected = False
        assert scan.Scan(path, None, None).utf8 is expected, data


@pytest.mark.parametrize("line", [
    '{"instruction": "你好", "input": "", "output": "世界"}', '{"a":1,"a":2}', '{"b":1,"a":[true,null,{}]}',
    '{"n":123456789012345678901234567890}', '18446744073709551616', '-9223372036854775809', '{"x":[1.5]}',
    '[1e400]', '[NaN]', '{"s":"\\ud800"}', '{"s":"\\ud83d\\ude00"}', '{"s":"\\u0000"}', '[' * 1000 + ']' * 1000,
    '[' * 900 + ']' * 900, '{"a": 1', '{"a": 1} x', '"\\x"', ' {"a": -0} '])
def test_jsonl_fast_parse_is_exactly_json_loads(line):
    """JSONL lines go through orjson only where its answer is json.loads' own; everything else (floats, huge
    integers, NaN, lone surrogates, errors, deep nesting) is handed back to the standard library."""
    from tuneforge.ingest.json_readers import _SLOW, _exact_fast

    fast = _exact_fast(line.encode("utf-8"))
    if fast is _SLOW:
        return
    assert repr(fast) == repr(json.loads(line))
    assert type(fast) is type(json.loads(line))


def test_jsonl_fast_parse_hands_back_what_it_cannot_say():
    from tuneforge.ingest.json_readers import _SLOW, _exact_fast

    for line in ('{"n":123456789012345678901234567890}', '[1.0]', '[NaN]', '{"s":"\\ud800"}', '{"a": 1',
                 '[' * 1000 + ']' * 1000):
        assert _exact_fast(line.encode()) is _SLOW, line
    assert _exact_fast(b'{"a": [1, {"b": "c"}]}') == {"a": [1, {"b": "c"}]}


def test_a_line_file_is_cut_into_equal_parts_with_exact_line_numbers(tmp_path):
    """19.5 targets of lines make 20 parts within two lines of the same size (not 19 whole ones and a half;
    no drift from cut to cut), each starting at a line boundary with the right first line number."""
    from tuneforge.ingest import plan

    path = tmp_path / "c.jsonl"
    lines = [f'{{"instruction": "问题{i}", "output": "{"答" * (i % 37)}"}}\n'.encode() for i in range(4000)]
    path.write_bytes(b"".join(lines))
    size = path.stat().st_size
    target = int(size / 19.5)
    p = plan.plan_file(path, "c.jsonl", SourceConfig(name="s", path="c.jsonl"), plan.Sharding(target_bytes=target))
    assert len(p.parts) == 20
    starts = [q.start for q in p.parts] + [size]
    sizes = [b - a for a, b in itertools.pairwise(starts)]
    assert max(sizes) - min(sizes) <= 2 * max(len(x) for x in lines) and max(sizes) <= target
    line_starts = {sum(len(x) for x in lines[:k]): k + 1 for k in range(len(lines))}
    assert [q.first_line for q in p.parts] == [line_starts[q.start] for q in p.parts]
