"""The live progress line: done/failed/cached counts and requests per second, one bar per step."""

from __future__ import annotations

import time

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class StepProgress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._p: Progress | None = None
        self._task = None
        self._t0 = time.monotonic()

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
        if self._p is not None:
            self._task = self._p.add_task(name, total=total, stats="")

    def update(self, done: int, failed: int, cached: int, requests: int) -> None:
        if self._p is None:
            return
        rate = requests / max(1e-6, time.monotonic() - self._t0)
        self._p.update(self._task, completed=done + failed,
                       stats=f"done {done}  failed {failed}  cached {cached}  {rate:.1f} req/s")
