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

import contextvars
import copy
import math
import time
from collections.abc import Callable
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.mcq import LETTERS, OPTION_LETTERS, MCQItem
from tuneforge.eval.prompts import chat_messages, completion_prompt
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


def _margin(lg: list[float]) -> float:
    top = sorted(lg, reverse=True)
    return top[0] - top[1]


# explicit mantissa bits: a value in [2^e, 2^(e+1)) is stored in steps of 2^(e - bits)
MANTISSA_BITS = {"bfloat16": 7, "float16": 10, "float32": 23}


def ulp(x: float, dtype: str = "bfloat16") -> float:
    """The spacing of `dtype` at magnitude |x| (bf16 at 37: 0.25), what one rounding step there is worth."""
    m = max(abs(x), 2.0 ** -14)
    return 2.0 ** (math.frexp(m)[1] - 1 - MANTISSA_BITS[dtype])


def rescore_threshold(lg: list[float], *, ulps: float = 0.0, margin: float = 0.0, dtype: str = "bfloat16") -> float:
    """The top-two margin under which a half-precision answer may differ from float32's: `ulps` steps of the
    dtype at the magnitude of the largest letter logit (the error of every logit scales with that size), or the
    fixed `margin`, whichever is larger."""
    return max(margin, ulps * ulp(max(abs(x) for x in lg), dtype) if ulps > 0 else 0.0)


def needs_rescore(lg: list[float], *, ulps: float = 0.0, margin: float = 0.0, dtype: str = "bfloat16") -> bool:
    """True when the half-precision letter logits `lg` are too close to call: if half precision picks a and
    float32 picks b, then the error of (l_a - l_b) is at least the top-two margin, so re-scoring every
    question whose margin is under the largest such error keeps the answer exactly float32's."""
    return _margin(lg) < rescore_threshold(lg, ulps=ulps, margin=margin, dtype=dtype)


def rule_text(ulps: float, margin: float, dtype: str) -> str:
    """The re-scoring rule in force, as results.json records it."""
    if ulps > 0 and margin > 0:
        return f"margin < max({ulps:g} * ulp_{dtype}(max|logit|), {margin:g})"
    if ulps > 0:
        return f"margin < {ulps:g} * ulp_{dtype}(max|logit|)"
    return f"margin < {margin:g}" if margin > 0 else "none"


_PREFIX_KV: contextvars.ContextVar[list | None] = contextvars.ContextVar("tuneforge_prefix_kv", default=None)
PREFIX_ATTENTION = "tuneforge_prefix"


def prefix_attention(module: Any, query: Any, key: Any, value: Any, attention_mask: Any = None,
                     dropout: float = 0.0, scaling: float | None = None, **kwargs: Any) -> tuple[Any, None]:
    """A transformers attention function: right-padded questions (B, H, q, D) attend to the subject's cached
    prefix (1, Hkv, P, D, shared by every row, not copied per layer into a cache) and causally to their own
    tokens. The mask is causal aligned to the lower right of the (q, P + q) score matrix, which SDPA hands to
    FlashAttention as is (no materialized mask); pads sit after every real token, so they are never seen."""
    import torch
    import torch.nn.functional as F
    from torch.nn.attention.bias import causal_lower_right

    kv = _PREFIX_KV.get()
    gqa = query.shape[1] != key.shape[1]
    if kv is None:
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=gqa)
    else:
        pk, pv = kv[module.layer_idx]
        b = query.shape[0]
        k = torch.cat([pk.expand(b, -1, -1, -1), key], dim=2)
        v = torch.cat([pv.expand(b, -1, -1, -1), value], dim=2)
        mask = causal_lower_right(query.shape[2], k.shape[2])
        try:
            out = F.scaled_dot_product_attention(query, k, v, attn_mask=mask, scale=scaling, enable_gqa=gqa)
        except RuntimeError:  # a torch whose lower-right path takes no grouped K/V: expand the K/V heads
            rep = query.shape[1] // key.shape[1]
            out = F.scaled_dot_product_attention(query, k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1),
                                                 attn_mask=mask, scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def _register_prefix_attention() -> bool:
    """Registers `prefix_attention` with transformers (no mask built: the function knows its own)."""
    try:
        from transformers import AttentionInterface
        from transformers.masking_utils import AttentionMaskInterface
    except ImportError:
        return False
    AttentionInterface.register(PREFIX_ATTENTION, prefix_attention)
    AttentionMaskInterface.register(PREFIX_ATTENTION, lambda *a, **k: None)
    return True


