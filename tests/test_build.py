"""The data build end to end, as a Prefect flow and as the CLI, on the shipped samples and real corpora."""

from __future__ import annotations

import filecmp
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge.builder.outdir import published
from tuneforge.common.errors import RecipeError
from tuneforge.recipe import load_recipe

REPO = Path(__file__).resolve().parents[1]
HOTEL = REPO / "datasets" / "hotel"


@pytest.fixture(scope="module")
def prefect_api():
    """One temporary Prefect API server for the module (each flow would otherwise start its own); yields
    its URL so subprocesses can use it as PREFECT_API_URL."""
    from prefect.settings import PREFECT_API_URL
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield PREFECT_API_URL.value()


def _no_augment_recipe(tmp_path: Path, src: Path, **changes) -> Path:
    """A copy of a shipped recipe without its LLM steps, its paths pointing at the shipped data."""
    data = yaml.safe_load(src.read_text(encoding="utf-8"))
    data.pop("augment", None)
    for s in data["sources"]:
        paths = [str((src.parent / p).resolve()) for p in (s["path"] if isinstance(s["path"], list) else [s["path"]])]
        s["path"] = paths if isinstance(s["path"], list) else paths[0]
        s["allow_outside"] = True  # the shipped data lives outside this temporary recipe's folder
    data.update(changes)
    p = tmp_path / f"{data['name']}.yaml"
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    return p


def _read_jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _outputs(root: Path) -> list[Path]:
    """The files a build published (.tuneforge/ is its own bookkeeping: paths, timings)."""
    return published(root)  # the published names are links into .tuneforge/current/


def _build(recipe: Path, out: Path, **kw):
    from tuneforge.flows.build import build_flow

    return build_flow(recipe_path=str(recipe), out=str(out), **kw)


@pytest.mark.slow
def test_hotel_build_layout_counts_and_grouping(prefect_api, tmp_path):
    import datasets

    recipe = _no_augment_recipe(tmp_path, HOTEL / "recipe.yaml")
    out = tmp_path / "hotel"
    m = _build(recipe, out)
    c = m["counts"]
    assert c["input"] == c["kept"] + c["rejected"] + c["deduplicated"]
    assert c["input"] == 92 + 100
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["counts"] == c and manifest["datasets"] == {"messages": "dataset"}
    assert set(manifest["inputs"]) and all(len(h) == 64 for h in manifest["inputs"].values())
    dd = datasets.load_from_disk(str(out / "dataset"))
    assert {k: len(v) for k, v in dd.items()} == c["splits"]
    assert sum(c["splits"].values()) == c["kept"] - 100 - 0  # the 100 hotel rows are reference rows, not split
    assert len(_read_jsonl(out / "kb" / "hotel_db.jsonl")) == 100
    # Non-hotel dialogues are rejected with the file and the dialogue key, nothing silently lost.
    rejects = _read_jsonl(out / "rejects.jsonl")
    filtered = [r for r in rejects if r["reason"].startswith("filtered:")]
    assert len(filtered) == 4 and all(r["file"].endswith("crosswoz_val_hotel.json") and r["key"] for r in filtered)
    # No conversation in two splits.
    seen = {}
    for split in ("train", "validation", "test"):
        for row in dd[split]:
            g = json.loads(row["meta"])["group"]
            assert seen.setdefault(g, split) == split
    # Every export format, every split.
    for fmt in ("openai", "sharegpt", "alpaca", "text-chatml", "text-chatglm"):
        for split in ("train", "validation", "test"):
            assert (out / "exports" / fmt / f"{split}.jsonl").is_file()
    chatglm = _read_jsonl(out / "exports" / "text-chatglm" / "train.jsonl")[0]["text"]
    assert chatglm.startswith("[Round 0]\n问：") and "\n答：" in chatglm and "[Round 1]" in chatglm
    chatml = _read_jsonl(out / "exports" / "text-chatml" / "train.jsonl")[0]["text"]
    assert chatml.count("<|im_start|>assistant\n") >= 2 and "<|im_end|>" in chatml
    card = (out / "README.md").read_text(encoding="utf-8")
    for needle in ("## Sources", "Apache-2.0", "## Lengths", "tokens per turn", "### `template:chatglm`"):
        assert needle in card


