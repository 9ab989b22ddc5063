"""The embedded server's engine: the model, its tokenizer and the grammar matchers; one batch of requests
decoded together (left-padded, one matcher per row, rows finishing independently), every step masked to the
grammar and narrowed near the end of the budget so the JSON closes in time. Apart from `local_server.py` (the
HTTP side and the batching thread), which only hands it jobs."""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from tuneforge.augment.local_grammar import BadRequest
from tuneforge.common.decoding import whole_chars
from tuneforge.common.models import cache_keyword

log = logging.getLogger("tuneforge.augment.local_server")


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
        cache_arg = cache_keyword(self.model)
        with torch.inference_mode():
            for _ in range(steps):
                res = self.model(input_ids=step_ids, attention_mask=attn, position_ids=step_pos,
                                 use_cache=True, **{cache_arg: past})
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
