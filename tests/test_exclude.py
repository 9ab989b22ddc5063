"""Rebuilding without the records an attribution ranked highest (issue 36): `--exclude FILE --exclude-top K`
and the recipe's `exclude:` drop exactly those records, each a reject with its rank, score, file and line;
counts reconcile; the held-out splits do not move; a bad file fails before any work; unknown ids are counted;
the shard cache redoes only what an exclusion changes; the search knob and `tuneforge check` validate it."""

from __future__ import annotations

import filecmp
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tuneforge import build
from tuneforge.builder.outdir import published
from tuneforge.common.errors import RecipeError

REPO = Path(__file__).resolve().parents[1]
DATA = REPO / "datasets" / "zh_instruct" / "data"


def _recipe(tmp: Path, **extra) -> Path:
    """The zh_instruct sample (two sources, a file each: two shards; 9 near duplicates) without the tokenizer."""
    if not (tmp / "data").is_dir():
        shutil.copytree(DATA, tmp / "data")
    body = {"name": "zh", "sources": [
        {"name": "oaast", "path": "data/oaast_sft_zh_sample.json", "format": "alpaca"},
        {"name": "alpaca", "path": "data/alpaca_zh_demo_sample.json"}],
        "formats": ["openai", "alpaca"], "card": {"tokenizer": None}, **extra}
    p = tmp / f"recipe{len(extra)}.yaml"
    p.write_text(yaml.safe_dump(body, allow_unicode=True), encoding="utf-8")
    return p


def _jsonl(p: Path) -> list[dict]:
    return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]


def _ranking(path: Path, rows: list[dict]) -> Path:
    """An attribution.jsonl as `tuneforge attribute` writes it: rank, id, score (falling), source, file, line."""
    with open(path, "w", encoding="utf-8") as f:
        for i, r in enumerate(rows):
            meta = json.loads(r["meta"]) if isinstance(r["meta"], str) else r["meta"]
            f.write(json.dumps({"rank": i + 1, "id": r["id"], "score": round(1 - i / 100, 4), "source": meta["source"],
                                "file": meta["file"], "line": meta.get("line")}) + "\n")
    return path


@pytest.fixture(scope="module")
def first(tmp_path_factory) -> dict:
    """Build N (no exclusion), and a ranking of its training rows, a duplicate and an unknown id."""
    tmp = tmp_path_factory.mktemp("exclude")
    recipe = _recipe(tmp)
    m = build(recipe, tmp / "n", runner="serial")
    train = _jsonl(tmp / "n" / "exports" / "openai" / "train.jsonl")
    dups = [r for r in _jsonl(tmp / "n" / "rejects.jsonl") if r["reason"] == "deduplicated"]
    kept_ids = {r["id"] for r in train}
    rep = next(d for d in dups if d["duplicate_of"] in kept_ids)  # a kept record that stands for a duplicate
    head = [next(r for r in train if r["id"] == rep["duplicate_of"])] + [r for r in train if r["id"] != rep["duplicate_of"]]
    rows = head[:6] + [{"id": rep["id"], "meta": rep["raw"]["meta"]},  # rank 7: already a duplicate
                       {"id": "0000000000000000", "meta": {"source": "oaast", "file": "x", "line": 1}}]  # rank 8
    rows += head[6:20]
    return {"tmp": tmp, "recipe": recipe, "m": m, "rank": _ranking(tmp / "attribution.jsonl", rows), "rows": rows,
            "dup": rep}


def _exclusion_rejects(out: Path) -> list[dict]:
    return [r for r in _jsonl(out / "rejects.jsonl") if r["reason"].startswith("excluded_by_attribution")]


