"""The local process executor: workers from a fork server that leaves as soon as the build's process does."""

from __future__ import annotations

import subprocess
import sys

from tuneforge.common.executor import ProcessExecutor

MODULE = "tuneforge.common.forkserver_exit"
# eval is a picklable builtin: a worker answers whether the module came with it from the fork server (forked
# from it, not imported since), and whether its quick-exit hook is armed there.
PROBE = f"({MODULE!r} in __import__('sys').modules, __import__({MODULE!r}).common.forkserver_exit.ACTIVE)"


def test_the_fork_server_preloads_the_quick_exit_hook():
    with ProcessExecutor(workers=2) as ex:
        assert ex.map(eval, [PROBE] * 3, stage="probe") == [(True, True)] * 3


def test_the_hook_outside_a_fork_server_leaves_the_exit_code_alone():
    code = f"import sys, {MODULE} as m; assert not m.ACTIVE; sys.exit(3)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 3
