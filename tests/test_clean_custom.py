"""A user's own filters and normalisers named by import path in a recipe: built on worker processes and on Dask,
their rejects counted and reasoned like ours, keyed in the cache by their params and module file, and a
misspelt path refused before any work (docs/clean.md, "Your own filters and normalisers")."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml

from tuneforge.check import check_file
from tuneforge.clean import CleanConfig, run_clean
from tuneforge.clean.filters import BUILTIN_KEYS, Empty, first_failure
from tuneforge.common.errors import RecipeError
from tuneforge.recipe import fingerprint, load_recipe

REPO = Path(__file__).resolve().parents[1]
DOC = REPO / "docs" / "clean.md"
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)


def _doc_example() -> tuple[str, dict]:
    """The docs' example module (the python block that starts `# myfilters.py`) and its recipe `clean:` block."""
    blocks = FENCE.findall(DOC.read_text(encoding="utf-8"))
    module = next(body for lang, body in blocks if lang == "python" and body.startswith("# myfilters.py"))
    clean = next(yaml.safe_load(body)["clean"] for lang, body in blocks if lang == "yaml" and "myfilters:" in body)
    return module, clean


def _data(tmp_path: Path) -> Path:
    """8 conversations: 2 with links (one of them twice), 1 of two characters, the rest plain; one names 小锻助手."""
    rows = [{"instruction": f"问题{i}：介绍一下酒店的第{i}项服务", "output": f"第{i}项服务是二十四小时前台和免费早餐。"}
            for i in range(5)]
    rows[1]["output"] = "详见 https://example.com/a 和 http://example.org/b 。"
    rows[3]["instruction"] = "看看 https://example.com/c 这个页面"
    rows.append({"instruction": "小锻助手是谁？", "output": "小锻助手是一个酒店客服。"})
    rows.append({"instruction": "嗨", "output": "好"})
    rows.append({"instruction": "最后一个问题", "output": "最后一个回答，没有链接。"})
    p = tmp_path / "data.jsonl"
    p.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return p


def _recipe(tmp_path: Path, clean: dict, name: str = "r.yaml") -> Path:
    p = tmp_path / name
    p.write_text(yaml.safe_dump({"name": "custom", "sources": [{"name": "d", "path": "data.jsonl", "format": "alpaca"}],
                                 "clean": clean, "card": {"tokenizer": None}}, allow_unicode=True), encoding="utf-8")
    return p


def _cli(args: list[str], pythonpath: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), str(REPO), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], capture_output=True, text=True, env=env,
                          timeout=timeout)


def _lines(p: Path) -> list[dict]:
    return [json.loads(x) for x in p.read_text(encoding="utf-8").splitlines() if x.strip()]


@pytest.mark.slow
def test_the_docs_example_builds_on_worker_processes_and_dask_with_rejects_reasoned(tmp_path):
    """The docs' module on PYTHONPATH (not importable by this test process's workers otherwise): a build on two
    worker processes, one shard per record, rejects the two records with links under the filter's name, with
    file and line; counts reconcile; the normaliser ran; Dask workers build the same bytes."""
    module, clean = _doc_example()
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "myfilters.py").write_text(module, encoding="utf-8")
    _data(tmp_path)
    recipe = _recipe(tmp_path, clean)
    out = tmp_path / "out"
    r = _cli(["build", str(recipe), "--out", str(out), "--runner", "processes", "--workers", "2",
              "--shard-mb", "0.0001", "--no-prefect"], mods)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    c = m["counts"]
    assert c["input"] == 8 and c["input"] == c["kept"] + c["rejected"] + c["deduplicated"]
    assert m["counts"]["stages"]["clean"]["filters"] == {"urls": 2}
    rejects = _lines(out / "rejects.jsonl")
    urls = [x for x in rejects if x["reason"].startswith("urls")]
    assert [(x["reason"], x["file"], x["line"]) for x in urls] == [
        ("urls: 2 links > max_urls 0", "data.jsonl", 2), ("urls: 1 links > max_urls 0", "data.jsonl", 4)]
    assert all(x["stage"] == "clean" and x["raw"]["messages"] for x in urls)
    kept = "".join((out / "exports/openai" / f"{s}.jsonl").read_text(encoding="utf-8")
                   for s in ("train", "validation", "test"))
    assert "小锻是谁" in kept and "小锻助手" not in kept and "http" not in kept

    dask = tmp_path / "dask"
    r = _cli(["build", str(recipe), "--out", str(dask), "--runner", "dask", "--workers", "2",
              "--shard-mb", "0.0001", "--no-prefect"], mods)
    assert r.returncode == 0, r.stderr[-3000:]
    for f in ("rejects.jsonl", "manifest.json", "exports/openai/train.jsonl"):
        assert (out / f).read_bytes() == (dask / f).read_bytes(), f


