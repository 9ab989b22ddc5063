"""The build's executors: local workers from a fork server that leaves as soon as the build's process does, and
the one runner rule (`choose_runner`) that the plain build and the Prefect flow both follow."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tuneforge.builder.executor import (
    AUTO_SERIAL_BYTES,
    Executor,
    ProcessExecutor,
    ThreadExecutor,
    choose_runner,
    make_executor,
)
from tuneforge.common.errors import TuneforgeError
from tuneforge.flows.build import with_runner

MODULE = "tuneforge.builder.forkserver_exit"
# eval is a picklable builtin: a worker answers whether the module came with it from the fork server (forked
# from it, not imported since), and whether its quick-exit hook is armed there.
PROBE = f"({MODULE!r} in __import__('sys').modules, __import__({MODULE!r}).builder.forkserver_exit.ACTIVE)"


def test_the_fork_server_preloads_the_quick_exit_hook():
    with ProcessExecutor(workers=2) as ex:
        assert ex.map(eval, [PROBE] * 3, stage="probe") == [(True, True)] * 3


def test_the_hook_outside_a_fork_server_leaves_the_exit_code_alone():
    code = f"import sys, {MODULE} as m; assert not m.ACTIVE; sys.exit(3)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 3


# The runner rule: one table (`choose_runner`) read by the plain build and by the Prefect flow alike.
CHOICES = [
    # (runner, workers, dask_address) -> (kind, workers, address, in-process below)
    (("auto", 3, None), ("processes", 3, None, AUTO_SERIAL_BYTES)),
    (("local", 3, None), ("processes", 3, None, AUTO_SERIAL_BYTES)),
    (("processes", 3, None), ("processes", 3, None, 0)),
    (("processes", 1, None), ("serial", 1, None, 0)),
    (("auto", 1, None), ("serial", 1, None, 0)),
    (("threads", 2, None), ("threads", 2, None, 0)),
    (("serial", None, None), ("serial", 1, None, 0)),
    (("serial", 1, None), ("serial", 1, None, 0)),
    (("dask", 2, None), ("dask", 2, None, 0)),
    (("dask", None, "tcp://h:8786"), ("dask", None, "tcp://h:8786", 0)),
    (("auto", None, "tcp://h:8786"), ("dask", None, "tcp://h:8786", 0)),
    (("local", None, "tcp://h:8786"), ("dask", None, "tcp://h:8786", 0)),
]
CONFLICTS = [
    (("processes", None, "tcp://h:8786"), "--runner processes runs on this machine but --dask-address"),
    (("threads", None, "tcp://h:8786"), "--runner threads runs on this machine but --dask-address"),
    (("serial", None, "tcp://h:8786"), "--runner serial runs on this machine but --dask-address"),
    (("dask", 4, "tcp://h:8786"), "--workers 4 with --dask-address"),
    (("auto", 4, "tcp://h:8786"), "--workers 4 with --dask-address"),
    (("serial", 2, None), "--runner serial runs in this process: drop --workers 2"),
    (("processes", 0, None), "--workers 0: give at least 1"),
    (("ray", None, None), "unknown runner 'ray'"),
]


@pytest.mark.parametrize(("given", "want"), CHOICES)
def test_choose_runner_reads_each_combination_once(given, want):
    c = choose_runner(*given)
    assert (c.kind, c.workers, c.address, c.serial_below) == want


def test_choose_runner_defaults_to_one_worker_a_core():
    c = choose_runner()
    cores = os.cpu_count() or 1
    assert (c.kind, c.workers) == (("processes", cores) if cores > 1 else ("serial", 1))


@pytest.mark.parametrize(("given", "message"), CONFLICTS)
def test_contradictory_runner_options_are_refused_on_both_paths(given, message):
    with pytest.raises(TuneforgeError, match=re.escape(message)):
        choose_runner(*given)
    with pytest.raises(TuneforgeError, match=re.escape(message)):
        make_executor(*given)
    with pytest.raises(TuneforgeError, match=re.escape(message)):
        with_runner(given[0], given[2], given[1])


@pytest.mark.parametrize(("runner", "workers", "kind", "n"), [
    ("auto", 3, ProcessExecutor, 3), ("processes", 2, ProcessExecutor, 2), ("threads", 2, ThreadExecutor, 2),
    ("serial", None, Executor, 1), ("processes", 1, Executor, 1)])
def test_the_plain_build_gets_the_chosen_executor(runner, workers, kind, n):
    with make_executor(runner, workers) as ex:
        assert type(ex) is kind and ex.workers == n
        assert getattr(ex, "serial_below", 0) == (AUTO_SERIAL_BYTES if runner == "auto" else 0)


@pytest.mark.parametrize(("runner", "workers", "address", "runner_class", "n"), [
    ("auto", 3, None, "ProcessPoolTaskRunner", 3), ("processes", 2, None, "ProcessPoolTaskRunner", 2),
    ("processes", 1, None, "ThreadPoolTaskRunner", 1), ("threads", 2, None, "ThreadPoolTaskRunner", 2),
    ("serial", None, None, "ThreadPoolTaskRunner", 1), ("dask", None, "tcp://h:8786", "DaskTaskRunner", None),
    ("auto", None, "tcp://h:8786", "DaskTaskRunner", None), ("dask", 2, None, "DaskTaskRunner", None)])
def test_the_prefect_flow_gets_the_chosen_task_runner(runner, workers, address, runner_class, n):
    tr = with_runner(runner, address, workers).task_runner
    assert type(tr).__name__ == runner_class
    if n is not None:
        assert tr._max_workers == n
    if runner_class == "DaskTaskRunner":
        assert tr.address == address
        assert address or tr.cluster_kwargs["n_workers"] == workers


@pytest.mark.parametrize("prefect", ["--no-prefect", "--prefect"])
def test_the_cli_refuses_a_local_runner_with_a_dask_address(tmp_path, prefect):
    """Exit 2, one line naming both options, before any work: under Prefect and without it."""
    recipe = tmp_path / "r.yaml"
    recipe.write_text("name: r\nsources: [{name: a, path: a.jsonl, format: alpaca}]\n", encoding="utf-8")
    (tmp_path / "a.jsonl").write_text('{"instruction": "q", "output": "a"}\n', encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    p = subprocess.run([sys.executable, "-m", "tuneforge.cli", "build", str(recipe), "--out", str(tmp_path / "o"),
                        "--runner", "processes", "--dask-address", "tcp://127.0.0.1:9", prefect],
                       capture_output=True, text=True, env=env, timeout=120)
    assert p.returncode == 2, p.stderr[-2000:]
    assert "--runner processes runs on this machine but --dask-address" in p.stderr
    assert "Traceback" not in p.stderr and not (tmp_path / "o").exists()
