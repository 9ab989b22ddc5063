"""Issue 34, the eval / train / augment half: bad answer keys, bad training and eval arguments, and generation
faults (cut replies, a refused endpoint, a step where everything failed, a decode stopped inside a character)
are each a clear user error or a counted reject, never a silent score, a crash blamed on tuneforge, or a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from fake_openai_server import FakeOpenAIServer, Plan, refused_url  # tests/ is on sys.path under pytest

from tuneforge.augment import AugmentConfig, run_augment
from tuneforge.augment.request_types import EndpointFailed
from tuneforge.common.decoding import whole_chars
from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.mcq import load_benchmark
from tuneforge.common.records import new_record, provenance
from tuneforge.eval.prompts import completion_prompt
from tuneforge.eval.suites import check_scorable, load_suite, suite_rejects

REPO = Path(__file__).resolve().parents[1]
ENV = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def cli(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=ENV)


def exam(tmp: Path, rows: list[dict], name: str = "quiz.csv") -> Path:
    cols = list(dict.fromkeys(k for r in rows for k in r))
    lines = [",".join(cols)] + [",".join(str(r.get(c, "")) for c in cols) for r in rows]
    p = tmp / name
    p.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return p


Q = {"question": "1+1=?", "A": "1", "B": "2", "C": "3", "D": "4"}


# ---------------------------------------------------------------- multiple-choice answer keys


def test_bad_answers_are_rejected_with_file_line_and_reason(tmp_path):
    p = exam(tmp_path, [{**Q, "id": "ok", "answer": "B"}, {**Q, "id": "e4", "answer": "E"},
                        {**Q, "id": "ab", "answer": "AB"}, {**Q, "id": "blank", "answer": ""},
                        {**Q, "id": "lower", "answer": "c"}, {**Q, "id": "noopt", "C": "", "answer": "A"}])
    suite = load_suite(f"mcq:{p}")
    kept = [it.id for s in suite.subjects for it in suite.items(s)]
    assert kept == ["ok", "lower"]
    rejects = {r["id"]: r for r in suite_rejects(suite, 0)}
    assert set(rejects) == {"e4", "ab", "blank", "noopt"}
    assert rejects["e4"]["line"] == 3 and "'E' is not one of the options A-D" in rejects["e4"]["reason"]
    assert "one letter" in rejects["ab"]["reason"] and rejects["blank"]["reason"] == "blank answer"
    assert rejects["noopt"]["reason"] == "option C is blank"
    assert all(r["file"] == str(p) for r in rejects.values())


def test_all_blank_or_all_rejected_is_an_error_and_ceval_test_is_not(tmp_path):
    blank = load_suite(f"mcq:{exam(tmp_path, [{**Q, 'answer': ''}] * 3, 'blank.csv')}")
    with pytest.raises(TuneforgeError, match="no question has an answer"):
        check_scorable(blank, [], limit=None, engine="native", mode="logits")
    bad = load_suite(f"mcq:{exam(tmp_path, [{**Q, 'answer': 'E'}, {**Q, 'answer': ''}], 'bad.csv')}")
    with pytest.raises(TuneforgeError, match=r"no question to score: 2 rows rejected; first: .*bad.csv line 2"):
        check_scorable(bad, suite_rejects(bad, 0), limit=None, engine="native", mode="logits")
    # C-Eval's own test split has no answers: it is scored for the leaderboard submission, not refused
    root = tmp_path / "ceval"
    for split, ans in (("dev", "A"), ("test", "")):
        (root / split).mkdir(parents=True)
        (root / split / f"law_{split}.csv").write_text(
            "id,question,A,B,C,D,answer\n" + "".join(f"{i},q{i},a,b,c,d,{ans}\n" for i in range(3)), "utf-8")
    test = load_suite(f"ceval:{root}", split="test")
    assert test.bench.rejects == [] and len(test.items("law")) == 3
    check_scorable(test, [], limit=None, engine="native", mode="logits")


def test_all_blank_exam_exits_2_before_the_model_loads(tmp_path):
    p = exam(tmp_path, [{**Q, "id": str(i), "answer": ""} for i in range(4)])
    (tmp_path / "empty-model").mkdir()  # loading it would fail: the exam is refused first
    r = cli("eval", "-m", str(tmp_path / "empty-model"), "-b", f"mcq:{p}", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "no question has an answer" in " ".join(r.stderr.split()), r.stderr


def test_a_fifth_option_column_is_shown_and_scored(tmp_path, smollm2_path):
    from tuneforge.eval import run_eval

    root = tmp_path / "ceval5"
    rows = {"dev": ["0,太阳从哪边升起？,东,西,南,北,中,A"],
            "val": ["0,一加一等于几？,1,2,3,4,5,B", "1,五减零等于几？,1,2,3,4,5,E", "2,三个选项？,是,否,不知道,,,C",
                    "3,坏答案？,1,2,3,4,5,F", "4,空答案？,1,2,3,4,5,"]}
    for split, lines in rows.items():
        (root / split).mkdir(parents=True)
        (root / split / f"math_{split}.csv").write_text("id,question,A,B,C,D,E,answer\n" + "\n".join(lines) + "\n",
                                                        encoding="utf-8")
    bench = load_benchmark(root, "ceval")
    items = bench.items[("math", "val")]
    assert [len(it.options) for it in items] == [5, 5, 3]  # trailing blank columns are not options
    assert [(r["line"], r["reason"]) for r in bench.rejects] == [
        (5, "answer 'F' is not one of the options A-E"), (6, "blank answer")]
    suite = load_suite(f"ceval:{root}")
    prompt = completion_prompt("数学", suite.shots("math", 1), items[1], suite.style)
    assert "\nE. 中\n答案：A\n\n" in prompt and prompt.endswith("\nD. 4\nE. 5\n答案：")
    assert "\nD. " not in completion_prompt("数学", [], items[2], suite.style)

    out = tmp_path / "run"
    res = run_eval({"suites": [{"benchmark": f"ceval:{root}", "shots": 1}], "device": "cpu"}, out=out,
                   model=str(smollm2_path), report=False)
    s = res["suites"]["ceval"]
    assert s["n"] == 3 and s["rejected"] == 2  # n is what was scored; the rejects are apart
    preds = [json.loads(x) for x in (out / "predictions.jsonl").read_text("utf-8").splitlines()]
    assert [len(p["logits"]) for p in preds] == [5, 5, 3]
    assert all(p["pred"] in "ABCDE"[: len(p["logits"])] for p in preds)
    rejects = [json.loads(x) for x in (out / "rejects.jsonl").read_text("utf-8").splitlines()]
    assert [(r["suite"], r["line"]) for r in rejects] == [("ceval", 5), ("ceval", 6)]
    with pytest.raises(TuneforgeError, match="engine lm-eval scores four-option questions"):
        run_eval({"suites": [{"benchmark": f"ceval:{root}"}], "engine": "lm-eval"}, out=tmp_path / "lm",
                 model=str(smollm2_path), report=False)
    with pytest.raises(TuneforgeError, match="mode generate reads answer letters A-D"):
        run_eval({"suites": [{"benchmark": f"ceval:{root}"}], "mode": "generate"}, out=tmp_path / "gen",
                 model=str(smollm2_path), report=False)


# ---------------------------------------------------------------- training and eval arguments


def _train_cfg(**kw) -> dict:
    return {"dataset": "some/build", "stage": "sft", **kw}


@pytest.mark.parametrize("cfg, needle", [
    (_train_cfg(args={"learning_rate": -1e-4}), "args.learning_rate: -0.0001 must be > 0"),
    (_train_cfg(args={"learning_rate": 0}), "args.learning_rate"),
    (_train_cfg(args={"max_steps": 0}), "args.max_steps: 0 must be a positive number of steps"),
    (_train_cfg(args={"per_device_train_batch_size": 0}), "args.per_device_train_batch_size"),
    (_train_cfg(args={"gradient_accumulation_steps": 0}), "args.gradient_accumulation_steps"),
    (_train_cfg(args={"num_train_epochs": -1}), "args.num_train_epochs"),
    (_train_cfg(args={"learning_rate": "fast"}), "args.learning_rate: 'fast' is not a number"),
    (_train_cfg(stage="dpo", args={"beta": 0}), "args.beta"),
    (_train_cfg(stage="grpo", grpo={"rewards": [{"type": "exact_match"}]}, args={"num_generations": 1}),
     "args.num_generations"),
    (_train_cfg(peft={"method": "prefix"}, args={"gradient_checkpointing": True}),
     "args.gradient_checkpointing: peft method 'prefix' cannot train with activation checkpointing"),
])
def test_bad_training_arguments_name_the_field(cfg, needle):
    from tuneforge.trainers import load_config

    with pytest.raises(RecipeError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        load_config(cfg)


def test_yaml_text_numbers_become_numbers():
    from tuneforge.trainers import load_config

    c = load_config(_train_cfg(args={"learning_rate": "1e-4", "max_steps": "3"}))
    assert c.args["learning_rate"] == 1e-4 and c.args["max_steps"] == 3


def test_trl_own_checks_run_before_the_data_loads(tmp_path):
    from tuneforge.trainers import train

    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_text("{}", encoding="utf-8")  # no dataset inside: it is never read
    cfg = _train_cfg(dataset=str(ds), stage="grpo", grpo={"rewards": [{"type": "exact_match"}]},
                     args={"num_generations": 3, "per_device_train_batch_size": 4})
    with pytest.raises(TuneforgeError, match=r"GRPOConfig rejected.*divisible by num_generations"):
        train(cfg, tmp_path / "run")


def test_prefix_tuning_turns_activation_checkpointing_off(tmp_path):
    from tuneforge.trainers.config import load_config
    from tuneforge.trainers.stages import trl_args

    args = trl_args(load_config(_train_cfg(peft={"method": "prefix"})), tmp_path)
    assert args.activation_checkpointing is False
    assert trl_args(load_config(_train_cfg(peft={"method": "prompt"})), tmp_path).activation_checkpointing is True
    own = trl_args(load_config(_train_cfg(peft={"method": "prefix"}, args={"gradient_checkpointing": False})), tmp_path)
    assert own.activation_checkpointing is False


@pytest.mark.slow
def test_prefix_with_a_default_sft_config_trains(shared, tmp_path, caplog):
    import logging

    from test_train_methods import build_folder

    from tuneforge.trainers import train

    caplog.set_level(logging.INFO, logger="tuneforge")
    built = build_folder(shared, tmp_path / "built")
    s = train({"dataset": str(built), "stage": "sft", "max_length": 96, "peft": {"method": "prefix"},
               "args": {"max_steps": 1, "per_device_train_batch_size": 1, "save_strategy": "no", "logging_steps": 1}},
              tmp_path / "run")
    assert s["steps"] == 1 and isinstance(s["final_loss"], float)
    assert "activation checkpointing off" in caplog.text


@pytest.mark.parametrize("cfg, needle", [
    ({"suites": [{"benchmark": "ceval", "shots": -1}]}, "shots"),
    ({"suites": [{"benchmark": "ceval", "limit": 0}]}, "limit"),
    ({"batch_size": 0}, "batch_size"),
    ({"forgetting": {"alpha": 0}}, "alpha"),
    ({"generation": {"max_new_tokens": 0}}, "max_new_tokens"),
])
def test_bad_eval_config_values_name_the_field(cfg, needle):
    from tuneforge.eval.config import load_config

    with pytest.raises(RecipeError, match=needle):
        load_config(cfg)


def test_missing_adapter_or_model_folder_exits_2(tmp_path):
    from tuneforge.eval.config import check_model_paths

    with pytest.raises(TuneforgeError, match=r"--adapter .*does not exist"):
        check_model_paths("embedded:smollm2", str(tmp_path / "run" / "final"))
    (tmp_path / "notadapter").mkdir()
    with pytest.raises(TuneforgeError, match="not a PEFT adapter folder"):
        check_model_paths("embedded:smollm2", str(tmp_path / "notadapter"))
    with pytest.raises(TuneforgeError, match=r"--model .*does not exist"):
        check_model_paths(str(tmp_path / "nope"), None)
    check_model_paths("embedded:smollm2", "org/adapter")  # a hub id is left to the loader
    r = cli("forgetting", "--base", "embedded:smollm2", "--adapter", str(tmp_path / "missing"), "--suites", "ceval",
            "--limit", "1", "--out", str(tmp_path / "f"))
    assert r.returncode == 2 and "does not exist" in " ".join(r.stderr.split()), r.stderr
    assert not (tmp_path / "f" / "base").exists()  # refused before the base model's evaluation
    r = cli("eval", "-m", "embedded:smollm2", "--adapter", str(tmp_path / "missing"), "-b", "ceval", "--limit", "1",
            "--out", str(tmp_path / "e"))
    assert r.returncode == 2 and "--adapter" in r.stderr and "bug in tuneforge" not in r.stderr, r.stderr


def test_train_bad_arguments_exit_2_not_3(tmp_path):
    ds = tmp_path / "ds"
    ds.mkdir()
    (ds / "manifest.json").write_text("{}", encoding="utf-8")
    (tmp_path / "c.yaml").write_text("dataset: ds\nstage: sft\nargs: {learning_rate: -1.0e-4, max_steps: 0}\n",
                                     encoding="utf-8")
    r = cli("train", str(tmp_path / "c.yaml"), "--out", str(tmp_path / "run"))
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and "args.learning_rate" in err and "args.max_steps: 0" in err, r.stderr


# ---------------------------------------------------------------- generation faults


def _convs(n: int) -> list[dict]:
    return [new_record("messages", provenance("demo", "d.jsonl", i, i), messages=[
        {"role": "user", "content": f"我想订一间安静的房间，第{'一二三四五六七八九十'[i]}间"},
        {"role": "assistant", "content": "好的，请问您什么时候入住？"}]) for i in range(n)]


def _aug(url: str, tmp: Path, **llm) -> AugmentConfig:
    base = {"base_url": url, "model": "fake-model", "timeout_s": 2.0, "max_attempts": 3, "backoff_base_s": 0.01,
            "backoff_max_s": 0.05, "response_format": "json_schema", **llm}
    return AugmentConfig.model_validate({"llm": base, "cache": str(tmp / "cache.sqlite"),
                                         "steps": [{"op": "rewrite", "params": {"context_turns": 0}}]})


@pytest.fixture
def server():
    srv = FakeOpenAIServer(Plan(seed=1)).start()
    yield srv
    srv.stop()


def test_a_reply_cut_by_max_tokens_is_not_done(server, tmp_path):
    server.plan.update({"fault_rate": 1.0, "faults": ["length"]})
    recs = _convs(4)
    res = run_augment(recs, _aug(server.base_url, tmp_path), progress=False)
    c = res.counts["rewrite"]
    assert c["done"] == 0 and c["failed"] == c["failed_truncated"] == 4 and c["attempts"] == 4  # not retried
    assert all("cut at max_tokens 512" in f["reason"] for f in res.failures)
    assert res.records == recs  # the items are kept as they came, their failure listed
    again = run_augment(recs, _aug(server.base_url, tmp_path), progress=False)  # cached: cut again, not done
    assert again.counts["rewrite"]["failed_truncated"] == 4 and again.counts["rewrite"]["cached"] == 4
    kept = run_augment(recs, _aug(server.base_url, tmp_path, keep_truncated=True), progress=False)
    assert kept.counts["rewrite"]["done"] == 4 and kept.counts["rewrite"]["failed"] == 0


def test_progress_line_counts_truncated():
    from tuneforge.augment.progress import StepProgress

    bar = StepProgress(False)
    bar.begin("rewrite", 10)
    assert "failed 3 (truncated 2)" in bar.stats(5, 3, 0, 8, 0.0, truncated=2)


def test_a_refused_connection_says_so_with_the_url_and_fails_fast(tmp_path):
    url = refused_url()
    t = time.perf_counter()
    with pytest.raises(EndpointFailed, match=f"cannot reach the endpoint {url}: connection refused"):
        run_augment(_convs(3), _aug(url, tmp_path, max_attempts=5, backoff_base_s=2.0), progress=False)
    assert time.perf_counter() - t < 5  # no backoff over five attempts
    with pytest.raises(EndpointFailed, match="connection refused"):  # also when the model is asked of /models
        run_augment(_convs(1), _aug(url, tmp_path, model=None), progress=False)


def _recipe(tmp: Path, shared: Path, url: str) -> Path:
    rows = json.loads((shared / "llamafactory/alpaca_zh_demo.json").read_text(encoding="utf-8"))[:4]
    (tmp / "d.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    recipe = {"name": "cut", "sources": [{"name": "s", "path": "d.jsonl"}], "card": {"tokenizer": None},
              "clean": {"dedup": {"near": False}},
              "augment": {"llm": {"base_url": url, "model": "fake-model", "response_format": "json_schema",
                                  "max_attempts": 1, "timeout_s": 5},
                          "cache": "cache.sqlite", "steps": [{"op": "rewrite", "params": {"context_turns": 0}}]}}
    (tmp / "recipe.yaml").write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return tmp / "recipe.yaml"


@pytest.mark.slow
def test_a_step_where_everything_failed_ends_the_build_output(server, shared, tmp_path):
    server.plan.update({"fault_rate": 1.0, "faults": ["length"]})
    recipe = _recipe(tmp_path, shared, server.base_url)
    run = ("build", str(recipe), "--no-prefect", "--runner", "serial")
    r = cli(*run, "--out", str(tmp_path / "o"))
    assert r.returncode == 0, r.stderr[-2000:]
    last = r.stderr.strip().splitlines()[-1]
    assert "warning" in last and "augment step 'rewrite': all" in last and "cut at max_tokens" in last, r.stderr
    m = json.loads((tmp_path / "o" / "manifest.json").read_text(encoding="utf-8"))
    assert m["counts"]["stages"]["augment"]["rewrite"]["failed_truncated"] >= 1
    strict = cli(*run, "--out", str(tmp_path / "o2"), "--strict")
    assert strict.returncode == 2 and "augment step 'rewrite': all" in strict.stderr, strict.stderr[-2000:]
    (tmp_path / "refused").mkdir()
    refused = cli("build", str(_recipe(tmp_path / "refused", shared, refused_url())), "--no-prefect", "--runner",
                  "serial", "--out", str(tmp_path / "o3"))
    assert refused.returncode == 2 and "connection refused" in refused.stderr, refused.stderr[-2000:]
    assert "Request timed out" not in refused.stderr and "timeout after" not in refused.stderr


# ---------------------------------------------------------------- decoding stopped inside a character


def test_decode_cut_inside_a_character_drops_the_broken_tail(smollm2_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    ids = tok("酒店的早餐很好吃", add_special_tokens=False).input_ids
    cut = [k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd")]
    assert cut, "this tokenizer splits these characters over tokens"
    for k in cut:
        fixed = whole_chars(tok.decode(ids[:k]))
        assert "\ufffd" not in fixed and "酒店的早餐很好吃".startswith(fixed)


@pytest.mark.slow
def test_generated_text_never_ends_in_a_broken_character(smollm2_path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tuneforge.eval.generate import generate_texts

    tok = AutoTokenizer.from_pretrained(str(smollm2_path))
    model = AutoModelForCausalLM.from_pretrained(str(smollm2_path), dtype=torch.float32).eval()
    prompt = tok.apply_chat_template([{"role": "user", "content": "用中文介绍一下北京。"}], tokenize=False,
                                     add_generation_prompt=True)
    enc = tok(prompt, return_tensors="pt", add_special_tokens=False)
    with torch.inference_mode():
        full = model.generate(**enc, max_new_tokens=24, do_sample=False, pad_token_id=tok.pad_token_id or 0)
    new = full[0, enc.input_ids.shape[1]:].tolist()
    cut = [k for k in range(1, len(new)) if tok.decode(new[:k]).endswith("\ufffd")
           and whole_chars(tok.decode(new[:k])).strip()]
    assert cut, tok.decode(new)  # greedy decoding stops inside a character at these lengths
    for k in cut[:2]:
        (out,) = generate_texts(model, tok, "cpu", [prompt], max_new_tokens=k)
        assert out and not out.endswith("\ufffd") and tok.decode(new).startswith(out), (k, out)
