"""The forgetting gate of a train-then-eval pipeline: a `forgetting` verdict fails the run or warns."""

from __future__ import annotations

from typing import Any


def gate_decision(forgetting: dict[str, Any] | None, policy: str) -> dict[str, Any]:
    """{"passed": bool, "policy", "verdict", "reasons": [...]}; `warn` never fails, but says why it would."""
    if not forgetting:
        return {"passed": True, "policy": policy, "verdict": None, "reasons": ["no forgetting check was run"]}
    reasons = []
    for suite, block in sorted((forgetting.get("suites") or {}).items()):
        if block.get("verdict") == "forgetting":
            reasons.append(f"{suite}: accuracy {block.get('delta'):+.2f} points "
                           f"(95% CI {block.get('ci_low'):+.2f}..{block.get('ci_high'):+.2f}, "
                           f"McNemar p={block.get('p_value'):.4f})")
    ppl = forgetting.get("perplexity") or {}
    if ppl.get("verdict") == "forgetting":
        reasons.append(f"perplexity on general text rose {ppl.get('change_pct'):+.1f}%")
    verdict = forgetting.get("verdict")
    failed = verdict == "forgetting" or bool(reasons)
    return {"passed": not failed or policy == "warn", "policy": policy, "verdict": verdict,
            "reasons": reasons or [f"verdict: {verdict}"]}
