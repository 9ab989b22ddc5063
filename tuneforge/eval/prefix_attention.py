"""Questions attending to their subject's cached prefix in one fused attention call.

A transformers attention function the native engine (`native.py`) switches to for half precision on CUDA:
transformers' own cache path copies the prefix's K/V per batch and builds an explicit 4-D mask, which leaves the
FlashAttention kernel; here the prefix stays batch 1 and the mask is a lower-right causal bias SDPA runs fused."""

from __future__ import annotations

import contextvars
from typing import Any

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
    # with the residual stream in float32 (`NativeEngine.residual_fp32`) RoPE hands over float32 q/k: attention
    # runs in autocast's half precision, as autocast runs SDPA
    kind = query.device.type
    dt = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else value.dtype
    query, key, value = query.to(dt), key.to(dt), value.to(dt)
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


