"""Loading the model under evaluation: base or hub model, optional PEFT adapter, the right device and dtype."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.models import load_causal_lm, load_tokenizer, resolve_model


def pick_device(device: str | None = None) -> str:
    import torch

    if device and device != "auto":
        return device
    return "cuda" if torch.cuda.is_available() else "cpu"


def pick_dtype(device: str, dtype: str | None = None) -> Any:
    """bf16 on CUDA (the speed path), fp32 on CPU (bf16 matmuls are slow and noisy there)."""
    import torch

    if dtype and dtype != "auto":
        try:
            return getattr(torch, dtype)
        except AttributeError:
            raise TuneforgeError(f"unknown dtype {dtype!r} (float32, bfloat16, float16)") from None
    return torch.bfloat16 if device.startswith("cuda") else torch.float32


@dataclass
class LoadedModel:
    ref: str
    path: str
    adapter: str | None
    model: Any
    tokenizer: Any
    device: str


def load_for_eval(ref: str, adapter: str | None = None, device: str | None = None,
                  dtype: str | None = None, merge: bool = True) -> LoadedModel:
    dev = pick_device(device)
    path = resolve_model(ref)
    try:
        tok = load_tokenizer(ref)
        model = load_causal_lm(ref, dtype=pick_dtype(dev, dtype), device=dev)
    except OSError as e:  # not a model folder, or a hub id that cannot be fetched (offline, gated, misspelt)
        raise TuneforgeError(f"model {ref!r} cannot be loaded: {str(e).splitlines()[0][:300]}") from None
    if adapter:
        from peft import PeftModel

        try:
            model = PeftModel.from_pretrained(model, adapter)
        except (OSError, ValueError) as e:
            raise TuneforgeError(f"adapter {adapter!r} cannot be loaded on {ref}: "
                                 f"{str(e).splitlines()[0][:300]}") from None
        if merge:  # identical outputs for LoRA, and no adapter overhead per forward pass
            model = model.merge_and_unload()
    model.eval()
    if tok.pad_token_id is None:
        tok.pad_token = tok.eos_token
    return LoadedModel(ref, path, adapter, model, tok, dev)
