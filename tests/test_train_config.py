"""Training config validation, defaults, reward functions and the metrics log (no model needed)."""

from __future__ import annotations

import json
import math
import re

import pytest

from tuneforge.common.errors import RecipeError, TuneforgeError
from tuneforge.common.extras import MissingExtra, trl_has_ppo
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
            if raw["stage"] == "ppo" and not trl_has_ppo():  # TRL > 1.12: the stage names the [ppo] extra
                with pytest.raises(MissingExtra, match=re.escape("pip install 'tuneforge[ppo]'")):
                    load_config(path)
            else:
                load_config(path)
            found += 1
    assert found >= 8


# ------------------------------------------------------------------ PEFT methods and the new stages


@pytest.mark.parametrize("method, cls, fields", [
    ("lora", "LoraConfig", {"r": 16, "lora_alpha": 32, "use_dora": False}),
    ("dora", "LoraConfig", {"r": 16, "use_dora": True}),
    ("adalora", "AdaLoraConfig", {"init_r": 12, "target_r": 8, "total_step": 50}),
    ("ia3", "IA3Config", {}),
    ("prefix", "PrefixTuningConfig", {"num_virtual_tokens": 20, "prefix_projection": False}),
    ("prompt", "PromptTuningConfig", {"num_virtual_tokens": 20}),
    ("p_tuning", "PromptEncoderConfig", {"num_virtual_tokens": 20, "encoder_hidden_size": 128}),
])
def test_every_peft_method_maps_onto_its_peft_class(method, cls, fields):
    from tuneforge.trainers.peft_methods import METHODS, peft_config

    c = load_config(base(peft={"method": method}))
    assert c.peft.method == method and type(c.peft) is METHODS[method].spec
    pc = peft_config(c.peft, "CAUSAL_LM", {"model_path": "m", "hidden_size": 576, "total_steps": 50})
    assert type(pc).__name__ == cls and str(pc.task_type) in ("CAUSAL_LM", "TaskType.CAUSAL_LM")
    for k, v in fields.items():
        assert getattr(pc, k) == v, k
    # the resolved config round-trips (launch writes it, the subprocess reads it back)
    assert load_config(c.model_dump(mode="json")).peft == c.peft


def test_peft_method_options_reach_peft():
    from tuneforge.trainers.peft_methods import peft_config

    ctx = {"model_path": "/models/base", "hidden_size": 576, "total_steps": 10}
    p = load_config(base(peft={"method": "prefix", "num_virtual_tokens": 8, "prefix_projection": True})).peft
    pc = peft_config(p, "CAUSAL_LM", ctx)
    assert pc.prefix_projection and pc.encoder_hidden_size == 576 and pc.num_virtual_tokens == 8
    p = load_config(base(peft={"method": "prompt", "init": "text", "init_text": "Answer:"})).peft
    pc = peft_config(p, "CAUSAL_LM", ctx)
    assert pc.prompt_tuning_init_text == "Answer:" and pc.tokenizer_name_or_path == "/models/base"
    p = load_config(base(peft={"method": "ia3", "target_modules": ["k_proj", "down_proj"],
                               "feedforward_modules": ["down_proj"]})).peft
    assert peft_config(p, "CAUSAL_LM", ctx).feedforward_modules == {"down_proj"}
    with pytest.raises(RecipeError, match="tinit"):
        peft_config(load_config(base(peft={"method": "adalora", "tinit": 10})).peft, "CAUSAL_LM", ctx)