@pytest.mark.slow
def test_build_is_byte_identical_on_rerun(prefect_api, tmp_path):
    recipe = _no_augment_recipe(tmp_path, REPO / "datasets" / "zh_instruct" / "recipe.yaml")
    a, b = tmp_path / "a", tmp_path / "b"
    _build(recipe, a)
    _build(recipe, b)
    files = _outputs(a)
    assert files == _outputs(b)
    assert any(f.suffix == ".arrow" for f in files)
    mismatch = [f for f in files if not filecmp.cmp(a / f, b / f, shallow=False)]
    assert not mismatch, mismatch
    c = _build(recipe, tmp_path / "c", seed=99)
    assert c["counts"]["splits"]["test"] > 0
    assert (tmp_path / "c" / "exports" / "openai" / "test.jsonl").read_bytes() != \
        (a / "exports" / "openai" / "test.jsonl").read_bytes()


@pytest.mark.slow
def test_every_shared_corpus_builds(prefect_api, shared, tmp_path):
    """All non-benchmark corpora in ../shared in one recipe: every kind, counts reconcile."""
    sources = [
        {"name": "crosswoz", "path": "crosswoz/val_first100.json", "options": {"domains": ["酒店"]}},
        {"name": "hotel_db", "path": "crosswoz/database/hotel_db.json"},
        {"name": "attraction_db", "path": "crosswoz/database/attraction_db.json"},
        {"name": "alpaca_zh", "path": "llamafactory/alpaca_zh_demo.json"},
        {"name": "alpaca_en", "path": "llamafactory/alpaca_en_demo.json"},
        {"name": "identity", "path": "llamafactory/identity.json", "fill_placeholders": True},
        {"name": "glaive", "path": "llamafactory/glaive_toolcall_zh_demo.json"},
        {"name": "dpo_zh", "path": "llamafactory/dpo_zh_demo.json"},
        {"name": "dpo_en", "path": "llamafactory/dpo_en_demo.json"},
        {"name": "kto_en", "path": "llamafactory/kto_en_demo.json"},
        {"name": "v1_dpo", "path": "llamafactory/v1_dpo_demo.jsonl"},
        {"name": "c4", "path": "llamafactory/c4_demo.jsonl"},
        {"name": "wiki", "path": "llamafactory/wiki_demo.txt"},
        {"name": "self_cognition", "path": "chatglm-efficient-tuning/self_cognition.json", "fill_placeholders": True},
        {"name": "oaast_sft", "path": "chatglm-efficient-tuning/oaast_sft_zh.json"},
        {"name": "oaast_rm", "path": "chatglm-efficient-tuning/oaast_rm_zh.json"},
        {"name": "adgen", "path": "adgen/dev.json", "format": "completion",
         "columns": {"prompt": "content", "completion": "summary"}},
        {"name": "ruozhiba", "path": "chinese-llama-alpaca-3/ruozhiba_qa2449_gpt4o.json"},
        {"name": "langchain_doc", "path": "chinese-llama-alpaca/langchain_doc.txt"},
        {"name": "law_docs", "path": "lawgpt/example_instruction_train.json"},
        {"name": "law_alpaca", "path": ["lawgpt/example_infer_data.jsonl", "lawgpt/example_instruction_tune.json"]},
        {"name": "law_charges", "path": "lawgpt/criminal_charges.json", "format": "kb"},
    ]
    for s in sources:
        paths = s["path"] if isinstance(s["path"], list) else [s["path"]]
        resolved = [str(shared / p) for p in paths]
        s["path"] = resolved if isinstance(s["path"], list) else resolved[0]
        s["allow_outside"] = True
    recipe = tmp_path / "all.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "all", "variables": {"name": "小锻", "author": "tuneforge"}, "sources": sources,
        "formats": ["openai", "sharegpt", "alpaca", "trl_preference", "text", "template:chatml"],
        "card": {"tokenizer": None}}, allow_unicode=True), encoding="utf-8")
    m = _build(recipe, tmp_path / "all")
    c = m["counts"]
    assert c["input"] == c["kept"] + c["rejected"] + c["deduplicated"]
    assert set(m["datasets"]) == {"messages", "preference", "unpaired", "text"}
    rejects = _read_jsonl(tmp_path / "all" / "rejects.jsonl")
    for r in rejects:
        assert r["reason"] and r["source"] and r["file"]
    per_source = m["sources"]
    assert all(s["input"] == s["kept"] + s["rejected"] + s["deduplicated"] for s in per_source.values())
    assert c["deduplicated"] > 0  # the demo corpora share records (alpaca_zh vs identity, ...)


