"""`attn_implementation: varlen`: packed and padding-free batches on the FlashAttention kernel inside PyTorch.

Why: with `sdpa`, transformers turns the sequence boundaries of a packed row into a materialised
block-diagonal mask, which takes SDPA off its flash kernel and costs more than packing saves; the
`flash-attn` package that reads the boundaries natively ships no binary wheel for most machines. PyTorch's
own CUDA build carries FlashAttention-2's variable-length kernel (`torch.nn.attention.varlen`), so this
module registers it with transformers under the name `varlen`.

Sequence boundaries come from (in this order) precomputed `cu_seq_lens_*` kwargs, a 2D padding mask
(padded batches are unpadded first), or restarts in `position_ids` (TRL's padding-free and BFD-packed
batches). Without a CUDA flash kernel (CPU, fp32, head dim > 256, dropout, decoding with a cache) the same
segments go through SDPA with an explicit mask, so results agree everywhere and only speed differs.
Nothing here changes a saved model: the name is a runtime setting, not written to `config.json`.
"""

from __future__ import annotations

import inspect
from functools import cache
from itertools import pairwise
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F

NAME = "varlen"


def register() -> str:
    """Make `attn_implementation="varlen"` known to transformers (idempotent); returns the name."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, flash_attention_mask

    AttentionInterface.register(NAME, varlen_attention_forward)
    # FlashAttention's mask contract: None when nothing is padded, else the 2D padding mask.
    AttentionMaskInterface.register(NAME, flash_attention_mask)
    return NAME


class Segments(NamedTuple):
    """Which flattened tokens belong to which sequence: cu_seqlens over the kept tokens, and the kept indices."""

    cu_seqlens: torch.Tensor
    max_len: int
    keep: torch.Tensor | None


# One forward pass shares its mask and position_ids across every layer: derive the segments once and keep them
# (and the tensor they came from, so its identity cannot be reused) until the next pass.
_last: list[Any] = [None, None]


def segments(attention_mask: torch.Tensor | None, position_ids: torch.Tensor | None, batch: int, seq: int,
             device: torch.device, cu_seq_lens: torch.Tensor | None = None,
             max_length: int | None = None) -> Segments:
    """Sequence boundaries of a (batch, seq) block of tokens flattened row-major."""
    if cu_seq_lens is not None and max_length is not None:
        return Segments(cu_seq_lens.to(device=device, dtype=torch.int32), int(max_length), None)
    source = attention_mask if attention_mask is not None else position_ids
    if source is not None and _last[0] is source:
        return _last[1]
    if attention_mask is not None:  # padded rows: keep the real tokens, one sequence per row
        mask = attention_mask.reshape(batch, seq).bool()
        lengths = mask.sum(dim=1, dtype=torch.int32)
        keep = mask.reshape(-1).nonzero().reshape(-1)
        out = Segments(F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0)), int(lengths.max()), keep)
    elif position_ids is not None and position_ids.shape[-1] == seq:  # packed rows restart their positions
        pos = position_ids.expand(batch, seq).reshape(-1)
        starts = pos[1:] <= pos[:-1]
        starts = torch.cat([torch.ones(1, dtype=torch.bool, device=pos.device), starts])
        starts.view(batch, seq)[:, 0] = True  # every row starts a sequence
        bounds = starts.nonzero().reshape(-1).to(torch.int32)
        cu = torch.cat([bounds, torch.tensor([batch * seq], dtype=torch.int32, device=pos.device)]).to(device)
        out = Segments(cu, int(cu.diff().max()), None)
    else:
        cu = torch.arange(0, batch * seq + 1, seq, dtype=torch.int32, device=device)
        out = Segments(cu, seq, None)
    if source is not None:
        _last[0], _last[1] = source, out
    return out


@cache
def _flash_varlen() -> tuple[Any, dict[str, Any]] | None:
    """torch's public varlen entry point and how this torch version spells causal and GQA (it has changed)."""
    try:
        from torch.nn.attention.varlen import varlen_attn
    except ImportError:
        return None
    params = inspect.signature(varlen_attn).parameters
    spelling = {"window": "window_size" in params, "gqa": "enable_gqa" in params}
    return varlen_attn, spelling


def flash_available(query: torch.Tensor, dropout: float = 0.0) -> bool:
    """Whether the CUDA flash kernel can take these inputs (otherwise the SDPA path runs)."""
    return (query.is_cuda and query.dtype in (torch.float16, torch.bfloat16) and query.shape[-1] <= 256
            and query.shape[-1] % 8 == 0 and dropout == 0.0 and _flash_varlen() is not None)


