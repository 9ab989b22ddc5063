"""The forgetting gate of a train-then-eval pipeline: what a verdict does to the run.

`policy` is what a significant drop beyond the tolerance (`forgetting`) does: `fail` the run or `warn`.
`on_inconclusive` is what an under-powered check does (nothing significant, but the run could not have seen a
drop of the tolerance): `fail`, `warn` (the default) or `pass`. Whatever passes says why: a check that could not
see is never recorded as a plain pass.

It lives in `pipeline/` (not `eval/`) because only a pipeline has a run to stop: `eval` measures and gives a
verdict, the pipeline and its search decide what the verdict does.
"""

from __future__ import annotations

from typing import Any

FAIL, WARN, PASS = "fail", "warn", "pass"


def _suite_lines(forgetting: dict[str, Any]) -> tuple[list[str], list[str], list[str]]:
    """(drops that gate, inconclusive gated suites, notes that never decide)."""
    drops, unsure, notes = [], [], []
    for suite, block in sorted((forgetting.get("suites") or {}).items()):
        tier = block.get("tier", "critical")
        gates = block.get("gates", True)
        where = f"{suite} ({tier}{'' if gates else ', not gated'})" if "tier" in block else suite
        if block.get("verdict") == "forgetting":
            line = (f"{where}: accuracy {block.get('delta'):+.2f} points "
                    f"(95% CI {block.get('ci_low'):+.2f}..{block.get('ci_high'):+.2f}, "
                    f"McNemar p={block.get('p_value'):.4f})")
            (drops if gates else notes).append(line)
        elif block.get("verdict") == "inconclusive":
            line = f"{where}: inconclusive, {block.get('note') or 'under-powered'}"
            (unsure if gates else notes).append(line)
    ppl = forgetting.get("perplexity") or {}
    if ppl.get("verdict") == "forgetting":
        # Reported, but the gate follows the suites' verdict: perplexity has no significance test here.
        notes.append(f"perplexity on general text rose {ppl.get('change_pct'):+.1f}% "
                     f"(over the {ppl.get('tolerance_pct')}% tolerance; not gated)")
    return drops, unsure, notes


def gate_decision(forgetting: dict[str, Any] | None, policy: str, on_inconclusive: str = WARN) -> dict[str, Any]:
    """{"passed", "status" (pass | warn | fail), "policy", "on_inconclusive", "verdict", "reasons"}.

    The overall verdict decides: `forgetting` follows `policy`, `inconclusive` follows `on_inconclusive`;
    `passed` is False only for `fail`. Advisory-tier drops and a perplexity rise are listed, never decide."""
    base = {"policy": policy, "on_inconclusive": on_inconclusive}
    if not forgetting:
        return {**base, "passed": True, "status": PASS, "verdict": None, "reasons": ["no forgetting check was run"]}
    drops, unsure, notes = _suite_lines(forgetting)
    verdict = forgetting.get("verdict")
    if verdict == "forgetting":
        status, head = (FAIL if policy == FAIL else WARN), drops + unsure
    elif verdict == "inconclusive":
        status = on_inconclusive
        head = [f"the check could not see a drop of the tolerance (on_inconclusive: {on_inconclusive})", *unsure]
    else:
        status, head = PASS, [f"verdict: {verdict}", *unsure]
    return {**base, "passed": status != FAIL, "status": status, "verdict": verdict, "reasons": head + notes}


def gate_line(gate: dict[str, Any] | None) -> str:
    """The summary line a pipeline prints: the gate's status first, then the verdict and why."""
    if not gate:
        return "gate: none (no forgetting check)"
    return (f"gate: {gate.get('status', 'pass' if gate.get('passed') else 'fail').upper()} "
            f"(forgetting verdict: {gate.get('verdict')}; {'; '.join(gate.get('reasons', []))})")