@pytest.mark.parametrize("cfg, needle", [
    (base(peft={"method": "prefix", "bogus": 1}), r"peft.bogus: unknown key for method 'prefix' \(its keys: "),
    (base(peft={"method": "ia3", "qlora": True}), "peft.qlora: unknown key for method 'ia3'"),
    (base(peft={"method": "nope"}), "unknown method 'nope'; one of lora, dora, adalora, ia3, prefix, prompt"),
    (base(peft={"method": "adalora", "init_r": 4, "target_r": 8}), "target_r"),
    (base(peft={"method": "prefix", "encoder_hidden_size": 64}), "prefix_projection"),
    (base(peft={"method": "prompt", "init": "text"}), "init_text"),
    (base(peft={"method": "ia3", "target_modules": ["k_proj"], "feedforward_modules": ["down_proj"]}), "subset|not in"),
    (base(peft={"method": "p_tuning", "num_virtual_tokens": 0}), "num_virtual_tokens"),
    (base(lora={"r": 4}, peft={"method": "lora"}), "either `lora:` or `peft:`"),
    (base(lora={"method": "prefix"}), "use `peft:"),
    (base(stage="rm", peft={"method": "prompt"}), "not supported for stage 'rm'"),
    (base(stage="ppo", ppo={"reward_model": "x"}, peft={"method": "adalora"}), "adalora"),
    (base(kto={"beta": 0.2}), "only applies to stage 'kto'"),
    (base(stage="kto", kto={"beta": -1}), "kto.beta"),
    (base(stage="kto", kto={"bogus": 1}), "kto.bogus"),
    (base(stage="simpo", simpo={"gamma": -0.1}), "simpo.gamma"),
    (base(stage="kto", args={"beta": 0.3}), "set by the `kto:` block"),
    (base(stage="dpo", args={"loss_type": ["simpo"]}), "stage: simpo"),
    (base(stage="dpo", args={"loss_type": "orpo"}), "stage: orpo"),
    (base(stage="orpo", args={"loss_type": "x"}), "ORPOConfig"),
])
def test_bad_peft_and_stage_blocks_name_the_field(cfg, needle):
    with pytest.raises(RecipeError, match=needle):
        load_config(cfg)


def test_lora_block_still_works_and_equals_peft_lora():
    old = load_config(base(lora={"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}))
    new = load_config(base(peft={"method": "lora", "r": 4, "alpha": 8, "dropout": 0.0, "target_modules": ["q_proj"]}))
    assert old.peft == new.peft and old.lora == old.peft and "lora" not in old.model_dump()
    assert load_config(base(lora={"method": "dora"})).peft.method == "dora"
    assert load_config(base(peft=False)).peft is None and load_config(base(lora=None)).peft is None


def test_stage_blocks_translate_to_trl_fields():
    from tuneforge.trainers.config import trl_config_class
    from tuneforge.trainers.stage_table import STAGE_TABLE

    kto = load_config(base(stage="kto", kto={"undesirable_weight": 1.5}))
    assert kto.stage_fields() == {"beta": 0.1, "desirable_weight": 1.0, "undesirable_weight": 1.5,
                                  "loss_type": "kto"}
    assert STAGE_TABLE["kto"].kinds == ("unpaired",) and trl_config_class("kto").__name__ == "KTOConfig"
    simpo = load_config(base(stage="simpo"))
    assert simpo.stage_fields() == {"loss_type": "simpo", "beta": 2.0, "simpo_gamma": 0.5, "cpo_alpha": 0.0}
    assert trl_config_class("simpo").__name__ == "CPOConfig" and trl_config_class("orpo").__name__ == "ORPOConfig"
    assert load_config(base(stage="orpo")).stage_fields() == {"beta": 0.1}
    # every block field is a real field of its TRL config
    import dataclasses

    for stage, cfg in (("kto", kto), ("simpo", simpo), ("orpo", load_config(base(stage="orpo")))):
        fields = {f.name for f in dataclasses.fields(trl_config_class(stage))}
        assert set(cfg.stage_fields()) <= fields, stage


def test_learning_rate_defaults_per_method():
    assert load_config(base(peft={"method": "prefix"})).default_learning_rate() == 1e-2
    assert load_config(base(peft={"method": "ia3"})).default_learning_rate() == 1e-4
    assert load_config(base(stage="kto")).default_learning_rate() == pytest.approx(1e-5)
    assert load_config(base(stage="simpo", peft={"method": "p_tuning"})).default_learning_rate() == \
        pytest.approx(1e-3)


def test_merge_refused_for_virtual_token_methods_before_training(tmp_path):
    from tuneforge.trainers import train

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "manifest.json").write_text("{}", encoding="utf-8")
    with pytest.raises(RecipeError, match="cannot be folded"):
        train(base(dataset=str(tmp_path / "data"), peft={"method": "prefix"}), tmp_path / "run", merge=True)
