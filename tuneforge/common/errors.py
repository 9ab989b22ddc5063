"""User-facing errors: the CLI prints their message and exits non-zero, without a traceback."""

import errno
import os


class TuneforgeError(Exception):
    """An error a user can act on; its message says what went wrong and what to do."""


class RecipeError(TuneforgeError):
    """The recipe or config is invalid; the message names the field."""


class SourceError(TuneforgeError):
    """A source file cannot be read at all; the message names the file and why."""


class StrictError(TuneforgeError):
    """`strict=True` found rejected records; the output was written and the rejects say why."""


# The machine's faults a user can fix (errno -> what to do). Anything else an OSError says is tuneforge's.
_FIXES = {
    errno.ENOSPC: "the disk is full: free space there (or write to a larger disk) and re-run",
    errno.EDQUOT: "the disk quota is used up: free space or raise the quota, then re-run",
    errno.EACCES: "permission denied: give this user access (or choose another path) and re-run",
    errno.EPERM: "operation not permitted: give this user access (or choose another path) and re-run",
    errno.EROFS: "the file system is read-only: write to another folder",
    errno.EMFILE: "too many open files: raise the limit (ulimit -n) and re-run",
    errno.ENFILE: "the system has too many open files: close some programs and re-run",
    errno.EIO: "the disk reported an input/output error: check the disk and re-run",
}


def _errno(e: OSError) -> int | None:
    if e.errno in _FIXES:
        return e.errno
    text = str(e)  # pyarrow's and some libraries' OSErrors carry the errno only in their message
    return next((code for code in _FIXES if os.strerror(code) in text), None)


def machine_fault(e: BaseException) -> str | None:
    """One line for an error the user or the machine can fix (full disk, quota, permissions), else None."""
    seen = 0
    cur: BaseException | None = e
    while cur is not None and seen < 8:
        if isinstance(cur, OSError) and (code := _errno(cur)) is not None:
            where = f" ({cur.filename})" if getattr(cur, "filename", None) else ""
            return f"{os.strerror(code).lower()}{where}; {_FIXES[code]}"
        cur, seen = cur.__cause__, seen + 1
    return None


def disk_full(e: BaseException) -> bool:
    """The error is a full disk or quota: the build then drops its scratch to give the space back."""
    m = machine_fault(e)
    return m is not None and m.startswith((os.strerror(errno.ENOSPC).lower(), os.strerror(errno.EDQUOT).lower()))
