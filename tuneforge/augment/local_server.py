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
finishing independently), which is what makes several workers faster than one on a CPU.

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
from dataclasses import dataclass, field
from typing import Any

from fastapi import Request  # module level: FastAPI resolves the handler's annotations against these globals

from tuneforge.common.decoding import whole_chars

log = logging.getLogger("tuneforge.augment.local_server")
# JSON escapes a reply may use: no \u (a small model spells garbage control characters with it), no \b \f \r.
_ESCAPES = 'nt"\\'


CPU_MAX_BATCH = 8


class BadRequest(ValueError):
    """A request the server cannot serve (answered 400, like OpenAI's `invalid_request_error`)."""


@dataclass
class Job:
    messages: list[dict]
    max_tokens: int
    temperature: float
    top_p: float
    grammar: str | None
    seed: int | None
    future: asyncio.Future
    loop: asyncio.AbstractEventLoop
    prompt_ids: list[int] = field(default_factory=list)
    presence_penalty: float = 0.0  # OpenAI's: subtracted from the logit of every word token already in the reply
    frequency_penalty: float = 0.0  # ... times the number of times it occurs


def grammar_for(response_format: dict | None) -> str | None:
    """The llguidance grammar for an OpenAI `response_format`; None for plain text."""
    from llguidance import LLMatcher

    if not response_format or response_format.get("type") in (None, "text"):
        return None
    kind = response_format.get("type")
    # Compact JSON: a small model otherwise fills its budget with spaces.
    opts = {"whitespace_flexible": False, "json_allowed_escapes": _ESCAPES}
    if kind == "json_object":
        return LLMatcher.grammar_from_json_schema({"type": "object"}, defaults=opts)
    if kind == "json_schema":
        spec = response_format.get("json_schema") or {}
        schema = spec.get("schema")
        if not isinstance(schema, dict):
            raise BadRequest("response_format.json_schema.schema must be a JSON object")
        grammar = LLMatcher.grammar_from_json_schema(closed(schema), defaults={**opts, "lenient": True})
        err = LLMatcher.validate_grammar(grammar)
        if err and not err.startswith("WARNING"):
            raise BadRequest(f"response_format.json_schema: {err}")
        return grammar
    raise BadRequest(f"response_format.type {kind!r} is not supported (json_schema, json_object, text)")


def closed(schema: Any) -> Any:
    """The schema with `additionalProperties: false` on every object that lists properties and says nothing about
    others: keys the schema does not name are ignored by a validator anyway, and a small model otherwise spends
    its budget inventing them."""
    if isinstance(schema, list):
        return [closed(x) for x in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: closed(v) if k in ("properties", "$defs", "definitions", "items", "anyOf", "oneOf", "allOf",
                                  "prefixItems") or isinstance(v, dict | list) else v for k, v in schema.items()}
    if "properties" in out and isinstance(out["properties"], dict):
        out["properties"] = {k: closed(v) for k, v in schema["properties"].items()}
        out.setdefault("additionalProperties", False)
    return out


def byte_mismatches(tok: Any, ll_tok: Any) -> list[tuple[int, bytes, str]]:
    """Tokens whose bytes in llguidance differ from what the tokenizer decodes them to (special tokens and
    pieces of a UTF-8 character left out). Non-empty when the two disagree on the byte-level mapping (a
    tokenizer converted by another transformers version had 32,574 here): masks would then be computed on
    text the reply never contains, and a raw newline could reach a JSON string."""
    special = set(tok.all_special_ids)
    bad = []
    for i in range(len(tok)):
        if i in special:
            continue
        text = tok.decode([i])
        if "\ufffd" in text:
            continue
        seen = ll_tok.decode_bytes([i])
        if seen != text.encode("utf-8"):
            bad.append((i, seen, text))
    return bad


