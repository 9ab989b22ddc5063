"""Faults around a build (issue #34, build side): a replaced output is old or new, never a mix, at any kill;
the machine's faults (full disk, permissions) are exit 2 and leave no scratch behind; recipes and templates
cannot exhaust the machine (YAML aliases, template loops and sizes, glob link cycles); a source that changes
during the build is an error naming it; many small files share shards."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tuneforge import build
from tuneforge.builder.outdir import published
from tuneforge.common.errors import RecipeError, SourceError, machine_fault
from tuneforge.ingest import Sharding, resolve_files, shards_of
from tuneforge.ingest.config import SourceConfig
from tuneforge.ingest.plan import plan_file
from tuneforge.recipe import load_recipe
from tuneforge.templates.loader import TemplateLimit, render_string

ENV = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}


def _corpus(path: Path, n: int, tag: str = "", width: int = 0) -> None:
    pad = "x" * width
    path.write_text("".join(json.dumps({"instruction": f"问题{tag}{i}{pad}", "output": f"回答{tag}{i}"},
                                       ensure_ascii=False) + "\n" for i in range(n)), encoding="utf-8")


def _recipe(folder: Path, name: str = "faults", **extra) -> Path:
    p = folder / f"{name}.yaml"
    p.write_text(yaml.safe_dump({"name": name, "sources": [{"name": "a", "path": "data/a.jsonl"}],
                                 "formats": ["openai"], "card": {"tokenizer": None}, **extra}), encoding="utf-8")
    return p


def _state(out: Path) -> dict[str, str]:
    """What a reader sees: every published file's sha256 (through the links)."""
    return {str(f): hashlib.sha256((out / f).read_bytes()).hexdigest() for f in published(out)}


def _cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tuneforge.cli", *args], env={**ENV, **(env or {})},
                          capture_output=True, text=True, timeout=300)


# ---------------------------------------------------------------- one atomic switch

@pytest.mark.slow
def test_a_kill_at_any_point_of_the_last_step_leaves_the_old_or_the_new_output(tmp_path):
    import datasets

    (tmp_path / "data").mkdir()
    _corpus(tmp_path / "data" / "a.jsonl", 30, "旧")
    recipe = _recipe(tmp_path)
    old_out = tmp_path / "old"
    build(recipe, old_out, runner="serial")
    old = _state(old_out)
    # The new input also adds a published name (kb) the old output lacks, and rejects differ.
    _corpus(tmp_path / "data" / "a.jsonl", 40, "新")
    (tmp_path / "data" / "kb.jsonl").write_text('{"name": "h", "price": 1}\n', encoding="utf-8")
    data = yaml.safe_load(recipe.read_text(encoding="utf-8"))
    data["sources"].append({"name": "kb", "path": "data/kb.jsonl", "format": "kb"})
    recipe.write_text(yaml.safe_dump(data), encoding="utf-8")
    new_out = tmp_path / "new"
    build(recipe, new_out, runner="serial")
    new = _state(new_out)
    assert old != new and "kb/kb.jsonl" in new and "kb/kb.jsonl" not in old

    seen = set()
    for point in ["publish", "staged", "links", "link", "switch", "switched", "marker"]:
        out = tmp_path / point
        shutil.copytree(old_out, out, symlinks=True)
        r = _cli("build", str(recipe), "--out", str(out), "--no-prefect", "--runner", "serial",
                 env={"TUNEFORGE_TEST_DIE_AT": point})
        assert r.returncode == 137, (point, r.stderr[-2000:])
        state = _state(out)
        assert state in (old, new), point  # never a mix
        seen.add("old" if state == old else "new")
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        ds = datasets.load_from_disk(str(out / "dataset"))
        assert sum(ds.num_rows.values()) == sum(manifest["counts"]["splits"].values()), point
        # The next build after the kill works and publishes the new output, with nothing left over.
        build(recipe, out, runner="serial")
        assert _state(out) == new, point
        assert [v.name for v in (out / ".tuneforge" / "versions").iterdir()] == \
            [os.readlink(out / ".tuneforge" / "current").split("/")[-1]]
    assert seen == {"old", "new"}  # the kill points straddle the switch


