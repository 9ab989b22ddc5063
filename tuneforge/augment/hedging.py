"""Hedged requests (Dean and Barroso, "The Tail at Scale"): once 20 requests have finished, an attempt still
running past the hedge point (the p95 of the recent ones, at least 1.5x their median) gets a copy, which takes
the window's next free slot ahead of queued requests, and a second copy if the first is quiet as long; the
first answer wins and the others are cancelled, so a hung connection costs about a hedge point, not the
deadline. Hedges are at most a tenth of the requests, at most concurrency/16 out at once, and off for the
embedded server (one CPU-bound process: a copy would only compete with the original).

Apart from `client.py`, which sends an attempt and retries a failed one: this decides how long an attempt may
take and when it gets a copy, from the latencies it has seen.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Awaitable
from typing import Protocol

from tuneforge.augment.config import LLMConfig
from tuneforge.augment.request_types import Tally, Usage

MAX_COPIES = 2  # hedge copies of one attempt


class Post(Protocol):
    """One HTTP attempt of the request (`sent` gets the time it was sent; a `copy` jumps the window's queue)."""

    def __call__(self, sent: list[float], *, copy: bool = False,
                 on_sent: asyncio.Future | None = None) -> Awaitable[dict]: ...


class Latency:
    """Durations of recent successful attempts. The hedge point is their p95, and at least 1.5 times their median:
    with steady latency the p95 is only jitter above the median, and hedging there would send 5% more requests
    for nothing."""

    def __init__(self, keep: int = 256, min_samples: int = 20) -> None:
        self._d: deque[float] = deque(maxlen=keep)
        self.min_samples = min_samples
        self._p95: float | None = None
        self._dirty = 0

    def observe(self, seconds: float) -> None:
        self._d.append(seconds)
        self._dirty += 1

    def hedge_after(self) -> float | None:
        if len(self._d) < self.min_samples:
            return None
        if self._p95 is None or self._dirty >= 16:  # re-sorted every 16 samples: cheap at thousands a second
            xs = sorted(self._d)
            self._p95 = max(xs[min(len(xs) - 1, int(0.95 * len(xs)))], 1.5 * xs[len(xs) // 2])
            self._dirty = 0
        return self._p95


class Hedger:
    """The run's hedging: recent latencies, the copies out now, and each attempt's deadline."""

    def __init__(self, cfg: LLMConfig, enabled: bool) -> None:
        self.cfg = cfg
        self.enabled = enabled
        self.latency = Latency()
        self.copies = 0  # hedge copies out now (waiting for a slot or sent)
        self.max_copies = max(1, cfg.concurrency // 16)

    async def _copy(self, post: Post) -> dict:
        """A hedge copy. At most `max_copies` are out at once: a stall of this process (a long GC pause, a busy
        machine) makes every attempt in flight late at the same moment, and copying them all would only add
        load; the faults hedging is for (a request that hangs) come a few at a time."""
        self.copies += 1
        try:
            return await post([], copy=True)
        finally:
            self.copies -= 1

    def deadline(self, attempt: int) -> float:
        """An attempt's deadline: `timeout_s`, or, once latency is known, 4x the hedge point, doubling with each
        retry of the same request (a long generation is cut once, not every time) and never for the last one."""
        hp = self.latency.hedge_after() if self.enabled else None
        if hp is None or attempt >= self.cfg.max_attempts:
            return self.cfg.timeout_s
        return min(self.cfg.timeout_s, 4 * hp * 2 ** (attempt - 1))

    async def attempt(self, post: Post, tally: Tally, usage: Usage, attempt: int = 1) -> dict:
        """One attempt under its deadline (re-read as latency samples arrive), hedged: past the hedge point a
        second copy races it, taking the window's next free slot ahead of queued requests; the first answer
        wins and the loser is cancelled. A copy that fails ends the attempt (the silent primary is dropped)."""
        sent: list[float] = []  # when the primary got its slot and was sent
        if not self.enabled:
            return await post(sent)
        # Every attempt can be hedged, also one sent into a full window: a hung attempt would otherwise hold its
        # slot until the deadline (4x the hedge point), which at 10% faults cost a tenth of the window's capacity.
        on_sent = asyncio.get_running_loop().create_future()  # wakes the watch below when the primary is sent
        primary = asyncio.ensure_future(post(sent, on_sent=on_sent))
        pending: set[asyncio.Future] = {primary}
        copies: list[asyncio.Future] = []
        last_sent = 0.0  # when the newest copy was made
        error: BaseException | None = None
        try:
            while pending:
                wait = 0.5  # re-read the deadline at least this often: the first samples arrive meanwhile
                after = self.latency.hedge_after()
                if sent:
                    elapsed = time.monotonic() - sent[0]
                    deadline = self.deadline(attempt)
                    if elapsed >= deadline:
                        raise TimeoutError(f"past the deadline {deadline:.3g}s")
                    wait = min(wait, deadline - elapsed)
                    if after is not None and len(copies) < MAX_COPIES:
                        # The first copy once the primary is past the hedge point, a second once that copy is
                        # too: both hanging (one item in a thousand at 10% faults) would otherwise hold the
                        # item until the primary's deadline.
                        quiet = elapsed if not copies else time.monotonic() - last_sent
                        if quiet >= after and usage.hedges <= 0.1 * usage.requests and \
                                self.copies < self.max_copies:
                            tally.hedges += 1
                            usage.hedges += 1
                            copies.append(asyncio.ensure_future(self._copy(post)))
                            pending.add(copies[-1])
                            last_sent = time.monotonic()
                            wait = min(wait, after)
                        elif quiet < after:
                            wait = min(wait, after - quiet)
                # Until the primary holds a slot the clock has not started: wait for it to be sent, not 0.5 s.
                watch = pending if sent or on_sent.done() else pending | {on_sent}
                done, _ = await asyncio.wait(watch, timeout=max(0.005, wait), return_when=asyncio.FIRST_COMPLETED)
                done.discard(on_sent)
                pending -= done
                for t in done:
                    if t.exception() is None:
                        return t.result()
                    error = error or t.exception()
                if primary in pending and any(c in done for c in copies):
                    # The copy failed (a 429, a 500, a dropped connection) while the primary, already past the
                    # hedge point, is still silent: retry now rather than wait for the primary's deadline.
                    raise error  # type: ignore[misc]
            raise error  # type: ignore[misc]
        finally:
            for t in pending:
                t.cancel()
            if pending:
                await asyncio.gather(*pending, return_exceptions=True)
