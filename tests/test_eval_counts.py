"""Every row an evaluation skips, truncates or cuts is counted (results.json and the log line); progress
reaches the callback with counts; eval-config paths resolve against the config file and are checked before
any model loads."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from tuneforge.common.errors import TuneforgeError


class _Scripted:
    """`generate` that appends scripted new tokens: the counting of cut outputs is checked exactly."""

    def __init__(self, new: list[list[int]], context: int) -> None:
        from types import SimpleNamespace

        self.new, self.config = new, SimpleNamespace(max_position_embeddings=context)

    def generate(self, input_ids, attention_mask=None, **kw):
        import torch

        rows = self.new[: len(input_ids)]
        self.new = self.new[len(input_ids):]
        width = max(len(r) for r in rows)
        pad = kw["pad_token_id"]
        tail = torch.tensor([r + [pad] * (width - len(r)) for r in rows])
        return torch.cat([input_ids, tail], dim=1)


def test_generate_texts_counts_cut_outputs_and_prompts_over_the_context(smollm2_path):
    from transformers import AutoTokenizer

    from tuneforge.eval.generate import generate_texts

    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    word = tok("hello", add_special_tokens=False).input_ids[0]
    prompts = ["short", "a much longer prompt than the others " * 3, "mid length one"]
    # length-sorted batches of 2: short, mid | long. Row 1 ends in EOS; rows 2 and 3 run out of tokens.
    model = _Scripted([[word, tok.eos_token_id, tok.pad_token_id], [word] * 3, [word] * 3], context=10)
    stats, batches = {}, []
    outs = generate_texts(model, tok, "cpu", prompts, max_new_tokens=3, batch_size=2, on_batch=batches.append,
                          stats=stats)
    assert len(outs) == 3 and batches == [2, 1]
    assert stats == {"cut_at_max_new_tokens": 2, "over_context": 1}


def test_eval_counts_every_row_and_reports_progress(tiny, tmp_path, caplog, monkeypatch):
    from datasets import Dataset, DatasetDict
    from tuneforge.eval import run_eval
    from tuneforge.eval.progress import reporting

    msgs = [{"role": "user", "content": "问题"}, {"role": "assistant", "content": "回答"}]
    recs = [{"id": str(i), "messages": msgs if i != 2 else msgs[:1]} for i in range(5)]  # row 2: no reply
    build = tmp_path / "conf" / "data"
    DatasetDict({"test": Dataset.from_list(recs)}).save_to_disk(str(build / "dataset"))
    (build / "manifest.json").write_text(json.dumps({"datasets": {"messages": "dataset"}, "template": "chatml"}),
                                         encoding="utf-8")
    corpus = tmp_path / "conf" / "text.txt"
    corpus.write_text("a\n" + "很长的文本。" * 200 + "\n一段普通的文字。\n", encoding="utf-8")
    exam = tmp_path / "conf" / "quiz.jsonl"
    exam.write_text("".join(json.dumps({"question": f"第{i}题", "A": "甲", "B": "乙", "C": "丙", "D": "丁", "answer": "B"},
                                       ensure_ascii=False) + "\n" for i in range(3)), encoding="utf-8")
    cfg = tmp_path / "conf" / "eval.yaml"
    cfg.write_text("suites: [{benchmark: 'mcq:quiz.jsonl', mode: generate}]\n"
                   "generation: {max_new_tokens: 3}\n"
                   "heldout: {dataset: data, max_new_tokens: 3, batch_size: 2}\n"  # relative to this file
                   "perplexity: {corpus: text.txt, max_length: 32}\n", encoding="utf-8")
    lines: list[str] = []
    caplog.set_level(logging.INFO, logger="tuneforge.eval")
    monkeypatch.setattr(logging.getLogger("tuneforge"), "propagate", True)  # the CLI's setup turns it off
    with reporting(lines.append):  # what the Prefect flow installs for a pipeline step
        res = run_eval(cfg, out=tmp_path / "run", model=str(tiny))
    ho = res["heldout"]["rows"]
    assert ho["total"] == 5 and ho["skipped"] == 1 and ho["generated"] == res["heldout"]["metrics"]["n"] == 4
    assert 0 <= ho["cut_at_max_new_tokens"] <= 4 and ho["over_context"] == 0
    ppl = res["perplexity"]
    assert (ppl["documents"], ppl["truncated"], ppl["skipped"]) == (3, 1, 1)
    quiz = res["suites"]["quiz"]
    assert quiz["chance"] == 25.0 and "cut_at_max_new_tokens" in quiz
    assert any(x.startswith("held-out: 4/4 rows (") for x in lines)
    assert any(x.startswith("perplexity: 3/3 documents") for x in lines)
    assert any(x.startswith("quiz (generate): 3/3 questions") for x in lines)
    log = caplog.text
    assert "held-out: 4 of 5 rows generated (1 skipped: no assistant reply)" in log
    assert "1 truncated at max_length 32, 1 skipped" in log
    stored = json.loads((tmp_path / "run" / "results.json").read_text(encoding="utf-8"))
    assert stored["heldout"]["rows"] == ho and stored["perplexity"]["truncated"] == 1


def test_eval_config_paths_resolve_against_the_file_and_fail_before_the_model(tmp_path):
    from tuneforge.eval import run_eval
    from tuneforge.eval.config import load_config

    cfg = tmp_path / "conf" / "eval.yaml"
    cfg.parent.mkdir()
    cfg.write_text("heldout: {dataset: ../runs/law}\nperplexity: {corpus: text.txt}\n", encoding="utf-8")
    c = load_config(cfg)
    assert c.heldout.dataset == str((tmp_path / "runs" / "law").resolve())
    assert c.perplexity.corpus == str((tmp_path / "conf" / "text.txt").resolve())
    with pytest.raises(TuneforgeError, match=r"heldout\.dataset: .*runs/law does not exist; perplexity\.corpus"):
        run_eval(cfg, out=tmp_path / "out", model="/no/such/model")  # the model would fail to load


def test_shipped_heldout_config_points_beside_the_configs_folder():
    from tuneforge.common.resources import ASSETS
    from tuneforge.eval.config import load_config

    c = load_config(ASSETS / "configs" / "eval_heldout.yaml")
    assert Path(c.heldout.dataset) == (ASSETS / "configs" / ".." / "runs" / "law").resolve()


@pytest.mark.slow
def test_prefect_step_sends_evaluation_progress_to_the_task_log(caplog, monkeypatch):
    """The pipeline's Prefect steps report an evaluation's progress lines in their task run's log."""
    from prefect import flow
    from prefect.testing.utilities import prefect_test_harness

    from tuneforge.eval.progress import Counter
    from tuneforge.flows.pipeline import prefect_step

    def step(out: str) -> dict:
        with Counter("perplexity", 3, "documents", None) as bar:  # no callback passed, as in pipeline/run.py
            bar.advance(3)
        return {"out": out}

    @flow
    def one(out: str) -> dict:
        return prefect_step("forgetting", step, {"out": out})

    import tuneforge.flows.pipeline as fp

    monkeypatch.setitem(fp.PUBLISH, "forgetting", lambda name, res: None)  # nothing to publish from a stand-in
    task_log = logging.getLogger("prefect.task_runs")  # Prefect's loggers do not propagate to the root
    task_log.addHandler(caplog.handler)
    try:
        with prefect_test_harness(server_startup_timeout=120):
            one(out="x")
    finally:
        task_log.removeHandler(caplog.handler)
    assert any(r.getMessage().startswith("perplexity: 3/3 documents") and r.name.startswith("prefect.task_runs")
               for r in caplog.records)


