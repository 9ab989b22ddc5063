"""What the request path hands around, without its transport: what a request is sent with (`Sampling`), what
it and its item cost (`Tally`, `ItemState`, `Usage`), its reply, how it fails, and the `Redactor` that keeps keys out of text. Apart from `client.py` so the operators, the runner and
the judge use these small types without loading the client (aiohttp, openai)."""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from tuneforge.common.errors import TuneforgeError


class RequestFailed(Exception):
    """A request that failed for good (attempts exhausted, or an error retrying cannot fix)."""


class ReplyTruncated(RequestFailed):
    """The reply stopped at `max_tokens` (`finish_reason: length`): cut mid-answer, so not a usable output."""


def unreachable(error: BaseException) -> str | None:
    """'connection refused' or 'host not found' when that is what an error comes down to (the aiohttp
    transport reports a refused connection as `APITimeoutError`, "Request timed out"); else None."""
    import socket

    seen: set[int] = set()
    e: BaseException | None = error
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, ConnectionRefusedError):
            return "connection refused"
        if isinstance(e, socket.gaierror):
            return "host not found"
        e = e.__cause__ or e.__context__
    return None


class EndpointFailed(TuneforgeError):
    """The endpoint refuses every request (bad key, unknown model): stop instead of failing each item."""


class FormatRejected(Exception):
    """The endpoint answered 4xx to a request that carried `response_format`."""


class Redactor:
    """Removes the API key (and any bearer token) from text before it reaches logs, rows or the manifest."""

    _BEARER = re.compile(r"(?i)(bearer\s+)[^\s'\",}]+")

    def __init__(self, secrets: list[str]) -> None:
        self.secrets = [s for s in secrets if s and len(s) >= 4 and s != "EMPTY"]

    def __call__(self, text: str) -> str:
        for s in self.secrets:
            text = text.replace(s, "***")
        return self._BEARER.sub(r"\1***", text)


@dataclass
class Sampling:
    """What a request is sent with; `label` (not the served path) goes into cache keys and meta."""

    model: str | None
    label: str
    temperature: float
    top_p: float | None
    max_tokens: int
    response_format: str


@dataclass
class Tally:
    """Per-step request counters and what the step's fresh replies cost in tokens."""

    requested: int = 0  # logical requests that missed the cache
    cached: int = 0  # logical requests answered from the cache
    attempts: int = 0  # HTTP attempts (hedges included)
    retries: int = 0
    hedges: int = 0  # second copies sent for a slow attempt
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class ItemState:
    """What one item has cost so far, for its failure row; `slot` is its worker slot, given up while it sleeps."""

    attempts: int = 0
    slot: asyncio.Semaphore | None = None
    _sleeping: int = 0

    async def sleep(self, seconds: float) -> None:
        """Back off without holding a worker slot: a retry never stalls the items queued behind it."""
        first = self._sleeping == 0
        self._sleeping += 1
        if first and self.slot is not None:
            self.slot.release()
        try:
            await asyncio.sleep(seconds)
        finally:
            self._sleeping -= 1
            if self._sleeping == 0 and self.slot is not None:
                await self.slot.acquire()


@dataclass
class Reply:
    content: str
    key: str
    cached: bool


@dataclass
class Usage:
    requests: int = 0
    completions: int = 0
    cached: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    hedges: int = 0
