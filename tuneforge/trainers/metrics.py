"""Per-step metrics as JSONL, a progress bar with loss and tokens/s, and the loss plot."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from transformers import TrainerCallback
from transformers.trainer_callback import ProgressCallback


def _tokens_seen(state: Any, logs: dict | None = None) -> int | None:
    n = getattr(state, "num_input_tokens_seen", None) or (logs or {}).get("num_tokens")
    return int(n) if n else None


class MetricsLog(TrainerCallback):
    """Append every log event to `metrics.jsonl`, with throughput; on resume, drop rows past the checkpoint."""

    def __init__(self, path: Path, resume_step: int | None = None):
        self.path = Path(path)
        self._t = None
        self._tokens = None
        if resume_step is not None and self.path.is_file():
            rows = [json.loads(line) for line in self.path.read_text(encoding="utf-8").splitlines() if line.strip()]
            keep = [r for r in rows if r.get("step", 0) <= resume_step]
            self.path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in keep), encoding="utf-8")
        elif resume_step is None and self.path.exists():
            self.path.unlink()

    def on_train_begin(self, args, state, control, **kwargs):
        self._t, self._tokens = time.perf_counter(), _tokens_seen(state)

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or not logs:
            return
        now = time.perf_counter()
        row: dict[str, Any] = {"step": state.global_step, "epoch": state.epoch, "time": time.time()}
        tokens = _tokens_seen(state, logs)
        if tokens is not None:
            row["tokens_seen"] = tokens
            if self._t is not None and self._tokens is not None and now > self._t and tokens > self._tokens:
                row["tokens_per_second"] = (tokens - self._tokens) / (now - self._t)
        self._t, self._tokens = now, tokens
        for k, v in logs.items():
            if isinstance(v, (int, float)) and not (isinstance(v, float) and not math.isfinite(v)):
                row[k] = v
            elif isinstance(v, float):
                row[k] = str(v)  # nan/inf kept visible, as JSON strings
        with self.path.open("a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


class LossProgress(ProgressCallback):
    """transformers' tqdm bar, with the latest loss and tokens/s as its postfix instead of printed dicts."""

    def __init__(self):
        super().__init__()
        self._t = None
        self._tokens = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero or self.training_bar is None or not logs or "train_loss" in logs:
            return
        post = {}
        loss = logs.get("loss", logs.get("objective/rlhf_reward"))
        if loss is not None:
            post["loss"] = f"{loss:.4g}"
        tokens, now = _tokens_seen(state, logs), time.perf_counter()
        if tokens is not None and self._tokens is not None and now > self._t and tokens > self._tokens:
            post["tok/s"] = f"{(tokens - self._tokens) / (now - self._t):.0f}"
        self._t, self._tokens = now, tokens
        if post:
            self.training_bar.set_postfix(post, refresh=False)


def read_metrics(path: Path) -> list[dict]:
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


LOSS_KEYS = ("loss", "eval_loss", "loss/policy_avg", "objective/rlhf_reward")


def plot_loss(rows: list[dict], out: Path) -> Path | None:
    """loss.png: every loss-like series against the step."""
    series = {k: [(r["step"], r[k]) for r in rows if isinstance(r.get(k), (int, float))] for k in LOSS_KEYS}
    series = {k: v for k, v in series.items() if v}
    if not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for k, pts in series.items():
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".", label=k)
    ax.set_xlabel("step")
    ax.set_ylabel("value")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
