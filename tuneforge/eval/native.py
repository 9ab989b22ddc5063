"""The native multiple-choice engine: one forward pass per question, reading four next-token logits.

Speed comes from three things: the tokens every prompt of a subject shares (header and few-shot examples)
are run once and reused through the KV cache; each question then runs only its own tokens; and questions are
batched by length so padding stays small. Prompts are tokenized whole, exactly as lm-eval does, and the
shared prefix is the longest common token prefix, so caching never changes what the model sees.

In half precision on CUDA the questions attend to the cached prefix through `prefix_attention`: one fused
SDPA call over [prefix K/V + the question's K/V] with a lower-right causal mask, which FlashAttention runs as
is (transformers' cache path instead copies the cache per batch and builds an explicit 4-D mask), and the
questions whose answer half precision could get wrong (`needs_rescore`) are scored again in float32.
"""

from __future__ import annotations

import contextlib
import copy
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.mcq import OPTION_LETTERS, MCQItem
from tuneforge.common.models import cache_keyword
from tuneforge.eval.precision import RescoreRule
from tuneforge.eval.prefix_attention import _PREFIX_KV, PREFIX_ATTENTION, _register_prefix_attention
from tuneforge.eval.prompts import chat_messages, completion_prompt, letter_token_ids
from tuneforge.eval.suites import Suite


def _common_prefix_len(seqs: list[list[int]]) -> int:
    first = seqs[0]
    n = min(len(s) for s in seqs)
    for s in seqs[1:]:
        i = 0
        while i < n and s[i] == first[i]:
            i += 1
        n = i
    return n


@dataclass
class _Prepared:
    """One subject's questions, tokenized prompts and letter token ids; `seconds` it took to make them."""

    suite: Suite
    subject: str
    items: list[MCQItem]
    ids: list[list[int]]
    letters: list[int]
    seconds: float


