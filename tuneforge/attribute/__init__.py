"""Attribution: which training records caused the questions a fine-tune lost (issue #36).

A stage after eval: it reads a forgetting check's lost questions, the adapter it scored and the training run
that made it; it never imports pipeline, flows or the CLI.
"""

from __future__ import annotations

from typing import Any


def attribute(*args: Any, **kwargs: Any) -> dict:
    """See `tuneforge.attribute.run.attribute`."""
    from tuneforge.attribute.run import attribute as _attribute

    return _attribute(*args, **kwargs)


__all__ = ["attribute"]