class Engine:
    """The model, its tokenizer and the grammar machinery; `generate` runs one batch (in a worker thread)."""

    def __init__(self, path: str, margin: int = 12, lookahead: int = 64, device: str = "auto") -> None:
        import llguidance
        import llguidance.hf
        import torch
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.torch = torch
        self.llg = llguidance
        self.tok = AutoTokenizer.from_pretrained(path)
        if self.tok.pad_token_id is None:
            self.tok.pad_token = self.tok.eos_token
        self.tok.padding_side = "left"
        # The forward pass runs on `device` (auto: CUDA when there is one); masks and sampling stay on the CPU,
        # where llguidance writes its bitmask: a row of logits a step is all that crosses.
        self.device = torch.device("cuda" if device == "auto" and torch.cuda.is_available() else
                                   "cpu" if device == "auto" else device)
        self.model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(self.device)
        self.model.eval()
        self.vocab = self.model.get_output_embeddings().weight.shape[0]
        self.eos = self.tok.eos_token_id
        self.ll_tok = llguidance.hf.from_tokenizer(self.tok, n_vocab=self.vocab)
        bad = byte_mismatches(self.tok, self.ll_tok)
        if bad:
            i, seen, text = bad[0]
            raise RuntimeError(
                f"{path}: the grammar engine reads {len(bad)} tokens as other bytes than the tokenizer decodes them "
                f"(token {i}: {seen!r} vs {text.encode()!r}), so constrained replies would not be the JSON it "
                f"checked; this tokenizer came from another transformers version than the pinned one: delete the "
                f"folder to convert it again")
        self.margin = margin  # tokens kept in hand beyond the shortest completion (one token may open an item)
        self.lookahead = lookahead  # how close to the end of the budget the look-ahead starts
        # Near the budget's end the mask narrows, where the grammar allows, to tokens made only of closing
        # characters: first those that start with a quote (inside a string: end it), else `}`/`]` runs. (A token
        # like `"},{"` also starts with a quote, but opens the next item: it is not among them.)
        quote = torch.zeros(self.vocab, dtype=torch.bool)
        close = torch.zeros(self.vocab, dtype=torch.bool)
        pieces = self.tok.convert_ids_to_tokens(list(range(min(self.vocab, len(self.tok)))))
        for tid, piece in enumerate(pieces):  # byte-level pieces: ASCII punctuation stands for itself
            if piece and set(piece) <= set('"}]:'):  # `":"` ends a key and opens its string value
                quote[tid] = piece[0] == '"'
                close[tid] = piece[0] in "}]"
        close[self.eos] = True
        self.piece_len = torch.tensor([len(p or "") for p in pieces] + [0] * (self.vocab - len(pieces)))
        self.wrap_sets = (quote, close)
        # Penalties apply to word tokens only: JSON's punctuation repeats by design.
        self.penalised = torch.tensor([bool(p) and any(ch.isalnum() for ch in p) for p in pieces]
                                      + [False] * (self.vocab - len(pieces)), dtype=torch.bool)
        self._grammars: dict[str, Any] = {}

    def prompt_ids(self, messages: list[dict]) -> list[int]:
        ids = self.tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):
            ids = ids["input_ids"]
        return list(ids)

    def _narrow(self, allowed: Any) -> Any:
        for prefer in self.wrap_sets:
            narrowed = allowed & prefer
            if bool(narrowed.any()):
                return narrowed
        return allowed

    def shortest_completion(self, matcher: Any, cap: int) -> int:
        """Tokens to a complete reply from this grammar state, taking the closing path; `cap` if longer."""
        from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

        m = matcher.deep_copy()
        mask = allocate_token_bitmask(1, self.vocab)
        for k in range(cap):
            if m.is_accepting():
                return k
            fill_next_token_bitmask(m, mask, 0)
            allowed = self._narrow(_unpack(self.torch, mask[0], self.vocab))
            allowed[self.eos] = False
            if not bool(allowed.any()):
                return cap
            tok = int(torch_where_max(self.torch, allowed, self.piece_len))  # the longest: fewest tokens
            if not m.consume_token(tok):
                return cap
        return cap

    def generate(self, jobs: list[Job]) -> list[tuple[str, int, str]]:
        """(text, completion tokens, finish_reason) per job. Rows share temperature/top_p (the batcher groups)."""
        torch = self.torch
        from llguidance import LLMatcher
        from llguidance.torch import allocate_token_bitmask, fill_next_token_bitmask

        n = len(jobs)
        width = max(len(j.prompt_ids) for j in jobs)
        pad = self.tok.pad_token_id
        ids = torch.full((n, width), pad, dtype=torch.long)
        attn = torch.zeros((n, width), dtype=torch.long)
        for r, j in enumerate(jobs):
            ids[r, width - len(j.prompt_ids):] = torch.tensor(j.prompt_ids)
            attn[r, width - len(j.prompt_ids):] = 1
        matchers = [LLMatcher(self.ll_tok, j.grammar, log_level=0) if j.grammar else None for j in jobs]
        for m in matchers:
            if m is not None and m.is_error():
                raise BadRequest(f"grammar: {m.get_error()}")
        bitmask = allocate_token_bitmask(n, self.vocab)
        out: list[list[int]] = [[] for _ in jobs]
        done = [False] * n
        check_at = [10**9] * n  # budget left at which to look ahead again
        finish = ["length"] * n
        # One random stream a request, seeded by its `seed`: what a request samples does not depend on which
        # other requests share its batch, so a request with a seed gets the same reply whenever it is sent.
        gens = [torch.Generator().manual_seed(int(j.seed) % 2**63 if j.seed is not None else time.time_ns() % 2**31)
                for j in jobs]
        past = None
        ids, attn = ids.to(self.device), attn.to(self.device)
        positions = (attn.cumsum(-1) - 1).clamp(min=0)
        step_ids, step_pos = ids, positions
        steps = max(j.max_tokens for j in jobs)
        with torch.inference_mode():
            for _ in range(steps):
                res = self.model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos,
                                 past_key_values=past, use_cache=True)
                past = res.past_key_values
                logits = res.logits[:, -1, :].float().cpu()
                for r, j in enumerate(jobs):
                    if (j.presence_penalty or j.frequency_penalty) and out[r] and not done[r]:
                        counts = torch.bincount(torch.tensor(out[r]), minlength=self.vocab)[: self.vocab].float()
                        counts *= self.penalised
                        logits[r] -= j.presence_penalty * (counts > 0) + j.frequency_penalty * counts
                for r, j in enumerate(jobs):
                    if done[r]:
                        continue
                    m = matchers[r]
                    if m is None:
                        continue
                    fill_next_token_bitmask(m, bitmask, r)
                    allowed = _unpack(torch, bitmask[r], self.vocab)
                    left = j.max_tokens - len(out[r])
                    if left <= self.lookahead and not m.is_accepting() and left <= check_at[r]:
                        slack = left - self.shortest_completion(m, left) - self.margin
                        if slack <= 0:
                            allowed = self._narrow(allowed)
                        else:  # the shortest completion grows by a token or two a step: look again later
                            check_at[r] = left - max(1, slack // 3)
                    logits[r].masked_fill_(~allowed, float("-inf"))
                nxt = torch.tensor([pad if done[r] else _sample(torch, logits[r], j.temperature, j.top_p, gens[r])
                                    for r, j in enumerate(jobs)])
                for r, j in enumerate(jobs):
                    if done[r]:
                        continue
                    tok = int(nxt[r])
                    m = matchers[r]
                    if m is not None and not m.consume_token(tok):
                        log.warning("grammar rejected a masked token: %s", m.get_error())
                    if tok != self.eos:
                        out[r].append(tok)
                    if tok == self.eos or (m is not None and m.is_stopped()):
                        done[r], finish[r] = True, "stop"
                    elif len(out[r]) >= j.max_tokens:
                        done[r] = True
                        if m is not None and m.is_accepting():
                            finish[r] = "stop"  # complete, with no room left for the end-of-sequence token
                if all(done):
                    break
                step_ids = nxt.view(n, 1).to(self.device)
                attn = torch.cat([attn, torch.ones((n, 1), dtype=attn.dtype, device=self.device)], dim=1)
                step_pos = step_pos[:, -1:] + 1
        # a reply cut at max_tokens may stop inside a character: no U+FFFD at its end
        return [(whole_chars(self.tok.decode(o, skip_special_tokens=True)), len(o), finish[r])
                for r, o in enumerate(out)]


def torch_where_max(torch: Any, allowed: Any, score: Any) -> Any:
    """The index of the highest `score` among `allowed`."""
    return torch.where(allowed, score, torch.full_like(score, -1)).argmax()


def _unpack(torch: Any, words: Any, vocab: int) -> Any:
    """An int32 bitmask row (32 tokens a word, little-endian bits) as a bool vector of `vocab`."""
    bits = torch.arange(32, dtype=torch.int32)
    return ((words.unsqueeze(-1) >> bits) & 1).bool().view(-1)[:vocab]


def _sample(torch: Any, logits: Any, temperature: float, top_p: float, gen: Any) -> int:
    """One token from one row's logits: greedy at temperature 0, else nucleus sampling from `gen`."""
    if temperature <= 0:
        return int(logits.argmax())
    probs = torch.softmax(logits / temperature, dim=-1)
    if top_p < 1.0:
        sorted_p, idx = probs.sort(descending=True)
        keep = sorted_p.cumsum(-1) - sorted_p < top_p
        probs = torch.zeros_like(probs).scatter(-1, idx, sorted_p * keep)
    return int(torch.multinomial(probs, 1, generator=gen))


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
