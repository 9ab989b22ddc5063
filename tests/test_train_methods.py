"""Every PEFT method and the kto/orpo/simpo stages on the real embedded SmolLM2: a short overfit run whose loss is
finite and falls, then every saved adapter reloads with plain peft in a fresh process and generates."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tuneforge.trainers import train
from tuneforge.trainers.metrics import read_metrics

pytestmark = pytest.mark.slow

N_TRAIN = 2  # kto: one desirable and one undesirable row per batch (its KL term needs batches of 2)
# sft, orpo, simpo overfit a single row: every step sees the same tokens, so a few steps bring the loss down
N_SINGLE = 1
STEPS = 3
# Adapters trained in this module, reloaded together by the last test (one fresh process for all).
TRAINED: dict[str, str] = {}


@pytest.fixture(scope="module", autouse=True)
def _threads():
    """On a CPU shared past its core count, one torch thread runs these tiny steps ~3x faster than two."""
    import torch

    n = torch.get_num_threads()
    busy = os.getloadavg()[0] > (os.cpu_count() or 1)
    if busy:
        torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _save(rows: list[dict], folder: Path, n_train: int) -> None:
    from datasets import Dataset, DatasetDict

    DatasetDict({"train": Dataset.from_list(rows[:n_train]),
                 "validation": Dataset.from_list(rows[n_train:n_train + 1])}).save_to_disk(str(folder))


def _shortest(rows: list[dict], size: Any, n: int) -> list[dict]:
    return sorted(rows, key=size)[:n]


def build_folder(shared: Path, out: Path) -> Path:
    """A `tuneforge build`-shaped folder (manifest + DatasetDicts under the build's folder names) with messages,
    preference and unpaired rows: the shortest real records of the LLaMA-Factory demo corpora (CPU time)."""
    lf = shared / "llamafactory"
    meta = json.dumps({"source": "llamafactory-demo"})
    n = N_TRAIN + 1
    alpaca = _shortest(json.loads((lf / "alpaca_en_demo.json").read_text("utf-8")),
                       lambda r: len(r["instruction"]) + len(r["input"]) + len(r["output"]), n)
    messages = [{"id": f"m{i}", "meta": meta, "messages": [
        {"role": "user", "content": (r["instruction"] + "\n" + r["input"]).strip()},
        {"role": "assistant", "content": r["output"]}]} for i, r in enumerate(alpaca)]
    dpo = _shortest([r for r in json.loads((lf / "dpo_en_demo.json").read_text("utf-8"))
                     if len(r["conversations"]) == 1],
                    lambda r: len(r["conversations"][0]["value"]) + max(len(r["chosen"]["value"]),
                                                                         len(r["rejected"]["value"])), n)
    prefs = [{"id": f"p{i}", "meta": meta, "prompt": [{"role": "user", "content": r["conversations"][0]["value"]}],
              "chosen": [{"role": "assistant", "content": r["chosen"]["value"]}],
              "rejected": [{"role": "assistant", "content": r["rejected"]["value"]}]} for i, r in enumerate(dpo)]
    kto = [r for r in json.loads((lf / "kto_en_demo.json").read_text("utf-8")) if len(r["messages"]) == 2]
    size = lambda r: sum(len(m["content"]) for m in r["messages"])  # noqa: E731
    good = _shortest([r for r in kto if r["label"]], size, 2)
    bad = _shortest([r for r in kto if not r["label"]], size, 1)
    mixed = [good[0], bad[0], good[1]]  # the training batch has both labels
    unpaired = [{"id": f"u{i}", "meta": meta, "prompt": r["messages"][:1], "completion": r["messages"][1:],
                 "label": bool(r["label"])} for i, r in enumerate(mixed)]
    assert len(messages) == len(prefs) == len(unpaired) == n
    manifest = {"datasets": {}, "template": "chatml", "sha256": "test-methods"}
    for kind, rows, name, n_train in (("messages", messages, "dataset", N_SINGLE),
                                      ("preference", prefs, "dataset_preference", N_SINGLE),
                                      ("unpaired", unpaired, "dataset_unpaired", N_TRAIN)):
        _save(rows, out / name, n_train)
        manifest["datasets"][kind] = name
    (out / "manifest.json").write_text(json.dumps(manifest), encoding="utf-8")
    return out


@pytest.fixture(scope="module")
def built(shared, tmp_path_factory) -> Path:
    return build_folder(shared, tmp_path_factory.mktemp("methods"))


def _cfg(built: Path, stage: str, peft: dict | None, steps: int, **args) -> dict:
    base = {"max_steps": steps, "per_device_train_batch_size": N_TRAIN if stage == "kto" else N_SINGLE,
            "logging_steps": 1, "learning_rate": 1e-3, "warmup_steps": 0, "save_strategy": "no", "dataloader_num_workers": 0, "lr_scheduler_type": "constant",
            "gradient_checkpointing": False}
    base.update(args)
    cfg = {"base_model": "embedded:smollm2", "dataset": str(built), "stage": stage, "max_length": 96,
           "args": base}
    if peft is not None:
        cfg["peft"] = peft
    return cfg


def _losses(summary: dict) -> list[float]:
    return [r["loss"] for r in read_metrics(summary["metrics"])
            if isinstance(r.get("loss"), (int, float)) and "train_loss" not in r]


def _assert_falls(losses: list[float], steps: int) -> None:
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    assert losses[-1] < losses[0], losses


# method -> (peft block, learning rate): the prompt-learning methods train few parameters from scratch
METHODS = {
    "lora": ({"method": "lora", "r": 8, "alpha": 16, "dropout": 0.0}, 1e-3),
    "dora": ({"method": "dora", "r": 8, "alpha": 16, "dropout": 0.0}, 1e-3),
    "adalora": ({"method": "adalora", "init_r": 8, "target_r": 4, "dropout": 0.0}, 2e-3),
    "ia3": ({"method": "ia3"}, 2e-2),
    "prefix": ({"method": "prefix", "num_virtual_tokens": 8, "prefix_projection": True,
                "encoder_hidden_size": 64}, 1e-2),
    "prompt": ({"method": "prompt", "num_virtual_tokens": 8, "init": "text", "init_text": "Answer helpfully:"}, 3e-2),
    "p_tuning": ({"method": "p_tuning", "num_virtual_tokens": 8, "encoder_hidden_size": 64}, 1e-2),
}


@pytest.mark.parametrize("method", list(METHODS))
def test_peft_method_overfits_sft(method, built, smollm2_path, tmp_path):
    peft, lr = METHODS[method]
    steps = STEPS
    s = train(_cfg(built, "sft", peft, steps, learning_rate=lr), tmp_path / "run")
    _assert_falls(_losses(s), steps)
    info = json.loads((tmp_path / "run" / "run.json").read_text("utf-8"))
    assert info["peft_method"] == method and info["train_rows"] == N_SINGLE
    adapter = json.loads((Path(s["final"]) / "adapter_config.json").read_text("utf-8"))
    want = {"lora": "LORA", "dora": "LORA", "adalora": "ADALORA", "ia3": "IA3", "prefix": "PREFIX_TUNING",
            "prompt": "PROMPT_TUNING", "p_tuning": "P_TUNING"}[method]
    assert adapter["peft_type"] == want and adapter.get("use_dora", False) == (method == "dora")
    TRAINED[f"sft-{method}"] = s["final"]


def test_kto_on_unpaired_rows(built, smollm2_path, tmp_path):
    steps = STEPS
    s = train(_cfg(built, "kto", METHODS["lora"][0], steps, learning_rate=1e-3), tmp_path / "run")
    _assert_falls(_losses(s), steps)
    info = json.loads((tmp_path / "run" / "run.json").read_text("utf-8"))
    assert info["dataset_kind"] == "unpaired" and info["trl_args"]["desirable_weight"] == 1.0
    TRAINED["kto"] = s["final"]


@pytest.mark.parametrize("stage", ["orpo", "simpo"])
def test_reference_free_preference_stages(stage, built, smollm2_path, tmp_path):
    steps = STEPS
    s = train(_cfg(built, stage, METHODS["lora"][0], steps, learning_rate=1e-3), tmp_path / "run")
    _assert_falls(_losses(s), steps)
    trl_args = json.loads((tmp_path / "run" / "run.json").read_text("utf-8"))["trl_args"]
    if stage == "simpo":
        assert trl_args["loss_type"] == "simpo" and trl_args["cpo_alpha"] == 0.0 and trl_args["simpo_gamma"] == 0.5
    TRAINED[stage] = s["final"]


RELOAD = r"""
import json, sys
import torch
from peft import AutoPeftModelForCausalLM
from transformers import AutoTokenizer

out = {}
for name, path in json.loads(sys.argv[1]).items():
    tok = AutoTokenizer.from_pretrained(path)
    model = AutoPeftModelForCausalLM.from_pretrained(path).eval()
    text = tok.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                   add_generation_prompt=True)
    ids = tok(text, return_tensors="pt")
    with torch.no_grad():
        gen = model.generate(**ids, max_new_tokens=6, do_sample=False)
    out[name] = [type(model).__name__, gen.shape[-1] - ids["input_ids"].shape[-1]]
print(json.dumps(out))
"""


def test_every_adapter_reloads_in_a_fresh_process_and_generates():
    if not TRAINED:
        pytest.skip("no adapter was trained in this session (run the module's training tests first)")
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if os.getloadavg()[0] > (os.cpu_count() or 1) else None
    r = subprocess.run([sys.executable, "-c", RELOAD, json.dumps(TRAINED)], capture_output=True, text=True,
                       timeout=600, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(got) == set(TRAINED)
    for name, (cls, new_tokens) in got.items():
        assert cls.startswith("PeftModel") and new_tokens > 0, (name, cls, new_tokens)
