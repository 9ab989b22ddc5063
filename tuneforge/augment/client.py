"""The request path: cache lookup, pacing, the in-flight window, retries, and usage accounting.

Retries are ours (the openai client runs with `max_retries=0`) so the policy is the one tested: 429 waits for
`Retry-After` and pauses every worker; 5xx, timeouts, dropped connections and malformed bodies back off
exponentially with jitter; 401/403/404 stop the run (every other item would fail the same way); other 4xx
fail the item at once. Requests go through `AsyncOpenAI.post` with the aiohttp transport and a plain dict
body: the typed `chat.completions.create` spends about a millisecond of CPU per call validating its
arguments, which alone caps a 2-core machine below the bound concurrency/latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import re
from dataclasses import dataclass
from typing import Any

import aiohttp
import httpx2
import openai

from tuneforge.augment.cache import CachedResponse, ResponseCache, cache_key
from tuneforge.augment.config import LLMConfig
from tuneforge.augment.endpoint import EmbeddedServer, EndpointSpec
from tuneforge.augment.limits import RateLimiter, backoff_delay, estimate_tokens, parse_retry_after
from tuneforge.common.errors import TuneforgeError

log = logging.getLogger("tuneforge.augment")
_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401: "authentication failed", 403: "permission denied", 404: "model or endpoint not found"}


class RequestFailed(Exception):
    """A request that failed for good (attempts exhausted, or an error retrying cannot fix)."""


class EndpointFailed(TuneforgeError):
    """The endpoint refuses every request (bad key, unknown model): stop instead of failing each item."""


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
    """Per-step request counters."""

    requested: int = 0  # logical requests that missed the cache
    cached: int = 0  # logical requests answered from the cache
    attempts: int = 0  # HTTP attempts
    retries: int = 0


@dataclass
class ItemState:
    """What one item has cost so far, for its failure row."""

    attempts: int = 0


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


class LLM:
    """One endpoint, one cache, one in-flight window for the whole run."""

    def __init__(self, cfg: LLMConfig, spec: EndpointSpec, cache: ResponseCache) -> None:
        self.cfg = cfg
        self.spec = spec
        self.cache = cache
        self.redact = Redactor([spec.api_key])
        self.usage = Usage()
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.window = asyncio.Semaphore(cfg.concurrency)
        self._client: openai.AsyncOpenAI | None = None
        self._embedded: EmbeddedServer | None = None
        self._start_lock = asyncio.Lock()
        self._rng = random.Random()

    # -- endpoint lifecycle -------------------------------------------------------------------------
    async def _connect(self) -> openai.AsyncOpenAI:
        async with self._start_lock:
            if self._client is not None:
                return self._client
            if self.spec.embedded:
                self._embedded = EmbeddedServer(self.spec.embedded)
                log.info("no endpoint configured: starting transformers serve with embedded:%s", self.spec.embedded)
                self.spec.base_url, self.spec.model = await self._embedded.start()
            self._client = openai.AsyncOpenAI(
                base_url=self.spec.base_url, api_key=self.spec.api_key, max_retries=0,
                timeout=self.cfg.timeout_s, http_client=openai.DefaultAioHttpClient(timeout=self.cfg.timeout_s))
            return self._client

    async def resolve_model(self) -> None:
        """With an endpoint but no model name, take the first model the endpoint lists."""
        if self.spec.label is not None:
            return
        client = await self._connect()
        try:
            page = await client.models.list()
            ids = [m.id for m in page.data]
        except openai.OpenAIError as e:
            raise EndpointFailed(f"no model named and {self.spec.public_url}/models failed: "
                                 f"{self.redact(str(e))[:300]}; set augment.llm.model or --llm-model") from None
        if not ids:
            raise EndpointFailed(f"{self.spec.public_url} lists no models; set augment.llm.model or --llm-model")
        self.spec.model = self.spec.label = ids[0]
        log.info("using model %s, the first listed by %s", ids[0], self.spec.public_url)

    async def aclose(self) -> None:
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.close()
            self._client = None
        if self._embedded is not None:
            await asyncio.to_thread(self._embedded.stop)
            self._embedded = None

    # -- one request --------------------------------------------------------------------------------
    def sampling(self, override: Any = None) -> Sampling:
        c = self.cfg
        o = override
        model = o.model if o and o.model else None
        if model and self.spec.embedded and model != self.spec.label:
            raise TuneforgeError(f"a step asks for model {model!r}, but no endpoint is configured (only the "
                                 f"embedded {self.spec.label} is available); set augment.llm.base_url")
        return Sampling(
            model=model, label=model or self.spec.label,
            temperature=o.temperature if o and o.temperature is not None else c.temperature,
            top_p=o.top_p if o and o.top_p is not None else c.top_p,
            max_tokens=o.max_tokens if o and o.max_tokens else c.max_tokens,
            response_format=o.response_format if o and o.response_format else c.response_format)

    async def complete(self, messages: list[dict], sampling: Sampling, *, template_version: str, tally: Tally,
                       item: ItemState, json_schema: tuple[str, dict] | None = None, sample: int = 0) -> Reply:
        fmt = sampling.response_format if json_schema else "none"
        params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                  "response_format": fmt, "sample": sample}
        key = cache_key(sampling.label, messages, params, template_version)
        hit = self.cache.get(key)
        if hit is not None:
            tally.cached += 1
            self.usage.cached += 1
            return Reply(hit.content, key, True)
        tally.requested += 1
        client = await self._connect()
        body: dict[str, Any] = {"model": sampling.model or self.spec.model, "messages": messages,
                                "temperature": sampling.temperature, "max_tokens": sampling.max_tokens}
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if fmt == "json_object":
            body["response_format"] = {"type": "json_object"}
        elif fmt == "json_schema" and json_schema:
            body["response_format"] = {"type": "json_schema",
                                       "json_schema": {"name": json_schema[0], "schema": json_schema[1]}}
        if sample and sampling.temperature > 0:
            body["seed"] = sample  # a hint only; the cache key already tells samples apart
        resp = await self._send(client, body, tally, item)
        self.cache.put(key, sampling.label, resp)
        return Reply(resp.content, key, False)

    async def _send(self, client: openai.AsyncOpenAI, body: dict, tally: Tally, item: ItemState) -> CachedResponse:
        estimate = estimate_tokens(body["messages"], body["max_tokens"])
        last = "no attempt made"
        for attempt in range(1, self.cfg.max_attempts + 1):
            await self.limiter.acquire(estimate)
            tally.attempts += 1
            item.attempts += 1
            self.usage.requests += 1
            delay: float | None = None
            try:
                async with self.window:
                    await self.limiter.wait_pause()
                    raw = await asyncio.wait_for(
                        client.post("/chat/completions", cast_to=httpx2.Response, body=body),
                        self.cfg.timeout_s + 5)
                    data = json.loads(await raw.aread())
                choice = data["choices"][0]
                content = choice["message"].get("content")
                if not isinstance(content, str):
                    raise ValueError("the reply has no message content")
                usage = data.get("usage") or {}
                pt, ct = int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0)
                self.limiter.settle(estimate, pt + ct)
                self.usage.completions += 1
                self.usage.prompt_tokens += pt
                self.usage.completion_tokens += ct
                return CachedResponse(content, pt, ct, choice.get("finish_reason"))
            except openai.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status}: {self.redact(str(e))[:300]}"
                if status in _FATAL_STATUS:
                    raise EndpointFailed(f"{self.spec.public_url}: {_FATAL_STATUS[status]} ({last}); check the "
                                         f"model name and ${self.cfg.api_key_env}") from None
                if status == 429:
                    delay = parse_retry_after(e.response.headers)
                    if delay is not None:
                        self.limiter.pause(delay)
                elif status < 500 and status not in _RETRY_STATUS:
                    raise RequestFailed(last) from None
            except (openai.APITimeoutError, TimeoutError):
                last = f"timeout after {self.cfg.timeout_s:g}s"
            except openai.APIConnectionError as e:
                last = f"connection error: {self.redact(str(e.__cause__ or e))[:300]}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                last = f"malformed response: {self.redact(str(e))[:300]}"
            except (OSError, aiohttp.ClientError) as e:
                last = f"connection error: {self.redact(str(e))[:300]}"
            if attempt == self.cfg.max_attempts:
                break
            tally.retries += 1
            if delay is None:
                delay = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self._rng)
            log.debug("attempt %d failed (%s); retrying in %.2fs", attempt, last, delay)
            await asyncio.sleep(delay)
        raise RequestFailed(f"{last} (after {self.cfg.max_attempts} attempts)")
