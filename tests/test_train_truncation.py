"""Fitting rows into max_length (trim the oldest turns, then the system turn, then LLaMA-Factory's length budget),
the dropped-row report, --strict and the pre-flight share check; and config paths resolving against the file
that names them. Only the tokenizer of the embedded SmolLM2 is loaded, except in the one marked slow."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tuneforge.common.errors import RecipeError
from tuneforge.trainers import truncation as tr
from tuneforge.trainers.config import check_paths, load_config

LONG = "The hotel on the corner of the old market square has forty rooms and a garden. " * 6


def _u(text: str) -> dict:
    return {"role": "user", "content": text}


def _a(text: str) -> dict:
    return {"role": "assistant", "content": text}


SYSTEM = {"role": "system", "content": "You are a booking assistant for a small hotel chain. " * 3}


@pytest.fixture(scope="module")
def tok_tpl(smollm2_path):
    from transformers import AutoTokenizer

    from tuneforge.templates import get_template

    return AutoTokenizer.from_pretrained(str(smollm2_path)), get_template("chatml")


def _n(tok, tpl, msgs) -> int:
    return len(tpl.tokenize(tok, msgs)["input_ids"])


def test_length_budget_is_llamafactorys():
    assert tr.infer_seqlen(100, 10, 64) == (54, 10)  # short reply: only the prompt is cut
    assert tr.infer_seqlen(10, 100, 64) == (10, 54)  # short prompt: only the reply is cut
    assert tr.infer_seqlen(100, 100, 64) == (32, 32)  # both long: shared in proportion
    assert tr.infer_seqlen(5, 5, 64) == (5, 5)


def test_trims_drop_oldest_rounds_then_the_system_turn():
    msgs = [SYSTEM, _u("q1"), _a("a1"), _u("q2"), _a("a2"), _u("q3"), _a("a3")]
    forms = tr.trims(msgs, len(msgs) - 1)
    assert [[m["content"][:2] for m in f] for f in forms] == [
        ["Yo", "q2", "a2", "q3", "a3"], ["Yo", "q3", "a3"], ["q3", "a3"]]
    assert tr.trims([_u("q"), _a("a")], 1) == []


def test_sft_row_trimmed_not_dropped(tok_tpl):
    tok, tpl = tok_tpl
    msgs = [SYSTEM, _u(LONG), _a(LONG), _u("Is breakfast included?"), _a("Yes, from seven to ten.")]
    limit = _n(tok, tpl, [SYSTEM, *msgs[3:]]) + 2
    assert _n(tok, tpl, msgs) > limit
    out = tr.fit_sft(msgs, tok, tpl, limit)
    assert out[tr.STATUS] == tr.TRIMMED and len(out["input_ids"]) <= limit
    assert out["input_ids"] == tpl.tokenize(tok, [SYSTEM, *msgs[3:]])["input_ids"]  # whole turns, system kept
    # tighter: the system turn goes too, the last exchange stays whole
    tight = _n(tok, tpl, msgs[3:])
    out = tr.fit_sft(msgs, tok, tpl, tight)
    assert out[tr.STATUS] == tr.TRIMMED and out["input_ids"] == tpl.tokenize(tok, msgs[3:])["input_ids"]
    # a row that fits is untouched
    short = msgs[3:]
    assert tr.fit_sft(short, tok, tpl, 1024)[tr.STATUS] == tr.FIT


def test_sft_last_exchange_cut_by_the_budget(tok_tpl):
    tok, tpl = tok_tpl
    msgs = [_u(LONG + " Which floor is the garden on?"), _a("The garden is on the ground floor.")]
    full = tpl.tokenize(tok, msgs)
    out = tr.fit_sft(msgs, tok, tpl, 64)
    assert out[tr.STATUS] == tr.TRUNCATED and len(out["input_ids"]) == 64
    # the reply is short, so it stays whole with its end-of-turn; the prompt lost the start of the user's text
    reply = [t for t, lab in zip(full["input_ids"], full["labels"], strict=True) if lab != -100]
    assert [t for t, lab in zip(out["input_ids"], out["labels"], strict=True) if lab != -100] == reply
    text = tok.decode(out["input_ids"])
    assert text.startswith("<|im_start|>") and "Which floor is the garden on?" in text
    assert "<|im_start|>assistant" in text


def test_sft_rows_that_cannot_fit_are_dropped_with_a_reason(tok_tpl):
    tok, tpl = tok_tpl
    assert tr.fit_sft([_u("hello")], tok, tpl, 64)[tr.REASON] == "no assistant turn"
    # a short question, a long tool result and a short reply: only user text may be cut, so it cannot fit
    msgs = [_u("Rooms?"), {"role": "tool", "content": LONG}, _a("Forty.")]
    out = tr.fit_sft(msgs, tok, tpl, 32)
    assert out[tr.STATUS] == tr.DROPPED and "max_length 32" in out[tr.REASON] and out["input_ids"] == []
    # a short prompt and a long reply: the reply's end goes
    out = tr.fit_sft([SYSTEM, _u("Hi"), _a(LONG)], tok, tpl, 32)
    assert out[tr.STATUS] == tr.TRUNCATED and len(out["input_ids"]) == 32
    assert tok.decode(out["input_ids"]).startswith("<|im_start|>user\nHi")  # the system turn went first


def _ds(rows):
    from datasets import Dataset

    return Dataset.from_list(rows)


def test_report_preflight_and_strict(tok_tpl):
    tok, tpl = tok_tpl
    rows = [{"id": "fits", "messages": [_u("Hi"), _a("Hello.")]},
            {"id": "trim", "messages": [_u(LONG), _a(LONG), _u("Breakfast?"), _a("From seven.")]},
            {"id": "noreply", "messages": [_u("Anyone there?")]}]

    def fit(row):
        return tr.fit_sft(row["messages"], tok, tpl, 64)

    kept, report = tr.apply(_ds(rows), fit, "validation", "fit")
    assert kept["id"] == ["fits", "trim"] and "input_ids" in kept.column_names
    j = report.to_json()
    assert (j["rows"], j["kept"], j["fit"], j["trimmed"], j["dropped"]) == (3, 2, 1, 1, 1)
    assert j["dropped_rows"] == [{"id": "noreply", "reason": "no assistant turn"}]
    ok = tr.SplitReport("train", rows=200, counts={tr.FIT: 199, tr.DROPPED: 1},
                        dropped=[{"id": "x", "reason": "r"}])
    tr.preflight([ok], 64, 0.01, strict=False)  # 0.5% is within 1%
    with pytest.raises(tr.DroppedRowsError, match="--strict: train: 1 of 200"):
        tr.preflight([ok], 64, 0.01, strict=True)
    with pytest.raises(RecipeError, match=r"validation: 1 of 3 rows \(33.3%\) cannot fit max_length 64.*noreply"):
        tr.preflight([ok, report], 64, 0.01, strict=False)


def test_preference_prompt_trimmed_and_unfittable_dropped(tok_tpl):
    tok, tpl = tok_tpl
    row = {"prompt": [SYSTEM, _u(LONG), _a(LONG), _u("Breakfast?")], "chosen": [_a("From seven.")],
           "rejected": [_a("No idea.")]}
    out = tr.fit_pair(row, ("chosen", "rejected"), tok, tpl, 96, cut_completion=False)
    assert out[tr.STATUS] == tr.TRIMMED and out["prompt"][-1]["content"] == "Breakfast?"
    long_reply = {**row, "chosen": [_a(LONG)]}
    assert tr.fit_pair(long_reply, ("chosen", "rejected"), tok, tpl, 64, cut_completion=True)[tr.STATUS] == \
        tr.TRUNCATED  # dpo/kto: TRL keeps the start of the completion
    out = tr.fit_pair(long_reply, ("chosen", "rejected"), tok, tpl, 64, cut_completion=False)
    assert out[tr.STATUS] == tr.DROPPED and "cannot cut a reply" in out[tr.REASON]
    prompt = tr.fit_prompt([_u(LONG)], tok, tpl, 32)
    assert prompt[tr.STATUS] == tr.DROPPED and "over max_length 32" in prompt[tr.REASON]


# ------------------------------------------------------------------ the run: before any model loads


def _folder(tmp_path: Path, rows: list[dict]) -> Path:
    from datasets import DatasetDict

    out = tmp_path / "build"
    DatasetDict({"train": _ds(rows), "validation": _ds(rows[:2])}).save_to_disk(str(out / "dataset"))
    (out / "manifest.json").write_text(json.dumps({"datasets": {"messages": "dataset"}, "template": "chatml",
                                                   "sha256": "t"}), encoding="utf-8")
    return out


def _no_model(monkeypatch):
    from tuneforge.trainers import models

    def boom(*a, **k):
        raise AssertionError("a model was loaded before the pre-flight checks")

    monkeypatch.setattr(models, "load_policy", boom)
    monkeypatch.setattr(models, "load_scorer", boom)


def test_preflight_fails_before_training_with_numbers(tmp_path, smollm2_path, monkeypatch):
    _no_model(monkeypatch)
    rows = [{"id": f"ok{i}", "messages": [_u("Hi"), _a("Hello.")]} for i in range(3)]
    rows += [{"id": "lonely", "messages": [_u("Anyone?")]}]
    data = _folder(tmp_path, rows)
    from tuneforge.trainers import train

    cfg = {"dataset": str(data), "stage": "sft", "max_length": 64}
    with pytest.raises(RecipeError, match=r"train: 1 of 4 rows \(25.0%\).*max_drop_share 1%"):
        train(cfg, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text("utf-8"))
    assert info["truncation"]["train"]["dropped_rows"] == [{"id": "lonely", "reason": "no assistant turn"}]
    # the validation split is checked too
    rows = [{"id": "v0", "messages": [_u("Anyone?")]}] + [{"id": f"ok{i}", "messages": [_u("Hi"), _a("Hello.")]}
                                                          for i in range(200)]
    data = _folder(tmp_path / "v", rows)
    with pytest.raises(RecipeError, match=r"validation: 1 of 2 rows \(50.0%\)"):
        train({**cfg, "dataset": str(data)}, tmp_path / "run2")


def test_cli_strict_exits_1(tmp_path, smollm2_path):
    rows = [{"id": f"ok{i}", "messages": [_u("Hi"), _a("Hello.")]} for i in range(300)]
    rows.insert(0, {"id": "lonely", "messages": [_u("Anyone?")]})
    data = _folder(tmp_path, rows)
    (tmp_path / "cfg.yaml").write_text("dataset: build\nstage: sft\nmax_length: 64\n", encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "tuneforge.cli", "train", str(tmp_path / "cfg.yaml"), "--out",
                        str(tmp_path / "run"), "--strict"], capture_output=True, text=True, cwd=str(data.parent.parent))
    assert r.returncode == 1, r.stderr[-2000:]
    assert "--strict: train: 1 of 301" in r.stderr and "run.json" in r.stderr
    info = json.loads((tmp_path / "run" / "run.json").read_text("utf-8"))
    assert info["truncation"]["train"]["dropped_rows"][0]["id"] == "lonely"


@pytest.mark.slow
def test_run_json_counts_the_rows_trained(tmp_path, smollm2_path):
    """One step of sft: a trimmed row is trained, a row without a reply is listed, train_rows is what trained."""
    from tuneforge.trainers import train

    rows = [{"id": "fits", "messages": [_u("Hi"), _a("Hello.")]},
            {"id": "trim", "messages": [_u(LONG), _a(LONG), _u("Breakfast?"), _a("From seven.")]},
            {"id": "lonely", "messages": [_u("Anyone?")]}]
    data = _folder(tmp_path, rows)
    cfg = {"dataset": str(data), "stage": "sft", "max_length": 64, "truncation": {"max_drop_share": 0.5},
           "peft": {"method": "lora", "r": 4}, "splits": {"train": "train", "eval": None},
           "args": {"max_steps": 1, "per_device_train_batch_size": 2, "save_strategy": "no",
                    "gradient_checkpointing": False, "logging_steps": 1}}
    s = train(cfg, tmp_path / "run")
    info = json.loads((tmp_path / "run" / "run.json").read_text("utf-8"))
    assert info["train_rows"] == 2 == s["train_rows"]
    t = info["truncation"]["train"]
    assert (t["rows"], t["fit"], t["trimmed"], t["dropped"]) == (3, 1, 1, 1)
    assert t["dropped_rows"] == [{"id": "lonely", "reason": "no assistant turn"}]
    assert s["rows"]["train"]["dropped"] == 1 and "dropped_rows" not in s["rows"]["train"]


# ------------------------------------------------------------------ paths


def test_relative_paths_resolve_against_the_config_file(tmp_path, monkeypatch):
    conf = tmp_path / "configs"
    conf.mkdir()
    (conf / "ppo.yaml").write_text(
        "dataset: ../data/hotel\nstage: ppo\nbase_model: ../runs/sft/merged\n"
        "ppo: {reward_model: ../runs/rm/final}\nreplay: {dataset: general}\n"
        "args: {deepspeed: ds.json}\n", encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # the working directory plays no part
    c = load_config(conf / "ppo.yaml")
    assert c.dataset == (tmp_path / "data" / "hotel").resolve()
    assert c.base_model == str((tmp_path / "runs" / "sft" / "merged").resolve())
    assert c.ppo.reward_model == str((tmp_path / "runs" / "rm" / "final").resolve())
    assert c.replay.dataset == (conf / "general").resolve()
    assert c.args["deepspeed"] == str((conf / "ds.json").resolve())
    with pytest.raises(RecipeError) as e:
        check_paths(c)
    for field in ("dataset:", "base_model:", "ppo.reward_model:", "replay.dataset:", "args.deepspeed:"):
        assert field in str(e.value)
    check_paths(c, skip={"dataset", "base_model", "ppo.reward_model", "replay.dataset", "args.deepspeed"})


def test_dict_configs_resolve_against_base_dir_and_hub_ids_stay(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    c = load_config({"dataset": "data", "stage": "sft", "base_model": "Qwen/Qwen2.5-0.5B-Instruct"},
                    base_dir=tmp_path / "pipelines")
    assert c.dataset == (tmp_path / "pipelines" / "data").resolve()
    assert c.base_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert load_config({"dataset": "data", "stage": "sft"}).dataset == (tmp_path / "data").resolve()
    assert load_config({"dataset": "d", "stage": "sft"}, base_dir=tmp_path).base_model == "embedded:smollm2"
    # a folder beside the config wins over a hub id of the same spelling
    (tmp_path / "pipelines" / "org" / "model").mkdir(parents=True)
    c = load_config({"dataset": "d", "stage": "sft", "base_model": "org/model"}, base_dir=tmp_path / "pipelines")
    assert c.base_model == str((tmp_path / "pipelines" / "org" / "model").resolve())


def test_train_checks_paths_before_any_model_loads(tmp_path, monkeypatch):
    _no_model(monkeypatch)
    from tuneforge.trainers import train

    (tmp_path / "cfg.yaml").write_text("dataset: nothing-here\nstage: sft\n", encoding="utf-8")
    with pytest.raises(RecipeError, match=r"dataset: .*nothing-here does not exist"):
        train(tmp_path / "cfg.yaml", tmp_path / "run")