def test_misspelt_path_stops_the_build_with_one_line_before_any_work(tmp_path):
    _data(tmp_path)
    (tmp_path / "mods").mkdir()
    (tmp_path / "mods" / "myfilters.py").write_text(_doc_example()[0], encoding="utf-8")
    recipe = _recipe(tmp_path, {"filters": {"custom": [{"path": "myfiltres:NoURLs"}]}})
    out = tmp_path / "out"
    r = _cli(["build", str(recipe), "--out", str(out), "--no-prefect"], tmp_path / "mods", timeout=120)
    assert r.returncode == 2, r.stderr
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and "Traceback" not in r.stderr, r.stderr
    assert "clean.filters.custom[0] 'myfiltres:NoURLs': cannot import 'myfiltres'" in err[0]
    assert "PYTHONPATH" in err[0]
    assert not out.exists()  # no output folder, no work folder, no shard


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """A module of user filters under a fresh name, importable in this process (in-process runs only)."""
    name = f"tf_user_{uuid.uuid4().hex[:8]}"
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / f"{name}.py").write_text(
        "from tuneforge.common.records import turns_of\n"
        "class Contains:\n"
        "    def __init__(self, word, why=True):\n"
        "        self.word, self.why = word, why\n"
        "    def filter(self, rec):\n"
        "        hit = any(self.word in t for _, _, t in turns_of(rec))\n"
        "        return (False, f'has {self.word}') if hit and self.why else not hit\n"
        "class Upper:\n"
        "    def normalize(self, text):\n"
        "        return text.upper()\n"
        "class Broken:\n"
        "    def filter(self, rec):\n"
        "        return None\n"
        "class Raises:\n"
        "    def filter(self, rec):\n"
        "        return rec['no_such_field']\n"
        "NOT_A_CLASS = 3\n"
        "class NoMethod:\n"
        "    pass\n", encoding="utf-8")
    monkeypatch.syspath_prepend(str(mods))
    yield name
    sys.modules.pop(name, None)


@pytest.mark.parametrize(("path", "params", "message"), [
    ("{m}:Contians", {"word": "x"}, "module '{m}' ({file}) has no 'Contians'"),
    ("{m}:NOT_A_CLASS", {}, "'NOT_A_CLASS' is a int, not a class"),
    ("{m}:NoMethod", {}, "a NoMethod has no `filter` method, so it is not a filter"),
    ("{m}:Contains", {"wrod": "x"}, "making it with params {{'wrod': 'x'}} failed: TypeError: "),
    ("{m}:Contains", {"word": "x", "name": "empty"}, "making it with params"),
])
def test_bad_user_filters_are_one_line_errors_from_load_recipe_and_check(tmp_path, user_module, path, params,
                                                                         message):
    _data(tmp_path)
    file = tmp_path / "mods" / f"{user_module}.py"
    recipe = _recipe(tmp_path, {"filters": {"custom": [{"path": path.format(m=user_module), "params": params}]}})
    want = f"{recipe}: clean.filters.custom[0] '{path.format(m=user_module)}': " + message.format(m=user_module,
                                                                                                  file=file)
    with pytest.raises(RecipeError) as e:
        load_recipe(recipe)
    assert str(e.value).startswith(want) and "\n" not in str(e.value)
    report = check_file(recipe)
    assert not report.ok and want.split(" failed")[0] in report.errors[0]


def test_names_shapes_and_returns_are_checked(tmp_path, user_module):
    bad = {"filters": {"custom": [{"path": "no_colon.here"}]}}
    with pytest.raises(RecipeError, match=r"is not `module\.path:Attribute`"):
        load_recipe(_recipe(tmp_path, bad))
    ours = {"filters": {"custom": [{"path": f"{user_module}:Contains", "params": {"word": "x"}, "name": "empty"}]}}
    with pytest.raises(RecipeError, match="its name 'empty' is one of tuneforge's own reasons"):
        load_recipe(_recipe(tmp_path, ours))
    twice = {"filters": {"custom": [{"path": f"{user_module}:Contains", "params": {"word": w}} for w in "xy"]}}
    with pytest.raises(RecipeError, match="two filters are named 'Contains'"):
        load_recipe(_recipe(tmp_path, twice))
    cfg = CleanConfig.model_validate({"filters": {"custom": [{"path": f"{user_module}:Broken"}]}})
    with pytest.raises(RecipeError, match=r"filter\(\) returned None on record '\w+' \(data.jsonl line 1\); return "
                                          r"True to keep the record"):
        run_clean(_records(tmp_path), cfg)
    cfg = CleanConfig.model_validate({"filters": {"custom": [{"path": f"{user_module}:Raises"}]}})
    with pytest.raises(RecipeError, match=r"custom\[0\]: filter\(\) raised KeyError: 'no_such_field' on record"):
        run_clean(_records(tmp_path), cfg)
    assert "empty" in BUILTIN_KEYS and first_failure([Empty()], _records(tmp_path)[0]) is None


