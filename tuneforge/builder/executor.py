"""Executors say where per-shard work runs; they never decide what it does (datatrove's executors, in spirit).

A build maps top-level functions over small, picklable shard specs; each call reads and writes shard files
and returns a small summary. The same map runs in this process, on threads, on local worker processes, on
a Dask cluster, or (in `tuneforge.flows`) as Prefect task runs, and gives the same results in the same order.

This is the build's runtime, so it lives with the builder, not in `common/`: no stage and no other step
(training, evaluation) runs on it, and a pipeline step's cache key covers only the code the step runs, so an
edit here re-runs builds, never training. `choose_runner` is the one place that reads a runner's name.
"""

from __future__ import annotations

import concurrent.futures as cf
import os
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing import get_context
from typing import Any

from tuneforge.common.errors import TuneforgeError

OnDone = Callable[[int, Any], None]
AUTO_SERIAL_BYTES = 16 << 20  # `auto` builds smaller inputs in-process: worker start-up would cost more


class Executor:
    """Runs `fn(item)` for every item; results come back in item order, `on_done(i, result)` as each ends."""

    name = "serial"
    workers = 1

    def map(self, fn: Callable[[Any], Any], items: Sequence[Any], *, stage: str,
            on_done: OnDone | None = None) -> list[Any]:
        out = []
        for i, item in enumerate(items):
            r = fn(item)
            if on_done is not None:
                on_done(i, r)
            out.append(r)
        return out

    def expect(self, total_bytes: int) -> None:
        """How much input the work covers (an executor may choose to stay in this process for little)."""

    def close(self) -> None:
        """Release workers; the executor is unusable afterwards."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> str:
        return f"{self.name} ({self.workers} worker{'s' if self.workers != 1 else ''})"


def _gather(futures: list[cf.Future], on_done: OnDone | None) -> list[Any]:
    index = {f: i for i, f in enumerate(futures)}
    results: list[Any] = [None] * len(futures)
    try:
        for f in cf.as_completed(futures):
            i = index[f]
            results[i] = f.result()
            if on_done is not None:
                on_done(i, results[i])
    except BaseException:
        for f in futures:
            f.cancel()
        raise
    return results


class ThreadExecutor(Executor):
    """Threads of this process: useful when the work releases the GIL (I/O, hashing, Arrow)."""

    name = "threads"

    def __init__(self, workers: int | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1
        self._pool = cf.ThreadPoolExecutor(self.workers, thread_name_prefix="tuneforge")

    def map(self, fn, items, *, stage, on_done=None):  # type: ignore[override]
        return _gather([self._pool.submit(fn, it) for it in items], on_done)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)


def importing_main_script() -> bool:
    """True while a worker process imports the user's script (`__mp_main__`): a build started there would
    start workers of its own, recursively."""
    import inspect

    if "__mp_main__" not in sys.modules:
        return False
    frame = inspect.currentframe()
    while frame is not None:
        if frame.f_globals.get("__name__") == "__mp_main__":
            return True
        frame = frame.f_back
    return False


def _ready() -> None:
    """A worker's first task: it exists to start the worker early."""


