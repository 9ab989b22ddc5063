"""Benchmark contamination on the real C-Eval, CMMLU and MMLU files: planted questions caught, clean data not."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tuneforge.clean import CleanConfig, contamination_report
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.mcq import load_benchmark
from tuneforge.common.records import new_record, provenance


def _cfg(shared: Path, drop: bool = False) -> CleanConfig:
    return CleanConfig.model_validate({"contamination": {"drop": drop, "benchmarks": [
        {"name": "ceval", "path": str(shared / "ceval")},
        {"name": "cmmlu", "path": str(shared / "cmmlu"), "layout": "cmmlu"},
        {"name": "mmlu", "path": str(shared / "mmlu"), "layout": "mmlu"}]}})


def _clean_records(shared: Path) -> list[dict]:
    out = []
    for name in ("alpaca_zh_demo.json", "alpaca_en_demo.json"):
        for i, r in enumerate(json.loads((shared / "llamafactory" / name).read_text(encoding="utf-8"))):
            out.append(new_record("messages", provenance(name, name, None, i), messages=[
                {"role": "user", "content": r["instruction"] + ("\n" + r["input"] if r["input"] else "")},
                {"role": "assistant", "content": r["output"]}]))
    oaast = json.loads((shared / "chatglm-efficient-tuning" / "oaast_sft_zh.json").read_text(encoding="utf-8"))
    for i, r in enumerate(oaast):
        msgs = [m for q, a in r["history"] for m in ({"role": "user", "content": q},
                                                     {"role": "assistant", "content": a})]
        msgs += [{"role": "user", "content": r["instruction"]}, {"role": "assistant", "content": r["output"]}]
        out.append(new_record("messages", provenance("oaast", "oaast_sft_zh.json", None, i), messages=msgs))
    return out


@pytest.fixture(scope="module")
def report_and_planted(shared: Path):
    ceval = load_benchmark(shared / "ceval").items[("accountant", "val")][1]
    cmmlu = load_benchmark(shared / "cmmlu").items[("chinese_history", "test")][5]
    mmlu = load_benchmark(shared / "mmlu", layout="mmlu").items[("astronomy", "val")][3]
    opts = "\n".join(f"{k}. {v}" for k, v in zip("ABCD", ceval.options, strict=True))
    planted = [
        # A C-Eval question pasted into an instruction, reformatted (full-width -> spaces, options appended).
        new_record("messages", provenance("leak", "leak.json", None, 0), messages=[
            {"role": "user", "content": "请回答下面的单选题。\n" + ceval.question.replace("，", ", ") + "\n" + opts},
            {"role": "assistant", "content": f"答案是{ceval.answer}。"}]),
        # A CMMLU question inside a longer document.
        new_record("text", provenance("leak", "leak.txt", 1, None),
                   text="历史复习资料第三章。" + cmmlu.question + "这道题考查的是朝代更替的知识点，请同学们注意。"),
        # An MMLU question quoted in an English answer, with different case and spacing.
        new_record("messages", provenance("leak", "leak.json", None, 2), messages=[
            {"role": "user", "content": "Give me a practice question on astronomy."},
            {"role": "assistant", "content": "Sure!  " + mmlu.question.upper() + "  Think about it."}]),
    ]
    clean = _clean_records(shared)
    rep = contamination_report(clean + planted, _cfg(shared), recipe_dir=shared)
    return rep, planted, clean, (ceval, cmmlu, mmlu)


def test_planted_benchmark_questions_are_caught(report_and_planted):
    rep, planted, _, (ceval, cmmlu, mmlu) = report_and_planted
    hits = {(h["record_id"], h["benchmark"], h["item"]) for h in rep["hits"]}
    assert (planted[0]["id"], "ceval", f"accountant/val/{ceval.id}") in hits
    assert (planted[1]["id"], "cmmlu", f"chinese_history/test/{cmmlu.id}") in hits
    assert (planted[2]["id"], "mmlu", f"astronomy/val/{mmlu.id}") in hits
    assert all(h["overlap"] >= 0.5 for h in rep["hits"])
    assert rep["dropped"] == []  # reporting only unless the recipe says drop


def test_clean_real_records_are_not_flagged(report_and_planted):
    rep, planted, clean, _ = report_and_planted
    flagged = {h["record_id"] for h in rep["hits"]}
    assert flagged == {r["id"] for r in planted}, [h for h in rep["hits"] if h["record_id"] in
                                                   {r["id"] for r in clean}]
    b = rep["benchmarks"]
    assert b["ceval"]["items"] == 1606 and b["cmmlu"]["items"] == 11917 and b["mmlu"]["items"] == 1816
    assert b["ceval"]["records"] == b["cmmlu"]["records"] == b["mmlu"]["records"] == 1


def test_drop_lists_contaminated_ids(shared: Path, report_and_planted):
    _, planted, _, _ = report_and_planted
    rep = contamination_report(planted, _cfg(shared, drop=True), recipe_dir=shared)
    assert rep["dropped"] == [r["id"] for r in planted]


def test_custom_eval_set_and_errors(tmp_path: Path):
    (tmp_path / "exam.jsonl").write_text(json.dumps(
        {"qid": "q1", "question": "在我们公司的报销制度中，出差住宿标准每晚最高可以报销多少元人民币",
         "A": "300", "B": "400", "C": "500", "D": "600"}, ensure_ascii=False) + "\n", encoding="utf-8")
    cfg = CleanConfig.model_validate({"contamination": {"benchmarks": [
        {"name": "hr", "path": "exam.jsonl", "layout": "mcq", "columns": {"id": "qid"}}]}})
    rec = new_record("messages", provenance("s", "f", None, 0), messages=[
        {"role": "user", "content": "问：在我们公司的报销制度中，出差住宿标准每晚最高可以报销多少元人民币？"},
        {"role": "assistant", "content": "500元。"}])
    rep = contamination_report([rec], cfg, recipe_dir=tmp_path)
    assert rep["hits"] == [{"record_id": rec["id"], "benchmark": "hr", "item": "default/test/q1", "overlap": 1.0}]
    bad = CleanConfig.model_validate({"contamination": {"benchmarks": [{"name": "x", "path": "missing"}]}})
    with pytest.raises(TuneforgeError, match="benchmark 'x' not found"):
        contamination_report([rec], bad, recipe_dir=tmp_path)
    assert contamination_report([rec], CleanConfig(), tmp_path)["hits"] == []
