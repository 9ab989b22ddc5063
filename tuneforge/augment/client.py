"""The request path: cache lookup, pacing, the in-flight window, hedging, retries, and usage accounting.

Retries are ours (the openai client runs with `max_retries=0`; tenacity or backoff would do the sleeping but not
the parts that matter here: a 429's scope, hedged attempts sharing one window, the item's worker slot given
up while it sleeps, every HTTP attempt counted). The policy: a 429 makes *its own* request wait for
`Retry-After`; every worker pauses only when the endpoint says the whole key is spent
(`x-ratelimit-remaining-requests/-tokens: 0`, until `x-ratelimit-reset-*`); 5xx, timeouts, dropped connections
and malformed bodies back off exponentially with jitter; 401/403/404 stop the run (every other item would fail
the same way); other 4xx fail the item at once.

Hedging (a copy of a slow attempt) is `hedging.py`.

Requests go through `AsyncOpenAI.post` with the aiohttp transport and a plain dict body: the typed
`chat.completions.create` spends about a millisecond of CPU per call validating its arguments, which alone caps
a 2-core machine below the bound concurrency/latency.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import random
import time
from typing import Any

import aiohttp
import httpx2
import openai

from tuneforge.augment.cache import CachedResponse, ResponseCache, cache_key
from tuneforge.augment.config import LLMConfig
from tuneforge.augment.endpoint import EmbeddedServer, EndpointSpec
from tuneforge.augment.hedging import Hedger
from tuneforge.augment.limits import (
    RateLimiter,
    Window,
    backoff_delay,
    estimate_tokens,
    parse_key_exhausted,
    parse_retry_after,
)
from tuneforge.augment.request_types import (
    EndpointFailed,
    FormatRejected,
    ItemState,
    Redactor,
    Reply,
    ReplyTruncated,
    RequestFailed,
    Sampling,
    Tally,
    Usage,
    unreachable,
)
from tuneforge.common.errors import TuneforgeError

log = logging.getLogger("tuneforge.augment")
_RETRY_STATUS = {408, 409, 425, 429}
_FATAL_STATUS = {401: "authentication failed", 403: "permission denied", 404: "model or endpoint not found"}
_FORMAT_REJECT_STATUS = {400, 415, 422, 501}
# What a run used for JSON replies, in order of preference.
STRUCTURED_MODES = ("json_schema", "json_object", "prompted")
_PROBE_SCHEMA = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}


class LLM:
    """One endpoint, one cache, one in-flight window for the whole run."""

    def __init__(self, cfg: LLMConfig, spec: EndpointSpec, cache: ResponseCache) -> None:
        self.cfg = cfg
        self.spec = spec
        self.cache = cache
        self.redact = Redactor([spec.api_key])
        self.usage = Usage()
        self.limiter = RateLimiter(cfg.rpm, cfg.tpm)
        self.window = Window(cfg.concurrency)
        self.hedging = cfg.hedge if cfg.hedge is not None else not spec.embedded
        self.hedger = Hedger(cfg, self.hedging)
        # How JSON is asked for: pinned by the config, or probed on first contact (`auto`); None until known.
        self.structured: str | None = None if cfg.response_format == "auto" else (
            "prompted" if cfg.response_format == "none" else cfg.response_format)
        self.structured_probe: list[dict] = []  # what the probe saw, for the manifest
        self._probe_lock = asyncio.Lock()
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
                self._embedded = EmbeddedServer(self.spec.embedded, max_batch=self.cfg.concurrency)
                log.info("no endpoint configured: starting the embedded server with embedded:%s", self.spec.embedded)
                self.spec.base_url, self.spec.model = await self._embedded.start()
                if self.structured is None:
                    self.structured = EmbeddedServer.structured_output
                    self.structured_probe.append({"format": self.structured, "accepted": True,
                                                  "why": "the embedded server constrains decoding"})
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
            why = unreachable(e)
            if why:
                raise EndpointFailed(self._unreachable_message(why)) from None
            raise EndpointFailed(f"no model named and {self.spec.public_url}/models failed: "
                                 f"{self.redact(str(e))[:300]}; set augment.llm.model or --llm-model") from None
        if not ids:
            raise EndpointFailed(f"{self.spec.public_url} lists no models; set augment.llm.model or --llm-model")
        self.spec.model = self.spec.label = ids[0]
        log.info("using model %s, the first listed by %s", ids[0], self.spec.public_url)

    def _unreachable_message(self, why: str) -> str:
        return (f"cannot reach the endpoint {self.spec.public_url}: {why}; is the server running there? "
                "(augment.llm.base_url or --llm-base-url)")

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

    async def structured_mode(self) -> str:
        """How JSON replies are asked for; with `auto`, decided once by probing the endpoint on first contact:
        json_schema if it accepts one, else json_object, else the instruction in the prompt (`prompted`)."""
        if self.structured is not None:
            return self.structured
        async with self._probe_lock:
            if self.structured is not None:
                return self.structured
            client = await self._connect()
            if self.structured is not None:  # the embedded server said what it supports
                return self.structured
            mode = "prompted"
            for fmt in ("json_schema", "json_object"):
                body = {"model": self.spec.model, "max_tokens": 16, "temperature": 0,
                        "messages": [{"role": "user", "content": 'Reply with the JSON object {"ok": true}.'}],
                        "response_format": {"type": "json_object"} if fmt == "json_object" else
                        {"type": "json_schema", "json_schema": {"name": "probe", "schema": _PROBE_SCHEMA}}}
                try:
                    await self._send(client, body, Tally(), ItemState(), probe=True)
                except (FormatRejected, RequestFailed) as e:
                    self.structured_probe.append({"format": fmt, "accepted": False, "why": str(e)[:200]})
                    continue
                self.structured_probe.append({"format": fmt, "accepted": True})
                mode = fmt
                break
            log.info("structured output on %s: %s", self.spec.public_url, mode)
            self.structured = mode
            return mode

    def downgrade(self, rejected: str, why: str) -> None:
        """An endpoint that passed the probe but rejects a real request's format: use the next mode."""
        if self.structured == rejected:
            nxt = STRUCTURED_MODES[STRUCTURED_MODES.index(rejected) + 1]
            log.warning("%s rejected response_format %s (%s); using %s", self.spec.public_url, rejected, why, nxt)
            self.structured_probe.append({"format": rejected, "accepted": False, "why": why[:200]})
            self.structured = nxt

    async def complete(self, messages: list[dict], sampling: Sampling, *, template_version: str, tally: Tally,
                       item: ItemState, json_schema: tuple[str, dict] | None = None, sample: int = 0) -> Reply:
        asked = sampling.response_format if json_schema else "none"
        params = {"temperature": sampling.temperature, "top_p": sampling.top_p, "max_tokens": sampling.max_tokens,
                  "response_format": asked, "sample": sample}
        key = cache_key(sampling.label, messages, params, template_version)
        hit = self.cache.get(key)
        if hit is not None:
            tally.cached += 1
            self.usage.cached += 1
            self._check_complete(hit, sampling)
            return Reply(hit.content, key, True)
        tally.requested += 1
        client = await self._connect()
        body: dict[str, Any] = {"model": sampling.model or self.spec.model, "messages": messages,
                                "temperature": sampling.temperature, "max_tokens": sampling.max_tokens}
        if sampling.top_p is not None:
            body["top_p"] = sampling.top_p
        if sampling.temperature > 0:
            # OpenAI's `seed`, from the cache key: a request is sampled the same way on every run (where the
            # endpoint honours it; ours does), and the samples of one prompt still differ.
            body["seed"] = int(key[:8], 16) % 2**31
        while True:
            fmt = asked
            if asked == "auto":
                fmt = await self.structured_mode()
            if fmt == "json_object":
                body["response_format"] = {"type": "json_object"}
            elif fmt == "json_schema" and json_schema:
                body["response_format"] = {"type": "json_schema",
                                           "json_schema": {"name": json_schema[0], "schema": json_schema[1]}}
            else:
                body.pop("response_format", None)
            try:
                resp = await self._send(client, body, tally, item, format_errors=asked == "auto")
                break
            except FormatRejected as e:
                self.downgrade(fmt, str(e))
        self.cache.put(key, sampling.label, resp)
        self._check_complete(resp, sampling)
        return Reply(resp.content, key, False)

    def _check_complete(self, resp: CachedResponse, sampling: Sampling) -> None:
        """A reply cut by `max_tokens` fails its item (cached all the same: the same request is cut again),
        unless the config says truncation is harmless (`keep_truncated`)."""
        if resp.finish_reason == "length" and not self.cfg.keep_truncated:
            raise ReplyTruncated(f"reply cut at max_tokens {sampling.max_tokens} (finish_reason length); raise "
                                 "augment.llm.max_tokens, or set keep_truncated: true where a cut reply is fine")

    async def _post(self, client: openai.AsyncOpenAI, body: dict, tally: Tally, item: ItemState,
                    sent: list[float], deadline: float | None = None, copy: bool = False,
                    on_sent: asyncio.Future | None = None) -> dict:
        """One HTTP attempt inside the in-flight window (a hedge `copy` takes the next free slot before queued
        requests); counted once it holds a slot (it is then sent)."""
        async with self.window.slot(first=copy):
            await self.limiter.wait_pause()
            tally.attempts += 1
            item.attempts += 1
            self.usage.requests += 1
            t0 = time.monotonic()
            sent.append(t0)
            if on_sent is not None and not on_sent.done():
                on_sent.set_result(None)
            try:
                async with asyncio.timeout(deadline or self.cfg.timeout_s + 5):  # no extra task, unlike wait_for
                    raw = await client.post("/chat/completions", cast_to=httpx2.Response, body=body)
                    data = json.loads(await raw.aread())
            except openai.APIStatusError as e:
                scope = parse_key_exhausted(e.response.headers) if e.status_code == 429 else None
                if scope is not None:  # the whole key is spent: every worker waits until it resets (set
                    self.limiter.pause(scope)  # before this slot is free, so no other request slips out)
                raise
            self.hedger.latency.observe(time.monotonic() - t0)
            return data

    async def _send(self, client: openai.AsyncOpenAI, body: dict, tally: Tally, item: ItemState, *,
                    format_errors: bool = False, probe: bool = False) -> CachedResponse:
        estimate = estimate_tokens(body["messages"], body["max_tokens"])
        last = "no attempt made"
        for attempt in range(1, self.cfg.max_attempts + 1):
            await self.limiter.acquire(estimate)
            delay: float | None = None
            try:
                post = functools.partial(self._post, client, body, tally, item)
                data = await self.hedger.attempt(post, tally, self.usage, attempt)
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
                tally.prompt_tokens += pt
                tally.completion_tokens += ct
                return CachedResponse(content, pt, ct, choice.get("finish_reason"))
            except openai.APIStatusError as e:
                status = e.status_code
                last = f"HTTP {status}: {self.redact(str(e))[:300]}"
                if status in _FATAL_STATUS and not probe:
                    raise EndpointFailed(f"{self.spec.public_url}: {_FATAL_STATUS[status]} ({last}); check the "
                                         f"model name and ${self.cfg.api_key_env}") from None
                if status in _FORMAT_REJECT_STATUS and "response_format" in body and (format_errors or probe):
                    raise FormatRejected(last) from None
                if status == 429:  # this request waits for Retry-After; a spent key paused everyone in _post
                    delay = parse_retry_after(e.response.headers)
                elif status < 500 and status not in _RETRY_STATUS:
                    raise RequestFailed(last) from None
            except (openai.APITimeoutError, TimeoutError) as e:
                why = unreachable(e)
                if why and self.usage.completions == 0:  # never reached: every request would fail the same way
                    raise EndpointFailed(self._unreachable_message(why)) from None
                last = f"{why} at {self.spec.public_url}" if why else f"timeout after {self.hedger.deadline(attempt):.3g}s"
            except openai.APIConnectionError as e:
                why = unreachable(e)
                if why and self.usage.completions == 0:
                    raise EndpointFailed(self._unreachable_message(why)) from None
                last = f"connection error: {self.redact(str(e.__cause__ or e))[:300]}"
            except (ValueError, KeyError, IndexError, TypeError) as e:
                last = f"malformed response: {self.redact(str(e))[:300]}"
            except (OSError, aiohttp.ClientError) as e:
                why = unreachable(e)
                if why and self.usage.completions == 0:
                    raise EndpointFailed(self._unreachable_message(why)) from None
                last = f"connection error: {self.redact(str(e))[:300]}"
            if attempt == self.cfg.max_attempts:
                break
            tally.retries += 1
            if delay is None:
                delay = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s, self._rng)
            log.debug("attempt %d failed (%s); retrying in %.2fs", attempt, last, delay)
            await item.sleep(delay)
        raise RequestFailed(f"{last} (after {self.cfg.max_attempts} attempts)")
