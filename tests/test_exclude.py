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


def test_same_bytes_on_worker_processes_with_small_shards(first):
    tmp = first["tmp"]
    build(first["recipe"], tmp / "p-serial", runner="serial", exclude=first["rank"], exclude_top=20)
    build(first["recipe"], tmp / "p-proc", runner="processes", workers=2, exclude=first["rank"], exclude_top=20,
          shard_records=40, shard_mb=0.02)
    files = published(tmp / "p-serial")
    assert files == published(tmp / "p-proc") and len(_exclusion_rejects(tmp / "p-proc")) == 18
    assert not [f for f in files if not filecmp.cmp(tmp / "p-serial" / f, tmp / "p-proc" / f, shallow=False)]


@pytest.mark.slow
def test_same_bytes_on_dask(first):
    tmp = first["tmp"]
    build(first["recipe"], tmp / "d-serial", runner="serial", exclude=first["rank"], exclude_top=10)
    build(first["recipe"], tmp / "d-dask", runner="dask", workers=2, exclude=first["rank"], exclude_top=10,
          shard_records=40, shard_mb=0.02)
    files = published(tmp / "d-serial")
    assert files == published(tmp / "d-dask")
    assert not [f for f in files if not filecmp.cmp(tmp / "d-serial" / f, tmp / "d-dask" / f, shallow=False)]


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
