"""Client-side pacing: the in-flight window, requests- and tokens-per-minute buckets, a shared pause when a 429
says the key is spent, and backoff.

The buckets are ours rather than aiolimiter's: the TPM bucket takes an estimate before a request and is
corrected by the real usage after it (`settle`), which a plain leaky bucket cannot express."""

from __future__ import annotations

import asyncio
import email.utils
import random
import re
import time
from collections import deque
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager


class Window:
    """At most `size` requests in flight, handed out in arrival order, except that a hedge copy goes first.

    asyncio.Semaphore has one queue: a copy sent for an attempt that hangs while the window is full would wait
    behind every queued item, and by the time it is sent the hung attempt has reached its deadline anyway. Here
    the copy takes the next slot that frees, so a hang costs about the hedge point plus one request instead of
    the whole deadline, and the window never holds more than `size` requests."""

    def __init__(self, size: int) -> None:
        self.free = size
        self._queues: tuple[deque[asyncio.Future], deque[asyncio.Future]] = (deque(), deque())  # copies, others

    def locked(self) -> bool:
        return self.free == 0 or any(self._queues)

    @asynccontextmanager
    async def slot(self, first: bool = False) -> AsyncIterator[None]:
        await self._acquire(first)
        try:
            yield
        finally:
            self._release()

    async def _acquire(self, first: bool) -> None:
        if self.free > 0 and not any(self._queues):
            self.free -= 1
            return
        fut = asyncio.get_running_loop().create_future()
        queue = self._queues[0 if first else 1]
        queue.append(fut)
        try:
            await fut
        except asyncio.CancelledError:
            if fut.done() and not fut.cancelled():
                self._release()  # the slot was handed over just as the waiter was cancelled: pass it on
            else:
                queue.remove(fut)
            raise

    def _release(self) -> None:
        for queue in self._queues:
            while queue:
                fut = queue.popleft()
                if not fut.done():
                    fut.set_result(None)  # the slot passes straight to the waiter: `free` stays as it is
                    return
        self.free += 1


class _Bucket:
    """A token bucket refilled at `per_minute / 60` a second, holding at most one second's worth."""

    def __init__(self, per_minute: float) -> None:
        self.rate = per_minute / 60.0
        self.capacity = max(1.0, self.rate)
        self.level = self.capacity
        self.stamp = time.monotonic()

    def wait_for(self, amount: float, now: float) -> float:
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        amount = min(amount, self.capacity)
        return 0.0 if self.level >= amount else (amount - self.level) / self.rate

    def take(self, amount: float) -> None:
        self.level -= min(amount, self.capacity)


class RateLimiter:
    """Paces request starts; `pause(s)` holds every worker back (a 429 that says the whole key is spent)."""

    def __init__(self, rpm: float | None = None, tpm: float | None = None) -> None:
        self._rpm = _Bucket(rpm) if rpm else None
        self._tpm = _Bucket(tpm) if tpm else None
        self._paused_until = 0.0
        self._lock = asyncio.Lock()

    def pause(self, seconds: float) -> None:
        self._paused_until = max(self._paused_until, time.monotonic() + seconds)

    async def acquire(self, tokens: float = 0.0) -> None:
        async with self._lock:  # one waiter at a time keeps the order fair
            while True:
                now = time.monotonic()
                wait = self._paused_until - now
                if self._rpm:
                    wait = max(wait, self._rpm.wait_for(1.0, now))
                if self._tpm:
                    wait = max(wait, self._tpm.wait_for(tokens, now))
                if wait <= 0:
                    break
                await asyncio.sleep(wait)
            if self._rpm:
                self._rpm.take(1.0)
            if self._tpm:
                self._tpm.take(tokens)

    async def wait_pause(self) -> None:
        """Sleep out a pause that began after `acquire` returned (a 429 seen by another worker)."""
        while (left := self._paused_until - time.monotonic()) > 0:
            await asyncio.sleep(left)

    def settle(self, estimated: float, actual: float) -> None:
        """Correct the token bucket once the real usage is known."""
        if self._tpm:
            self._tpm.level = min(self._tpm.capacity, self._tpm.level + estimated - actual)


def backoff_delay(attempt: int, base: float, cap: float, rng: random.Random | None = None) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random."""
    step = min(cap, base * (2 ** max(0, attempt - 1)))
    return step / 2 + (rng or random).uniform(0, step / 2)


def parse_retry_after(headers: object) -> float | None:
    """Seconds from `retry-after-ms`, or `Retry-After` as seconds or an HTTP date; None if absent."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    ms = get("retry-after-ms")
    if ms:
        try:
            return max(0.0, float(ms) / 1000)
        except ValueError:
            pass
    value = get("retry-after")
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError):
            return None
        return max(0.0, when.timestamp() - time.time())


def estimate_tokens(messages: list[dict], max_tokens: int) -> float:
    """A cheap upper-ish estimate for the TPM bucket: CJK is about a token a character, Latin about four."""
    chars = sum(len(str(m.get("content", ""))) for m in messages)
    return chars / 2 + max_tokens


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNIT = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(value: str) -> float | None:
    """`1s`, `6m0s`, `20ms`, `0.5` (seconds): the forms of OpenAI's `x-ratelimit-reset-*` headers."""
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    parts = _DURATION.findall(value)
    if not parts or "".join(n + u for n, u in parts) != value:
        return None
    return sum(float(n) * _UNIT[u] for n, u in parts)


def parse_key_exhausted(headers: object) -> float | None:
    """Seconds until the key's own budget resets, when a 429 says the whole key is spent
    (`x-ratelimit-remaining-requests: 0` or `-tokens: 0`); None when the 429 is about this request alone."""
    get = getattr(headers, "get", None)
    if get is None:
        return None
    waits = []
    for kind in ("requests", "tokens"):
        if str(get(f"x-ratelimit-remaining-{kind}", "")).strip() == "0":
            reset = parse_duration(str(get(f"x-ratelimit-reset-{kind}", "") or ""))
            waits.append(reset if reset is not None else parse_retry_after(headers) or 1.0)
    return max(waits) if waits else None
