"""tuneforge's version, read once from the installed distribution's metadata (pyproject.toml's `version` is
its only source). It lives in `common/` so the stages that record it (the manifest) and the package root both
import it from below, never from the package root."""

from __future__ import annotations

import tomllib
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path


def _read() -> str:
    try:
        return version("tuneforge")
    except PackageNotFoundError:  # a source tree on sys.path, never installed: its own pyproject.toml says
        pyproject = Path(__file__).resolve().parents[2] / "pyproject.toml"
        if pyproject.is_file():
            return tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["version"]
        return "0+unknown"


__version__ = _read()
