"""A loopback OpenAI-compatible chat server with controllable latency and fault injection.

Written on bare asyncio streams (no web framework) so a test controls every byte: it can answer 429 with
`Retry-After`, 500, hang past the client's timeout, drop the connection, or send truncated JSON. Replies are
deterministic from the request: a JSON instance of the schema in `response_format` (json_schema; with json_object,
of a `JSON Schema: {...}` line in the prompt if there is one, else `{"reply": ...}`), otherwise a short text. Tests may pass their own
`responder(request_body) -> str`.

Run in a thread (`FakeOpenAIServer(...).start()`) or as a process
(`python tests/fake_openai_server.py --latency 0.1 --fault-rate 0.1`, prints `PORT <n>`). `GET /_stats`
returns the counters and the log of requests; `POST /_config` changes latency and faults; `POST /_reset`
clears the counters.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import random
import re
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

FAULTS = ("429", "500", "hang", "drop", "truncated", "bad_content")
# Not among the default faults: "401" (a wrong key), "length" (the reply cut at max_tokens: half the text,
# finish_reason "length").
_SCHEMA_LINE = re.compile(r"JSON Schema:\s*(\{.*\})\s*$", re.MULTILINE)


@dataclass
class Plan:
    latency: float = 0.0
    fault_rate: float = 0.0
    faults: tuple[str, ...] = FAULTS
    retry_after: float = 0.05
    hang_s: float = 30.0
    seed: int = 0
    key_exhausted: bool = False  # a 429 also says the whole key is spent (x-ratelimit-remaining-requests: 0)
    reject_formats: tuple[str, ...] = ()  # response_format types answered with 400 (an endpoint without them)

    def update(self, d: dict) -> None:
        for k, v in d.items():
            if not hasattr(self, k):
                raise KeyError(k)
            setattr(self, k, tuple(v) if k in ("faults", "reject_formats") else v)


@dataclass
class Stats:
    chat: int = 0
    ok: int = 0
    faults: Counter = field(default_factory=Counter)
    log: list[dict] = field(default_factory=list)
    auth: set = field(default_factory=set)
    in_flight: int = 0
    max_in_flight: int = 0

    def as_dict(self) -> dict:
        return {"chat": self.chat, "ok": self.ok, "faults": dict(self.faults), "log": self.log,
                "auth": sorted(self.auth), "max_in_flight": self.max_in_flight}


def request_key(body: dict) -> str:
    """What identifies a request across runs: model, messages and sampling params."""
    keep = {k: body.get(k) for k in ("model", "messages", "temperature", "top_p", "max_tokens")}
    return hashlib.sha256(json.dumps(keep, sort_keys=True, ensure_ascii=False).encode()).hexdigest()[:16]


def instance_of(schema: dict, rng: random.Random, defs: dict | None = None) -> Any:
    """A small value valid against a JSON schema (the subset pydantic emits)."""
    defs = defs if defs is not None else schema.get("$defs", {})
    if "$ref" in schema:
        return instance_of(defs[schema["$ref"].split("/")[-1]], rng, defs)
    if "anyOf" in schema:
        return instance_of(schema["anyOf"][0], rng, defs)
    if "enum" in schema:
        return rng.choice(schema["enum"])
    t = schema.get("type", "string")
    if t == "object":
        props = schema.get("properties", {})
        return {k: instance_of(v, rng, defs) for k, v in props.items()}
    if t == "array":
        n = max(schema.get("minItems", 1), min(schema.get("maxItems", 2), 2))
        return [instance_of(schema.get("items", {}), rng, defs) for _ in range(n)]
    if t == "integer":
        return rng.randint(schema.get("minimum", 0), schema.get("maximum", 100))
    if t == "number":
        return round(rng.uniform(schema.get("minimum", 0), schema.get("maximum", 1)), 2)
    if t == "boolean":
        return rng.random() < 0.5
    return f"fake {rng.randrange(16**6):06x}"


def default_responder(body: dict) -> str:
    rng = random.Random(request_key(body))
    fmt = body.get("response_format") or {}
    schema = None
    if fmt.get("type") == "json_schema":
        schema = fmt["json_schema"]["schema"]
    elif fmt.get("type") == "json_object":
        text = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
        found = _SCHEMA_LINE.findall(text)
        schema = json.loads(found[-1]) if found else {"type": "object", "properties": {"reply": {}}}
    if schema is not None:
        return json.dumps(instance_of(schema, rng), ensure_ascii=False)
    return f"fake reply {rng.randrange(16**6):06x}"


class FakeOpenAIServer:
    """Serves `/v1/chat/completions` and `/health` on 127.0.0.1 until stopped."""

    def __init__(self, plan: Plan | None = None, responder: Callable[[dict], str] | None = None,
                 port: int = 0) -> None:
        self.plan = plan or Plan()
        self.responder = responder or default_responder
        self.stats = Stats()
        self.port = port
        self._rng = random.Random(self.plan.seed)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.Server | None = None
        self._thread: threading.Thread | None = None
        self._tasks: set[asyncio.Task] = set()

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # -- lifecycle -----------------------------------------------------------------------------------
    async def serve(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, backlog=1024)
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> FakeOpenAIServer:
        """Run in a daemon thread with its own event loop."""
        ready = threading.Event()

        def run() -> None:
            self._loop = asyncio.new_event_loop()
            self._loop.run_until_complete(self.serve())
            ready.set()
            self._loop.run_forever()

        self._thread = threading.Thread(target=run, daemon=True, name="fake-openai")
        self._thread.start()
        ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close() -> None:
            self._server.close()
            for t in list(self._tasks):
                t.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop = None

    def __enter__(self) -> FakeOpenAIServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- HTTP ----------------------------------------------------------------------------------------
    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            while True:
                line = await reader.readline()
                if not line:
                    return
                method, path, _ = line.decode("latin-1").split(" ", 2)
                headers = {}
                while (h := await reader.readline()) not in (b"\r\n", b"\n", b""):
                    k, _, v = h.decode("latin-1").partition(":")
                    headers[k.strip().lower()] = v.strip()
                body = await reader.readexactly(int(headers.get("content-length", 0)))
                if not await self._route(method, path, headers, body, writer):
                    return
        except (ConnectionError, asyncio.IncompleteReadError, ValueError, asyncio.CancelledError):
            return
        finally:
            self._tasks.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    @staticmethod
    async def _send(writer: asyncio.StreamWriter, status: int, payload: bytes | str | dict,
                    extra: dict | None = None, length: int | None = None) -> None:
        data = payload if isinstance(payload, bytes) else (
            payload if isinstance(payload, str) else json.dumps(payload, ensure_ascii=False)).encode()
        reason = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found", 429: "Too Many Requests", 500: "Internal Server Error"}
        head = [f"HTTP/1.1 {status} {reason.get(status, 'X')}", "Content-Type: application/json",
                f"Content-Length: {len(data) if length is None else length}"]
        head += [f"{k}: {v}" for k, v in (extra or {}).items()]
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + data)
        await writer.drain()

    async def _route(self, method: str, path: str, headers: dict, body: bytes,
                     writer: asyncio.StreamWriter) -> bool:
        if path == "/health":
            await self._send(writer, 200, {"status": "ok"})
        elif path == "/_stats":
            await self._send(writer, 200, self.stats.as_dict())
        elif path == "/_reset":
            self.stats = Stats()
            await self._send(writer, 200, {"ok": True})
        elif path == "/_config":
            self.plan.update(json.loads(body or b"{}"))
            await self._send(writer, 200, {"ok": True})
        elif path.endswith("/models"):
            await self._send(writer, 200, {"object": "list", "data": [{"id": "fake-model", "object": "model"}]})
        elif path.split("?")[0] == "/v1/chat/completions" and method == "POST":
            stats = self.stats
            stats.in_flight += 1
            stats.max_in_flight = max(stats.max_in_flight, stats.in_flight)
            try:
                return await self._chat(json.loads(body), headers, writer)
            finally:
                stats.in_flight -= 1
        else:
            await self._send(writer, 404, {"error": {"message": f"no route {path}"}})
        return True

    async def _chat(self, body: dict, headers: dict, writer: asyncio.StreamWriter) -> bool:
        """Answer one chat request; returns False when the connection was deliberately dropped."""
        plan = self.plan
        self.stats.chat += 1
        if "authorization" in headers:
            self.stats.auth.add(headers["authorization"])
        key = request_key(body)
        fault = plan.faults[self._rng.randrange(len(plan.faults))] if self._rng.random() < plan.fault_rate else None
        self.stats.log.append({"key": key, "fault": fault, "t": time.time()})
        if plan.latency:
            await asyncio.sleep(plan.latency)
        if fault:
            self.stats.faults[fault] += 1
        fmt = (body.get("response_format") or {}).get("type")
        if fmt and fmt in plan.reject_formats:
            self.stats.faults[f"rejected_{fmt}"] += 1
            await self._send(writer, 400, {"error": {"message": f"response_format {fmt} is not supported",
                                                     "type": "invalid_request_error", "param": "response_format"}})
            return True
        if fault == "429":
            headers_429 = {"Retry-After": f"{plan.retry_after:g}"}
            if plan.key_exhausted:
                headers_429.update({"x-ratelimit-remaining-requests": "0",
                                    "x-ratelimit-reset-requests": f"{plan.retry_after:g}s"})
            await self._send(writer, 429, {"error": {"message": "rate limited", "type": "rate_limit"}}, headers_429)
            return True
        if fault == "401":  # not among the default faults: a wrong key fails every request
            await self._send(writer, 401, {"error": {"message": "invalid api key", "type": "auth"}})
            return True
        if fault == "500":
            # A careless upstream that echoes the caller's credentials in its error body.
            await self._send(writer, 500, {"error": {"message": f"upstream failed for {headers.get('authorization')}"}})
            return True
        if fault == "hang":
            await asyncio.sleep(plan.hang_s)
            return False
        if fault == "drop":
            return False
        content = self.responder(body)
        if fault == "bad_content":
            content = content[: max(1, len(content) // 2)] + "…"
        if fault == "length":
            content = content[: max(1, len(content) // 2)]
        reply = {
            "id": f"chatcmpl-{key}", "object": "chat.completion", "created": int(time.time()),
            "model": body.get("model"),
            "choices": [{"index": 0, "finish_reason": "length" if fault == "length" else "stop",
                         "message": {"role": "assistant", "content": content}}],
            "usage": {"prompt_tokens": sum(len(str(m.get("content", ""))) for m in body.get("messages", [])) // 2,
                      "completion_tokens": max(1, len(content) // 2), "total_tokens": 0},
        }
        data = json.dumps(reply, ensure_ascii=False).encode()
        if fault == "truncated":
            await self._send(writer, 200, data[: len(data) // 2], length=len(data) // 2)
            return True
        self.stats.ok += 1
        await self._send(writer, 200, data)
        return True


def refused_url() -> str:
    """A loopback base URL where nothing listens: connecting to it is refused at once."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--port", type=int, default=0)
    ap.add_argument("--latency", type=float, default=0.0)
    ap.add_argument("--fault-rate", type=float, default=0.0)
    ap.add_argument("--faults", default=",".join(FAULTS))
    ap.add_argument("--retry-after", type=float, default=0.05)
    ap.add_argument("--hang-s", type=float, default=30.0)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    plan = Plan(latency=a.latency, fault_rate=a.fault_rate, faults=tuple(a.faults.split(",")),
                retry_after=a.retry_after, hang_s=a.hang_s, seed=a.seed)
    server = FakeOpenAIServer(plan, port=a.port)

    async def run() -> None:
        await server.serve()
        print(f"PORT {server.port}", flush=True)
        await asyncio.Event().wait()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(run())


if __name__ == "__main__":
    main()
