"""Half precision against float32: the size of one rounding step, and the rule that says which multiple-choice
answers half precision may have got otherwise, so the native engine can re-score exactly those in float32.

Apart from the engine (`native.py`) because the rule is what a reader checks against the benchmark
(benchmarks/eval_dtype.py) and what results.json reports, while the engine is about batching and caching."""

from __future__ import annotations

import math
from dataclasses import dataclass, field


def _margin(lg: list[float]) -> float:
    top = sorted(lg, reverse=True)
    return top[0] - top[1]


# explicit mantissa bits: a value in [2^e, 2^(e+1)) is stored in steps of 2^(e - bits)
MANTISSA_BITS = {"bfloat16": 7, "float16": 10, "float32": 23}


def ulp(x: float, dtype: str = "bfloat16") -> float:
    """The spacing of `dtype` at magnitude |x| (bf16 at 37: 0.25), what one rounding step there is worth."""
    m = max(abs(x), 2.0 ** -14)
    return 2.0 ** (math.frexp(m)[1] - 1 - MANTISSA_BITS[dtype])


def unit_roundoff(dtype: str = "bfloat16") -> float:
    """Half the spacing of `dtype` at 1 (bf16 2^-8, fp16 2^-11): its relative rounding error."""
    return 2.0 ** -(MANTISSA_BITS[dtype] + 1)


def rescore_threshold(lg: list[float], *, ulps: float = 0.0, margin: float = 0.0, dtype: str = "bfloat16",
                      size: float = 0.0, rel: float = 0.0) -> float:
    """The top-two margin under which a half-precision answer may differ from float32's, the largest of:
    `ulps` steps of the dtype at the magnitude of the largest letter logit; `rel` unit roundoffs of the dtype
    times `size` = |h| max|w_a - w_b| (the error of l_a - l_b = (w_a - w_b).dh is at most |dh| |w_a - w_b|, and
    the hidden state's error |dh| grows with |h|: this bound holds where the logits are small next to the
    vectors they come from, as in a model that cannot tell the letters apart); the fixed `margin`."""
    t = margin
    if ulps > 0:
        t = max(t, ulps * ulp(max(abs(x) for x in lg), dtype))
    if rel > 0:
        t = max(t, rel * unit_roundoff(dtype) * size)
    return t


def needs_rescore(lg: list[float], *, ulps: float = 0.0, margin: float = 0.0, dtype: str = "bfloat16",
                  size: float = 0.0, rel: float = 0.0) -> bool:
    """True when the half-precision letter logits `lg` are too close to call: if half precision picks a and
    float32 picks b, then the error of (l_a - l_b) is at least the top-two margin, so re-scoring every
    question whose margin is under the largest such error keeps the answer exactly float32's."""
    return _margin(lg) < rescore_threshold(lg, ulps=ulps, margin=margin, dtype=dtype, size=size, rel=rel)


def rule_text(ulps: float, margin: float, dtype: str, rel: float = 0.0) -> str:
    """The re-scoring rule in force, as results.json records it."""
    terms = ([f"{ulps:g} * ulp_{dtype}(max|logit|)"] if ulps > 0 else []) + \
        ([f"{rel:g} * u_{dtype} * |h| * max|w_a - w_b|"] if rel > 0 else []) + ([f"{margin:g}"] if margin > 0 else [])
    if not terms:
        return "none"
    return f"margin < {terms[0]}" if len(terms) == 1 else f"margin < max({', '.join(terms)})"




# re-scored questions seen before `RescoreRule.weigh` trusts its float32 seconds-per-question estimate
MIN_WEIGHED = 64


@dataclass
class Spent:
    """What a run has cost so far, for `RescoreRule.weigh`: seconds in half precision and in float32 re-scoring
    over how many questions and subjects; of those seconds, the subjects' prefixes (`prefix_s` in float32 over
    `prefixes`, `half_prefix_s` in half precision over `half_prefixes`)."""

    questions: int = 0
    rescored: int = 0
    subjects: int = 0
    subjects_rescored: int = 0
    half_s: float = 0.0
    fp32_s: float = 0.0
    prefixes: int = 0
    prefix_s: float = 0.0
    half_prefixes: int = 0
    half_prefix_s: float = 0.0


