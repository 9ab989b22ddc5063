"""Labels from character spans: tokenize the whole text once, keep a token's id as label where it overlaps a reply.

A token overlaps a span when its character offsets intersect it (the same rule as transformers'
`return_assistant_tokens_mask`). A token that crosses a span edge is trained, and logged once per template:
it means the tokenizer merges template text with the reply (add the template's markers as special tokens).
"""

from __future__ import annotations

import logging
from typing import Any

from tuneforge.templates.loader import TemplateError

IGNORE_INDEX = -100
log = logging.getLogger(__name__)
_warned: set[str] = set()


def encode_with_offsets(tokenizer: Any, text: str, name: str) -> tuple[list[int], list[tuple[int, int]]]:
    if not getattr(tokenizer, "is_fast", True):
        raise TemplateError(f"template {name}: masks need a fast (Rust) tokenizer with offset mapping; "
                            f"{type(tokenizer).__name__} has none")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def mask_from_offsets(offsets: list[tuple[int, int]], spans: list[tuple[int, int]]) -> tuple[list[bool], int]:
    """For each token, whether its characters intersect one of the (sorted, disjoint) spans; and how many
    tokens cross a span edge."""
    out: list[bool] = []
    straddling = 0
    k = 0
    for start, end in offsets:
        while k < len(spans) and spans[k][1] <= start:
            k += 1
        hit = end > start and k < len(spans) and start < spans[k][1] and end > spans[k][0]
        out.append(hit)
        if hit and (start < spans[k][0] or end > spans[k][1]):
            straddling += 1
    return out, straddling


def labels_from_spans(tokenizer: Any, text: str, spans: list[tuple[int, int]], *, max_length: int | None,
                      name: str) -> dict[str, list[int]]:
    ids, offsets = encode_with_offsets(tokenizer, text, name)
    trained, straddling = mask_from_offsets(offsets, spans)
    if straddling and name not in _warned:
        _warned.add(name)
        log.warning("template %s: %d token(s) cross a reply boundary with this tokenizer, so a label includes "
                    "template text; add the template's markers as special tokens (ChatTemplate.add_special_tokens)",
                    name, straddling)
    labels = [t if keep else IGNORE_INDEX for t, keep in zip(ids, trained, strict=True)]
    if max_length is not None:
        if max_length < 1:
            raise TemplateError(f"max_length should be positive, got {max_length}")
        ids, labels = ids[:max_length], labels[:max_length]
    return {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": labels}
