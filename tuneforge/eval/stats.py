"""Paired statistics for the forgetting check: same questions, base vs tuned, per-question correctness.

The delta's 95% interval is a paired bootstrap over questions (resampling question indices, so each
resample keeps base and tuned answers of a question together). Significance is McNemar's exact test: under
no change, the discordant questions (right->wrong vs wrong->right) split 50/50, a binomial test (scipy).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

FORGETTING, NO_CHANGE, IMPROVED = "forgetting", "no significant change", "improved"


@dataclass(frozen=True)
class PairedResult:
    n: int
    base_accuracy: float
    tuned_accuracy: float
    delta: float  # points, tuned - base
    ci_low: float
    ci_high: float
    lost: int  # right before, wrong after
    gained: int  # wrong before, right after
    p_value: float
    verdict: str

    def as_dict(self) -> dict:
        return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in self.__dict__.items()}


def paired_bootstrap_ci(base: np.ndarray, tuned: np.ndarray, iters: int = 10000, seed: int = 0,
                        level: float = 0.95) -> tuple[float, float]:
    n = len(base)
    diff = tuned.astype(np.float64) - base.astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(iters)
    for start in range(0, iters, 1000):  # chunks keep memory flat for large suites
        stop = min(iters, start + 1000)
        idx = rng.integers(0, n, size=(stop - start, n))
        means[start:stop] = diff[idx].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return 100.0 * float(lo), 100.0 * float(hi)


def mcnemar_exact(lost: int, gained: int) -> float:
    k = lost + gained
    return 1.0 if k == 0 else float(binomtest(min(lost, gained), k, 0.5).pvalue)


def verdict(delta: float, p: float, tolerance: float, alpha: float) -> str:
    """`forgetting` needs both: a drop beyond the tolerance (points) and significance at alpha."""
    if delta < -tolerance and p < alpha:
        return FORGETTING
    if delta > 0 and p < alpha:
        return IMPROVED
    return NO_CHANGE


def compare_paired(base: list[bool], tuned: list[bool], *, tolerance: float = 1.0, alpha: float = 0.05,
                   iters: int = 10000, seed: int = 0) -> PairedResult:
    if len(base) != len(tuned) or not base:
        raise ValueError("paired outcomes need the same, non-zero number of questions")
    b, t = np.asarray(base, dtype=bool), np.asarray(tuned, dtype=bool)
    lost, gained = int((b & ~t).sum()), int((~b & t).sum())
    delta = 100.0 * (t.mean() - b.mean())
    lo, hi = paired_bootstrap_ci(b, t, iters=iters, seed=seed)
    p = mcnemar_exact(lost, gained)
    return PairedResult(len(b), 100.0 * float(b.mean()), 100.0 * float(t.mean()), float(delta), lo, hi,
                        lost, gained, p, verdict(float(delta), p, tolerance, alpha))
