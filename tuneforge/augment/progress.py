"""The live progress line, one bar per step: done/failed/cached counts, requests per second, and the projected
remaining time and cost (what the finished items took, scaled to the ones left)."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


def projection(processed: int, total: int, elapsed: float, cost: float) -> tuple[float | None, float | None]:
    """(seconds left, cost left) from the rate so far; None before the first item finishes."""
    if processed <= 0:
        return None, None
    left = max(0, total - processed)
    return elapsed / processed * left, cost / processed * left


def _clock(seconds: float) -> str:
    s = round(seconds)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


class StepProgress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Progress | None = None
        self._task = None
        self._t0 = time.monotonic()
        self._total = 0

    def __enter__(self) -> StepProgress:
        if self.enabled:
            self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("{task.fields[stats]}"), TimeElapsedColumn(),
                               console=Console(stderr=True), transient=False)
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def begin(self, name: str, total: int) -> None:
        self._t0 = time.monotonic()
        self._total = total
        if self._p is not None:
            self._task = self._p.add_task(name, total=total, stats="")

    def stats(self, done: int, failed: int, cached: int, requests: int, cost: float = 0.0, truncated: int = 0) -> str:
        """`truncated`: of the failed, replies cut at max_tokens."""
        elapsed = max(1e-6, time.monotonic() - self._t0)
        eta, cost_left = projection(done + failed, self._total, elapsed, cost)
        cut = f" (truncated {truncated})" if truncated else ""
        text = f"done {done}  failed {failed}{cut}  cached {cached}  {requests / elapsed:.1f} req/s  ${cost:.4f}"
        if eta is not None:
            text += f"  left ~{_clock(eta)} ~${cost_left:.4f}"
        return text

    def update(self, done: int, failed: int, cached: int, requests: int, cost: float = 0.0,
               truncated: int = 0) -> None:
        if self._p is None:
            return
        self._p.update(self._task, completed=done + failed,
                       stats=self.stats(done, failed, cached, requests, cost, truncated))
