"""The fork server that starts a build's worker processes leaves at once when the build's process ends.

Without this it would first tear down every module it preloaded (pandas, pyarrow: 0.14 s measured at the
end of a 200k-record build), all the while holding the build's stdout and stderr open, so that whoever
reads the build's output to its end (a shell pipe, `subprocess.run(capture_output=True)`, a scheduler)
waits for it. The fork server holds nothing to flush or remove: its workers end with `os._exit`, and the
parent removes the socket's folder. `ProcessExecutor` (`builder/executor.py`) adds this module to the fork
server's preload; imported anywhere else it does nothing. It is part of the build's runtime, so it lives with
the builder.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys


def _in_fork_server() -> bool:
    from multiprocessing import forkserver

    frame = sys._getframe()
    while frame is not None:
        if frame.f_code is forkserver.main.__code__:
            return True
        frame = frame.f_back
    return False


def _leave() -> None:
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()
    os._exit(0)


ACTIVE = _in_fork_server()  # True in the fork server and in the workers it forks (which never run atexit)
if ACTIVE:
    atexit.register(_leave)