def test_training_reads_one_version_of_an_output(tmp_path):
    from tuneforge.trainers.data import pinned

    (tmp_path / "data").mkdir()
    _corpus(tmp_path / "data" / "a.jsonl", 10)
    out = tmp_path / "out"
    build(_recipe(tmp_path), out, runner="serial")
    live = pinned(out)
    assert live.parent.name == "versions" and (live / "manifest.json").is_file() and (live / "dataset").is_dir()
    assert pinned(tmp_path / "nothing") == tmp_path / "nothing"  # not an output: the usual error follows


def test_an_output_of_the_layout_before_versions_is_replaced(tmp_path):
    (tmp_path / "data").mkdir()
    _corpus(tmp_path / "data" / "a.jsonl", 10)
    recipe = _recipe(tmp_path)
    out = tmp_path / "out"
    build(recipe, out, runner="serial")
    want = _state(out)
    # Turn it into the old layout: real folders and files in OUT, no versions.
    current = out / ".tuneforge" / "current"
    for name in os.listdir(out):
        if (out / name).is_symlink():
            os.unlink(out / name)
            shutil.copytree(current / name, out / name) if (current / name).is_dir() else \
                shutil.copy(current / name, out / name)
    shutil.rmtree(out / ".tuneforge" / "versions")
    os.unlink(current)
    build(recipe, out, runner="serial")
    assert _state(out) == want and (out / "dataset").is_symlink()


# ---------------------------------------------------------------- the machine's faults

def test_machine_faults_are_the_users_to_fix():
    assert "disk is full" in machine_fault(OSError(errno.ENOSPC, "No space left on device", "/x"))
    assert "quota" in machine_fault(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert "permission" in machine_fault(PermissionError(errno.EACCES, "Permission denied", "/y"))
    assert "read-only" in machine_fault(OSError(errno.EROFS, "Read-only file system"))
    # pyarrow's OSErrors carry the errno only in their text.
    assert "disk is full" in machine_fault(OSError("Error writing bytes to file. Detail: [errno 28] No space "
                                                   "left on device"))
    wrapped = RuntimeError("step failed")
    wrapped.__cause__ = OSError(errno.ENOSPC, "No space left on device")
    assert machine_fault(wrapped)
    assert machine_fault(OSError(errno.ENOENT, "No such file")) is None  # tuneforge's own mistake
    assert machine_fault(ValueError("bug")) is None


def test_permission_denied_is_exit_2_with_what_to_do(tmp_path):
    (tmp_path / "data").mkdir()
    _corpus(tmp_path / "data" / "a.jsonl", 5)
    recipe = _recipe(tmp_path)
    out = tmp_path / "out"
    code = (f"import os, sys; from tuneforge.builder import outdir; from tuneforge import cli\n"
            f"def deny(self): raise PermissionError(13, 'Permission denied', {str(out)!r})\n"
            f"outdir.OutputDir.claim = deny\n"
            f"sys.argv = ['tuneforge', 'build', {str(recipe)!r}, '--out', {str(out)!r}, '--no-prefect']\n"
            f"cli.main()\n")
    r = subprocess.run([sys.executable, "-c", code], env=ENV, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert "permission denied" in r.stderr.lower() and "bug" not in r.stderr.lower()


@contextlib.contextmanager
def _tmpfs(path: Path, options: str, what: str):
    """A 1 MiB tmpfs mounted at `path` (needs root, else the test is skipped), unmounted afterwards."""
    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"{options}size=1m", "tmpfs", str(path)],
                      capture_output=True).returncode:
        pytest.skip(f"cannot mount a {what} tmpfs here (needs root)")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


