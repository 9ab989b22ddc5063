"""Trials on several GPUs at once: one worker process a GPU, each pinned to its card (CUDA_VISIBLE_DEVICES is
set before the worker imports torch), so a batch of trials runs concurrently, one a GPU.

Apart from the driver (`search.py`) because it is process plumbing only: the driver asks for a batch of trials
and gets their records back in order, from this pool or, with one GPU or none, from its own process.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

from tuneforge.pipeline.search_trial import TrialRunner, run_trial, trial_label

log = logging.getLogger("tuneforge.search")

_GPU: dict[str, str] = {}


def gpu_count() -> int:
    """How many CUDA GPUs this process sees (0 without torch)."""
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except ImportError:
        return 0


def _pin_gpu(queue: Any) -> None:
    """Process-pool initializer: this worker sees one GPU."""
    os.environ["CUDA_VISIBLE_DEVICES"] = _GPU["id"] = str(queue.get())


def _run_trial_in_worker(ctx: dict[str, Any], number: int, params: dict[str, Any]) -> dict[str, Any]:
    rec = run_trial(ctx, number, params)
    rec["gpu"] = _GPU.get("id")
    return rec


def _waiter(future: Any) -> Callable[[], dict[str, Any]]:
    def trial() -> dict[str, Any]:
        return future.result()

    return trial


class GPUPool:
    """`workers` spawned processes, worker i on GPU i; `run` runs a batch of trials, one a worker."""

    def __init__(self, workers: int) -> None:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor

        mpc = mp.get_context("spawn")
        queue = mpc.Queue()
        for g in range(workers):
            queue.put(g)
        self.pool = ProcessPoolExecutor(max_workers=workers, mp_context=mpc, initializer=_pin_gpu, initargs=(queue,))
        log.info("search: %d GPUs, trials run %d at a time", workers, workers)

    def run(self, ctx: dict[str, Any], points: list[tuple[int, dict[str, Any]]],
            trial: TrialRunner | None) -> list[dict[str, Any]]:
        """The records of the trials `points` ((number, params) each), in their order. With `trial` (a
        Prefect subflow) each trial's wait is a subflow of its own, in threads, so they overlap."""
        futures = [self.pool.submit(_run_trial_in_worker, ctx, n, p) for n, p in points]
        labels = [trial_label(n, p) for n, p in points]
        if trial is None:
            return [f.result() for f in futures]
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(len(futures)) as tp:
            return list(tp.map(lambda lf: trial(lf[0], _waiter(lf[1])), zip(labels, futures, strict=True)))

    def shutdown(self) -> None:
        self.pool.shutdown()
