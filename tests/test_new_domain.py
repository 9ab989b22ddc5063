"""`tuneforge new-domain NAME`: what it writes builds, trains and evaluates as written, and no template default
deletes data silently."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def _new_domain(root: Path, name: str) -> Path:
    r = subprocess.run([sys.executable, "-m", "tuneforge.cli", "new-domain", name, "--root", str(root)],
                       capture_output=True, text=True, cwd=root)
    assert r.returncode == 0, r.stderr
    return root / "datasets" / name


def test_new_domain_configs_are_right_for_a_new_domain(tmp_path):
    from tuneforge.pipeline import load_pipeline
    from tuneforge.recipe import load_recipe
    from tuneforge.trainers.config import load_config

    d = _new_domain(tmp_path, "values")
    written = {p.name: p.read_text(encoding="utf-8") for p in d.rglob("*") if p.is_file()}
    text = "\n".join(written.values())
    assert "hotel" not in text.lower() and "酒店" not in text and "__DOMAIN__" not in text
    train_raw = yaml.safe_load(written["train-sft.yaml"])
    assert "peft" in train_raw and "lora" not in train_raw  # the current key, not the legacy one
    cfg = load_config(d / "train-sft.yaml")
    # the commented commands build into runs/data/values from the project folder: the path points there
    assert Path(cfg.dataset) == (tmp_path / "runs" / "data" / "values").resolve()
    recipe, _ = load_recipe(d / "recipe.yaml")
    f = recipe.clean.filters
    assert f.drop_refusals is False and f.speaker_markers == "flag"  # nothing deleted that the docs keep
    pipe, base = load_pipeline(tmp_path / "pipelines" / "values.yaml")
    for ref in [pipe.build.recipe, pipe.evaluate.config, pipe.forgetting.config, *(t.config for t in pipe.train)]:
        assert (base / ref).resolve().is_file(), ref


def _shrink(path: Path, change) -> None:
    """Numbers only (steps, limits): every path and key stays as `new-domain` wrote it."""
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    change(data)
    path.write_text(yaml.safe_dump(data, allow_unicode=True, sort_keys=False), encoding="utf-8")


@pytest.mark.slow
def test_new_domain_pipeline_runs_as_written(tmp_path, shared, smollm2_path):
    """new-domain into an empty project folder, data into its data/, then `tuneforge run` on the pipeline it
    wrote, from that folder: build, SFT (1 step on the embedded model), held-out and suite evaluation,
    forgetting check."""
    d = _new_domain(tmp_path, "riddles")
    rows = json.loads((shared / "chinese-llama-alpaca-3" / "ruozhiba_qa2449_gpt4o.json").read_text(encoding="utf-8"))
    (d / "data" / "riddles.json").write_text(json.dumps(rows[:40], ensure_ascii=False), encoding="utf-8")

    def train(c: dict) -> None:
        c["max_length"] = 128
        c["args"].update(max_steps=1, per_device_train_batch_size=1, gradient_accumulation_steps=1, save_steps=1,
                         logging_steps=1)

    def suites(c: dict) -> None:
        small = {"ceval": ["law"], "cmmlu": ["jurisprudence"], "mmlu": ["abstract_algebra"]}
        for s in c["suites"]:
            s.update(limit=2, shots=1, subjects=small[s["benchmark"]])
        if "perplexity" in c:
            c["perplexity"].update(limit=2, max_length=64)

    def pipeline(c: dict) -> None:
        c["evaluate"]["heldout"].update(limit=2, max_new_tokens=8)

    _shrink(d / "train-sft.yaml", train)
    _shrink(d / "eval.yaml", suites)
    _shrink(d / "forgetting.yaml", suites)
    _shrink(tmp_path / "pipelines" / "riddles.yaml", pipeline)
    env = {k: v for k, v in os.environ.items() if k not in ("PREFECT_API_URL", "OPENAI_BASE_URL")}
    r = subprocess.run([sys.executable, "-m", "tuneforge.cli", "run", "pipelines/riddles.yaml", "--out", "runs/riddles",
                        "--no-prefect"], capture_output=True, text=True, cwd=tmp_path, env=env, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    out = tmp_path / "runs" / "riddles"
    manifest = json.loads((out / "data" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["sources"]["riddles_sft"]["input"] == 40 and manifest["counts"]["kept"] > 30
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert (out / "report.html").is_file() and results
    assert "forgetting verdict" in r.stdout