@pytest.fixture
def small_disk(tmp_path):
    """A 1 MiB file system."""
    with _tmpfs(tmp_path / "disk", "", "small") as disk:
        yield disk


def test_a_full_disk_is_exit_2_leaves_no_scratch_and_the_next_build_works(tmp_path, small_disk):
    (tmp_path / "data").mkdir()
    _corpus(tmp_path / "data" / "a.jsonl", 3000, width=200)  # about 0.7 MB in, several MB out
    big = _recipe(tmp_path, "big")
    out = small_disk / "out"
    r = _cli("build", str(big), "--out", str(out), "--no-prefect", "--runner", "serial")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "disk is full" in r.stderr and "bug in tuneforge" not in r.stderr
    assert not (out / "manifest.json").exists()
    assert not (out / ".tuneforge" / "work").exists()
    assert [v for v in (out / ".tuneforge" / "versions").iterdir()] == []
    # Another, small recipe builds into the same folder afterwards (the space came back).
    (tmp_path / "data" / "b.jsonl").write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    small = tmp_path / "small.yaml"
    small.write_text(big.read_text(encoding="utf-8").replace("a.jsonl", "b.jsonl").replace("name: big",
                                                                                          "name: small"))
    r = _cli("build", str(small), "--out", str(out), "--no-prefect", "--runner", "serial")
    assert r.returncode == 0, r.stderr[-2000:]  # nothing was published: no --force needed
    assert json.loads((out / "manifest.json").read_text(encoding="utf-8"))["counts"]["input"] == 1
    # The big one fails again, and the small output stays as it was, still the small recipe's.
    before = _state(out)
    r = _cli("build", str(big), "--out", str(out), "--no-prefect", "--runner", "serial", "--force")
    assert r.returncode == 2 and _state(out) == before
    r = _cli("build", str(small), "--out", str(out), "--no-prefect", "--runner", "serial")
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_read_only_file_system_is_exit_2(tmp_path):
    (tmp_path / "data").mkdir()
    _corpus(tmp_path / "data" / "a.jsonl", 5)
    with _tmpfs(tmp_path / "ro", "ro,", "read-only") as ro:
        r = _cli("build", str(_recipe(tmp_path)), "--out", str(ro / "out"), "--no-prefect", "--runner", "serial")
    assert r.returncode == 2, r.stderr[-2000:]
    assert "read-only" in r.stderr and "bug in tuneforge" not in r.stderr


# ---------------------------------------------------------------- bounded work

def test_yaml_alias_bombs_and_cycles_are_refused_fast(tmp_path):
    levels = ["a: &a [" + ",".join(['"lol"'] * 9) + "]"]
    for prev, cur in zip("abcdefgh", "bcdefghi", strict=True):
        levels.append(f"{cur}: &{cur} [" + ",".join([f"*{prev}"] * 9) + "]")
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text("name: bomb\n" + "\n".join(levels) + "\nsources:\n  - name: s\n    path: x.jsonl\n"
                    "    options: {bomb: *i}\n", encoding="utf-8")
    t = time.monotonic()
    with pytest.raises(RecipeError, match="aliases expand"):
        load_recipe(bomb)
    assert time.monotonic() - t < 5
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text("name: c\nloop: &l [1, *l]\nsources: []\n", encoding="utf-8")
    with pytest.raises(RecipeError):
        load_recipe(cyclic)
    r = _cli("build", str(bomb), "--out", str(tmp_path / "out"), "--no-prefect")
    assert r.returncode == 2 and "aliases" in r.stderr
    # An ordinary anchor still works.
    ok = tmp_path / "ok.yaml"
    (tmp_path / "data").mkdir()
    _corpus(tmp_path / "data" / "a.jsonl", 3)
    ok.write_text("name: ok\nsources:\n  - &src {name: a, path: data/a.jsonl}\n  - {<<: *src, name: b}\n",
                  encoding="utf-8")
    assert len(load_recipe(ok)[0].sources) == 2