class ProcessExecutor(Executor):
    """Local worker processes, one per core by default. Workers come from a fork server, not a fork of the
    caller, because the caller may hold threads (Prefect, rich's progress, an event loop)."""

    name = "processes"

    def __init__(self, workers: int | None = None, preload: tuple[str, ...] = (), serial_below: int = 0) -> None:
        self.workers = workers or os.cpu_count() or 1
        self.preload = list(preload)
        self.serial_below = serial_below
        self.serial = False
        self._pool: cf.ProcessPoolExecutor | None = None
        self._starting: threading.Thread | None = None
        self._start_error: BaseException | None = None

    def expect(self, total_bytes: int) -> None:
        # Starting workers costs seconds (each imports tuneforge); below the threshold this process is faster.
        self.serial = total_bytes < self.serial_below
        if not self.serial and self._pool is None and self._starting is None:
            # Started from a thread: the fork server imports tuneforge before it forks the first worker (0.25 s
            # here) and submitting waits for that, while this process could be planning the inputs meanwhile.
            self._starting = threading.Thread(target=self._start, name="tuneforge-workers", daemon=True)
            self._starting.start()

    def _start(self) -> None:
        try:
            pool = self._get()
            for _ in range(self.workers):
                pool.submit(_ready)
        except BaseException as e:  # raised again by the first map
            self._start_error = e

    def _started(self) -> cf.ProcessPoolExecutor:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
            if self._start_error is not None:
                err, self._start_error = self._start_error, None
                raise err
        return self._get()

    def describe(self) -> str:
        return "serial (small input)" if self.serial else super().describe()

    def _get(self) -> cf.ProcessPoolExecutor:
        if self._pool is None:
            ctx = get_context("forkserver")
            ctx.set_forkserver_preload([*self.preload, "tuneforge.builder.forkserver_exit"])
            self._pool = cf.ProcessPoolExecutor(self.workers, mp_context=ctx)
        return self._pool

    def map(self, fn, items, *, stage, on_done=None):  # type: ignore[override]
        if len(items) <= 1 or self.serial:
            return super().map(fn, items, stage=stage, on_done=on_done)
        try:
            pool = self._started()
            return _gather([pool.submit(fn, it) for it in items], on_done)
        except cf.process.BrokenProcessPool as e:
            raise TuneforgeError(f"{stage}: a worker process died ({e}). If you call tuneforge from a script, put "
                                 f"the call under `if __name__ == \"__main__\":` (worker processes import your "
                                 f"script); otherwise the machine may be out of memory: use fewer workers "
                                 f"(--workers) or smaller shards (--shard-mb)") from None

    def close(self) -> None:
        if self._starting is not None:
            self._starting.join()
            self._starting = None
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


class DaskExecutor(Executor):
    """A Dask cluster: the scheduler at `address` (tcp://host:8786), or a LocalCluster of worker processes.
    Shard files must live on storage every worker can read and write (the output folder)."""

    name = "dask"

    def __init__(self, address: str | None = None, workers: int | None = None) -> None:
        from tuneforge.common.extras import require

        require("the dask runner", "dask")
        from distributed import Client, LocalCluster

        self._cluster = None
        if address:
            self._client = Client(address, timeout="60s")
        else:
            self._cluster = LocalCluster(n_workers=workers or os.cpu_count() or 1, threads_per_worker=1,
                                         processes=True, dashboard_address=None)
            self._client = Client(self._cluster)
        self.address = address or self._cluster.scheduler_address
        self.workers = max(1, len(self._client.scheduler_info().get("workers", {})))

    def map(self, fn, items, *, stage, on_done=None):  # type: ignore[override]
        from distributed import as_completed

        futures = [self._client.submit(fn, it, pure=False, key=f"{stage}-{i}-{os.urandom(4).hex()}")
                   for i, it in enumerate(items)]
        index = {f.key: i for i, f in enumerate(futures)}
        results: list[Any] = [None] * len(futures)
        try:
            for f in as_completed(futures):
                i = index[f.key]
                results[i] = f.result()
                if on_done is not None:
                    on_done(i, results[i])
        except BaseException:
            self._client.cancel(futures)
            raise
        return results

    def worker_memory(self) -> dict[str, int]:
        """Bytes each worker process holds now (RSS), by worker address."""
        info = self._client.scheduler_info().get("workers", {})
        return {addr: int(w.get("metrics", {}).get("memory", 0)) for addr, w in info.items()}

    def close(self) -> None:
        self._client.close()
        if self._cluster is not None:
            self._cluster.close()

    def describe(self) -> str:
        return f"dask at {self.address} ({self.workers} workers)"


