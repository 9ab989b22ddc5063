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


def launch(config: dict[str, Any], out: str | Path, accelerate_config: str | Path, merge: bool = False) -> dict:
    """Write the resolved config beside the run, run `accelerate launch -m tuneforge.trainers` on it, and
    return the run's summary.json (written by the main process)."""
    out = Path(out)
    cfg_file = out.parent / f"{out.name}.config.yaml"
    write_text(cfg_file, yaml.safe_dump(config, allow_unicode=True, sort_keys=False))
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(accelerate_config),
           "-m", "tuneforge.trainers", str(cfg_file), "--out", str(out)] + (["--merge"] if merge else [])
    proc = subprocess.run(cmd)
    summary = out / "summary.json"
    if proc.returncode != 0 or not summary.is_file():
        raise TuneforgeError(f"accelerate launch failed (exit {proc.returncode}): {' '.join(cmd)}")
    return json.loads(summary.read_text(encoding="utf-8"))