@pytest.mark.parametrize("source", [
    "{{ 'a' * 10**10 }}",
    "{{ 10 ** (10 ** 10) }}",
    "{% for i in range(10**10) %}x{% endfor %}",
    "{{ 'a'|center(10**10) }}",
    "{% for i in range(100000) %}{{ 'abcdefghijkl' }}{% endfor %}",
    "{% set ns = namespace(s='a') %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}{% endfor %}{{ ns.s }}",
    "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
])
def test_a_template_past_its_limits_stops_with_a_reason(source):
    t = time.monotonic()
    with pytest.raises(TemplateLimit):
        render_string(source, x=list(range(10)))
    assert time.monotonic() - t < 6


def test_loops_that_call_nothing_stop_on_a_worker_thread_too():
    """The threads runner has no SIGALRM timer: nested loops over a ready sequence, which call nothing, are
    stopped by the clock every `for` checks as it iterates."""
    import threading

    source = ("{% set r = range(100000) %}{% for a in r %}{% for b in r %}{% for c in r %}{% endfor %}"
              "{% endfor %}{% endfor %}")
    caught: list[BaseException] = []

    def render() -> None:
        try:
            render_string(source)
        except BaseException as e:
            caught.append(e)

    t = time.monotonic()
    worker = threading.Thread(target=render, daemon=True)
    worker.start()
    worker.join(30)
    assert not worker.is_alive() and time.monotonic() - t < 10
    assert len(caught) == 1 and isinstance(caught[0], TemplateLimit) and "over 2 s" in str(caught[0])
    # loops keep their meaning: loop variables, else, recursion
    assert render_string("{% for x in xs %}{{ loop.index }}{{ x }}{% if loop.last %}.{% endif %}{% else %}none"
                         "{% endfor %}", xs="ab") == "1a2b."
    assert render_string("{% for x in xs %}{% else %}none{% endfor %}", xs=[]) == "none"