def test_exclude_top_k_drops_exactly_those_records(first):
    tmp, n = first["tmp"], first["m"]
    out = tmp / "k8"
    m = build(first["recipe"], out, runner="serial", exclude=first["rank"], exclude_top=8)
    top = first["rows"][:8]
    dropped = _exclusion_rejects(out)
    want = [r for r in top[:6]]
    assert sorted(r["id"] for r in dropped) == sorted(r["id"] for r in want)
    ranking = {r["id"]: r for r in _jsonl(first["rank"])}
    for r in dropped:  # each reject: its rank and score, the line of the ranking, the record's own file and line
        a = ranking[r["id"]]
        assert r["attribution"] == {"rank": a["rank"], "score": a["score"], "line": a["rank"]}
        assert r["stage"] == "exclude" and (r["file"], r["line"]) == (a["file"], a["line"]) and r["raw"]["id"] == r["id"]
    rows = {r["id"] for f in ("train", "validation", "test") for r in _jsonl(out / "exports" / "openai" / f"{f}.jsonl")}
    assert not rows & {r["id"] for r in want} and len(rows) == n["counts"]["kept"] - 6
    c, c0 = m["counts"], n["counts"]
    assert c["input"] == c0["input"] == c["kept"] + c["rejected"] + c["deduplicated"]
    assert (c["kept"], c["rejected"], c["deduplicated"]) == (c0["kept"] - 6, c0["rejected"] + 6, c0["deduplicated"])
    assert c["reasons"]["excluded_by_attribution"] == 6
    ex = m["exclude"]
    assert ex["sha256"] == __import__("hashlib").sha256(first["rank"].read_bytes()).hexdigest()
    assert (ex["top"], ex["selected"], ex["excluded"], ex["already_deduplicated"], ex["unknown"]) == (8, 8, 6, 1, 1)
    assert ex["unknown_ids"] == ["0000000000000000"] and any("1 of the 8 ids" in w for w in m["warnings"])
    # The duplicate of an excluded record stays out, as a duplicate of it (exclusion comes after dedup).
    dup = next(r for r in _jsonl(out / "rejects.jsonl") if r["id"] == first["dup"]["id"])
    assert dup["reason"] == "deduplicated" and dup["duplicate_of"] == first["rows"][0]["id"]
    # The held-out splits are those of build N: an exclusion moves no group between splits.
    for split in ("validation", "test"):
        assert filecmp.cmp(tmp / "n" / "exports" / "openai" / f"{split}.jsonl",
                           out / "exports" / "openai" / f"{split}.jsonl", shallow=False)