def _records(tmp_path: Path) -> list[dict]:
    from tuneforge.ingest import ingest
    from tuneforge.ingest.config import SourceConfig

    _data(tmp_path)
    return ingest([SourceConfig(name="d", path="data.jsonl", format="alpaca")], tmp_path).records


def test_user_ops_run_after_ours_in_recipe_order_and_their_keys_are_counted(tmp_path, user_module):
    recs = _records(tmp_path)
    cfg = CleanConfig.model_validate({"normalize": {"custom": [{"path": f"{user_module}:Upper"}]}, "filters": {
        "min_chars": 10,
        "custom": [{"path": f"{user_module}:Contains", "params": {"word": "HTTP"}, "name": "links"},
                   {"path": f"{user_module}:Contains", "params": {"word": "小锻", "why": False}}]}})
    res = run_clean(recs, cfg)
    reasons = [r["reason"] for r in res.rejects]
    # the normaliser upper-cased the text the filters see; a bare False is reported under the filter's name
    assert reasons == ["links: has HTTP", "links: has HTTP", "Contains", "too_short: 2 chars < min_chars 10"]
    assert [r["line"] for r in res.rejects] == [2, 4, 6, 7]
    assert res.counts["filters"] == {"Contains": 1, "links": 2, "too_short": 1}
    assert len(res.kept) + len(res.rejects) == len(recs) == 8
    assert all(m["content"] == m["content"].upper() for r in res.kept for m in r["messages"])


def test_the_cache_key_follows_params_and_the_module_file(tmp_path, user_module):
    """Serial builds in this process: a changed param re-cleans every shard (and changes what is rejected); an
    unchanged recipe reuses them; an edited module file re-cleans them."""
    from tuneforge.builder import build

    _data(tmp_path)
    out = tmp_path / "out"

    def run(word: str) -> tuple[dict, int]:
        recipe = _recipe(tmp_path, {"filters": {"custom": [{"path": f"{user_module}:Contains",
                                                            "params": {"word": word}}]}})
        m = build(recipe, out, runner="serial", shard_mb=0.0001)
        timings = json.loads((out / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))
        return m["counts"]["stages"]["clean"]["filters"], timings["timings"]["reused"]["clean"]

    assert run("https") == ({"Contains": 2}, 0)
    assert run("https") == ({"Contains": 2}, 8)
    assert run("小锻") == ({"Contains": 1}, 0)
    mod = tmp_path / "mods" / f"{user_module}.py"
    before = fingerprint(tmp_path / "r.yaml")  # the pipeline's key of a build
    mod.write_text(mod.read_text(encoding="utf-8") + "# edited\n", encoding="utf-8")
    assert run("小锻") == ({"Contains": 1}, 0)
    assert fingerprint(tmp_path / "r.yaml") != before


def test_the_first_failing_filter_is_the_reason_ours_first_then_the_recipe_s_order(tmp_path, user_module):
    line2 = [r for r in _records(tmp_path) if r["meta"]["line"] == 2]  # has "https" and "example"
    a = {"path": f"{user_module}:Contains", "params": {"word": "https"}, "name": "a"}
    b = {"path": f"{user_module}:Contains", "params": {"word": "example"}, "name": "b"}

    def reason(filters: dict) -> str:
        return run_clean(line2, CleanConfig.model_validate({"filters": filters})).rejects[0]["reason"]

    assert reason({"custom": [a, b]}) == "a: has https"
    assert reason({"custom": [b, a]}) == "b: has example"
    assert reason({"min_chars": 1000, "custom": [a, b]}).startswith("too_short: ")


def test_an_edited_badwords_list_cleans_again(tmp_path):
    """The recipe names the list's path only: its words are in the clean cache key and in the pipeline's build
    fingerprint, so an edited list re-cleans (and rejects what it now names) instead of serving the old output."""
    from tuneforge.builder import build

    _data(tmp_path)
    words = tmp_path / "bad.txt"
    recipe = _recipe(tmp_path, {"filters": {"badwords": "bad.txt"}})
    out = tmp_path / "out"

    def run() -> tuple[int, int]:
        m = build(recipe, out, runner="serial", shard_mb=0.0001)
        timings = json.loads((out / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))
        return m["counts"]["stages"]["clean"]["filters"].get("badword", 0), timings["timings"]["reused"]["clean"]

    words.write_text("# none yet\n", encoding="utf-8")
    assert run() == (0, 0)
    assert run() == (0, 8)  # unchanged: every shard reused
    before = fingerprint(recipe)
    words.write_text("小锻助手\n", encoding="utf-8")
    assert fingerprint(recipe) != before
    assert run() == (1, 0)  # the edited list re-cleaned every shard and rejected the record it names
