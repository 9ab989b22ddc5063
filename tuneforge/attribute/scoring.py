"""From projected gradients to a ranking: TracIn over checkpoints, with bootstrap intervals over lost questions.

harm[r, q] = sum over checkpoints c of w_c * -<g_c(record r), g_c(lost question q)>, where g(q) is the gradient
of minus the log-likelihood of q's correct answer. A gradient step on r changes q's loss by about
-lr * <g(r), g(q)>, so a positive harm means training on r pushed the model away from q's right answer. With
`normalize` both gradients are unit length first (cosine, as LESS does), so long records and confident
questions do not dominate by gradient norm alone. A record's score is its mean harm over the lost questions.

The lost questions are a sample of what the fine-tune broke; every figure's interval is a percentile
bootstrap over them (resampling questions, the records fixed).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def harm_matrix(train: list[Any], lost: list[Any], weights: list[float], normalize: bool = True) -> np.ndarray:
    """train[c]: [N, k], lost[c]: [Q, k] projected gradients at checkpoint c -> harm [N, Q]."""
    total = None
    for t, q, w in zip(train, lost, weights, strict=True):
        t, q = np.asarray(t, dtype=np.float64), np.asarray(q, dtype=np.float64)
        if normalize:
            t = t / np.maximum(np.linalg.norm(t, axis=1, keepdims=True), 1e-12)
            q = q / np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        h = -w * (t @ q.T)
        total = h if total is None else total + h
    assert total is not None
    return total


def bootstrap_weights(n_questions: int, iters: int, seed: int) -> np.ndarray:
    """[iters, Q] resampling weights (counts / Q): column means under each bootstrap draw of the questions."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n_questions, size=(iters, n_questions))
    counts = np.zeros((iters, n_questions))
    np.add.at(counts, (np.arange(iters)[:, None], idx), 1.0)
    return counts / n_questions


def interval(draws: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    lo, hi = np.quantile(draws, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def record_scores(harm: np.ndarray, iters: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Per record: score (mean harm), its 95% bootstrap interval, and how often it stays in the top 10."""
    n, q = harm.shape
    boot = bootstrap_weights(q, iters, seed)  # [B, Q]
    draws = harm @ boot.T  # [N, B]
    score = harm.mean(axis=1)
    lo, hi = np.quantile(draws, [0.025, 0.975], axis=1)
    k = min(10, n)
    top = np.argpartition(-draws, k - 1, axis=0)[:k] if n > k else np.tile(np.arange(n)[:, None], (1, iters))
    in_top = np.zeros(n)
    np.add.at(in_top, top.reshape(-1), 1.0)
    return {"score": score, "ci_low": lo, "ci_high": hi, "top10_share": in_top / iters, "draws": draws}


def group_totals(keys: list[str], draws: np.ndarray, score: np.ndarray) -> dict[str, dict]:
    """Sum of record scores per group (source, augment operator), with its bootstrap interval, the count and
    the mean per record."""
    groups: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        groups[k].append(i)
    out = {}
    for k, idx in sorted(groups.items(), key=lambda kv: -float(score[kv[1]].sum())):
        total = draws[idx].sum(axis=0)
        lo, hi = interval(total)
        out[k] = {"records": len(idx), "total": round(float(score[idx].sum()), 6), "ci_low": round(lo, 6),
                  "ci_high": round(hi, 6), "mean": round(float(score[idx].mean()), 6),
                  "positive": int((score[idx] > 0).sum())}
    return out


def subject_harm(keys: list[str], subjects: list[str], harm: np.ndarray, iters: int = 1000,
                 seed: int = 0) -> dict[str, dict[str, dict]]:
    """Per source and lost-question subject: the source's mean harm to that subject's lost questions, with a
    bootstrap interval over those questions."""
    rng = np.random.default_rng(seed)
    by_src: dict[str, list[int]] = defaultdict(list)
    for i, k in enumerate(keys):
        by_src[k].append(i)
    by_subj: dict[str, list[int]] = defaultdict(list)
    for j, s in enumerate(subjects):
        by_subj[s].append(j)
    out: dict[str, dict[str, dict]] = {}
    for src, rows in by_src.items():
        per_q = harm[rows].mean(axis=0)  # [Q]: the source's mean harm to each lost question
        out[src] = {}
        for subj, cols in sorted(by_subj.items()):
            v = per_q[cols]
            row: dict[str, Any] = {"lost": len(cols), "mean_harm": round(float(v.mean()), 6), "ci_low": None,
                                   "ci_high": None}
            if len(v) > 1:  # one question has no spread to resample: no interval rather than a false one
                lo, hi = interval(v[rng.integers(0, len(v), size=(iters, len(v)))].mean(axis=1))
                row.update(ci_low=round(lo, 6), ci_high=round(hi, 6))
            out[src][subj] = row
    return out


def histogram(score: np.ndarray, bins: int = 12) -> dict[str, list]:
    counts, edges = np.histogram(score, bins=bins)
    return {"counts": counts.tolist(), "edges": [round(float(e), 6) for e in edges]}
