"""tuneforge as an installed package: one version, and no module importing the package root. The wheel
installed into a fresh venv outside the clone runs the demo from another folder in
tests/test_pipeline.py::test_demo_pipeline_quick_cache_and_gate (the demo's one run carries both tests'
assertions)."""

from __future__ import annotations

import ast
import importlib.metadata
from pathlib import Path

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
