"""Eval loss when the dataset has an eval split, and the rows cut to fit max_length said in one line."""

from __future__ import annotations

import json
import logging

import pytest
from test_train_e2e import _build  # tests/ is on sys.path under pytest

from tuneforge.trainers import train
from tuneforge.trainers.metrics import read_metrics
from tuneforge.trainers.truncation import fitting_line


def test_fitting_line_counts_cut_and_dropped_rows():
    fitting = {"train": {"rows": 1048, "trimmed": 200, "truncated": 70, "dropped": 3, "dropped_by_trl": 2},
               "validation": {"rows": 10, "trimmed": 0, "truncated": 0, "dropped": 0}}
    assert fitting_line(fitting, 512) == (
        "train: 270 of 1048 rows truncated at max_length 512 (200 lost older turns, 70 cut inside a turn), "
        "5 dropped (2 by TRL); validation: 0 of 10 rows truncated at max_length 512 (0 lost older turns, "
        "0 cut inside a turn), 0 dropped")


def test_evaluation_follows_the_eval_split():
    from tuneforge.trainers.config import TrainConfig
    from tuneforge.trainers.stages import Prepared, evaluation

    cfg = TrainConfig(dataset="d", stage="sft", args={"save_steps": 50})
    assert evaluation(cfg, Prepared(train=[1], eval=[1, 2], reports=[])) == {"eval_strategy": "steps",
                                                                            "eval_steps": 50}
    assert evaluation(cfg, Prepared(train=[1], eval=None, reports=[])) == {"eval_strategy": "no"}
    assert evaluation(cfg, Prepared(train=[1], eval=[], reports=[])) == {"eval_strategy": "no"}


@pytest.mark.slow
def test_sft_with_an_eval_split_records_eval_loss(shared, tmp_path, caplog, monkeypatch):
    built = _build(shared, tmp_path / "built", "eval-loss")
    cfg = {"base_model": "embedded:smollm2", "dataset": str(built), "stage": "sft", "max_length": 48,
           "lora": {"r": 4, "alpha": 8}, "args": {"max_steps": 2, "per_device_train_batch_size": 2,
                                                  "save_strategy": "no", "dataloader_num_workers": 0}}
    caplog.set_level("INFO", logger="tuneforge.trainers")
    monkeypatch.setattr(logging.getLogger("tuneforge"), "propagate", True)  # the CLI's setup turns it off
    s = train(cfg, tmp_path / "run")
    evals = [r for r in read_metrics(s["metrics"]) if "eval_loss" in r]
    assert [r["step"] for r in evals] == [2] and s["eval_loss"] == evals[0]["eval_loss"] > 0
    saved = json.loads((tmp_path / "run" / "summary.json").read_text(encoding="utf-8"))
    assert saved["eval_loss"] == s["eval_loss"]
    run = json.loads((tmp_path / "run" / "run.json").read_text(encoding="utf-8"))
    want = fitting_line(run["truncation"], 48)
    assert s["rows_line"] == want and f"sft: {want}" in caplog.text
    assert "rows truncated at max_length 48" in want and run["truncation"]["train"]["rows"] == 4