def test_recipe_block_gives_the_bytes_of_the_cli_flags(first):
    tmp = first["tmp"]
    with_block = _recipe(tmp, exclude={"file": "attribution.jsonl", "top_percent": 25})  # 25% of 22 rows: 5
    build(with_block, tmp / "block", runner="serial")
    cwd = tmp / "elsewhere"
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    r = subprocess.run([sys.executable, "-m", "tuneforge.cli", "build", str(first["recipe"]), "--out", str(tmp / "cli"),
                        "--no-prefect", "--runner", "serial", "--exclude", "../attribution.jsonl",
                        "--exclude-top-percent", "25"], cwd=cwd, env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    files = published(tmp / "block")
    assert files == published(tmp / "cli")
    differ = [f for f in files if not filecmp.cmp(tmp / "block" / f, tmp / "cli" / f, shallow=False)]
    assert [str(f) for f in differ] == ["README.md", "manifest.json"]  # they quote the recipe's own text, which differs
    a, b = (json.loads((tmp / d / "manifest.json").read_text(encoding="utf-8")) for d in ("block", "cli"))
    assert a["exclude"] == b["exclude"] and a["exclude"]["selected"] == 5 and a["recipe"]["exclude"] == b["recipe"]["exclude"]
    assert len(_exclusion_rejects(tmp / "cli")) == 5


BAD = [
    ("not json\n", "line 1 is not JSON"),
    ('{"rank": 1, "id": "a", "score": 1}\n{"rank": 3, "id": "b", "score": 0.5}\n', "line 2 has rank 3, expected 2"),
    ('{"rank": 1, "id": "a", "score": 0.1}\n{"rank": 2, "id": "b", "score": 0.5}\n', "above the previous row"),
    ('{"rank": 1, "score": 0.1}\n', "`id` should be a record id"),
    ('{"rank": 1, "id": "a", "score": 1}\n{"rank": 2, "id": "a", "score": 1}\n', "repeats id 'a' of line 1"),
    ('[1, 2]\n', "not a JSON object"),
    ('{"rank": 1, "id": "a", "score": "high"}\n', "`score` should be a finite number"),
]


@pytest.mark.parametrize(("text", "says"), BAD)
def test_a_malformed_ranking_is_refused_before_any_work(tmp_path, text, says):
    recipe = _recipe(tmp_path)
    (tmp_path / "bad.jsonl").write_text(text, encoding="utf-8")
    with pytest.raises(RecipeError, match=says.replace("(", r"\(").replace("[", r"\[")):
        build(recipe, tmp_path / "out", runner="serial", exclude=tmp_path / "bad.jsonl", exclude_top=1)
    assert not (tmp_path / "out").exists()  # nothing planned, read or written


def test_cli_malformed_ranking_exits_2_with_one_line(tmp_path):
    recipe = _recipe(tmp_path)
    (tmp_path / "bad.jsonl").write_text('{"rank": 1, "id": "a", "score": 1}\n{"rank": 2}\n', encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for extra in (["--exclude", str(tmp_path / "bad.jsonl"), "--exclude-top", "1"],
                  ["--exclude", str(tmp_path / "bad.jsonl")]):  # and a file without how many to take
        r = subprocess.run([sys.executable, "-m", "tuneforge.cli", "build", str(recipe), "--out", str(tmp_path / "o"),
                            "--no-prefect", *extra], env=env, capture_output=True, text=True)
        assert r.returncode == 2, r.stderr
        lines = [x for x in r.stderr.splitlines() if x.strip()]
        assert len(lines) == 1 and lines[0].startswith("error:") and "exclude" in lines[0], r.stderr
        assert not (tmp_path / "o").exists()


def test_rerun_is_served_from_the_cache_and_another_k_redoes_only_its_shard(first):
    tmp = first["tmp"]
    out = tmp / "cache"

    def reused() -> dict:
        return json.loads((out / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))["timings"]["reused"]

    build(first["recipe"], out, runner="serial", exclude=first["rank"], exclude_top=3)
    assert reused()["clean"] == 0
    before = (out / "rejects.jsonl").read_bytes()
    build(first["recipe"], out, runner="serial", exclude=first["rank"], exclude_top=3)
    assert reused() == {**reused(), "clean": 2, "export": 2} and (out / "rejects.jsonl").read_bytes() == before
    sources = {r["meta"]["source"] if isinstance(r["meta"], dict) else json.loads(r["meta"])["source"]
               for r in first["rows"][:5]}
    assert sources == {"oaast"}  # ranks 1-5 are all of the first source's file: the second shard is untouched
    m = build(first["recipe"], out, runner="serial", exclude=first["rank"], exclude_top=5)
    assert reused()["clean"] == 2 and reused()["export"] == 1 and m["exclude"]["excluded"] == 5


def _serial_and(first: dict, runner: str, top: int, tag: str) -> Path:
    """The excluding build on the serial runner and on `runner` (2 workers, small shards): the same files with
    the same bytes; returns the latter's folder."""
    tmp = first["tmp"]
    one, other = tmp / f"{tag}-serial", tmp / f"{tag}-{runner}"
    build(first["recipe"], one, runner="serial", exclude=first["rank"], exclude_top=top)
    build(first["recipe"], other, runner=runner, workers=2, exclude=first["rank"], exclude_top=top,
          shard_records=40, shard_mb=0.02)
    files = published(one)
    assert files == published(other)
    assert not [f for f in files if not filecmp.cmp(one / f, other / f, shallow=False)]
    return other


def test_same_bytes_on_worker_processes_with_small_shards(first):
    assert len(_exclusion_rejects(_serial_and(first, "processes", 20, "p"))) == 18


@pytest.mark.slow
def test_same_bytes_on_dask(first):
    _serial_and(first, "dask", 10, "d")


def test_recipe_block_shape_and_tuneforge_check(tmp_path):
    from tuneforge.check import check_file

    (tmp_path / "rank.jsonl").write_text('{"rank": 1, "id": "a", "score": 2}\n{"rank": 2, "id": "b", "score": 1}\n',
                                         encoding="utf-8")
    for block, says in (({"file": "rank.jsonl"}, "exactly one of `top`"),
                        ({"file": "rank.jsonl", "top": 1, "top_percent": 5}, "exactly one of `top`"),
                        ({"file": "rank.jsonl", "top_percent": 120}, "less than or equal to 100"),
                        ({"file": "rank.jsonl", "top": 1, "topp": 2}, "topp")):
        rep = check_file(_recipe(tmp_path, exclude=block))
        assert not rep.ok and says in " ".join(rep.errors), rep.errors
    rep = check_file(_recipe(tmp_path, exclude={"file": "rank.jsonl", "top": 1}))
    assert rep.ok and any("1 of the 2 ranked records" in n for n in rep.notes), rep.notes
    (tmp_path / "rank.jsonl").write_text('{"rank": 2, "id": "a", "score": 2}\n', encoding="utf-8")
    rep = check_file(_recipe(tmp_path, exclude={"file": "rank.jsonl", "top": 1}))
    assert not rep.ok and "line 1 has rank 2, expected 1" in rep.errors[0]


def _pipeline(tmp: Path, recipe: Path, **over) -> Path:
    """A pipeline over `recipe`: one 1-step LoRA SFT stage (never trained here), held-out and forgetting blocks."""
    pipe = {"name": "x", "build": {"recipe": os.path.relpath(recipe, tmp)},
            "train": [{"name": "sft", "config": str(REPO / "configs/demo-sft.yaml"), "set": {"args": {"max_steps": 1}}}],
            "evaluate": {"heldout": {"limit": 2}},
            "forgetting": {"config": str(REPO / "configs/demo-forgetting.yaml")}, **over}
    p = tmp / "pipe.yaml"
    p.write_text(yaml.safe_dump(pipe), encoding="utf-8")
    return p


def test_search_knob_validates():
    from tuneforge.pipeline.config import PipelineConfig
    from tuneforge.pipeline.search import trial_overrides
    from tuneforge.pipeline.search_config import SearchSpec

    ok = SearchSpec.model_validate({"grid": {"exclude_top_percent": [0, 5]}, "exclude": "attribution.jsonl"})
    assert ok.space() == {"exclude_top_percent": [0, 5]}
    SearchSpec.model_validate({"knobs": {"exclude_top_percent": {"low": 0, "high": 20}}, "exclude": "a.jsonl"})
    for bad, says in (({"knobs": {"exclude_top_percent": [5]}}, "needs `search.exclude`"),
                      ({"knobs": {"lora_r": [4]}, "exclude": "a.jsonl"}, "only read by the exclude_top_percent"),
                      ({"knobs": {"exclude_top_percent": [5, 150]}, "exclude": "a.jsonl"}, "from 0 to 100"),
                      ({"knobs": {"exclude_top_percent": ["5%"]}, "exclude": "a.jsonl"}, "from 0 to 100")):
        with pytest.raises(ValueError, match=says):
            SearchSpec.model_validate(bad)
    cfg = PipelineConfig.model_validate({"name": "t", "build": {"recipe": "r.yaml"}, "train": [
        {"name": "sft", "config": "sft.yaml"}], "search": {"grid": {"exclude_top_percent": [5]}, "exclude": "a.jsonl"}})
    over = trial_overrides(cfg, {"exclude_top_percent": 5, "learning_rate": 1e-4})  # the knob is the build's
    assert over["train"][0]["set"] == {"args": {"learning_rate": 1e-4}} and set(over) == {"train"}


def test_search_trials_build_without_their_top_percent(first):
    """The knob's builds as the search runs them (cached steps), and the checks before the first step."""
    from tuneforge.pipeline.config import load_pipeline, plan_pipeline
    from tuneforge.pipeline.exclude import check_search, trial_build, with_dataset
    from tuneforge.pipeline.run import _build, _direct, _Steps

    tmp = first["tmp"] / "search"
    tmp.mkdir()
    search = {"grid": {"exclude_top_percent": [0, 25]}, "exclude": "../attribution.jsonl"}
    pipe = _pipeline(tmp, first["recipe"], search=search)
    cfg, base = load_pipeline(pipe)
    check_search(cfg, base)
    plan = plan_pipeline(pipe, tmp / "out")
    steps = _Steps(plan.root, _direct)
    assert trial_build(steps, plan, str(pipe), {"exclude_top_percent": 0}, _build) is None  # 0: the shared build
    data = trial_build(steps, plan, str(pipe), {"exclude_top_percent": 25, "learning_rate": 1}, _build)
    m = json.loads((Path(data["out"]) / "manifest.json").read_text(encoding="utf-8"))
    assert m["exclude"]["top_percent"] == 25 and m["exclude"]["excluded"] == 5 and steps.ran == [
        f"data-exclude/{Path(data['out']).name}"]
    assert trial_build(steps, plan, str(pipe), {"exclude_top_percent": 25.0}, _build) == data  # a trial alike: reused
    assert steps.reused == steps.ran
    trained = with_dataset(plan, data)
    assert [str(s.config.dataset) for s in trained.train] == [data["out"]]
    assert str(plan.train[0].config.dataset) == str(plan.root / "data")  # the evaluation keeps OUT/data
    with pytest.raises(RecipeError, match=r"drop `build\.exclude`"):
        check_search(load_pipeline(_pipeline(tmp, first["recipe"], search=search, build={
            "recipe": os.path.relpath(first["recipe"], tmp), "exclude": {"file": "../attribution.jsonl", "top": 1}}))[0],
            base)
    (tmp / "bad.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(RecipeError, match="line 1"):
        check_search(load_pipeline(_pipeline(tmp, first["recipe"], search={**search, "exclude": "bad.jsonl"}))[0], base)


def test_pipeline_build_step_exclude_and_its_cache(first):
    from tuneforge.check import check_file
    from tuneforge.pipeline.run import run_pipeline

    tmp = first["tmp"] / "pipe"
    tmp.mkdir()
    build_step = {"recipe": os.path.relpath(first["recipe"], tmp), "exclude": {"file": "../attribution.jsonl", "top": 4}}
    pipe = tmp / "p.yaml"
    pipe.write_text(yaml.safe_dump({"name": "b", "build": build_step}), encoding="utf-8")
    assert check_file(pipe).ok
    res = run_pipeline(pipe, tmp / "out")
    assert res["build"]["counts"]["reasons"]["excluded_by_attribution"] == 4 and res["steps"]["ran"] == ["build"]
    assert run_pipeline(pipe, tmp / "out")["steps"]["reused"] == ["build"]
    shutil.copy(first["rank"], tmp / "edited.jsonl")
    with open(tmp / "edited.jsonl", "a", encoding="utf-8") as f:  # another ranking: the build runs again
        f.write(json.dumps({"rank": 23, "id": "1111111111111111", "score": -1.0}) + "\n")
    pipe.write_text(yaml.safe_dump({"name": "b", "build": {**build_step, "exclude": {"file": "edited.jsonl",
                                                                                      "top": 4}}}), encoding="utf-8")
    assert run_pipeline(pipe, tmp / "out")["steps"]["ran"] == ["build"]
    (tmp / "edited.jsonl").write_text("oops\n", encoding="utf-8")
    rep = check_file(pipe)
    assert not rep.ok and "build: exclude" in rep.errors[0] and "line 1 is not JSON" in rep.errors[0]


@pytest.mark.slow
def test_search_with_the_knob_end_to_end(first):
    """One trial, P = 25 (a trial at P = 0 trains on the shared build, as every search test's trials do): it
    trains on its own build without the top 25% and is evaluated on the shared build's held-out split, the one
    the base was; a re-run repeats nothing."""
    from tuneforge.pipeline.search import run_search

    tmp = first["tmp"] / "search-e2e"
    tmp.mkdir()
    (tmp / "forgetting.yaml").write_text(yaml.safe_dump({
        "suites": [{"benchmark": "ceval", "subjects": ["law"], "shots": 1, "limit": 2}],
        "perplexity": {"limit": 2, "max_length": 64}}), encoding="utf-8")  # not the default 36 documents
    (tmp / "recipe").mkdir()  # its own folder: the recipe's fingerprint covers every *.jinja under it, and the
    recipe = _recipe(tmp / "recipe")  # trials save tokenizers (chat_template.jinja) under OUT; same ids as N's
    pipe = _pipeline(tmp, recipe, search={"grid": [{"exclude_top_percent": 25}],
                                                   "exclude": "../attribution.jsonl", "bootstrap": 200})
    body = yaml.safe_load(pipe.read_text(encoding="utf-8"))
    body["train"][0]["set"] = {"max_length": 128, "args": {"max_steps": 1, "per_device_train_batch_size": 1,
                                                           "warmup_steps": 0, "save_steps": 100}}
    body["evaluate"]["heldout"] = {"limit": 2, "max_new_tokens": 8, "batch_size": 2}
    body["forgetting"] = {"config": "forgetting.yaml", "gate": "warn"}
    pipe.write_text(yaml.safe_dump(body), encoding="utf-8")
    res = run_search(pipe, tmp / "out")
    trials = {t["params"]["exclude_top_percent"]: t for t in res["trials"]}
    assert set(trials) == {25} and all(t["state"] in ("complete", "failed_gate") for t in trials.values())
    own = [s for s in res["steps"]["ran"] if s.startswith("data-exclude/")]
    assert len(own) == 1 and res["steps"]["ran"].count("build") == 1
    data = tmp / "out" / own[0]
    assert json.loads((data / "manifest.json").read_text(encoding="utf-8"))["exclude"]["excluded"] == 5
    trained_on = {p: yaml.safe_load((Path(t["dir"]) / "train" / "sft" / "config.yaml").read_text(encoding="utf-8"))
                  ["dataset"] for p, t in trials.items()}
    assert Path(trained_on[25]) == data
    base_heldout = json.loads((tmp / "out" / "eval" / "base" / "results.json").read_text(encoding="utf-8"))["heldout"]
    assert Path(base_heldout["dataset"]) == tmp / "out" / "data"  # the base is scored on the shared build
    assert trials[25]["domain"]["n"] == base_heldout["rows"]["generated"] == 2  # and the trial on the same examples
    again = run_search(pipe, tmp / "out")
    assert not [s for s in again["steps"]["ran"]]


def test_a_record_an_augment_step_made_is_excluded_where_it_is_made(tmp_path):
    """An id of a generated record (kb_queries through the loopback fake endpoint) is dropped when the step
    makes it again, counted as `excluded_generated`, not as unknown."""
    sys.path.insert(0, str(Path(__file__).parent))
    from fake_openai_server import FakeOpenAIServer

    shutil.copytree(REPO / "datasets" / "hotel" / "data", tmp_path / "data")
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "h", "sources": [
        {"name": "dialogues", "path": "data/crosswoz_val_hotel.json", "format": "crosswoz", "limit": 30},
        {"name": "db", "path": "data/hotel_db_sample.json", "format": "kb"}],
        "formats": ["openai", "trl_preference"], "card": {"tokenizer": None},
        "augment": {"llm": {"max_tokens": 64, "max_attempts": 1}, "steps": [
            {"op": "preference", "select": {"sources": ["dialogues"]}, "limit": 3,
             "params": {"k": 1, "include_original": True, "margin": 1}}]}},
        allow_unicode=True), encoding="utf-8")
    with FakeOpenAIServer() as srv:
        url = f"http://127.0.0.1:{srv.port}/v1"
        build(recipe, tmp_path / "n", runner="serial", llm_base_url=url, llm_model="fake")
        rows = [r for f in ("openai", "trl_preference") for s in ("train", "validation", "test")
                for r in _jsonl(tmp_path / "n" / "exports" / f / f"{s}.jsonl")]
        made = [r for r in rows if "derived_from" in json.loads(r["meta"])]
        given = [r for r in rows if "derived_from" not in json.loads(r["meta"])]
        assert made and given
        rank = _ranking(tmp_path / "attribution.jsonl", [made[0], given[0]])
        m = build(recipe, tmp_path / "x", runner="serial", llm_base_url=url, llm_model="fake", exclude=rank,
                  exclude_top=2)
    ex = m["exclude"]
    assert (ex["excluded"], ex["excluded_generated"], ex["unknown"]) == (1, 1, 0)
    dropped = {r["id"]: r for r in _exclusion_rejects(tmp_path / "x")}
    assert set(dropped) == {made[0]["id"], given[0]["id"]}
    assert dropped[made[0]["id"]]["attribution"]["rank"] == 1 and dropped[made[0]["id"]]["raw"]["meta"]["derived_from"]
    c = m["counts"]
    assert c["input"] == c["kept"] + c["rejected"] + c["deduplicated"]
    left = {r["id"] for f in ("openai", "trl_preference") for s in ("train", "validation", "test")
            for r in _jsonl(tmp_path / "x" / "exports" / f / f"{s}.jsonl")}
    assert not left & set(dropped) and len(left) == len(rows) - 2


