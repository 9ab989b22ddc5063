"""The stage table (tuneforge/trainers/stage_table.py): every row resolves to real TRL classes and our own
functions, reading it imports no TRL, and the training config's schema says what the table says."""

from __future__ import annotations

import dataclasses
import re
import subprocess
import sys
import typing

import pytest
from pydantic import ValidationError

from tuneforge.common.errors import RecipeError
from tuneforge.common.extras import MissingExtra, trl_has_ppo
from tuneforge.common.records import KINDS
from tuneforge.trainers.config import Stage, TrainConfig, load_config
from tuneforge.trainers.peft_methods import METHODS
from tuneforge.trainers.stage_blocks import TRLBlock
from tuneforge.trainers.stage_table import STAGE_NAMES, STAGE_TABLE, STAGES


def _config(stage: str, **kw) -> dict:
    raw = {"dataset": "data", "stage": stage, **kw}
    if stage == "ppo":
        raw.setdefault("ppo", {"reward_model": "rm"})
    if stage == "grpo":
        raw.setdefault("grpo", {"rewards": [{"type": "exact_match"}]})
    return raw


def test_reading_the_table_and_the_config_imports_no_trl():
    code = ("import sys; import tuneforge.trainers.config, tuneforge.trainers.stage_table; "
            "print(sorted(m for m in ('trl', 'transformers', 'torch', 'peft') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_every_stage_resolves_to_its_trl_classes_and_our_functions():
    pytest.importorskip("trl")
    from tuneforge.trainers import stages
    from tuneforge.trainers._trl import stage_classes

    for facts in STAGES:
        prepare, build = stages.stage_steps(facts.name)
        assert (prepare.__name__, build.__name__) == (facts.prepare, facts.build), facts.name
        if facts.trl_last is not None and not trl_has_ppo():  # TRL dropped it: the stage names its extra
            with pytest.raises(MissingExtra, match=re.escape(f"pip install 'tuneforge[{facts.extra}]'")):
                stage_classes(facts.name)
            continue
        trainer, config = stage_classes(facts.name)
        assert (trainer.__name__, config.__name__) == (facts.trainer, facts.config), facts.name
        assert dataclasses.is_dataclass(config)
        fields = {f.name for f in dataclasses.fields(config)}
        assert {"learning_rate", "output_dir"} <= fields, facts.name
        if facts.block is not None and issubclass(facts.block, TRLBlock):  # the block's fields are TRL's
            assert set(load_config(_config(facts.name)).stage_fields()) <= fields, facts.name


def test_the_config_schema_and_the_table_agree():
    assert typing.get_args(Stage) == STAGE_NAMES == tuple(s.name for s in STAGES)
    assert len(set(STAGE_NAMES)) == len(STAGES)
    blocks = {name for name, f in TrainConfig.model_fields.items()
              if any(isinstance(a, type) and a in {s.block for s in STAGES} for a in typing.get_args(f.annotation))}
    assert blocks == {s.name for s in STAGES if s.block is not None}
    for facts in STAGES:
        assert set(facts.kinds) <= set(KINDS), facts.name
        assert {m for m, _ in facts.refuses} <= set(METHODS) | {"qlora"}, facts.name
        if facts.block is not None:
            assert typing.get_args(TrainConfig.model_fields[facts.name].annotation) == (facts.block, type(None))
        if facts.needs:  # a required block: a config without it names what it needs
            with pytest.raises(ValidationError, match=re.escape(facts.needs)):
                TrainConfig.model_validate({"dataset": "data", "stage": facts.name})
        else:
            cfg = TrainConfig.model_validate({"dataset": "data", "stage": facts.name})
            assert facts.block is None or isinstance(getattr(cfg, facts.name), facts.block)  # filled with defaults
            assert cfg.default_learning_rate() == pytest.approx(1e-5 if facts.low_lr else 1e-4), facts.name


@pytest.mark.parametrize(("stage", "method"), [(s.name, m) for s in STAGES for m, _ in s.refuses if m != "qlora"])
def test_a_refused_adapter_fails_validation_and_names_what_works(stage, method):
    allowed = [m for m in METHODS if m not in dict(STAGE_TABLE[stage].refuses)]
    with pytest.raises(RecipeError, match=f"peft method {method!r} is not supported for stage {stage!r}.*use "
                                          f"{re.escape(', '.join(allowed[:-1]))} or {allowed[-1]}"):
        load_config(_config(stage, peft={"method": method}))  # fails in validation, before TRL is asked
    TrainConfig.model_validate(_config(stage, peft={"method": allowed[-1]}))  # an allowed one passes