def test_each_record_a_document_template_cannot_render_is_a_reject(tmp_path):
    (tmp_path / "data").mkdir()
    rows = [{"name": "ok", "n": 2}, {"name": "bomb", "n": 10**10}, {"name": "ok2", "n": 3}]
    (tmp_path / "data" / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({
        "name": "docs", "card": {"tokenizer": None},
        "sources": [{"name": "a", "path": "data/a.jsonl", "format": "document",
                     "options": {"template": "{{ name }} {{ 'ab' * n }}"}}]}), encoding="utf-8")
    m = build(recipe, tmp_path / "out", runner="serial")
    assert m.counts["input"] == 3 and m.counts["rejected"] == 1
    rej = [json.loads(x) for x in (tmp_path / "out" / "rejects.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(rej) == 1 and "over the limit" in rej[0]["reason"] and rej[0]["line"] == 2


def test_recursive_globs_do_not_follow_link_cycles(tmp_path):
    d = tmp_path / "data" / "a"
    (d / "b").mkdir(parents=True)
    _corpus(d / "1.jsonl", 1)
    _corpus(d / "b" / "2.jsonl", 1)
    (d / "loop").symlink_to("..")
    (d / "b" / "up").symlink_to("../..")
    (tmp_path / "data" / ".hidden").mkdir()
    _corpus(tmp_path / "data" / ".hidden" / "3.jsonl", 1)
    files = resolve_files(SourceConfig(name="s", path="data/**/*.jsonl"), tmp_path)
    assert [f.relative_to(tmp_path).as_posix() for f in files] == ["data/a/1.jsonl", "data/a/b/2.jsonl"]


# ---------------------------------------------------------------- drift

@pytest.mark.parametrize("change", ["grow", "rewrite"])
def test_a_source_that_changes_during_the_build_is_an_error_naming_it(tmp_path, monkeypatch, change):
    from tuneforge.builder import run

    (tmp_path / "data").mkdir()
    src = tmp_path / "data" / "a.jsonl"
    _corpus(src, 20)
    recipe = _recipe(tmp_path)
    original = run.Build._dedup

    def writer_meanwhile(self, *a, **kw):  # after every byte was read, before publishing
        if change == "grow":
            with open(src, "a", encoding="utf-8") as f:
                f.write('{"instruction": "half-writ')  # a half-written last line
        else:  # the same size and modification time, other bytes
            st = src.stat()
            src.write_bytes(src.read_bytes().replace("问题1".encode(), "问题9".encode()))
            os.utime(src, ns=(st.st_atime_ns, st.st_mtime_ns))
        return original(self, *a, **kw)

    monkeypatch.setattr(run.Build, "_dedup", writer_meanwhile)
    with pytest.raises(SourceError, match=r"data/a\.jsonl: changed while the build read it"):
        build(recipe, tmp_path / "out", runner="serial")
    assert not (tmp_path / "out" / "manifest.json").exists()


def test_a_file_that_grows_while_it_is_planned_is_an_error(tmp_path, monkeypatch):
    from tuneforge.ingest import scan

    src = tmp_path / "a.jsonl"
    _corpus(src, 5)
    real = scan.Scan.__init__

    def scan_then_grow(self, path, *a):
        real(self, path, *a)
        with open(path, "a", encoding="utf-8") as f:
            f.write("{}\n")

    monkeypatch.setattr(scan.Scan, "__init__", scan_then_grow)
    with pytest.raises(SourceError, match="changed while the build read it"):
        plan_file(src, "a.jsonl", SourceConfig(name="s", path="a.jsonl"), Sharding())


# ---------------------------------------------------------------- many small files

def test_many_small_files_share_shards_and_build_the_same_records(tmp_path):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(300):
        _corpus(many / f"{i:03d}.jsonl", 2, f"f{i}-")
    one = tmp_path / "one.jsonl"
    one.write_text("".join((many / f"{i:03d}.jsonl").read_text(encoding="utf-8") for i in range(300)),
                   encoding="utf-8")
    cfg = SourceConfig(name="s", path="many")
    plans = [plan_file(f, f.name, cfg, Sharding()) for f in resolve_files(cfg, tmp_path)]
    assert len(shards_of([(cfg, p) for p in plans])) == 1
    assert len(shards_of([(cfg, p) for p in plans], Sharding(target_bytes=20_000))) > 1
    recipe = tmp_path / "r.yaml"
    outs = {}
    for name, path in (("many", "many"), ("one", "one.jsonl")):
        recipe.write_text(yaml.safe_dump({"name": "small", "sources": [{"name": "s", "path": path}],
                                          "card": {"tokenizer": None}, "formats": ["openai"]}), encoding="utf-8")
        build(recipe, tmp_path / f"out-{name}", runner="processes", workers=2, force=True)
        outs[name] = sorted(json.dumps(json.loads(line)["messages"], ensure_ascii=False)
                            for split in ("train", "validation", "test")
                            for line in (tmp_path / f"out-{name}" / "exports" / "openai" / f"{split}.jsonl")
                            .read_text(encoding="utf-8").splitlines())
        timings = json.loads((tmp_path / f"out-{name}" / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))
        assert timings["timings"]["shards"] == 1
    assert outs["many"] == outs["one"] and len(outs["one"]) == 600  # the same records (provenance differs)
    # Smaller shards (several packs of files) give the same bytes.
    recipe.write_text(yaml.safe_dump({"name": "small", "sources": [{"name": "s", "path": "many"}],
                                      "card": {"tokenizer": None}, "formats": ["openai"]}), encoding="utf-8")
    build(recipe, tmp_path / "out-packs", runner="serial", shard_mb=0.002, force=True)
    timings = json.loads((tmp_path / "out-packs" / ".tuneforge" / "timings.json").read_text(encoding="utf-8"))
    assert timings["timings"]["shards"] > 2
    assert _state(tmp_path / "out-packs") == _state(tmp_path / "out-many")
