"""Perplexity on general text: the forgetting check's measure of language modelling beyond the exams."""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.resources import ASSETS

SHIPPED_TEXT = ASSETS / "datasets" / "benchmarks" / "general_text"


def load_texts(path: str | Path | None = None, limit: int | None = None) -> list[str]:
    """Lines of a .txt, `text` fields of a .jsonl, or every such file in a folder (the shipped sample)."""
    p = Path(path) if path else SHIPPED_TEXT
    files = sorted(f for f in p.iterdir() if f.suffix in (".txt", ".jsonl")) if p.is_dir() else [p]
    if not files or not all(f.is_file() for f in files):
        raise TuneforgeError(f"perplexity corpus not found: {p}")
    texts: list[str] = []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for line in fh:
                if not line.strip():
                    continue
                texts.append(json.loads(line)["text"] if f.suffix == ".jsonl" else line.strip())
    return texts[:limit] if limit else texts


def perplexity(model: Any, tokenizer: Any, texts: list[str], device: str, max_length: int = 512,
               on_document: Callable[[int], None] | None = None) -> dict:
    """Token-weighted perplexity, each document truncated to `max_length` tokens; how many were truncated
    and how many skipped (under two tokens: nothing to predict) is counted."""
    import torch

    nll, count, truncated, skipped = 0.0, 0, 0, 0
    with torch.inference_mode():
        for text in texts:
            full = tokenizer(text, return_tensors="pt").input_ids
            truncated += full.shape[1] > max_length
            ids = full[:, :max_length]
            if on_document is not None:
                on_document(1)
            if ids.shape[1] < 2:
                skipped += 1
                continue
            out = model(input_ids=ids.to(device), labels=ids.to(device))
            n = ids.shape[1] - 1
            nll += float(out.loss) * n
            count += n
    if not count:
        raise TuneforgeError("perplexity corpus has no text")
    return {"perplexity": round(math.exp(nll / count), 4), "tokens": count, "documents": len(texts),
            "max_length": max_length, "truncated": truncated, "skipped": skipped}