@dataclass
class RescoreRule:
    """Which half-precision answers go to float32, learnt as the run goes.

    Fixed terms (`ulps`, `rel`, `margin`, see `rescore_threshold`) and, with `calibrate` > 0, a self-calibrated
    one: the first `calibrate` questions are scored both ways, and every question scored both ways shows the
    half-precision error of its top-two margin in units of u |h| max|w_a - w_b|; the rule adds `safety` x the
    largest such error seen so far. A fixed k chosen on one model missed errors 2-8x larger on another (the
    eval-dtype benchmark); a model's own errors are what bound its answers. `weigh` ends half precision for the
    run once it costs more than float32 alone would."""

    dtype: str = "bfloat16"
    ulps: float = 0.0
    rel: float = 0.0
    margin: float = 0.0
    calibrate: int = 0
    safety: float = 2.0
    worst: float = 0.0  # the largest error seen, in units of u |h| max|w_a - w_b|
    calibrated: int = 0
    direct: bool = False  # float32 alone is cheaper: `weigh`
    switched_after: int | None = None
    spent: Spent = field(default_factory=Spent)

    @property
    def active(self) -> bool:
        return self.ulps > 0 or self.rel > 0 or self.margin > 0 or self.calibrate > 0

    def rel_in_force(self) -> float:
        return max(self.rel, self.safety * self.worst) if self.calibrate else self.rel

    def calibration_left(self) -> int:
        return max(0, self.calibrate - self.calibrated)

    def flagged(self, lg: list[float], n: int) -> bool:
        """`lg`: the letter logits then the size (`NativeEngine.letter_logits`); `n`: the question's options."""
        if not all(math.isfinite(x) for x in lg):  # an overflow in half precision: float32 decides
            return True
        return needs_rescore(lg[:n], ulps=self.ulps, margin=self.margin, dtype=self.dtype, size=lg[-1],
                             rel=self.rel_in_force())

    def observe(self, half: list[float], full: list[float], n: int) -> None:
        """A question scored both ways: its error of (l_top - l_b), the worst b, in the rule's units."""
        if all(math.isfinite(x) for x in half) and half[-1] > 0:
            top = max(range(n), key=lambda a: half[a])
            err = max(abs((half[top] - half[b]) - (full[top] - full[b])) for b in range(n))
            self.worst = max(self.worst, err / (unit_roundoff(self.dtype) * half[-1]))

    def weigh(self, n: int, rescored: int, t_half: float, t_fp32: float, t_prefix: float = 0.0,
              t_half_prefix: float | None = None) -> None:
        """Half precision pays only while its pass plus the re-scoring cost less than float32 alone would. Where
        most answers are too close to call (a small model whose letter logits are nearly tied) it costs more: once
        the time spent exceeds its float32 estimate (after MIN_WEIGHED re-scored questions), the rest of the run
        is scored in float32 directly (the same answers). Float32 alone would pay each subject's prefix once and
        each question at the re-scoring's seconds a question net of prefixes (`t_prefix`, the subject's float32
        prefix, inside `t_fp32`): re-scoring a few questions still pays a whole prefix, and spreading it over
        them overstated float32's cost, so runs that half precision slowed (C-Eval and MMLU val on the H100) had
        never switched. `t_half_prefix`: the half-precision prefix inside `t_half` (None: it shared float32's)."""
        s = self.spent
        s.questions += n
        s.subjects += 1
        s.half_s += t_half
        s.fp32_s += t_fp32
        if t_prefix > 0:
            s.prefixes += 1
            s.prefix_s += t_prefix
        if t_half_prefix is not None:
            s.half_prefixes += 1
            s.half_prefix_s += t_half_prefix
        if rescored:
            s.rescored += rescored
            s.subjects_rescored += 1
        if self.direct or s.rescored < MIN_WEIGHED:
            return
        fp32_alone = (s.subjects * s.prefix_s / max(s.prefixes, 1)
                      + s.questions * max(s.fp32_s - s.prefix_s, 0.0) / s.rescored)
        if s.half_s + s.fp32_s > fp32_alone:
            self.direct, self.switched_after = True, s.questions

    def share_prefix(self) -> bool:
        """Whether the next subject's float32 prefix should run first and serve both passes (the half-precision
        pass then reads its K/V, rounded to half precision). Apart, a subject costs its half-precision prefix
        plus, with the share p of subjects re-scored so far, a float32 one; shared, the float32 one alone: so
        share when (1 - p) x float32's prefix seconds < half precision's. On a small model whose answers are
        mostly too close to call, p is near 1 and both prefixes cost about a kernel launch each; on a large one
        with few re-scores, float32's prefix costs several half-precision ones and each keeps its own. Never
        during the calibration, so the errors the rule learns are those of the half-precision prefix, the
        larger ones."""
        s = self.spent
        if self.calibration_left() > 0 or not (s.subjects and s.prefixes and s.half_prefixes):
            return False
        p = s.subjects_rescored / s.subjects
        return (1 - p) * s.prefix_s / s.prefixes < s.half_prefix_s / s.half_prefixes

    def describe(self) -> dict:
        text = rule_text(self.ulps, self.margin, self.dtype, self.rel_in_force())
        if self.calibrate:
            text += (f" (self-calibrated: {self.safety:g} x the largest error seen on the {self.calibrated} "
                     "questions scored both ways to calibrate and on every re-scored question)")
        return {"rescore_rule": text, "rescore_ulps": self.ulps, "rescore_margin": self.margin,
                "rescore_rel": round(self.rel_in_force(), 6), "calibrated": self.calibrated,
                "float32_direct_after": self.switched_after}