def test_recipe_typo_names_the_field(tmp_path):
    p = _no_augment_recipe(tmp_path, HOTEL / "recipe.yaml")
    data = yaml.safe_load(p.read_text(encoding="utf-8"))
    data["sources"][0]["fromat"] = "crosswoz"
    data["split"] = {"ratios": {"train": 0.8, "validation": 0.1, "test": 0.2}}
    p.write_text(yaml.safe_dump(data, allow_unicode=True), encoding="utf-8")
    with pytest.raises(RecipeError) as e:
        load_recipe(p)
    assert "sources.0.fromat: Extra inputs are not permitted" in str(e.value)
    assert "split.ratios" in str(e.value) and "sum to 1" in str(e.value)
    p.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="not valid YAML"):
        load_recipe(p)
    p.write_text(yaml.safe_dump({"name": "x", "sources": [{"name": "a", "path": "a.json"}],
                                 "formats": ["chatml"]}), encoding="utf-8")
    with pytest.raises(RecipeError, match="unknown format 'chatml'"):
        load_recipe(p)


@pytest.mark.slow
def test_cli_build_and_strict(prefect_api, tmp_path, shared):
    """The command a user types, in a subprocess, against a Prefect server given by PREFECT_API_URL."""
    rows = json.loads((shared / "llamafactory/alpaca_zh_demo.json").read_text(encoding="utf-8"))[:40]
    lines = [json.dumps(r, ensure_ascii=False) for r in rows] + ['{"instruction": "坏记录"']
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({
        "name": "cli", "sources": [{"name": "a", "path": "data.jsonl", "format": "alpaca"}],
        "card": {"tokenizer": None}}, allow_unicode=True), encoding="utf-8")
    env = {**os.environ, "PREFECT_API_URL": prefect_api}
    cmd = [sys.executable, "-m", "tuneforge.cli", "build", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "o")]
    ok = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert "input 41 = kept 40 + rejected 1 + deduplicated 0" in ok.stdout
    strict = subprocess.run([*cmd, "--strict"], capture_output=True, text=True, env=env, timeout=300)
    assert strict.returncode == 1 and "--strict: 1 input records rejected" in strict.stderr
    bad = subprocess.run([sys.executable, "-m", "tuneforge.cli", "build", str(tmp_path / "missing.yaml"),
                          "--out", str(tmp_path / "x")], capture_output=True, text=True, env=env)
    assert bad.returncode == 2 and "missing.yaml" in bad.stderr and "Traceback" not in bad.stderr


@pytest.mark.slow
def test_dask_runner_gives_identical_outputs(prefect_api, tmp_path):
    """Shards on a 2-worker Dask LocalCluster build exactly what the local runner builds."""
    from tuneforge.flows.build import with_runner

    recipe = _no_augment_recipe(tmp_path, REPO / "datasets" / "zh_instruct" / "recipe.yaml",
                                card={"tokenizer": None})
    local, dask = tmp_path / "local", tmp_path / "dask"
    with_runner("local")(recipe_path=str(recipe), out=str(local))
    with_runner("dask", workers=2)(recipe_path=str(recipe), out=str(dask), shard_records=40, shard_mb=0.02)
    files = _outputs(local)
    assert files == _outputs(dask) and len(files) > 10
    assert not [f for f in files if not filecmp.cmp(local / f, dask / f, shallow=False)]


@pytest.mark.slow
@pytest.mark.parametrize("domain", ["hotel", "self_cognition", "zh_instruct", "law"])
def test_every_shipped_recipe_builds(prefect_api, tmp_path, domain):
    """Each shipped domain builds from the repository alone (LLM steps are covered by the augment and
    pipeline tests); counts reconcile and every export is there."""
    recipe = _no_augment_recipe(tmp_path, REPO / "datasets" / domain / "recipe.yaml", card={"tokenizer": None})
    m = _build(recipe, tmp_path / domain)
    c = m["counts"]
    assert c["input"] == c["kept"] + c["rejected"] + c["deduplicated"] and c["kept"] > 0
    assert sum(c["splits"].values()) > 0
    for fmt in m["exports"].values():
        for split in ("train", "validation", "test"):
            assert (tmp_path / domain / fmt["folder"] / f"{split}.jsonl").is_file()
    if domain == "self_cognition":
        text = (tmp_path / domain / "exports/openai/train.jsonl").read_text(encoding="utf-8")
        assert "小锻" in text and "<NAME>" not in text and "{{name}}" not in text


def test_arrow_schema_is_what_datasets_writes():
    """The build writes the datasets' Arrow schema itself (so workers never import `datasets`): it must stay
    the schema and metadata `datasets.Features` gives for every kind."""
    from datasets import Features
    from tuneforge.common.records import SPLIT_KINDS
    from tuneforge.publish.write import arrow_schema, features

    for kind in SPLIT_KINDS:
        ref = Features.from_dict(features(kind))
        assert ref.to_dict() == features(kind)
        ours, theirs = arrow_schema(kind), ref.arrow_schema
        assert ours.equals(theirs, check_metadata=True), kind
