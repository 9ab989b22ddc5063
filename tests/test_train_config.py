"""Training config validation, defaults, reward functions and the metrics log (no model needed)."""

from __future__ import annotations

import json
import math

import pytest

from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.trainers import load_config
from tuneforge.trainers.config import TrainConfig
from tuneforge.trainers.metrics import MetricsLog, plot_loss, read_metrics
from tuneforge.trainers.rewards import exact_match, length_reward, regex_reward


def base(**kw):
    cfg = {"dataset": "some/build", "stage": "sft"}
    cfg.update(kw)
    return cfg


def test_defaults_and_learning_rates():
    c = load_config(base())
    assert c.base_model == "embedded:smollm2" and c.lora.target_modules == "all-linear"
    assert c.default_learning_rate() == 1e-4
    assert load_config(base(lora=False)).lora is None
    assert load_config(base(lora=False)).default_learning_rate() == 2e-5
    assert load_config(base(lora={"qlora": True})).default_learning_rate() == 2e-4
    assert load_config(base(stage="dpo")).default_learning_rate() == pytest.approx(1e-5)


@pytest.mark.parametrize("cfg, needle", [
    (base(stage="xyz"), "stage"),
    (base(lora={"r": 0}), "lora.r"),
    (base(lora={"target_modules": []}), "target_modules"),
    (base(bogus=1), "bogus"),
    (base(stage="ppo"), "reward_model"),
    (base(stage="grpo"), "rewards"),
    (base(stage="grpo", grpo={"rewards": [{"type": "regex"}]}), "pattern"),
    (base(replay={"dataset": "x", "ratio": 1.5}), "replay.ratio"),
    (base(args={"max_stepz": 3}), "max_stepz"),
    (base(stage="dpo", args={"packing": True}), "DPOConfig"),
    (base(args={"output_dir": "x"}), "--out"),
    ({"stage": "sft"}, "dataset"),
])
def test_bad_configs_name_the_field(cfg, needle):
    with pytest.raises(RecipeError, match=needle):
        load_config(cfg)


def test_stage_args_pass_through():
    c = load_config(base(stage="dpo", args={"beta": 0.3, "loss_type": ["sigmoid"], "max_steps": 5}))
    assert c.args["beta"] == 0.3


def test_yaml_paths_resolve_beside_the_file(tmp_path):
    (tmp_path / "data").mkdir()
    (tmp_path / "cfg.yaml").write_text("dataset: data\nstage: pt\nlora: false\n", encoding="utf-8")
    c = load_config(tmp_path / "cfg.yaml")
    assert str(c.dataset) == str(tmp_path / "data") and c.lora is None
    (tmp_path / "bad.yaml").write_text("- a list\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="mapping"):
        load_config(tmp_path / "bad.yaml")
    with pytest.raises(RecipeError, match="not found"):
        load_config(tmp_path / "missing.yaml")


def test_qlora_needs_cuda_and_bitsandbytes():
    import torch

    from tuneforge.trainers.models import quantization_config

    c = TrainConfig.model_validate(base(lora={"qlora": True}))
    if torch.cuda.is_available():
        pytest.skip("this check is for machines without a GPU")
    with pytest.raises(TuneforgeError, match="CUDA"):
        quantization_config(c)
    assert quantization_config(TrainConfig.model_validate(base())) is None


def test_reward_functions():
    comp = [[{"role": "assistant", "content": "The answer is 42."}], [{"role": "assistant", "content": "no idea"}]]
    refs = ["the  answer is 42.", "It is 7."]
    assert exact_match([None, None], comp, reference=refs) == [1.0, 0.0]
    assert regex_reward(r"(\d+)")([None, None], comp, reference=refs) == [1.0, 0.0]
    assert regex_reward(r"(\d+)")([None], comp[:1], reference=["It is 7."]) == [0.0]
    assert length_reward(17)([None, None], comp) == [0.0, pytest.approx(-10 / 17)]
    with pytest.raises(RecipeError, match="regex"):
        regex_reward("(unclosed")


class _State:
    is_world_process_zero = True
    num_input_tokens_seen = 0

    def __init__(self, step):
        self.global_step, self.epoch = step, step / 10


def test_metrics_log_truncates_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.on_train_begin(None, _State(0), None)
    for step in range(1, 6):
        st = _State(step)
        st.num_input_tokens_seen = 100 * step
        log.on_log(None, st, None, logs={"loss": 3.0 - step * 0.1, "grad_norm": float("nan")})
    rows = read_metrics(path)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    assert rows[0]["grad_norm"] == "nan" and rows[-1]["tokens_seen"] == 500 and rows[-1]["tokens_per_second"] > 0
    MetricsLog(path, resume_step=3)
    assert [r["step"] for r in read_metrics(path)] == [1, 2, 3]
    assert plot_loss(read_metrics(path), tmp_path / "loss.png").stat().st_size > 1000
    MetricsLog(path)  # a fresh run starts a fresh log
    assert not path.exists()
    assert all(math.isfinite(r["loss"]) for r in rows) and json.dumps(rows)


def test_every_shipped_training_config_validates():
    """configs/*.yaml with a `stage` are training configs: each must pass validation as shipped."""
    from pathlib import Path

    import yaml

    repo = Path(__file__).resolve().parents[1]
    found = 0
    for path in sorted((repo / "configs").glob("*.yaml")):
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
        if isinstance(raw, dict) and "stage" in raw:
            load_config(path)
            found += 1
    assert found >= 8
