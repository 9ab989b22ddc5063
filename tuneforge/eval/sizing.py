"""Sizing a forgetting check before any training: what drop can it see with the questions it was given?

The check's verdict is `inconclusive` when nothing is significant and the minimum detectable effect (MDE,
`stats.mcnemar_mde` at the observed share of flipped answers) exceeds the tolerance. That share is at least
the drop itself (a drop of d needs d of the questions to flip), so the MDE at a flip share equal to the drop
is a hard lower bound: if even that bound is above the tolerance, no outcome of training can give
`no significant change`, and the run is known to be under-powered before it starts. With a planning guess
of the flip share (`expected_flip_rate`), the sizing at that share is added.
"""

from __future__ import annotations

import math
from typing import Any

from tuneforge.eval.stats import mcnemar_mde, mcnemar_n


def size_suite(n: int, tolerance: float, alpha: float, power: float,
               flip_rate: float | None = None) -> dict[str, Any]:
    """One suite: the best-case detectable drop (points) at n, the questions needed to see `tolerance`,
    and how many it falls short; with `flip_rate`, the same at that share of flipped answers."""
    best_n = mcnemar_n(tolerance / 100.0, 0.0, alpha, power)
    out: dict[str, Any] = {
        "n": n, "tolerance": tolerance,
        "detectable_drop_best": round(100.0 * mcnemar_mde(n, 0.0, alpha, power), 2),
        "needed_best": math.ceil(best_n),
        "short_by_best": max(0, math.ceil(best_n) - n),
    }
    out["can_conclude"] = out["short_by_best"] == 0
    if flip_rate is not None:
        need = mcnemar_n(tolerance / 100.0, flip_rate, alpha, power)
        out.update({"flip_rate": flip_rate,
                    "detectable_drop_at_rate": round(100.0 * mcnemar_mde(n, flip_rate, alpha, power), 2),
                    "needed_at_rate": math.ceil(need), "short_by_at_rate": max(0, math.ceil(need) - n)})
    return out


def size_forgetting(config: Any, flip_rate: float | None = None) -> dict[str, Any]:
    """Every gated suite of a forgetting eval config, counted from its files (no model is loaded)."""
    from tuneforge.eval.runner import _suites

    fc = config.forgetting
    suites: dict[str, Any] = {}
    for sc, suite in _suites(config):
        tier = sc.tier
        tol = fc.tier_tolerance(tier) if hasattr(fc, "tier_tolerance") else fc.tolerance
        gates = fc.tier_gates(tier) if hasattr(fc, "tier_gates") else True
        n = sum(len(suite.items(subject, sc.limit)) for subject in suite.subjects)
        suites[suite.name] = {**size_suite(n, tol, fc.alpha, fc.power, flip_rate), "tier": tier, "gates": gates}
    gated = [s for s in suites.values() if s["gates"]]
    return {"alpha": fc.alpha, "power": fc.power, "suites": suites,
            "can_conclude": all(s["can_conclude"] for s in gated) if gated else False}


def sizing_lines(sizing: dict[str, Any]) -> list[str]:
    """The sizing in words, a line a suite (what the pipeline logs before training)."""
    lines = []
    for name, s in sizing["suites"].items():
        gated = "" if s["gates"] else ", not gated"
        line = (f"{name} ({s['tier']}{gated}): n={s['n']} can detect a drop of {s['detectable_drop_best']:.1f} "
                f"points at best (alpha {sizing['alpha']:g}, power {sizing['power']:.0%}); a tolerance "
                f"of {s['tolerance']:g} points needs {s['needed_best']:,} questions")
        line += f", {s['short_by_best']:,} short" if s["short_by_best"] else ", enough"
        if "flip_rate" in s:
            line += (f"; at {s['flip_rate']:.0%} flipped answers: {s['detectable_drop_at_rate']:.1f} points, "
                     f"{s['needed_at_rate']:,} needed")
        lines.append(line)
    return lines