def flash_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, scale: float | None,
                 window: int | None) -> torch.Tensor:
    """(total, H, D) tokens through torch's FlashAttention varlen kernel, causal within each segment."""
    fn, spelling = _flash_varlen()
    kwargs: dict[str, Any] = {"scale": scale}
    if spelling["window"]:
        kwargs["window_size"] = (window - 1 if window else -1, 0)
    elif window:
        raise NotImplementedError("this torch's varlen attention has no sliding window; use sdpa")
    else:
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if spelling["gqa"]:
            kwargs["enable_gqa"] = True
        else:  # releases without the flag: share the key/value heads explicitly
            k, v = (x.repeat_interleave(q.shape[1] // x.shape[1], dim=1) for x in (k, v))
    return fn(q, k, v, seg.cu_seqlens, seg.cu_seqlens, seg.max_len, seg.max_len, **kwargs)


def _causal(q_len: int, kv_len: int, window: int | None, device: torch.device) -> torch.Tensor:
    """(Q, K) keys each query may see: bottom-right causal (the last query sees every key), within `window`."""
    qi = torch.arange(q_len, device=device)[:, None] + (kv_len - q_len)
    ki = torch.arange(kv_len, device=device)[None, :]
    allowed = ki <= qi
    if window:
        allowed &= qi - ki < window
    return allowed


def _sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, allowed: torch.Tensor, scale: float | None,
          dropout: float) -> torch.Tensor:
    """(B, H, Q, D) attention where `allowed` (B, 1, Q, K) says which keys each query sees."""
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, dropout_p=dropout, scale=scale,
                                          enable_gqa=q.shape[1] != k.shape[1])


def varlen_attention_forward(module: torch.nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                             attention_mask: torch.Tensor | None, dropout: float = 0.0,
                             scaling: float | None = None, sliding_window: int | None = None,
                             softcap: float | None = None, is_causal: bool | None = None,
                             **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' attention-function contract: (B, H, S, D) in, (B, S, H, D) out."""
    if softcap is not None or kwargs.get("s_aux") is not None:
        raise NotImplementedError("varlen attention has no logit soft-capping or attention sinks; use eager/sdpa")
    if is_causal is False or not getattr(module, "is_causal", True):
        raise NotImplementedError("varlen attention is causal only (decoder LMs); use sdpa for this model")
    batch, heads, q_len, dim = query.shape
    kv_len = key.shape[2]
    if kv_len != q_len:  # decoding against a cache: bottom-right causal over the cached keys
        return _decode(query, key, value, attention_mask, scaling, dropout, sliding_window), None
    seg = segments(attention_mask, kwargs.get("position_ids"), batch, q_len, query.device,
                   kwargs.get("cu_seq_lens_q"), kwargs.get("max_length_q"))
    total = batch * q_len
    q, k, v = (x.transpose(1, 2).reshape(total, x.shape[1], dim) for x in (query, key, value))
    if seg.keep is not None:
        q, k, v = q[seg.keep], k[seg.keep], v[seg.keep]
    if flash_available(query, dropout):
        out = flash_varlen(q, k, v, seg, scaling, sliding_window)
    else:
        out = masked_varlen(q, k, v, seg, scaling, dropout, sliding_window)
    if seg.keep is not None:
        full = out.new_zeros(total, heads, dim)
        full[seg.keep] = out
        out = full
    return out.reshape(batch, q_len, heads, dim), None


def masked_varlen(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seg: Segments, scale: float | None,
                  dropout: float, window: int | None) -> torch.Tensor:
    """The reference path: SDPA over each segment on its own (memory grows with the longest, not the row)."""
    bounds = seg.cu_seqlens.tolist()
    outs = []
    for a, b in pairwise(bounds):
        allowed = _causal(b - a, b - a, window, q.device)
        part = (x[a:b].transpose(0, 1).unsqueeze(0) for x in (q, k, v))
        outs.append(_sdpa(*part, allowed[None, None], scale, dropout).squeeze(0).transpose(0, 1))
    return torch.cat(outs)


def _decode(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, attention_mask: torch.Tensor | None,
            scale: float | None, dropout: float, window: int | None) -> torch.Tensor:
    kv_len = key.shape[2]
    allowed = _causal(query.shape[2], kv_len, window, query.device)[None, None]
    if attention_mask is not None:
        allowed = allowed & attention_mask[:, -kv_len:].bool()[:, None, None, :]
    return _sdpa(query, key, value, allowed, scale, dropout).transpose(1, 2)
