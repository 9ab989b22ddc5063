"""One progress bar per build stage, in shards and records with records/s, on the terminal (stderr)."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn


class BuildProgress:
    def __init__(self, enabled: bool) -> None:
        self._p = None
        if enabled:
            self._p = Progress(TextColumn("[bold]{task.description:<8}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn("shards  {task.fields[records]:>10,} records  {task.fields[rate]}"),
                               TimeElapsedColumn(), console=Console(stderr=True), transient=False)
        self._tasks: dict[str, Any] = {}
        self._t0: dict[str, float] = {}
        self._records: dict[str, int] = {}

    def __enter__(self) -> BuildProgress:
        if self._p is not None:
            self._p.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._p is not None:
            self._p.stop()

    def stage(self, name: str, total: int) -> None:
        self._t0[name] = time.monotonic()
        self._records[name] = 0
        if self._p is not None:
            self._tasks[name] = self._p.add_task(name, total=total, records=0, rate="")

    def advance(self, name: str, records: int = 0) -> None:
        self._records[name] += records
        if self._p is not None:
            dt = max(1e-6, time.monotonic() - self._t0[name])
            self._p.update(self._tasks[name], advance=1, records=self._records[name],
                           rate=f"{self._records[name] / dt:,.0f}/s")

    def seconds(self, name: str) -> float:
        return time.monotonic() - self._t0.get(name, time.monotonic())
