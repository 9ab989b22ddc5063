"""The bad-input matrix: one recipe per case, built from real shipped corpora corrupted by the test, run as a
user runs it. Zero crashes; counts reconcile with the lines/rows a user counts; every reject has its reason,
file and exact line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tuneforge import build

REPO = Path(__file__).resolve().parents[1]


def _alpaca_rows(shared: Path, n: int = 20) -> list[dict]:
    return json.loads((shared / "llamafactory/alpaca_zh_demo.json").read_text(encoding="utf-8"))[:n]


def _lines(rows: list) -> list[str]:
    return [json.dumps(r, ensure_ascii=False) for r in rows]


def _case(tmp: Path, name: str, filename: str, content: bytes, source: dict | None = None) -> Path:
    d = tmp / name
    d.mkdir()
    (d / filename).write_bytes(content)
    (d / "recipe.yaml").write_text(yaml.safe_dump({
        "name": name, "sources": [{"name": "s", "path": filename, **(source or {})}],
        "card": {"tokenizer": None}, "clean": {"dedup": {"near": False}}}), encoding="utf-8")
    return d / "recipe.yaml"


def _check(recipe: Path, expect_input: int, bad_lines: dict[int, str], cli: bool = False) -> dict:
    """Build (in this process, or through the CLI as a user types it); counts reconcile, and each expected bad
    line is rejected with a reason containing the given text, its file and that exact line."""
    out = recipe.parent / "out"
    if cli:
        p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "build", str(recipe), "--out", str(out),
                            "--no-prefect", "--runner", "serial"], capture_output=True, text=True, timeout=300,
                           env={k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"})
        assert p.returncode == 0, p.stderr[-3000:]
    else:
        build(recipe, out, runner="serial")
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    c = m["counts"]
    assert c["input"] == expect_input, c
    assert c["input"] == c["kept"] + c["rejected"] + c["deduplicated"]
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    by_line = {r.get("line"): r for r in rejects}
    for line, reason in bad_lines.items():
        assert line in by_line, (line, rejects)
        assert reason in by_line[line]["reason"] and by_line[line]["file"], by_line[line]
    assert len(rejects) == c["rejected"] + c["deduplicated"]
    return m


@pytest.mark.slow
def test_jsonl_matrix(shared, tmp_path):
    good = _lines(_alpaca_rows(shared, 12))
    sharegpt = [json.dumps({"conversations": [{"from": "human", "value": r["instruction"]},
                                              {"from": "gpt", "value": r["output"]}]}, ensure_ascii=False)
                for r in _alpaca_rows(shared, 8)]
    cases = {
        # valid JSON that is not an object
        "not_objects": (good[:3] + ["null", "42", "true", '"text"', "[1, 2]"] + good[3:6], 11,
                        {4: "object", 5: "object", 6: "object", 7: "object", 8: "object"}),
        # a 100k-deep nesting and a 5000-digit integer
        "deep_and_big": (good[:2] + ["[" * 100_000 + "]" * 100_000, '{"instruction": "q", "output": ' +
                                     "9" * 5000 + "}"] + good[2:4], 6, {3: "", 4: ""}),
        # raw U+2028 / U+0085 / U+2029 inside valid strings: records, and no line shifts
        "unicode_breaks": ([json.dumps({"instruction": f"问题{ch}换行", "output": f"回答{ch}{i}"}, ensure_ascii=False)
                            for i, ch in enumerate(["\u2028", "\u0085", "\u2029"])] + ["{broken"] + good[:2], 6,
                           {4: "JSON"}),
        # a lone surrogate escape
        "lone_surrogate": (good[:2] + ['{"instruction": "emoji \\ud83d", "output": "x"}'] + good[2:4], 5,
                           {3: "surrogate"}),
        # malformed and truncated lines among good ones, CRLF line ends, a BOM, blank lines
        "malformed": ((["\ufeff" + good[0]] + good[1:3] + ['{"instruction": "q", "output": '] + [""] +
                       good[3:5]), 6, {4: "JSON"}),
        # ShareGPT turns with a list as the speaker, and role-order violations, among real conversations
        "sharegpt_bad_roles": ([json.dumps({"conversations": [{"from": ["human"], "value": "hi"},
                                                              {"from": "gpt", "value": "hello"}]}),
                                json.dumps({"conversations": [{"from": "gpt", "value": "first"},
                                                              {"from": "human", "value": "q"}]}),
                                json.dumps({"conversations": [{"from": "human", "value": "a"},
                                                              {"from": "human", "value": "b"},
                                                              {"from": "gpt", "value": "c"}]})] + sharegpt, 11,
                               {1: "role", 2: "ends with"}),
    }
    for name, (lines, n, bad) in cases.items():
        eol = "\r\n" if name == "malformed" else "\n"
        recipe = _case(tmp_path, name, "d.jsonl", eol.join(lines).encode("utf-8", "surrogatepass"))
        _check(recipe, n, bad, cli=name == "not_objects")


@pytest.mark.slow
def test_files_matrix(shared, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = _alpaca_rows(shared, 20)
    # A CSV with one field over 128 KiB: every row counted and kept.
    big = [{"instruction": r["instruction"], "output": r["output"]} for r in rows]
    big[5]["output"] = "长" * 200_000
    import csv
    import io

    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["instruction", "output"])
    w.writeheader()
    w.writerows(big)
    m = _check(_case(tmp_path, "csv_big_field", "d.csv", buf.getvalue().encode("utf-8")), 20, {})
    assert m["counts"]["rejected"] == 0
    # Parquet with a binary column and null outputs: nulls rejected by row, bytes do not crash publishing.
    table = pa.table({"instruction": [r["instruction"] for r in rows[:6]],
                      "output": [r["output"] if i % 3 else None for i, r in enumerate(rows[:6])],
                      "blob": [b"\x00\xff" * 4] * 6})
    pq.write_table(table, tmp_path / "t.parquet")
    m = _check(_case(tmp_path, "parquet_binary", "d.parquet", (tmp_path / "t.parquet").read_bytes()), 6, {})
    assert m["counts"]["rejected"] == 2
    # GBK text declared by nothing: detected, decoded, kept.
    gbk = "\n".join(_lines(rows[:5])).encode("gbk", "replace")
    m = _check(_case(tmp_path, "gbk", "d.jsonl", gbk), 5, {})
    assert m["counts"]["kept"] == 5
    # The same file twice in one source is read once.
    d = tmp_path / "twice"
    d.mkdir()
    (d / "d.jsonl").write_text("\n".join(_lines(rows[:7])), encoding="utf-8")
    (d / "recipe.yaml").write_text(yaml.safe_dump({"name": "twice", "sources": [
        {"name": "s", "path": ["d.jsonl", "./d.jsonl"]}], "card": {"tokenizer": None}}), encoding="utf-8")
    _check(d / "recipe.yaml", 7, {})


json_value = st.recursive(st.none() | st.booleans() | st.integers() | st.text(max_size=8),
                          lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner,
                                                                                     max_size=3), max_leaves=8)
record = st.fixed_dictionaries({"instruction": st.text(min_size=1, max_size=30),
                                "output": st.text(min_size=1, max_size=30)})
line = st.one_of(record.map(lambda r: json.dumps(r, ensure_ascii=False)),
                 json_value.map(json.dumps),
                 st.text(max_size=40).filter(lambda s: "\n" not in s and "\r" not in s))


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(lines=st.lists(line, min_size=1, max_size=25))
def test_any_jsonl_reconciles_with_exact_lines(tmp_path_factory, lines):
    """Hypothesis-generated JSON lines (records, other JSON values, junk): no crash, every line is one input,
    and every line that made no record is rejected at its own line number."""
    from tuneforge.clean import CleanConfig, run_clean
    from tuneforge.ingest import ingest
    from tuneforge.ingest.config import SourceConfig

    d = tmp_path_factory.mktemp("hyp")
    (d / "d.jsonl").write_bytes("\n".join(lines).encode("utf-8", "surrogatepass"))
    res = ingest([SourceConfig(name="s", path="d.jsonl", format="alpaca")], d)
    nonblank = [i + 1 for i, x in enumerate(lines) if x.strip()]
    made = {r["meta"]["line"] for r in res.records}
    rejected = {r["line"] for r in res.rejects}
    assert made | rejected == set(nonblank) and not made & rejected
    assert len(res.records) + len(res.rejects) == len(nonblank)
    cleaned = run_clean(res.records, CleanConfig())
    assert len(cleaned.kept) + len(cleaned.rejects) == len(res.records)


def test_values_orjson_cannot_hold_survive_the_work_files(tmp_path):
    """A knowledge-base row keeps its values as they are: a 24-digit integer (beyond orjson's 64 bits) must
    come out as that integer, not as the float orjson would read it back as."""
    big = 123456789012345678901234
    rows = [{"名称": "A酒店", "price": big, "note": "x"}, {"名称": "B酒店", "price": 7, "note": "y"}]
    recipe = _case(tmp_path, "kb", "kb.jsonl", ("\n".join(_lines(rows)) + "\n").encode(), {"format": "kb"})
    _check(recipe, 2, {})
    out = [json.loads(x) for x in (recipe.parent / "out" / "kb" / "s.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [r["row"]["price"] for r in out] == [big, 7]
    assert type(out[0]["row"]["price"]) is int
