"""tuneforge as an installed package: a wheel, installed into a fresh venv outside the clone, runs the demo
from another folder (shipped data is package data, not files beside the clone)."""

from __future__ import annotations

import ast
import importlib.metadata
import json
import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_the_version_is_read_from_the_package_metadata(tmp_path):
    """One version: pyproject.toml's, as the installed metadata says it; the package root and the manifest
    show that one."""
    import yaml

    import tuneforge
    from tuneforge.common.version import __version__

    assert tuneforge.__version__ == __version__ == importlib.metadata.version("tuneforge")
    (tmp_path / "d.jsonl").write_text('{"instruction": "你好", "output": "你好！"}\n', encoding="utf-8")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"name": "v", "card": {"tokenizer": None}, "sources": [
        {"name": "d", "path": "d.jsonl", "format": "alpaca"}]}), encoding="utf-8")
    manifest = tuneforge.build(tmp_path / "r.yaml", tmp_path / "out", runner="serial")
    assert manifest["tuneforge_version"] == __version__


def test_no_module_imports_the_package_root():
    """`tuneforge` re-exports the API, which reaches every stage: a module importing the root (the manifest did,
    for the version) would depend on every stage above it."""
    for f in sorted((REPO / "tuneforge").rglob("*.py")):
        if f == REPO / "tuneforge" / "__init__.py":
            continue
        for node in ast.walk(ast.parse(f.read_text(encoding="utf-8"))):
            root = (isinstance(node, ast.ImportFrom) and node.level == 0 and node.module == "tuneforge") or (
                isinstance(node, ast.Import) and any(a.name == "tuneforge" for a in node.names))
            assert not root, f"{f.relative_to(REPO)}:{node.lineno} imports the package root"


def _sh(*cmd: str | Path, cwd: Path, env: dict[str, str] | None = None, timeout: int = 900,
        log: bool = False) -> str:
    p = subprocess.run([str(c) for c in cmd], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{cmd}: {p.stdout[-2000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr if log else p.stdout


@pytest.mark.slow
def test_wheel_installed_outside_the_clone_runs_the_demo(tmp_path):
    dist = tmp_path / "dist"
    _sh(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", REPO, "-w", dist,
        cwd=tmp_path)
    wheel = next(dist.glob("tuneforge-*.whl"))
    venv = tmp_path / "venv"
    _sh(sys.executable, "-m", "venv", venv, cwd=tmp_path)
    py = venv / "bin" / "python"
    # The dependencies are the test environment's (no network for a second torch); the path line adds its
    # site-packages without running its .pth files, so the clone's editable install is not on the path.
    site = Path(_sh(py, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])", cwd=tmp_path).strip())
    (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n", encoding="utf-8")
    _sh(py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", wheel, cwd=tmp_path)

    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PREFECT_API_URL", "VIRTUAL_ENV")}
    where = _sh(py, "-c", "import tuneforge; print(tuneforge.__file__)", cwd=elsewhere, env=env).strip()
    assert Path(where).is_relative_to(venv), where
    out = _sh(venv / "bin" / "tuneforge", "demo", "--quick", "--out", "run", cwd=elsewhere, env=env, log=True)
    assert "forgetting verdict:" in out and "steps: 5 ran, 0 reused" in out
    # A clean log: no bytecode or pickling dumps, no repeated CPU pin_memory warnings.
    assert "LOAD_FAST" not in out and "RESUME" not in out and "pin_memory" not in out, out[-3000:]
    assert "FutureWarning" not in out and "DeprecationWarning" not in out, out[-3000:]  # issue 35
    results = json.loads((elsewhere / "run" / "results.json").read_text(encoding="utf-8"))
    assert results["build"]["counts"]["kept"] > 0 and results["train"][0]["steps"] == 2
    assert (elsewhere / "run" / "report.html").is_file()
    # `new-domain` from the installed package: the pipeline names configs the new domain holds itself.
    _sh(venv / "bin" / "tuneforge", "new-domain", "legal", cwd=elsewhere, env=env)
    pipe = (elsewhere / "pipelines" / "legal.yaml").read_text(encoding="utf-8")
    assert "../datasets/legal/train-sft.yaml" in pipe and (elsewhere / "datasets/legal/train-sft.yaml").is_file()