def test_logits_mode_counts_prompts_over_the_context(tiny, tmp_path):
    """A multiple-choice prompt longer than the model's positions is scored, and counted per suite."""
    from tuneforge.eval import run_eval

    exam = tmp_path / "quiz.jsonl"
    rows = [{"question": "短题", "A": "甲", "B": "乙", "C": "丙", "D": "丁", "answer": "B"},
            {"question": "很长的题目。" * 100, "A": "甲", "B": "乙", "C": "丙", "D": "丁", "answer": "A"}]
    exam.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    cfg_json = json.loads((tiny / "config.json").read_text(encoding="utf-8"))
    small = tmp_path / "small"
    import shutil

    shutil.copytree(tiny, small)
    (small / "config.json").write_text(json.dumps({**cfg_json, "max_position_embeddings": 160}), encoding="utf-8")
    res = run_eval({"suites": [{"benchmark": f"mcq:{exam}", "shots": 0}]}, out=tmp_path / "run", model=str(small))
    quiz = res["suites"]["quiz"]
    assert quiz["n"] == 2 and quiz["over_context"] == 1
    preds = [json.loads(x) for x in (tmp_path / "run" / "predictions.jsonl").read_text().splitlines()]
    assert [bool(p.get("over_context")) for p in preds] == [False, True]
