"""The forgetting gate beyond McNemar: power (MDE), Holm correction, tiers with their own tolerances."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import binom, norm

from tuneforge.eval.config import ForgettingConfig
from tuneforge.eval.forgetting import forgetting_block
from tuneforge.eval.stats import (
    FORGETTING,
    INCONCLUSIVE,
    NO_CHANGE,
    compare_paired,
    holm,
    mcnemar_mde,
    mcnemar_n,
)
from tuneforge.pipeline.gate import gate_decision


def _connor_n(d: float, psi: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """Connor (1987), written out here independently of tuneforge.eval.stats."""
    za, zb = norm.ppf(1 - alpha / 2), norm.ppf(power)
    return ((za * np.sqrt(psi) + zb * np.sqrt(psi - d * d)) / d) ** 2


def _simulated_power(n: int, psi: float, d: float, alpha: float = 0.05, sims: int = 20000, seed: int = 1) -> float:
    """Monte Carlo power of McNemar's exact test when a share psi of questions flips, drop d."""
    rng = np.random.default_rng(seed)
    counts = rng.multinomial(n, [(psi + d) / 2, (psi - d) / 2, 1 - psi], size=sims)
    lost, gained = counts[:, 0], counts[:, 1]
    k = lost + gained
    p = np.minimum(1.0, 2 * binom.cdf(np.minimum(lost, gained), k, 0.5))
    p[k == 0] = 1.0
    return float((p < alpha).mean())


@pytest.mark.parametrize(("n", "psi"), [(1346, 0.10), (500, 0.2), (11582, 0.05)])
def test_mde_matches_connor_and_a_simulation(n, psi):
    d = mcnemar_mde(n, psi)
    assert _connor_n(d, psi) == pytest.approx(n, rel=1e-3)  # the inverse of the closed form
    assert mcnemar_n(d, psi) == pytest.approx(_connor_n(d, psi), rel=1e-9)
    # McNemar's exact test at that drop detects it about 80% of the time (the exact test is slightly
    # conservative; the normal approximation slightly optimistic)
    assert 0.74 <= _simulated_power(n, psi, d) <= 0.86


def test_mde_in_results_and_inconclusive_when_under_powered():
    rng = np.random.default_rng(0)
    base = list(rng.random(60) < 0.5)
    tuned = list(base)
    tuned[0] = not tuned[0]
    tuned[1] = not tuned[1]
    r = compare_paired(base, tuned, tolerance=1.0, power=0.8)
    assert r.verdict == INCONCLUSIVE and r.mde > 1.0
    assert r.needed_n > 60 and r.needed_n == int(np.ceil(mcnemar_n(0.01, 2 / 60)))
    big = compare_paired(base * 200, tuned * 200, tolerance=5.0, power=0.8)  # n=12000: a 5-point drop is visible
    assert big.verdict == NO_CHANGE and big.mde < 5.0


def test_holm_adjusts_step_down():
    assert holm([0.01, 0.04, 0.03]) == pytest.approx([0.03, 0.06, 0.06])
    assert holm([0.5]) == [0.5]
    assert holm([0.001, 0.9]) == pytest.approx([0.002, 0.9])


def _rows(suite, n, base_right, lost, gained, subjects=("s1", "s2"), seed=0):
    rng = np.random.default_rng(seed)
    b = np.zeros(n, bool)
    b[:base_right] = True
    t = b.copy()
    t[:lost] = False
    t[base_right:base_right + gained] = True
    perm = rng.permutation(n)
    b, t = b[perm], t[perm]
    mk = [lambda i, c: {"suite": suite, "uid": f"{subjects[i % len(subjects)]}/{i}", "subject": subjects[i % len(subjects)],
                        "category": "STEM" if i % 2 else "Humanities", "answer": "A", "pred": "A" if c else "B",
                        "correct": bool(c)}]
    return [mk[0](i, c) for i, c in enumerate(b)], [mk[0](i, c) for i, c in enumerate(t)]


def test_tiers_decide_the_gate_and_report_mde_per_comparison():
    fc = ForgettingConfig(bootstrap=500)
    cb, ct = _rows("ceval", 1000, 600, lost=70, gained=20)  # -5 points, critical
    mb, mt = _rows("mmlu", 1000, 600, lost=80, gained=20, seed=1)  # -6 points, advisory: reported only
    sb, st = _rows("mine", 40, 20, lost=1, gained=1, seed=2)  # tiny own exam, supporting
    results = {"model": "m", "suites": {"ceval": {}, "mmlu": {}, "mine": {}}}
    tiers = {"ceval": "critical", "mmlu": "advisory", "mine": "supporting"}
    fg = forgetting_block(results, results, cb + mb + sb, ct + mt + st, fc, tiers)
    s = fg["suites"]
    assert s["ceval"]["verdict"] == FORGETTING and s["ceval"]["tolerance"] == 1.0
    assert s["mmlu"]["verdict"] == FORGETTING and s["mmlu"]["tolerance"] == 5.0 and not s["mmlu"]["gates"]
    assert s["mine"]["verdict"] == INCONCLUSIVE and s["mine"]["tolerance"] == 2.0
    assert "needs about" in s["mine"]["note"] and "questions to see a drop of 2 points" in s["mine"]["note"]
    assert set(fg["mde"]) == {"ceval", "mmlu", "mine"} and all(v > 0 for v in fg["mde"].values())
    for sub in s["ceval"]["subjects"].values():  # per subject: Holm over the suite's subjects, MDE
        assert sub["p_holm"] >= sub["p_raw"] and sub["mde"] > 0
    assert set(s["ceval"]["categories"]) == {"STEM", "Humanities"}
    assert fg["tiers"]["advisory"] == {"suites": ["mmlu"], "tolerance": 5.0, "gates": False, "verdict": FORGETTING}
    assert fg["verdict"] == FORGETTING
    gate = gate_decision(fg, "fail")
    assert not gate["passed"] and any(r.startswith("ceval (critical)") for r in gate["reasons"])
    assert any("mmlu (advisory, not gated)" in r for r in gate["reasons"])
    assert any("mine (supporting): inconclusive, needs about" in r for r in gate["reasons"])

    # without the critical drop: the advisory one does not fail the gate, the small exam makes it inconclusive
    fg2 = forgetting_block(results, results, cb + mb + sb, cb + mt + st, fc, tiers)
    assert fg2["verdict"] == INCONCLUSIVE
    assert gate_decision(fg2, "fail")["passed"]