def letter_token_ids(tokenizer: Any, context: str, sep: str, letters: tuple[str, ...] = LETTERS) -> list[int]:
    """The token each answer letter becomes right after `context` (joint tokenization, as lm-eval does)."""
    base = tokenizer(context, add_special_tokens=False).input_ids
    ids = []
    for letter in letters:
        full = tokenizer(context + sep + letter, add_special_tokens=False).input_ids
        if full[: len(base)] != base or len(full) != len(base) + 1:
            raise TuneforgeError(f"answer letter {letter!r} is not a single token after the prompt for this "
                                 "tokenizer; use --engine lm-eval")
        ids.append(full[-1])
    return ids


class NativeEngine:
    def __init__(self, model: Any, tokenizer: Any, device: str, *, batch_size: int = 16,
                 max_batch_tokens: int = 8192, add_special_tokens: bool = True,
                 chat: Callable[[list[dict]], str] | None = None, prefix_cache: bool | None = None,
                 rescore_model: Any = None, rescore_margin: float = 0.0, rescore_ulps: float = 0.0,
                 fused_prefix: bool | None = None) -> None:
        """`prefix_cache`: run each subject's shared prefix once and reuse its KV cache (default on).
        `fused_prefix`: questions attend to that cache through `prefix_attention` (None: in half precision on
        CUDA; float32 keeps transformers' cache path, the reference re-scoring must match). `rescore_model` (an fp32
        copy) re-scores the questions `needs_rescore` flags: top-two letter logits closer than `rescore_ulps`
        steps of the model's dtype at the largest logit's magnitude, or than the fixed `rescore_margin`."""
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
        self.rescore = None
        if rescore_model is not None and (rescore_margin > 0 or rescore_ulps > 0):
            self.rescore = NativeEngine(rescore_model, tokenizer, device, batch_size=batch_size,
                                        max_batch_tokens=max_batch_tokens, add_special_tokens=add_special_tokens,
                                        chat=chat, prefix_cache=True, fused_prefix=False)
        self.rescore_margin, self.rescore_ulps = rescore_margin, rescore_ulps
        self.stats = {"forward_tokens": 0, "cached_tokens": 0, "questions": 0, "seconds": 0.0, "rescored": 0}

    def describe(self) -> dict:
        """Which path produced the numbers (results.json's timing block)."""
        return {"dtype": self.dtype, "prefix_cache": self.prefix_cache,
                "attention": "fused prefix (SDPA, lower-right causal)" if self.fused_prefix else
                ("transformers cache + mask" if self.prefix_cache else "whole prompts, causal"),
                "rescore_rule": rule_text(self.rescore_ulps, self.rescore_margin, self.dtype)
                if self.rescore is not None else "none",
                "rescore_ulps": self.rescore_ulps if self.rescore is not None else 0.0,
                "rescore_margin": self.rescore_margin if self.rescore is not None else 0.0}

    def prompt(self, suite: Suite, subject: str, shots: list[MCQItem], item: MCQItem) -> str:
        name = suite.subject_name(subject)
        if self.chat is not None:
            return self.chat(chat_messages(name, shots, item, suite.style))
        return completion_prompt(name, shots, item, suite.style)

    def score_subject(self, suite: Suite, subject: str, k: int, limit: int | None = None) -> list[dict]:

        items = suite.items(subject, limit)
        if not items:
            return []
        shots = suite.shots(subject, k)
        if k > 0 and len(shots) < k and suite.shots_split:
            raise TuneforgeError(f"{suite.name}/{subject}: {k}-shot needs {k} dev examples, found {len(shots)}")
        t0 = time.perf_counter()
        texts = [self.prompt(suite, subject, shots, it) for it in items]
        ids = self._encode(texts)
        # Scored as they are (the letter logit is read at the end), but counted: past the trained positions
        context = getattr(getattr(self.model, "config", None), "max_position_embeddings", None)
        over = {i for i, x in enumerate(ids) if isinstance(context, int) and len(x) > context}
        sep = "" if self.chat is not None else suite.style.answer_sep
        # the letters of the subject's widest question; each question is scored over its own options
        letters = letter_token_ids(self.tok, texts[0][-32:], sep, OPTION_LETTERS[:max(len(it.options) for it in items)])
        logits_by_item = self.letter_logits(ids, letters)
        rescored: set[int] = set()
        if self.rescore is not None:
            close = [i for i, lg in logits_by_item.items()
                     if needs_rescore(lg[:len(items[i].options)], ulps=self.rescore_ulps,
                                      margin=self.rescore_margin, dtype=self.dtype)]
            if close:
                again = self.rescore.letter_logits([ids[i] for i in close], letters)
                for j, i in enumerate(close):
                    logits_by_item[i] = again[j]
                rescored = set(close)
                self.stats["rescored"] += len(close)
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["questions"] += len(items)
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

    def letter_logits(self, ids: list[list[int]], letters: list[int]) -> dict[int, list[float]]:
        """The four letter logits of each tokenized prompt (index -> logits)."""
        import torch

        if not self.prefix_cache and self._decoder() is not None:
            return self._full_prompts(ids, letters)
        shared = min(_common_prefix_len(ids), min(len(x) for x in ids) - 1)
        if self.fused_prefix:
            return self._fused(ids, letters, shared)
        dev = self.device
        cache = None
        logits_by_item: dict[int, list[float]] = {}
        with torch.inference_mode():
            if shared > 0:
                _, cache = self._run(input_ids=torch.tensor([ids[0][:shared]], device=dev), use_cache=True)
                self.stats["forward_tokens"] += shared
            order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
            start = 0
            while start < len(order):
                end = start
                while end < len(order) and end - start < self.batch_size:
                    width = len(ids[order[end]]) - shared
                    if (end - start + 1) * (width + shared) > self.max_batch_tokens and end > start:
                        break
                    end += 1
                batch = order[start:end]
                logits_by_item.update(zip(batch, self._forward(batch, ids, shared, cache, letters), strict=True))
                start = end
        self.stats["cached_tokens"] += shared * (len(ids) - 1)
        return logits_by_item

    def _batches(self, ids: list[list[int]], shared: int) -> list[list[int]]:
        """Length-sorted batches of at most `batch_size` rows and `max_batch_tokens` (prefix included)."""
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

    def _fused(self, ids: list[list[int]], letters: list[int], shared: int) -> dict[int, list[float]]:
        """The prefix runs once (batch 1, causal kernel); its per-layer K/V stay batch 1 and every batch of
        questions runs on `prefix_attention` with positions continuing after the prefix."""
        import torch

        dev = self.device
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: dict[int, list[float]] = {}
        cfg = self.model.config
        with torch.inference_mode():
            kv = None
            if shared > 0:
                _, cache = self._run(input_ids=torch.tensor([ids[0][:shared]], device=dev), use_cache=True)
                kv = [(layer.keys, layer.values) for layer in cache.layers]
                self.stats["forward_tokens"] += shared
            token = _PREFIX_KV.set(kv)
            before = cfg._attn_implementation
            cfg._attn_implementation = PREFIX_ATTENTION
            try:
                for batch in self._batches(ids, shared):
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

        order = sorted(range(len(ids)), key=lambda i: len(ids[i]))
        pad = self.tok.pad_token_id if self.tok.pad_token_id is not None else 0
        out: dict[int, list[float]] = {}
        start = 0
        with torch.inference_mode():
            while start < len(order):
                end = start + 1
                while end < len(order) and end - start < self.batch_size and \
                        (end - start + 1) * len(ids[order[end]]) <= self.max_batch_tokens:
                    end += 1
                batch = order[start:end]
                width = max(len(ids[i]) for i in batch)
                inp = torch.full((len(batch), width), pad, dtype=torch.long)
                for r, i in enumerate(batch):
                    inp[r, : len(ids[i])] = torch.tensor(ids[i])
                self.stats["forward_tokens"] += sum(len(ids[i]) for i in batch)
                hidden, _ = self._run(input_ids=inp.to(self.device), use_cache=False)
                last = torch.tensor([len(ids[i]) - 1 for i in batch], device=hidden.device)
                rows = hidden[torch.arange(len(batch), device=hidden.device), last]
                out.update(zip(batch, self._letter_logits(rows[:, None], letters).cpu().tolist(), strict=True))
                start = end
        return out

    def _encode(self, texts: list[str]) -> list[list[int]]:
        """Whole prompts, as lm-eval encodes them: the tokenizer's special tokens unless the text already
        starts with BOS (a chat template that writes it)."""
        bos = getattr(self.tok, "bos_token", None)
        add = self.add_special_tokens and not (bos and texts[0].startswith(bos))
        return self.tok(texts, add_special_tokens=add).input_ids

    def _letter_logits(self, out_hidden: Any, letters: list[int]) -> Any:
        """fp32 logits of the four letters from the last hidden state: bf16 full-vocab logits are rounded
        to ~0.06 at typical magnitudes, enough to flip close calls."""
        head = self.model.get_output_embeddings()
        w = head.weight[letters].float()
        logits = out_hidden[:, -1].float() @ w.T
        if getattr(head, "bias", None) is not None:
            logits = logits + head.bias[letters].float()
        return logits

    def _run(self, **kw: Any) -> tuple[Any, Any]:
        """(last hidden states, cache) through the decoder alone when the model exposes it, so no full-vocab
        logits are computed; otherwise the whole model with `logits_to_keep=1`."""
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
            kwargs["past_key_values"] = past
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
        return out.logits[:, -1, letters].float().cpu().tolist()

    def score_suite(self, suite: Suite, k: int, limit: int | None = None,
                    progress: Callable[[str], None] | None = None) -> list[dict]:
        rows: list[dict] = []
        for subject in suite.subjects:
            rows.extend(self.score_subject(suite, subject, k, limit))
            if progress:
                progress(f"{suite.name}/{subject}: {len(rows)} questions")
        return rows
