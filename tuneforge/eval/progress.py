"""Progress of the long evaluation steps (suites, held-out generation, perplexity, judge): a rich bar on the
terminal with counts and rate, and the same counts as one-line messages to a callback.

The callback is the `progress=` argument of `run_eval`/`run_forgetting`, or, when none is passed, the one an
orchestrator set with `reporting()` (the Prefect flow sends them to its task-run logger), so a pipeline step
reports progress without threading a callback through every call.
"""

from __future__ import annotations

import contextlib
import sys
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

Message = Callable[[str], None]
_SINK: ContextVar[Message | None] = ContextVar("tuneforge_eval_progress", default=None)
# a message to the callback at most this often (and at the end): a log line, not a flood
EVERY_S = 10.0


@contextlib.contextmanager
def reporting(callback: Message) -> Iterator[None]:
    """Within this block, evaluations with no `progress=` of their own report to `callback`."""
    token = _SINK.set(callback)
    try:
        yield
    finally:
        _SINK.reset(token)


def sink(progress: Message | None) -> Message | None:
    """The explicit callback, else the one `reporting()` set."""
    return progress if progress is not None else _SINK.get()


class Counter:
    """`advance(n)` as work gets done; shows `desc  done/total unit  rate/s  elapsed` and reports it."""

    def __init__(self, desc: str, total: int, unit: str, progress: Message | None, bar: bool = True) -> None:
        self.desc, self.total, self.unit, self.done = desc, total, unit, 0
        self._cb = sink(progress)
        self._t0 = self._last = time.monotonic()
        self._p: Any = None
        if bar and total and sys.stderr.isatty():
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

            self._p = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                               TextColumn(f"{unit}  {{task.fields[rate]}}"), TimeElapsedColumn(),
                               console=Console(stderr=True), transient=False)
            self._task = self._p.add_task(desc, total=total, rate="")
            self._p.start()

    def rate(self) -> float:
        return self.done / max(1e-6, time.monotonic() - self._t0)

    def line(self) -> str:
        return (f"{self.desc}: {self.done}/{self.total} {self.unit} ({self.rate():.2f}/s, "
                f"{time.monotonic() - self._t0:.0f} s)")

    def advance(self, n: int = 1) -> None:
        self.done += n
        if self._p is not None:
            self._p.update(self._task, advance=n, rate=f"{self.rate():.2f}/s")
        now = time.monotonic()
        if self._cb is not None and self.done < self.total and now - self._last >= EVERY_S:
            self._last = now
            self._cb(self.line())

    def close(self) -> None:
        if self._p is not None:
            self._p.stop()
            self._p = None
        if self._cb is not None:
            self._cb(self.line())

    def __enter__(self) -> Counter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def message(progress: Message | None, text: str) -> None:
    """A one-off line (which model, which step) to the callback in effect."""
    cb = sink(progress)
    if cb is not None:
        cb(text)