class NativeEngine:
    def __init__(self, model: Any, tokenizer: Any, device: str, *, batch_size: int = 16,
                 max_batch_tokens: int = 8192, add_special_tokens: bool = True,
                 chat: Callable[[list[dict]], str] | None = None, prefix_cache: bool | None = None,
                 rescore_model: Any = None, rescore_margin: float = 0.0, rescore_ulps: float = 0.0,
                 fused_prefix: bool | None = None, residual_fp32: bool | None = None,
                 rescore_rel: float = 0.0, calibrate: int = 0, safety: float = 2.0) -> None:
        """`prefix_cache`: run each subject's shared prefix once and reuse its KV cache (default on).
        `fused_prefix`: questions attend to that cache through `prefix_attention` (None: in half precision on
        CUDA; float32 keeps transformers' cache path, the reference re-scoring must match). `rescore_model` (an fp32
        copy) re-scores the questions a `RescoreRule` flags (`rescore_ulps`, `rescore_rel`, `rescore_margin`,
        `calibrate`, `safety`: its fields).
        `residual_fp32` (half precision only; None: on CUDA): the weights stay in half precision and so do the
        matrix products and attention (autocast), but the residual stream, the norms and RoPE run in float32, so
        the error a deep stack adds to the letter logits stays small and fewer questions need re-scoring.
        `calibrate` > 0 (with `rescore_model`): the first that many questions are scored both ways and the rule
        adds `safety` x the largest error seen on every question scored both ways (`_settle`)."""
        self.model, self.tok, self.device = model, tokenizer, device
        self.batch_size, self.max_batch_tokens = batch_size, max_batch_tokens
        self.add_special_tokens = add_special_tokens
        self.chat = chat
        self.dtype = str(getattr(model, "dtype", "torch.float32")).replace("torch.", "")
        half = self.dtype in ("bfloat16", "float16")
        self.prefix_cache = True if prefix_cache is None else prefix_cache
        if fused_prefix is None:
            fused_prefix = half and str(device).startswith("cuda")
        self.fused_prefix = bool(fused_prefix and self.prefix_cache and self._decoder() is not None
                                 and _register_prefix_attention())
        if residual_fp32 is None:
            residual_fp32 = str(device).startswith("cuda")
        self.residual_fp32 = bool(half and residual_fp32 and self.model.get_input_embeddings() is not None)
        self.rescore = None
        self.rule = RescoreRule(self.dtype, rescore_ulps, rescore_rel, rescore_margin, calibrate, safety)
        if rescore_model is not None and self.rule.active:
            self.rescore = NativeEngine(rescore_model, tokenizer, device, batch_size=batch_size,
                                        max_batch_tokens=max_batch_tokens, add_special_tokens=add_special_tokens,
                                        chat=chat, prefix_cache=True, fused_prefix=False)
        self.record_sizes: dict[str, float] | None = None  # uid -> the rule's size, when a benchmark asks
        self.stats = {"forward_tokens": 0, "cached_tokens": 0, "questions": 0, "seconds": 0.0, "rescored": 0,
                      "float32_direct": 0, "prefix_seconds": 0.0, "shared_prefixes": 0}

    def _settle(self, items: list[MCQItem], ids: list[list[int]], letters: list[int],
                logits_by_item: dict[int, list[float]], shared: int, prefix: Any = None) -> set[int]:
        """Re-scores in float32 (in place) the calibration's first questions, then the questions `self.rule` flags
        once it has seen them, and shows the rule each such pair; returns them. The calibration goes first: judged
        in the same pass, the rest of the first subject met an uncalibrated rule (margin 0) and kept half-precision
        answers float32 would have changed (the H100 runs' flips all sat in each set's first subject)."""
        rule = self.rule
        todo = min(rule.calibration_left(), len(items))
        done = self._rescore(items, ids, letters, logits_by_item, shared, list(range(todo)), prefix)
        rule.calibrated += todo
        close = [i for i, lg in sorted(logits_by_item.items())
                 if i not in done and rule.flagged(lg, len(items[i].options))]
        done |= self._rescore(items, ids, letters, logits_by_item, shared, close, prefix)
        self.stats["rescored"] += len(done)
        return done

    def _rescore(self, items: list[MCQItem], ids: list[list[int]], letters: list[int],
                 logits_by_item: dict[int, list[float]], shared: int, which: list[int], prefix: Any = None) -> set[int]:
        """`prefix`: the subject's float32 prefix cache when the half-precision pass already ran it (the same
        computation `self.rescore` would run: `NativeEngine.prefix`)."""
        if not which:
            return set()
        # the subject's prefix split, not the subset's: a few questions often share a longer prefix, and a
        # longer cached prefix is another float32 computation whose near-ties fall otherwise (seen on CMMLU)
        again = self.rescore.letter_logits([ids[i] for i in which], letters, shared, prefix=prefix)
        for j, i in enumerate(which):
            self.rule.observe(logits_by_item[i], again[j], len(items[i].options))
            logits_by_item[i] = again[j]
        return set(which)

    def describe(self) -> dict:
        """Which path produced the numbers (results.json's timing block)."""
        return {"dtype": self.dtype, "prefix_cache": self.prefix_cache,
                "residual_stream": "float32" if self.residual_fp32 else self.dtype,
                "attention": "fused prefix (SDPA, lower-right causal)" if self.fused_prefix else
                ("transformers cache + mask" if self.prefix_cache else "whole prompts, causal"),
                **(self.rule.describe() if self.rescore is not None else {"rescore_rule": "none"})}

    def prompt(self, suite: Suite, subject: str, shots: list[MCQItem], item: MCQItem) -> str:
        name = suite.subject_name(subject)
        if self.chat is not None:
            return self.chat(chat_messages(name, shots, item, suite.style))
        return completion_prompt(name, shots, item, suite.style)

    def _prepare(self, suite: Suite, subject: str, k: int, limit: int | None) -> _Prepared | None:
        """A subject's prompts, rendered and tokenized: CPU work `iter_subjects` runs ahead on a thread."""
        t0 = time.perf_counter()
        items = suite.items(subject, limit)
        if not items:
            return None
        shots = suite.shots(subject, k)
        if k > 0 and len(shots) < k and suite.shots_split:
            raise TuneforgeError(f"{suite.name}/{subject}: {k}-shot needs {k} dev examples, found {len(shots)}")
        texts = [self.prompt(suite, subject, shots, it) for it in items]
        ids = self._encode(texts)
        sep = "" if self.chat is not None else suite.style.answer_sep
        # the letters of the subject's widest question; each question is scored over its own options
        letters = letter_token_ids(self.tok, texts[0][-32:], sep, OPTION_LETTERS[:max(len(it.options) for it in items)])
        return _Prepared(suite, subject, items, ids, letters, time.perf_counter() - t0)

    def score_subject(self, suite: Suite, subject: str, k: int, limit: int | None = None) -> list[dict]:
        prep = self._prepare(suite, subject, k, limit)
        return [] if prep is None else self._score(prep, prep.seconds)

    def iter_subjects(self, suite: Suite, k: int, limit: int | None = None,
                      subjects: list[str] | None = None) -> Iterator[tuple[str, list[dict]]]:
        """(subject, rows) for each subject in turn, the next subject's prompts rendered and tokenized on a
        thread while this one runs on the model: on the GPU that CPU work was 8-28 % of a float32 run (one
        H100, CMMLU test to MMLU val), and the Rust tokenizer releases the GIL. The same rows as `score_subject`."""
        subjects = list(suite.subjects if subjects is None else subjects)
        if not subjects:
            return
        with ThreadPoolExecutor(1) as pool:
            ahead = pool.submit(self._prepare, suite, subjects[0], k, limit)
            for j, subject in enumerate(subjects):
                t0 = time.perf_counter()
                prep = ahead.result()  # its error (a missing shot) surfaces at its own subject
                waited = time.perf_counter() - t0
                if j + 1 < len(subjects):
                    ahead = pool.submit(self._prepare, suite, subjects[j + 1], k, limit)
                yield subject, ([] if prep is None else self._score(prep, waited))

    def _score(self, prep: _Prepared, seconds: float) -> list[dict]:
        """`seconds`: the preparation's share of the wall time (all of it run inline, the wait when ahead)."""
        items, ids, letters = prep.items, prep.ids, prep.letters
        t0 = time.perf_counter()
        # Scored as they are (the letter logit is read at the end), but counted: past the trained positions
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        over = {i for i, x in enumerate(ids) if isinstance(context, int) and len(x) > context}
        rescored: set[int] = set()
        shared = self._shared(ids)  # one prefix split for both passes: re-scoring repeats the reference exactly
        if self.rescore is not None and self.rule.direct:
            # the half-precision pass stopped paying for itself (`RescoreRule.weigh`): float32 alone from here on
            logits_by_item = self.rescore.letter_logits(ids, letters, shared)
            self.stats["float32_direct"] += len(items)
        else:
            t_half, fp32_prefix, t_shared = time.perf_counter(), None, 0.0
            if self.rescore is not None and self.fused_prefix and shared > 0 and self.rule.share_prefix():
                # most subjects get re-scored: their float32 prefix runs first and serves both passes
                p0 = self.rescore.stats["prefix_seconds"]
                fp32_prefix = self.rescore.prefix(ids, shared)
                t_shared = self.rescore.stats["prefix_seconds"] - p0
            h0 = self.stats["prefix_seconds"]
            logits_by_item = self.letter_logits(ids, letters, shared, prefix=fp32_prefix)
            t_half = time.perf_counter() - t_half - t_shared
            t_half_prefix = self.stats["prefix_seconds"] - h0 if shared > 0 and fp32_prefix is None else None
            if self.record_sizes is not None:
                self.record_sizes.update({items[i].uid: lg[-1] for i, lg in logits_by_item.items()})
            if self.rescore is not None:
                t_fp32, p0 = time.perf_counter(), self.rescore.stats["prefix_seconds"]
                calibrating = self.rule.calibration_left() > 0
                rescored = self._settle(items, ids, letters, logits_by_item, shared, fp32_prefix)
                if not calibrating:  # the calibration's float32 pass is a one-off, not what the rule costs
                    self.rule.weigh(len(items), len(rescored), t_half, time.perf_counter() - t_fp32 + t_shared,
                                    self.rescore.stats["prefix_seconds"] - p0 + t_shared, t_half_prefix)
                if fp32_prefix is not None:
                    self.stats["shared_prefixes"] += 1
        self.stats["seconds"] += seconds + time.perf_counter() - t0
        self.stats["questions"] += len(items)
        suite, subject = prep.suite, prep.subject
        rows = []
        for i, it in enumerate(items):
            lg = logits_by_item[i][: len(it.options)]
            pred = it.letters[max(range(len(lg)), key=lambda j: lg[j])]
            rows.append({"suite": suite.name, "subject": subject, "category": suite.category(subject),
                         "id": it.id, "uid": it.uid, "answer": it.answer, "pred": pred,
                         "correct": None if it.answer is None else pred == it.answer,
                         "logits": [round(x, 4) for x in lg], **({"rescored": True} if i in rescored else {}),
                         **({"over_context": True} if i in over else {})})
        return rows

    @staticmethod
    def _shared(ids: list[list[int]]) -> int:
        """The prefix every prompt of the subject shares (at least one own token left to each)."""
        return min(_common_prefix_len(ids), min(len(x) for x in ids) - 1)

    def prefix(self, ids: list[list[int]], shared: int) -> Any:
        """The first `shared` tokens every prompt shares, run once at batch 1 in this engine's precision: their
        KV cache. Timed apart (`prefix_seconds`): what scoring a subject costs however few its questions."""
        import torch

        t = time.perf_counter()
        with torch.inference_mode():
            _, cache = self._run(input_ids=torch.tensor([ids[0][:shared]], device=self.device), use_cache=True)
        if str(self.device).startswith("cuda"):
            torch.cuda.synchronize(self.device)
        self.stats["prefix_seconds"] += time.perf_counter() - t
        self.stats["forward_tokens"] += shared
        return cache

    def letter_logits(self, ids: list[list[int]], letters: list[int], shared: int | None = None,
                      prefix: Any = None) -> dict[int, list[float]]:
        """Each tokenized prompt's letter logits followed by one more value, the size their rounding errors
        scale with (|h| x max |w_a - w_b|, `needs_rescore`): index -> [logits..., size]. `prefix`: the first
        `shared` tokens' cache (`prefix`) when it was run already (by the float32 engine, for the fused path)."""
        import torch

        if not self.prefix_cache and self._decoder() is not None:
            return self._full_prompts(ids, letters)
        if shared is None:
            shared = self._shared(ids)
        if self.fused_prefix:
            return self._fused(ids, letters, shared, prefix)
        logits_by_item: dict[int, list[float]] = {}
        cache = prefix if prefix is not None or shared == 0 else self.prefix(ids, shared)
        with torch.inference_mode():
            for batch in self._batches(ids):
                logits_by_item.update(zip(batch, self._forward(batch, ids, shared, cache, letters), strict=True))
        self.stats["cached_tokens"] += shared * (len(ids) - 1)
        return logits_by_item

    def _batches(self, ids: list[list[int]]) -> list[list[int]]:
        """Length-sorted batches of at most `batch_size` rows and `max_batch_tokens` (whole prompts, the prefix
        included), for every path: the same batches whatever the attention."""
        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        out, start = [], 0
        while start < len(order):
            end = start + 1
            while end < len(order) and end - start < self.batch_size and \
                    (end - start + 1) * len(ids[order[end]]) <= self.max_batch_tokens:
                end += 1
            out.append(order[start:end])
            start = end
        return out

    def _fused(self, ids: list[list[int]], letters: list[int], shared: int, prefix: Any = None) -> dict[int, list[float]]:
        """The prefix runs once (batch 1, causal kernel), unless `prefix` brings its cache (a float32 one, more
        exact than this precision's); its per-layer K/V stay batch 1 and every batch of questions runs on
        `prefix_attention` with positions continuing after the prefix."""
        import torch

        dev = self.device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: dict[int, list[float]] = {}
        cfg = self.model.config
        with torch.inference_mode():
            kv = None
            if shared > 0:
                cache = prefix if prefix is not None else self.prefix(ids, shared)
                dt = getattr(torch, self.dtype)  # once here, not per batch: float32 keys when the residual is float32
                kv = [(layer.keys.to(dt), layer.values.to(dt)) for layer in cache.layers]
            token = _PREFIX_KV.set(kv)
            before = cfg._attn_implementation
            cfg._attn_implementation = PREFIX_ATTENTION
            try:
                for batch in self._batches(ids):
                    suffixes = [ids[i][shared:] for i in batch]
                    width = max(len(x) for x in suffixes)
                    inp = torch.full((len(batch), width), pad, dtype=torch.long)
                    for r, x in enumerate(suffixes):
                        inp[r, : len(x)] = torch.tensor(x)
                    pos = torch.arange(shared, shared + width, device=dev)[None].expand(len(batch), -1)
                    self.stats["forward_tokens"] += sum(len(x) for x in suffixes)
                    hidden, _ = self._run(input_ids=inp.to(dev), position_ids=pos, use_cache=False)
                    last = torch.tensor([len(x) - 1 for x in suffixes], device=hidden.device)
                    rows = hidden[torch.arange(len(batch), device=hidden.device), last]
                    out.update(zip(batch, self._letter_logits(rows[:, None], letters).cpu().tolist(), strict=True))
            finally:
                cfg._attn_implementation = before
                _PREFIX_KV.reset(token)
        self.stats["cached_tokens"] += shared * (len(ids) - 1)
        return out

    def _full_prompts(self, ids: list[list[int]], letters: list[int]) -> dict[int, list[float]]:
        """Whole prompts, right-padded, no attention mask: causal attention alone keeps the pads (after every
        real token) out, so SDPA takes its causal FlashAttention kernel; the answer slot is each row's last
        real token."""
        import torch

        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: dict[int, list[float]] = {}
        with torch.inference_mode():
            for batch in self._batches(ids):
                width = max(len(ids[i]) for i in batch)
                inp = torch.full((len(batch), width), pad, dtype=torch.long)
                for r, i in enumerate(batch):
                    inp[r, : len(ids[i])] = torch.tensor(ids[i])
                self.stats["forward_tokens"] += sum(len(ids[i]) for i in batch)
                hidden, _ = self._run(input_ids=inp.to(self.device), use_cache=False)
                last = torch.tensor([len(ids[i]) - 1 for i in batch], device=hidden.device)
                rows = hidden[torch.arange(len(batch), device=hidden.device), last]
                out.update(zip(batch, self._letter_logits(rows[:, None], letters).cpu().tolist(), strict=True))
        return out

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Whole prompts, as lm-eval encodes them: the tokenizer's special tokens unless the text already
        starts with BOS (a chat template that writes it)."""
        bos = getattr(self.tok, "bos_token", None)
        add = self.add_special_tokens and not (bos and texts[0].startswith(bos))
        # a subject's few-shot prompts are long and tokenizing them was a third of a GPU run (profiled on MMLU
        # val); the CLI turns the tokenizer's own threads off (forks), so chunks go to threads here (the Rust
        # tokenizer releases the GIL). Each text is tokenized alone either way: the ids are the same.
        workers = min(8, os.cpu_count() or 1, len(texts) // 32)
        if workers < 2:
            return self.tok(texts, add_special_tokens=add).input_ids
        step = -(-len(texts) // workers)
        chunks = [texts[i:i + step] for i in range(0, len(texts), step)]
        with ThreadPoolExecutor(workers) as pool:
            parts = list(pool.map(lambda c: self.tok(c, add_special_tokens=add).input_ids, chunks))
        return [x for part in parts for x in part]

    def _letter_logits(self, out_hidden: Any, letters: list[int]) -> Any:
        """fp32 logits of the four letters from the last hidden state: bf16 full-vocab logits are rounded
        to ~0.06 at typical magnitudes, enough to flip close calls."""
        import torch

        head = self.model.get_output_embeddings()
        w = head.weight[letters].float()
        h = out_hidden[:, -1].float()
        logits = h @ w.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[letters].float()
        # the size the logits' errors scale with (`needs_rescore`): |h| times the widest letter-row difference
        spread = torch.cdist(w[None], w[None])[0].max()
        return torch.cat([logits, (h.norm(dim=-1) * spread)[:, None]], dim=1)

    def _run(self, **kw: Any) -> tuple[Any, Any]:
        """(last hidden states, cache) through the decoder alone when the model exposes it, so no full-vocab
        logits are computed; otherwise the whole model with `logits_to_keep=1`."""
        import torch

        with contextlib.ExitStack() as stack:
            if self.dtype in ("bfloat16", "float16") and str(self.device).startswith("cuda"):
                # Not cuDNN's attention: it builds a plan for every new shape, and every subject's prefix is a
                # new length (on an H100 the first bf16 pass over C-Eval val took 6.6 s in the model, a second
                # over the same prefixes 3.4 s; float32 on other kernels 7.6 s and 7.4 s); FlashAttention, which
                # the questions already run on, needs none.
                from torch.nn.attention import SDPBackend, sdpa_kernel

                stack.enter_context(sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION,
                                                 SDPBackend.MATH]))
            if self.residual_fp32:
                # float32 embeddings start a float32 residual stream (half + float32 adds promote to float32);
                # autocast runs every matrix product and attention in the weights' half precision with float32
                # accumulation
                hook = self.model.get_input_embeddings().register_forward_hook(lambda _m, _i, out: out.float())
                stack.callback(hook.remove)
                stack.enter_context(torch.autocast(device_type=str(self.device).split(":")[0],
                                                   dtype=getattr(torch, self.dtype)))
            return self._run_as_is(**kw)

    def _run_as_is(self, **kw: Any) -> tuple[Any, Any]:
        dec = self._decoder()
        if dec is not None:
            out = dec(**kw)
            return out.last_hidden_state, out.past_key_values
        out = self.model(**kw, logits_to_keep=1)
        return out, out.past_key_values

    def _decoder(self) -> Any:
        if not hasattr(self, "_dec"):
            dec = None
            try:
                dec = self.model.get_decoder()
                if dec is self.model or self.model.get_output_embeddings() is None:
                    dec = None
            except (AttributeError, NotImplementedError):
                dec = None
            self._dec = dec
        return self._dec

    def _forward(self, batch: list[int], ids: list[list[int]], shared: int, cache: Any,
                 letters: list[int]) -> list[list[float]]:
        import torch

        suffixes = [ids[i][shared:] for i in batch]
        width = max(len(s) for s in suffixes)
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        inp = torch.full((len(batch), width), pad, dtype=torch.long)
        kwargs: dict[str, Any] = {}
        if cache is not None:
            past = copy.deepcopy(cache)
            past.batch_repeat_interleave(len(batch))
            kwargs[cache_keyword(self._decoder() or self.model)] = past
        dev = self.device
        self.stats["forward_tokens"] += sum(len(s) for s in suffixes)
        if self._decoder() is not None:
            # Right padding and no attention mask: pads sit after every real token, so causal attention
            # alone keeps them out, positions run on from the prefix, and attention needs no padding mask.
            for r, s in enumerate(suffixes):
                inp[r, : len(s)] = torch.tensor(s)
            hidden, _ = self._run(input_ids=inp.to(dev), use_cache=cache is not None, **kwargs)
            last = torch.tensor([len(s) - 1 for s in suffixes], device=hidden.device)
            rows = hidden[torch.arange(len(batch), device=hidden.device), last]
            return self._letter_logits(rows[:, None], letters).cpu().tolist()
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        for r, s in enumerate(suffixes):  # left padding: the last position is every row's answer slot
            inp[r, width - len(s):] = torch.tensor(s)
            mask[r, width - len(s):] = 1
        pos = (shared + mask.cumsum(-1) - 1).clamp(min=shared)
        attn = torch.cat([torch.ones((len(batch), shared), dtype=torch.long), mask], dim=1)
        out, _ = self._run(input_ids=inp.to(dev), attention_mask=attn.to(dev), position_ids=pos.to(dev),
                           use_cache=cache is not None, **kwargs)
        lg = out.logits[:, -1, letters].float()  # no hidden state here: no size for the rule's norm term
        return torch.cat([lg, torch.zeros_like(lg[:, :1])], dim=1).cpu().tolist()

    def score_suite(self, suite: Suite, k: int, limit: int | None = None,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
        rows: list[dict] = []
        for subject, done in self.iter_subjects(suite, k, limit):
            rows.extend(done)
            if progress:
                progress(f"{suite.name}/{subject}: {len(rows)} questions")
        return rows
