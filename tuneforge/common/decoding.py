"""Decoded generations end on a whole character.

A byte-level BPE tokenizer (GPT-2, Qwen, SmolLM) can split one UTF-8 character over several tokens; when
generation stops at `max_new_tokens` between them, `decode` writes U+FFFD for the incomplete bytes. Those
replacement characters at the very end are not text the model wrote, so they are dropped.
"""

from __future__ import annotations

REPLACEMENT = "\ufffd"


def whole_chars(text: str) -> str:
    """`text` without the U+FFFD run a decode leaves where it stopped inside a multibyte character."""
    return text.rstrip(REPLACEMENT)
