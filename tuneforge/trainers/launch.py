"""Train in a subprocess under `accelerate launch`, for multi-GPU (DDP, FSDP, DeepSpeed) from a pipeline."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_text


def launch(config: dict[str, Any] | str | Path, out: str | Path, accelerate_config: str | Path, merge: bool = False,
           *, base_dir: str | Path | None = None, strict: bool = False) -> dict:
    """Write the resolved config (absolute paths: relative ones resolve against `base_dir`, or the YAML's
    folder) beside the run, run `accelerate launch -m tuneforge.trainers` on it, and return the run's
    summary.json (written by the main process)."""
    from tuneforge.trainers.config import check_paths, load_config

    resolved = load_config(config, base_dir=base_dir)
    check_paths(resolved)
    out = Path(out)
    cfg_file = out.parent / f"{out.name}.config.yaml"
    write_text(cfg_file, yaml.safe_dump(resolved.model_dump(mode="json"), allow_unicode=True, sort_keys=False))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
           "-m", "tuneforge.trainers", str(cfg_file), "--out", str(out)] + (["--merge"] if merge else []) + (["--strict"] if strict else [])
    proc = subprocess.run(cmd)
    summary = out / "summary.json"
    if proc.returncode != 0 or not summary.is_file():
        raise TuneforgeError(f"accelerate launch failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(summary.read_text(encoding="utf-8"))