def _rank_file(path: Path, rid: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"rank": 1, "id": rid, "score": 1.0}) + "\n", encoding="utf-8")
    return path


def test_symlinked_recipe_folder_or_ranking_reads_the_file_named(tmp_path):
    """The recipe folder reached through a symlink at another depth than its target, the ranking a symlink, or
    both: the build reads (and the manifest names) the file the user named, never the file a lexical join of a
    resolved relative path lands on; a recipe's `exclude: {file: ../x}` stays relative to the folder as seen,
    and the fingerprint hashes that same file."""
    from tuneforge.recipe import fingerprint

    real = tmp_path / "a" / "real" / "deep" / "proj"
    real.mkdir(parents=True)
    recipe = _recipe(real)
    (tmp_path / "a" / "top").mkdir()
    (tmp_path / "a" / "top" / "proj").symlink_to(real, target_is_directory=True)
    seen = tmp_path / "a" / "top" / "proj" / recipe.name  # the recipe as the user reaches it
    rank = _rank_file(tmp_path / "a" / "top" / "rank.jsonl", "aaaaaaaaaaaaaaaa")
    _rank_file(tmp_path / "top" / "rank.jsonl", "dddddddddddddddd")  # where the old lexical join landed
    _rank_file(tmp_path / "a" / "real" / "rank.jsonl", "eeeeeeeeeeeeeeee")  # `proj/../../rank.jsonl`, physically
    target = _rank_file(tmp_path / "a" / "runs" / "r1" / "attribution.jsonl", "bbbbbbbbbbbbbbbb")
    link = tmp_path / "a" / "top" / "latest.jsonl"
    link.symlink_to(target)
    cases = [(seen, rank), (recipe, link), (seen, link),
             (seen, tmp_path / "a" / "top" / "proj" / ".." / ".." / "rank.jsonl")]  # `..` after a symlink
    for i, (r, named) in enumerate(cases):
        m = build(r, tmp_path / f"out{i}", runner="serial", exclude=named, exclude_top=1)
        want = json.loads(Path(named).read_text(encoding="utf-8"))["id"]
        assert m["exclude"]["unknown_ids"] == [want], (r, named, m["exclude"])
        assert m["exclude"]["sha256"] == __import__("hashlib").sha256(Path(named).read_bytes()).hexdigest()
    assert m["exclude"]["file"] == str((tmp_path / "a" / "real" / "rank.jsonl").resolve())  # no relative path leads there
    assert build(recipe, tmp_path / "out1", runner="serial", exclude=link, exclude_top=1)["exclude"]["file"] == \
        "../../../top/latest.jsonl"  # the link as named, not its target
    # The recipe's own block: `../rank.jsonl` is beside the folder the user sees (a/top), and the fingerprint
    # (the pipeline's cache) hashes the file the build reads: editing it changes the fingerprint.
    block = _recipe(real, exclude={"file": "../rank.jsonl", "top": 1})
    seen_block = tmp_path / "a" / "top" / "proj" / block.name
    m = build(seen_block, tmp_path / "block", runner="serial")
    assert m["exclude"]["unknown_ids"] == ["aaaaaaaaaaaaaaaa"]
    before = fingerprint(seen_block)
    _rank_file(rank, "ffffffffffffffff")
    assert fingerprint(seen_block) != before