RUNNERS = ("auto", "serial", "threads", "processes", "dask")
ALIASES = {"local": "auto"}  # a pipeline file's `runner: local`
LOCAL = ("serial", "threads", "processes")  # runners that never reach a Dask cluster


@dataclass(frozen=True)
class RunnerChoice:
    """Where a build's work runs, decided once from the user's words; the plain build and the Prefect flow
    (`tuneforge.flows.build`) each turn it into their own executor or task runner.

    kind: serial | threads | processes | dask. workers: local threads or processes, or a LocalCluster's
    workers (None with `address`: the cluster has its own). serial_below: `auto` builds inputs smaller than
    this in this process (the plain path only: a Prefect flow's task runner is chosen before the inputs are
    planned, so there every shard is a task run)."""

    kind: str
    workers: int | None = 1
    address: str | None = None
    serial_below: int = 0


def choose_runner(runner: str = "auto", workers: int | None = None,
                  dask_address: str | None = None) -> RunnerChoice:
    """The one reading of (runner, workers, dask_address), under Prefect or not:

    | runner               | dask_address | workers       | runs on                                       |
    |----------------------|--------------|---------------|-----------------------------------------------|
    | auto (`local`)       | -            | N (cores)     | N processes; in-process when N is 1, and      |
    |                      |              |               | (plain path) for inputs under 16 MiB          |
    | processes            | -            | N (cores)     | N processes; in-process when N is 1           |
    | threads              | -            | N (cores)     | N threads                                     |
    | serial               | -            | 1 or none     | this process                                  |
    | dask                 | -            | N (cores)     | a LocalCluster of N worker processes          |
    | auto, dask           | X            | none          | the Dask cluster at X                         |

    Anything else is a TuneforgeError (exit 2) naming the conflict: a local runner (processes, threads,
    serial) with `dask_address`, `workers` with `dask_address` (the cluster's workers are its own), `serial`
    with more than one worker, fewer than one worker, or an unknown name.
    """
    name = ALIASES.get(runner, runner)
    if name not in RUNNERS:
        raise TuneforgeError(f"unknown runner {runner!r}; one of {', '.join(RUNNERS)}")
    if workers is not None and workers < 1:
        raise TuneforgeError(f"--workers {workers}: give at least 1 (or leave it out: one a core)")
    if dask_address:
        if name in LOCAL:
            raise TuneforgeError(f"--runner {runner} runs on this machine but --dask-address names a Dask cluster: "
                                 f"drop one of them (--dask-address alone, or with --runner dask, uses the cluster)")
        if workers is not None:
            raise TuneforgeError(f"--workers {workers} with --dask-address: the cluster at {dask_address} has its own "
                                 f"workers; drop --workers (or drop --dask-address for a local cluster of that size)")
        return RunnerChoice("dask", None, dask_address)
    if name == "serial":
        if workers is not None and workers > 1:
            raise TuneforgeError(f"--runner serial runs in this process: drop --workers {workers} (or use "
                                 f"--runner processes or threads)")
        return RunnerChoice("serial")
    n = workers or os.cpu_count() or 1
    if name in ("auto", "processes") and n == 1:
        return RunnerChoice("serial")
    return RunnerChoice(name if name != "auto" else "processes", n,
                        serial_below=AUTO_SERIAL_BYTES if name == "auto" else 0)


def make_executor(runner: str = "auto", workers: int | None = None, dask_address: str | None = None,
                  preload: tuple[str, ...] = ()) -> Executor:
    """The executor `choose_runner` picks for a plain (not Prefect) build."""
    c = choose_runner(runner, workers, dask_address)
    if c.kind == "dask":
        return DaskExecutor(c.address, c.workers)
    if c.kind == "threads":
        return ThreadExecutor(c.workers)
    if c.kind == "processes":
        return ProcessExecutor(c.workers, preload, serial_below=c.serial_below)
    return Executor()
