"""`tuneforge check`: every shipped recipe, config and pipeline that can be checked passes; a broken file lists
every error (exit 2), found without running anything."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.check import check_file, detect_kind
from tuneforge.cli import app
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.resources import ASSETS


def _cli(*args: str):
    return CliRunner().invoke(app, ["check", *args])


@pytest.mark.parametrize("rel", ["datasets/hotel/recipe.yaml", "configs/eval.yaml", "pipelines/demo.yaml",
                                 "pipelines/hotel.yaml"])
def test_shipped_files_check_clean(rel):
    res = _cli(str(ASSETS / rel))
    assert res.exit_code == 0, res.output
    assert " ok" in res.output


def test_detect_kind_by_keys():
    assert detect_kind({"name": "x", "build": {}}) == "pipeline"
    assert detect_kind({"name": "x", "sources": []}) == "recipe"
    assert detect_kind({"stage": "sft", "dataset": "d"}) == "train"
    assert detect_kind({"heldout": {"dataset": "d"}}) == "eval"
    with pytest.raises(TuneforgeError, match="--kind"):
        detect_kind({"name": "x"})


def _domain(tmp_path: Path) -> Path:
    """A copy of the hotel domain folder with a pipeline and configs beside it."""
    shutil.copytree(ASSETS / "datasets" / "hotel", tmp_path / "hotel")
    (tmp_path / "eval.yaml").write_text("suites: [{benchmark: 'mcq:exam.csv'}]\nheldout: {dataset: built}\n",
                                        encoding="utf-8")
    (tmp_path / "sft.yaml").write_text((ASSETS / "configs" / "demo-sft.yaml").read_text(encoding="utf-8"),
                                       encoding="utf-8")
    return tmp_path


def test_pipeline_lists_every_error_without_running_anything(tmp_path):
    root = _domain(tmp_path)
    recipe = root / "hotel" / "recipe.yaml"
    text = recipe.read_text(encoding="utf-8").replace("data/hotel_db_sample.json", "data/missing.json")
    recipe.write_text(text.replace("template: chatml", "template: no-such-template"), encoding="utf-8")
    (root / "p.yaml").write_text(
        "name: p\nbuild: {recipe: hotel/recipe.yaml}\n"
        "train:\n  - {name: sft, config: sft.yaml}\n  - {name: dpo, config: dpo.yaml}\n"
        "evaluate: {config: eval.yaml, heldout: null}\nforgetting: {suites: [ceval]}\n", encoding="utf-8")
    res = _cli(str(root / "p.yaml"))
    assert res.exit_code == 2
    out = res.output
    assert "4 error(s) in this pipeline" in out, out
    assert "source 'hotel_db'" in out and "missing.json does not exist" in out
    assert "unknown chat template 'no-such-template'" in out
    assert "train step 'dpo'" in out and "dpo.yaml" in out
    # the evaluate step's own held-out data is not made by this pipeline (heldout: null): it must exist
    assert "exam.csv does not exist" in out and "heldout.dataset" in out and "built does not exist" in out
    assert not (root / "data").exists() and not list(root.glob("**/manifest.json"))


def test_pipeline_heldout_made_by_the_build_is_fine(tmp_path):
    root = _domain(tmp_path)
    (root / "exam.csv").write_text("question,A,B,C,D,answer\n一加一,1,2,3,4,B\n", encoding="utf-8")
    (root / "p.yaml").write_text(
        "name: p\nbuild: {recipe: hotel/recipe.yaml}\ntrain:\n  - {name: sft, config: sft.yaml}\n"
        "evaluate: {config: eval.yaml}\n", encoding="utf-8")
    r = check_file(root / "p.yaml")
    assert r.ok, r.errors
    assert r.notes[-1] == "pipeline p: build, sft (sft), evaluate"


def test_train_config_dataset_must_have_the_stages_kind(tmp_path):
    build = tmp_path / "runs" / "data"
    build.mkdir(parents=True)
    (build / "manifest.json").write_text(json.dumps({"datasets": {"text": "dataset_text"}, "template": "chatml"}),
                                         encoding="utf-8")
    cfg = tmp_path / "conf" / "dpo.yaml"
    cfg.parent.mkdir()
    cfg.write_text("stage: dpo\ndataset: ../runs/data\n", encoding="utf-8")  # relative to this file
    r = check_file(cfg)
    assert r.kind == "train" and len(r.errors) == 1
    assert "stage 'dpo' needs a preference dataset" in r.errors[0]
    cfg.write_text("stage: dpo\ndataset: ../runs/nothing\nargs: {no_such_arg: 1}\n", encoding="utf-8")
    res = _cli(str(cfg), "--kind", "train")
    assert res.exit_code == 2 and "no_such_arg not a field" in res.output


def test_eval_config_kind_and_paths(tmp_path):
    cfg = tmp_path / "e.yaml"
    cfg.write_text("heldout: {dataset: runs/law}\nperplexity: {corpus: nope.txt}\n", encoding="utf-8")
    r = check_file(cfg)
    assert r.kind == "eval" and len(r.errors) == 1
    assert "heldout.dataset" in r.errors[0] and "perplexity.corpus" in r.errors[0]
    with pytest.raises(TuneforgeError, match="one of recipe, train, eval, pipeline"):
        check_file(cfg, "bogus")


def test_a_stage_needs_a_dataset_kind_the_build_will_make(tmp_path):
    """sft then dpo on the hotel domain: its `preference` augment step makes the pairs dpo reads; without that
    step the check names the missing kind and what the build does make."""
    root = _domain(tmp_path)
    (root / "dpo.yaml").write_text("stage: dpo\ndataset: unused\nmax_length: 256\nargs: {beta: 0.1}\n",
                                   encoding="utf-8")
    (root / "p.yaml").write_text(
        "name: p\nbuild: {recipe: hotel/recipe.yaml}\n"
        "train:\n  - {name: sft, config: sft.yaml}\n  - {name: dpo, config: dpo.yaml}\n", encoding="utf-8")
    r = check_file(root / "p.yaml")
    assert r.ok, r.errors
    recipe = root / "hotel" / "recipe.yaml"
    text = recipe.read_text(encoding="utf-8")
    recipe.write_text(text[:text.index("    - op: preference")], encoding="utf-8")
    r = check_file(root / "p.yaml")
    assert len(r.errors) == 1, r.errors
    assert r.errors[0].startswith("train step 'dpo' (stage dpo) reads a preference dataset, which the build will "
                                  "not make")
    assert "messages (source 'crosswoz_hotel')" in r.errors[0] and "kb (source 'hotel_db')" in r.errors[0]
