"""The sharded build: the same bytes whatever the runner and shard size, a kill -9 that leaves nothing
complete-looking and resumes from finished shards, and an `--out` that never deletes what it did not write."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuneforge import TuneforgeError, build
from tuneforge.builder.outdir import published

REAL = [  # several real corpora of different formats and kinds
    ("alpaca_zh", "llamafactory/alpaca_zh_demo.json"),
    ("oaast_sft", "chatglm-efficient-tuning/oaast_sft_zh.json"),
    ("oaast_rm", "chatglm-efficient-tuning/oaast_rm_zh.json"),
    ("dpo_en", "llamafactory/dpo_en_demo.json"),
    ("kto_en", "llamafactory/kto_en_demo.json"),
    ("c4", "llamafactory/c4_demo.jsonl"),
    ("wiki", "llamafactory/wiki_demo.txt"),
    ("crosswoz", "crosswoz/val_first100.json"),
]


def _recipe(tmp: Path, shared: Path, **extra) -> Path:
    data = tmp / "data"
    data.mkdir(exist_ok=True)
    sources = []
    for name, rel in REAL:
        target = data / Path(rel).name
        if not target.exists():
            target.write_bytes((shared / rel).read_bytes())
        sources.append({"name": name, "path": f"data/{target.name}"})
    p = tmp / "recipe.yaml"
    p.write_text(yaml.safe_dump({"name": "sharded", "sources": sources, "card": {"tokenizer": None},
                                 "formats": ["openai", "sharegpt", "trl_preference"], **extra}), encoding="utf-8")
    return p


def _outputs(root: Path) -> list[Path]:
    return published(root)  # the published names are links into .tuneforge/current/


def _same(a: Path, b: Path) -> None:
    files = _outputs(a)
    assert files == _outputs(b) and len(files) > 10
    assert not [f for f in files if not filecmp.cmp(a / f, b / f, shallow=False)]


@pytest.mark.slow
def test_same_bytes_whatever_the_runner_and_shard_size(shared, tmp_path):
    recipe = _recipe(tmp_path, shared)
    one = build(recipe, tmp_path / "serial", runner="serial")
    c = one.counts
    assert c["input"] == c["kept"] + c["rejected"] + c["deduplicated"] and c["kept"] > 3000
    small = build(recipe, tmp_path / "processes", runner="processes", workers=2, shard_mb=0.05,
                  shard_records=150)
    _same(tmp_path / "serial", tmp_path / "processes")
    assert small.counts == c
    timings = json.loads((tmp_path / "processes/.tuneforge/timings.json").read_text(encoding="utf-8"))
    assert timings["timings"]["shards"] >= 20  # the small shards really split files (JSON arrays, text)
    build(recipe, tmp_path / "threads", runner="threads", workers=3, shard_mb=0.2)
    _same(tmp_path / "serial", tmp_path / "threads")
    # Rejects keep their file and exact line across shard boundaries.
    for line in (tmp_path / "processes" / "rejects.jsonl").read_text(encoding="utf-8").splitlines():
        r = json.loads(line)
        assert r["reason"] and r["file"] and (r.get("line") or r.get("index") is not None or r.get("key"))


def _big_corpus(path: Path, shared: Path, n: int) -> None:
    rows = json.loads((shared / "llamafactory/alpaca_zh_demo.json").read_text(encoding="utf-8"))
    with open(path, "w", encoding="utf-8") as f:
        for i in range(n):
            r = rows[i % len(rows)]
            f.write(json.dumps({**r, "instruction": f"{r['instruction']} #{i}"}, ensure_ascii=False) + "\n")


@pytest.mark.slow
def test_kill_9_leaves_nothing_complete_and_resumes_from_finished_shards(shared, tmp_path):
    (tmp_path / "data").mkdir()
    _big_corpus(tmp_path / "data" / "big.jsonl", shared, 20_000)
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "big", "sources": [{"name": "big", "path": "data/big.jsonl"}],
                                      "clean": {"dedup": {"near": False}}, "card": {"tokenizer": None}}),
                      encoding="utf-8")
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "tuneforge.cli", "build", str(recipe), "--out", str(out), "--no-prefect",
           "--shard-mb", "0.5", "--workers", "2"]
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    work = out / ".tuneforge" / "work"
    deadline = time.time() + 300
    while time.time() < deadline and len(list(work.glob("clean/*/done.json"))) < 4:
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)  # the CLI and its workers, as a power cut would
    proc.wait()
    finished = len(list(work.glob("clean/*/done.json")))
    assert finished >= 4
    assert not (out / "manifest.json").exists()  # nothing that looks complete
    # No process outlives the command: the workers died with it.
    assert subprocess.run(["pgrep", "-f", str(out)], capture_output=True).returncode == 1

    # A finished unit whose file a power cut left short (its unit files are not synced one by one): its
    # size no longer matches what done.json recorded, so it is redone rather than reused.
    short = sorted(p.parent / "records.arrow" for p in work.glob("clean/*/done.json"))[0]
    with open(short, "r+b") as f:
        f.truncate(short.stat().st_size // 2)

    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    timings = json.loads((out / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))
    assert timings["timings"]["reused"]["clean"] == finished - 1
    # The work folder keeps only this build's shard units (for the next incremental build), nothing stale.
    assert len(list(work.glob("clean/*"))) == timings["timings"]["shards"]
    assert not list((out / ".tuneforge").glob("staging*/*"))
    fresh = tmp_path / "fresh"
    build(recipe, fresh, shard_mb=0.5, workers=2)
    _same(out, fresh)


def test_out_never_deletes_what_the_build_did_not_write(shared, tmp_path):
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "a.jsonl").write_text(
        "\n".join(json.dumps({"instruction": f"q{i}", "output": f"a{i}"}) for i in range(20)), encoding="utf-8")
    (tmp_path / "d" / "docs").mkdir()
    (tmp_path / "d" / "docs" / "x.txt").write_text("一段文字。\n另一段。\n", encoding="utf-8")
    recipe = tmp_path / "d" / "recipe.yaml"
    recipe.write_text(yaml.safe_dump({"name": "safe", "sources": [{"name": "a", "path": "a.jsonl"},
                                                                   {"name": "docs", "path": "docs"}],
                                      "card": {"tokenizer": None}}), encoding="utf-8")
    # A file.
    f = tmp_path / "file.txt"
    f.write_text("keep me", encoding="utf-8")
    with pytest.raises(TuneforgeError, match="is a file"):
        build(recipe, f, runner="serial")
    assert f.read_text(encoding="utf-8") == "keep me"
    # A folder holding someone else's files.
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.md").write_text("mine", encoding="utf-8")
    with pytest.raises(TuneforgeError, match="not a tuneforge output"):
        build(recipe, other, runner="serial")
    assert (other / "notes.md").read_text(encoding="utf-8") == "mine"
    # The recipe's own folder, and a folder inside the inputs.
    with pytest.raises(TuneforgeError):
        build(recipe, tmp_path / "d", runner="serial")
    assert (tmp_path / "d" / "a.jsonl").is_file() and recipe.is_file()
    with pytest.raises(TuneforgeError, match="overlaps the input"):
        build(recipe, tmp_path / "d" / "docs" / "out", runner="serial")
    # An earlier output of the same recipe is rebuilt in place; of another recipe only with force.
    out = tmp_path / "out"
    build(recipe, out, runner="serial")
    build(recipe, out, runner="serial")
    other_recipe = tmp_path / "d" / "other.yaml"
    other_recipe.write_text(recipe.read_text(encoding="utf-8").replace("name: safe", "name: other"),
                            encoding="utf-8")
    with pytest.raises(TuneforgeError, match="--force"):
        build(other_recipe, out, runner="serial")
    assert build(other_recipe, out, runner="serial", force=True).counts["input"] == 22
    # Sources outside the recipe folder need allow_outside, and are then listed in the manifest.
    outside = tmp_path / "outside.jsonl"
    outside.write_text(json.dumps({"instruction": "q", "output": "a"}) + "\n", encoding="utf-8")
    far = tmp_path / "d" / "far.yaml"
    far.write_text(yaml.safe_dump({"name": "far", "sources": [{"name": "o", "path": "../outside.jsonl"}],
                                   "card": {"tokenizer": None}}), encoding="utf-8")
    with pytest.raises(TuneforgeError, match="allow_outside"):
        build(far, tmp_path / "far", runner="serial")
    m = build(far, tmp_path / "far", runner="serial", allow_outside=True)
    assert m["outside_sources"] == ["../outside.jsonl"]
