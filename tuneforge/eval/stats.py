"""Paired statistics for the forgetting check: same questions, base vs tuned, per-question correctness.

The delta's 95% interval is a paired bootstrap over questions (resampling question indices, so each
resample keeps base and tuned answers of a question together). Significance is McNemar's exact test: under
no change, the discordant questions (right->wrong vs wrong->right) split 50/50, a binomial test (scipy).

Power: the minimum detectable effect (MDE) at the run's n is the accuracy drop that McNemar's test would
detect with the configured power (80%) at alpha, two-sided, from Connor's (1987) normal approximation for
paired proportions, n = (z_{a/2} sqrt(psi) + z_b sqrt(psi - d^2))^2 / d^2, with psi the discordant share
observed in the run (at least d: a drop of d needs at least d of the questions to flip). A comparison
whose MDE exceeds its tolerance and that finds nothing significant is `inconclusive`, with the n it would
need. Many subjects or categories at once are Holm-corrected within their suite.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest, norm

FORGETTING, NO_CHANGE, IMPROVED, INCONCLUSIVE = "forgetting", "no significant change", "improved", "inconclusive"


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
    mde: float | None = None  # points: the drop detectable at this n (power, alpha), two-sided
    needed_n: int | None = None  # questions needed to detect a drop of `tolerance` points at this power
    tolerance: float | None = None

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


def _z(alpha: float, power: float) -> tuple[float, float]:
    return float(norm.ppf(1 - alpha / 2)), float(norm.ppf(power))


def mcnemar_n(drop: float, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Questions needed to detect an accuracy change `drop` (a fraction) when a share `discordant` of the
    questions flips (Connor 1987); psi is taken as at least `drop`."""
    d = abs(drop)
    if d <= 0:
        return float("inf")
    psi = min(1.0, max(discordant, d))
    za, zb = _z(alpha, power)
    return (za * np.sqrt(psi) + zb * np.sqrt(max(psi - d * d, 0.0))) ** 2 / (d * d)


def mcnemar_mde(n: int, discordant: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest change (a fraction of questions) detectable at n: the inverse of `mcnemar_n` in d
    (monotone, by bisection)."""
    if n <= 0:
        return 1.0
    lo, hi = 1e-9, 1.0
    if mcnemar_n(hi, discordant, alpha, power) > n:
        return 1.0
    for _ in range(80):
        mid = (lo + hi) / 2
        lo, hi = (mid, hi) if mcnemar_n(mid, discordant, alpha, power) > n else (lo, mid)
    return hi


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values (family-wise error at alpha), in the input order."""
    m = len(pvalues)
    order = sorted(range(m), key=lambda i: pvalues[i])
    adj = [1.0] * m
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * pvalues[i]))
        adj[i] = running
    return adj


def verdict(delta: float, p: float, tolerance: float, alpha: float, mde: float | None = None) -> str:
    """`forgetting` needs both: a drop beyond the tolerance (points) and significance at alpha; with no
    significant change, `inconclusive` when the drop the run could detect (`mde`, points) exceeds the
    tolerance."""
    if delta < -tolerance and p < alpha:
        return FORGETTING
    if delta > 0 and p < alpha:
        return IMPROVED
    if p >= alpha and mde is not None and mde > tolerance:
        return INCONCLUSIVE
    return NO_CHANGE


def inconclusive_note(r: dict) -> str:
    return (f"needs about {r['needed_n']:,} questions to see a drop of {r['tolerance']:g} points "
            f"(this run: n={r['n']}, detectable drop {r['mde']:.1f} points)")


def compare_paired(base: list[bool], tuned: list[bool], *, tolerance: float = 1.0, alpha: float = 0.05,
                   iters: int = 10000, seed: int = 0, power: float | None = None,
                   p_value: float | None = None) -> PairedResult:
    """Paired comparison; with `power`, the MDE and an `inconclusive` verdict when under-powered.
    `p_value` replaces McNemar's p in the verdict (a Holm-adjusted one)."""
    if len(base) != len(tuned) or not base:
        raise ValueError("paired outcomes need the same, non-zero number of questions")
    b, t = np.asarray(base, dtype=bool), np.asarray(tuned, dtype=bool)
    lost, gained = int((b & ~t).sum()), int((~b & t).sum())
    delta = 100.0 * (t.mean() - b.mean())
    lo, hi = paired_bootstrap_ci(b, t, iters=iters, seed=seed)
    p = mcnemar_exact(lost, gained) if p_value is None else p_value
    mde = needed = None
    if power is not None:
        psi = (lost + gained) / len(b)
        mde = 100.0 * mcnemar_mde(len(b), psi, alpha, power)
        need = mcnemar_n(tolerance / 100.0, psi, alpha, power)
        needed = int(np.ceil(need)) if np.isfinite(need) else None
    return PairedResult(len(b), 100.0 * float(b.mean()), 100.0 * float(t.mean()), float(delta), lo, hi,
                        lost, gained, p, verdict(float(delta), p, tolerance, alpha, mde), mde, needed, tolerance)
