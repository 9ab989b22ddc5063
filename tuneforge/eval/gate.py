"""The forgetting gate of a train-then-eval pipeline: a `forgetting` verdict fails the run or warns."""

from __future__ import annotations

from typing import Any


def gate_decision(forgetting: dict[str, Any] | None, policy: str) -> dict[str, Any]:
    """{"passed": bool, "policy", "verdict", "reasons": [...]}: the overall suite verdict decides; `warn` never
    fails, but says why it would. A perplexity rise, advisory-tier drops and `inconclusive` (under-powered)
    suites are listed among the reasons without deciding."""
    if not forgetting:
        return {"passed": True, "policy": policy, "verdict": None, "reasons": ["no forgetting check was run"]}
    reasons = []
    notes = []
    for suite, block in sorted((forgetting.get("suites") or {}).items()):
        tier = block.get("tier", "critical")
        gates = block.get("gates", True)
        where = f"{suite} ({tier}{'' if gates else ', not gated'})" if "tier" in block else suite
        if block.get("verdict") == "forgetting":
            line = (f"{where}: accuracy {block.get('delta'):+.2f} points "
                    f"(95% CI {block.get('ci_low'):+.2f}..{block.get('ci_high'):+.2f}, "
                    f"McNemar p={block.get('p_value'):.4f})")
            (reasons if gates else notes).append(line)
        elif block.get("verdict") == "inconclusive":
            notes.append(f"{where}: inconclusive, {block.get('note') or 'under-powered'}")
    verdict = forgetting.get("verdict")
    failed = verdict == "forgetting"
    ppl = forgetting.get("perplexity") or {}
    if ppl.get("verdict") == "forgetting":
        # Reported, but the gate follows the suites' verdict: perplexity has no significance test here.
        notes.append(f"perplexity on general text rose {ppl.get('change_pct'):+.1f}% "
                     f"(over the {ppl.get('tolerance_pct')}% tolerance; not gated)")
    return {"passed": not failed or policy == "warn", "policy": policy, "verdict": verdict,
            "reasons": (reasons or [f"verdict: {verdict}"]) + notes}
