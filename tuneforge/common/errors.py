"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""


class TuneforgeError(Exception):
    """An error a user can act on; its message says what went wrong and what to do."""


class RecipeError(TuneforgeError):
    """The recipe or config is invalid; the message names the field."""


class SourceError(TuneforgeError):
    """A source file cannot be read at all; the message names the file and why."""


class StrictError(TuneforgeError):
    """`strict=True` found rejected records; the output was written and the rejects say why."""
