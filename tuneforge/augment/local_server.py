"""The embedded endpoint: an OpenAI-compatible `/v1/chat/completions` on 127.0.0.1 for a local transformers model,
with `response_format` (`json_schema`, `json_object`) honoured by grammar-constrained decoding.

Why our own server: `transformers serve` rejects `response_format`, and a 135M model on a CPU writes valid JSON
for a given schema only a fraction of the time when merely asked. Here every decoding step is masked by
llguidance (Microsoft's Rust grammar engine behind Guidance; an abi3 wheel with no torch pin, so it installs
with the project's CPU torch) to the tokens that keep the reply a prefix of a valid instance of the schema.
It stays an HTTP server (FastAPI on uvicorn, both already installed with Prefect) so the engine talks to it
exactly as to any other endpoint, and any other client can use it too.

A schema says nothing about length, so a small model can ramble inside a string until `max_tokens` cuts the
JSON off. Near the end of a request's budget the server looks ahead on a copy of the grammar state: how many
tokens the shortest way to a complete reply takes (end the string, close the brackets, write the required keys
left). Once the budget left is within `margin` tokens of that, the mask narrows further, wherever the grammar
allows, to tokens that start with a quote (ending a string) and else to tokens that start with `}` or `]`: the
reply ends as valid JSON within `max_tokens` whenever the schema's shortest instance fits in it.

Requests that arrive together are decoded as one batch (left-padded, one grammar matcher per row, rows
finishing independently), which is what makes several workers faster than one on a CPU. This module is the HTTP
side and the batching thread; the grammars are `local_grammar.py`, the model and its masked decoding
`local_engine.py`.

    python -m tuneforge.augment.local_server MODEL_DIR --port 8000 [--max-batch 8] [--device auto]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import os
import threading
import time
import uuid
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handler's annotations against these globals

from tuneforge.augment.local_engine import Engine, Job
from tuneforge.augment.local_grammar import BadRequest, grammar_for

log = logging.getLogger("tuneforge.augment.local_server")
CPU_MAX_BATCH = 8


class Batcher:
    """Collects jobs from the event loop and runs them in batches on one generation thread."""

    def __init__(self, engine: Engine, max_batch: int = 8) -> None:
        self.engine = engine
        self.max_batch = max_batch
        self._jobs: list[Job] = []
        self._cv = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="tuneforge-generate", daemon=True)
        self._thread.start()

    def submit(self, job: Job) -> None:
        with self._cv:
            self._jobs.append(job)
            self._cv.notify()

    def _take(self) -> list[Job]:
        with self._cv:
            while not self._jobs:
                self._cv.wait()
            self._cv.wait(0.005)  # a few milliseconds for the other workers' requests to arrive
            live = [j for j in self._jobs if not j.future.cancelled()]
            if not live:
                self._jobs.clear()
                return []
            key = (live[0].temperature, live[0].top_p)
            batch = [j for j in live if (j.temperature, j.top_p) == key][: self.max_batch]
            taken = {id(j) for j in batch}
            self._jobs = [j for j in live if id(j) not in taken]
            return batch

    def _loop(self) -> None:
        while True:
            batch = self._take()
            if not batch:
                continue
            try:
                results = self.engine.generate(batch)
            except Exception as e:  # answered as an error to every job of the batch, the server goes on
                log.exception("generation failed")
                for j in batch:
                    j.loop.call_soon_threadsafe(_set, j.future, e)
                continue
            for j, r in zip(batch, results, strict=True):
                j.loop.call_soon_threadsafe(_set, j.future, r)


def _set(fut: asyncio.Future, value: Any) -> None:
    if fut.done():
        return
    if isinstance(value, BaseException):
        fut.set_exception(value)
    else:
        fut.set_result(value)


def create_app(engine: Engine, model_name: str, max_batch: int = 8, default_presence: float = 0.0) -> Any:
    """`default_presence`: the presence penalty of a request that sets none (OpenAI's default is 0; a 135M model
    copies its question into its answer less with some)."""
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse

    app = FastAPI(title="tuneforge embedded endpoint", docs_url=None, redoc_url=None, openapi_url=None)
    batcher = Batcher(engine, max_batch)

    def error(status: int, message: str, kind: str = "invalid_request_error") -> JSONResponse:
        return JSONResponse({"error": {"message": message, "type": kind, "param": None, "code": None}},
                            status_code=status)

    @app.get("/health")
    async def health() -> dict:
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models() -> dict:
        return {"object": "list", "data": [{"id": model_name, "object": "model", "owned_by": "tuneforge"}]}

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Any:
        try:
            body = json.loads(await request.body())
            messages = body["messages"]
            if not isinstance(messages, list) or not messages:
                raise BadRequest("messages must be a non-empty list")
            if body.get("stream"):
                raise BadRequest("stream is not supported")
            if int(body.get("n") or 1) != 1:
                raise BadRequest("n must be 1")
            grammar = grammar_for(body.get("response_format"))
            loop = asyncio.get_running_loop()
            top_p = body.get("top_p")
            job = Job(messages=[{"role": m["role"], "content": str(m.get("content") or "")} for m in messages],
                      max_tokens=max(1, min(int(body.get("max_tokens") or body.get("max_completion_tokens") or 512),
                                            4096)),
                      temperature=float(body.get("temperature", 1.0) or 0.0),
                      top_p=float(top_p) if top_p is not None else 1.0, grammar=grammar,
                      seed=body.get("seed"), future=loop.create_future(), loop=loop,
                      presence_penalty=float(body.get("presence_penalty", default_presence) or 0.0),
                      frequency_penalty=float(body.get("frequency_penalty") or 0.0))
            job.prompt_ids = engine.prompt_ids(job.messages)
        except (BadRequest, KeyError, TypeError, ValueError) as e:
            return error(400, f"{type(e).__name__}: {e}")
        batcher.submit(job)
        try:
            text, completion_tokens, finish = await job.future
        except BadRequest as e:
            return error(400, str(e))
        except Exception as e:
            return error(500, f"generation failed: {e}", "server_error")
        prompt_tokens = len(job.prompt_ids)
        return {"id": f"chatcmpl-{uuid.uuid4().hex[:24]}", "object": "chat.completion", "created": int(time.time()),
                "model": body.get("model") or model_name,
                "choices": [{"index": 0, "finish_reason": finish,
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                          "total_tokens": prompt_tokens + completion_tokens}}

    return app


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description="OpenAI-compatible chat endpoint with grammar-constrained JSON")
    ap.add_argument("model", help="a transformers model folder")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--name", default=None, help="the model id /v1/models lists (default: the folder)")
    ap.add_argument("--max-batch", type=int, default=8)
    ap.add_argument("--presence-penalty", type=float, default=0.0,
                    help="presence penalty for requests that set none (OpenAI's semantics, word tokens only)")
    ap.add_argument("--device", default=os.environ.get("TUNEFORGE_EMBEDDED_DEVICE", "auto"),
                    help="where the model runs: auto (CUDA when there is one), cpu, cuda, cuda:1 ...")
    ap.add_argument("--log-level", default="warning")
    a = ap.parse_args(argv)
    import torch
    import uvicorn

    with contextlib.suppress(ValueError):
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "0")) or torch.get_num_threads())
    engine = Engine(a.model, device=a.device)
    # On a CPU a batch wider than 8 rows stopped paying (the grammar masks are per row); a GPU takes them all.
    max_batch = a.max_batch if engine.device.type == "cuda" else min(a.max_batch, CPU_MAX_BATCH)
    app = create_app(engine, a.name or a.model, max_batch, a.presence_penalty)
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, access_log=False)


if __name__ == "__main__":
    main()
