"""Installing tuneforge where its users work: the core without torch, extras that say what is missing, the PPO
extra, `tuneforge env`, no deprecated calls of our own, and the README's install matrix kept true."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import tomllib
import warnings
from pathlib import Path

import pytest
from typer.testing import CliRunner

from tuneforge.common import extras
from tuneforge.common.extras import EXTRAS, MissingExtra, require

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))["project"]
LOCK = REPO / "constraints" / "ci-locked.txt"
HEAVY = {"torch", "transformers", "trl", "peft", "accelerate", "prefect", "lm-eval", "optuna", "distributed",
         "scipy", "matplotlib", "llguidance"}


def _name(req: str) -> str:
    """The distribution of a requirement, or `[x]` for a self-reference `tuneforge[x]` (one entry per extra)."""
    return re.match(r"[A-Za-z0-9_.\-]+(\[[^\]]*\])?", req.strip()).group(0).lower().replace("_", "-")


def _expand(req: str) -> list[str]:
    n = _name(req)
    if n.startswith("tuneforge["):
        return [f"[{x.strip()}]" for x in n[len("tuneforge["):-1].split(",")]
    return [n.split("[")[0]]


def _extra(name: str) -> list[str]:
    return [x for req in PYPROJECT["optional-dependencies"][name] for x in _expand(req)]


def _with_refs(name: str) -> set[str]:
    """Every distribution an extra brings, following `tuneforge[x]` references."""
    out: set[str] = set()
    for x in _extra(name):
        out |= _with_refs(x[1:-1]) if x.startswith("[") else {x}
    return out


def test_core_has_no_torch_and_every_extra_in_the_table_is_declared():
    core = {_expand(r)[0] for r in PYPROJECT["dependencies"]}
    assert not core & HEAVY, core & HEAVY
    assert PYPROJECT["requires-python"] == ">=3.11"
    for extra, modules in EXTRAS.items():
        brings = _with_refs(extra)
        assert {m.replace("_", "-") for m in modules} <= brings, (extra, brings)
    # Every extra but dev is a feature of the table or the [ppo]/[all] bundles.
    assert set(PYPROJECT["optional-dependencies"]) == {*EXTRAS, "ppo", "all", "dev"}
    assert _with_refs("all") >= set().union(*(_with_refs(e) for e in EXTRAS if e != "gpu"))


def test_ppo_extra_holds_trl_below_the_removal_and_train_does_not():
    ppo = [r for r in PYPROJECT["optional-dependencies"]["ppo"] if _name(r) == "trl"]
    assert ppo and "<1.13" in ppo[0]
    train = next(r for r in PYPROJECT["optional-dependencies"]["train"] if _name(r) == "trl")
    assert "<1.13" not in train


def test_lower_bounds_are_the_locked_versions_ci_tests():
    """A `>=X` bound on the ML stack is the version the locked set holds (its X.Y); torch's is the GPU machine's."""
    locked = dict(line.split("==") for line in LOCK.read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#"))
    locked = {k.lower().replace("_", "-"): v for k, v in locked.items()}
    for extra in ("train", "eval", "prefect"):
        for req in PYPROJECT["optional-dependencies"][extra]:
            m = re.search(r">=([0-9.]+)", req)
            name = _expand(req)[0]
            if m and name in {"transformers", "trl", "peft", "accelerate", "prefect", "lm-eval"}:
                have = tuple(int(x) for x in locked[name].split("+")[0].split(".")[:2])
                want = tuple(int(x) for x in m.group(1).split(".")[:2])
                assert have == want, (req, locked[name])
            if name == "torch":  # 2.11 on the GPU machine (benchmarks/RESULTS.md), the locked 2.13 in CI
                assert m.group(1) == "2.11" and locked["torch"] == "2.13.0", req


def test_missing_module_gives_the_exact_pip_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "trl", None)  # find_spec sees it as not installed
    assert extras.missing("train") == ["trl"]
    assert "train" not in extras.present()
    with pytest.raises(MissingExtra, match=re.escape("needs trl (not installed): pip install 'tuneforge[train]'")):
        require("training", "train")
    require("building", "search")  # optuna is here
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    require("comparing runs", "eval", only=("scipy",))  # only what this use needs counts
    with pytest.raises(MissingExtra, match=re.escape("comparing runs needs matplotlib (not installed): pip install "
                                                     "'tuneforge[eval]'")):
        require("comparing runs", "eval", only=("matplotlib",))


def test_cli_prints_one_line_and_exits_2(monkeypatch, tmp_path, capsys):
    from tuneforge import cli

    monkeypatch.setitem(sys.modules, "peft", None)
    monkeypatch.setattr(sys, "argv", ["tuneforge", "train", str(REPO / "configs" / "hotel-sft.yaml"),
                                      "--out", str(tmp_path / "run")])
    with pytest.raises(SystemExit) as e:
        cli.main()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == ["error: training needs peft (not installed): pip install 'tuneforge[train]'"]


def test_ppo_on_a_trl_without_ppotrainer_names_the_ppo_extra(monkeypatch):
    from tuneforge.trainers import _trl

    monkeypatch.setitem(sys.modules, "trl.experimental.ppo", None)  # TRL >= 1.13: the module is gone
    with pytest.raises(MissingExtra, match=re.escape("pip install 'tuneforge[ppo]'")):
        _trl.stage_classes("ppo")
    assert _trl.stage_classes("sft")[0].__name__ == "SFTTrainer"


def test_pipeline_needs_the_extras_of_its_steps(monkeypatch, tmp_path):
    from tuneforge.pipeline.config import load_pipeline, pipeline_extras, plan_pipeline

    assert pipeline_extras(load_pipeline(REPO / "pipelines" / "hotel.yaml")[0]) == ["train", "eval"]
    assert pipeline_extras(load_pipeline(REPO / "pipelines" / "demo-search.yaml")[0]) == ["train", "eval", "search"]
    monkeypatch.setitem(sys.modules, "lm_eval", None)
    with pytest.raises(MissingExtra, match=re.escape("pip install 'tuneforge[train,eval]'")):
        plan_pipeline(REPO / "pipelines" / "hotel.yaml", tmp_path / "run")


def test_card_counts_characters_when_the_default_tokenizer_cannot_load(monkeypatch):
    from tuneforge.publish.config import CardConfig

    assert CardConfig().usable().tokenizer == "embedded:smollm2"
    monkeypatch.setitem(sys.modules, "transformers", None)
    assert CardConfig().usable().tokenizer is None
    with pytest.raises(MissingExtra, match=re.escape("card.tokenizer 'gpt2' needs transformers")):
        CardConfig(tokenizer="gpt2").usable()


def test_env_reports_versions_extras_and_the_embedded_model(smollm2_path):
    from importlib.metadata import version

    from tuneforge.cli import app

    res = CliRunner().invoke(app, ["env", "--json"])
    assert res.exit_code == 0, res.output
    info = json.loads(res.output)
    assert info["versions"]["trl"] == version("trl") and info["versions"]["transformers"] == version("transformers")
    assert info["torch"]["version"] == version("torch") and info["torch"]["cuda_available"] in (True, False)
    assert set(info["extras_present"]) >= {"train", "eval", "prefect", "dask", "search", "embedded"}
    assert ("ppo" in info["extras_present"]) == (tuple(int(x) for x in version("trl").split(".")[:2]) <= (1, 12))
    assert info["embedded_model"]["smollm2"]["converted"] == str(smollm2_path)
    assert info["settings"]["OPENAI_API_KEY"] in ("set", "not set")  # a secret is never printed
    text = CliRunner().invoke(app, ["env"]).output
    assert f"- trl: {version('trl')}" in text and "- extras present: " in text


def test_trl_config_is_built_without_deprecated_arguments(tmp_path):
    """TRL <= 1.12 defaults `gradient_checkpointing`, which transformers 5.23 renamed: our config must not warn
    (pyproject's filterwarnings would also turn it into an error)."""
    from tuneforge.trainers import load_config
    from tuneforge.trainers.stages import trl_args

    for args in ({}, {"gradient_checkpointing": False}):
        cfg = load_config({"dataset": str(tmp_path), "stage": "sft", "args": args})
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            made = trl_args(cfg, tmp_path)
        assert not [w for w in seen if issubclass(w.category, (FutureWarning, DeprecationWarning))], \
            [str(w.message) for w in seen]
        assert made.activation_checkpointing is args.get("gradient_checkpointing", True)


# ------------------------------------------------------------------ README install matrix


def _readme_matrix() -> dict[str, list[str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Install\n", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith(("`", "(core)")):
            rows[cells[0].strip("`")] = [x.strip() for x in cells[1].split(",")]
    return rows


def test_readme_install_matrix_matches_pyproject():
    rows = _readme_matrix()
    assert set(rows) == {"(core)", *PYPROJECT["optional-dependencies"]} - {"dev"}
    assert sorted(rows["(core)"]) == sorted(_expand(r)[0] for r in PYPROJECT["dependencies"])
    for extra, brings in rows.items():
        if extra != "(core)":
            assert sorted(brings) == sorted(_extra(extra)), extra


def test_readme_names_the_tested_pythons_and_locked_versions():
    text = (REPO / "README.md").read_text(encoding="utf-8").split("## Install\n", 1)[1].split("\n## ", 1)[0]
    classifiers = [c.rsplit(" ", 1)[1] for c in PYPROJECT["classifiers"] if c.startswith("Programming Language")]
    tested = re.search(r"Tested Pythons: ([0-9., ]+) \(", text).group(1)
    assert [v.strip() for v in tested.split(",")] == classifiers
    assert f">= {classifiers[0]}" in text
    locked = dict(line.split("==") for line in LOCK.read_text(encoding="utf-8").splitlines()
                  if line and not line.startswith("#"))
    named = re.search(r"`constraints/ci-locked.txt` \(([^)]*)\)", text.replace("\n", " ")).group(1)
    for item in named.split(","):
        pkg, ver = item.split()
        assert locked[pkg] == ver, (pkg, ver)


# ------------------------------------------------------------------ the wheel in a fresh venv, no extras


def _run(*cmd, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)


def _core_closure(wheel: Path) -> set[str]:
    """The distributions the wheel's core requirements need, followed through this environment's metadata."""
    from importlib.metadata import PackageNotFoundError, distribution
    from zipfile import ZipFile

    from packaging.requirements import Requirement

    with ZipFile(wheel) as z:
        meta = z.read(next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))).decode()
    todo = [Requirement(line.split(":", 1)[1]) for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    seen: set[str] = set()
    while todo:
        req = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": ""}):
            continue
        for extra in [*req.extras, ""]:
            key = f"{req.name.lower().replace('_', '-')}[{extra}]"
            if key in seen:
                continue
            seen.add(key)
            try:
                dist = distribution(req.name)
            except PackageNotFoundError:
                continue  # an optional platform package; `pip check` below says if it was needed
            for r in map(Requirement, dist.requires or []):
                if r.marker is None or r.marker.evaluate({"extra": extra}):
                    r.marker = None  # evaluated here, for the extra it belongs to (not again for no extra)
                    todo.append(r)
    return {k.split("[")[0] for k in seen}


def _link_site(names: set[str], target: Path) -> None:
    """A site folder holding only these installed distributions (symlinks to their files and metadata)."""
    from importlib.metadata import distribution

    target.mkdir()
    for name in names:
        dist = distribution(name)
        root = Path(dist.locate_file(""))
        for top in {Path(str(f)).parts[0] for f in dist.files or []}:
            src = root / top
            if src.exists() and not top.startswith("..") and not (target / top).exists():
                (target / top).symlink_to(src)


@pytest.mark.slow
def test_wheel_without_extras_builds_a_dataset_and_names_the_train_extra(tmp_path):
    """`pip install tuneforge` (the wheel, no extras) into a fresh venv: no torch; `tuneforge build` on a shipped
    recipe that needs no model; `tuneforge train` exits 2 with the exact pip line.

    Offline by default: the venv sees only the core's dependency closure out of this (locked) environment, and
    `pip check` proves it satisfies the wheel's requirements. TUNEFORGE_TEST_PYTHON=python3.12 (another
    interpreter) installs the core from the index instead, at the locked versions."""
    t0 = time.monotonic()
    # The clone off the path: an egg-info that the wheel build leaves there would pass for an installed tuneforge.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PREFECT_API_URL")}
    env["TUNEFORGE_HOME"] = str(tmp_path / "home")
    dist = tmp_path / "dist"
    p = _run(sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", dist, REPO,
             cwd=tmp_path)
    assert p.returncode == 0, p.stderr[-3000:]
    wheel = next(dist.glob("tuneforge-*.whl"))
    venv = tmp_path / "venv"
    other = os.environ.get("TUNEFORGE_TEST_PYTHON")
    p = _run(other or sys.executable, "-m", "venv", venv)
    assert p.returncode == 0, p.stderr
    py, tf = venv / "bin" / "python", venv / "bin" / "tuneforge"
    pip = [py, "-m", "pip", "install", "-q", "--disable-pip-version-check"]
    if other:
        p = _run(*pip, "-c", LOCK, wheel, env=env, cwd=tmp_path, timeout=1800)
    else:
        closure = _core_closure(wheel)
        assert not closure & {"torch", "transformers", "trl", "peft", "prefect"}, closure
        _link_site(closure, tmp_path / "core-site")
        site = Path(_run(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])").stdout.strip())
        (site / "core.pth").write_text(str(tmp_path / "core-site") + "\n", encoding="utf-8")
        p = _run(*pip, "--no-deps", "--no-index", wheel, env=env, cwd=tmp_path)
        assert p.returncode == 0, p.stderr[-3000:]
        p = _run(py, "-m", "pip", "check", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    t_install = time.monotonic() - t0
    assert _run(py, "-c", "import torch", env=env, cwd=tmp_path).returncode != 0
    where = _run(py, "-c", "import tuneforge.common.resources as r; print(r.ASSETS)", env=env, cwd=tmp_path)
    assets = Path(where.stdout.strip())
    assert assets.is_relative_to(venv), where.stdout + where.stderr

    p = _run(tf, "build", assets / "datasets" / "self_cognition" / "recipe.yaml", "--out", tmp_path / "sc",
             env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-3000:]
    m = json.loads((tmp_path / "sc" / "manifest.json").read_text(encoding="utf-8"))
    c = m["counts"]
    assert c["input"] == c["kept"] + c["rejected"] + c["deduplicated"] and c["kept"] > 50
    assert sum(c["splits"].values()) == c["kept"]
    assert "characters per turn" in (tmp_path / "sc" / "README.md").read_text(encoding="utf-8")

    p = _run(tf, "train", assets / "configs" / "hotel-sft.yaml", "--out", tmp_path / "t", env=env, cwd=tmp_path)
    assert p.returncode == 2, p.stdout + p.stderr
    assert p.stderr.strip().splitlines() == [
        "error: training needs torch, transformers, trl, peft and 2 more (not installed): "
        "pip install 'tuneforge[train]'"]
    info = json.loads(_run(tf, "env", "--json", env=env, cwd=tmp_path).stdout)
    assert info["extras_present"] == [] and info["torch"] == {"installed": False}
    print(f"wheel + core install {t_install:.0f} s, whole test {time.monotonic() - t0:.0f} s")
