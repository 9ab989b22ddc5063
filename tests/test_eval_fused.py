"""The half-precision GPU path's two parts, on CPU: the re-scoring rule (a pure function of the letter logits)
and the fused prefix attention (SDPA over [cached prefix K/V + suffix] with a lower-right causal mask), which
must give the transformers cache path's logits."""

from __future__ import annotations

import math

import pytest

from tuneforge.eval.precision import needs_rescore, rescore_threshold, rule_text, ulp


def test_ulp_is_the_dtype_spacing_at_that_magnitude():
    assert ulp(37.0) == 0.25  # bf16 in [32, 64): 8 significant bits -> steps of 2^(5-7)
    assert ulp(-37.0) == 0.25 and ulp(32.0) == 0.25 and ulp(31.99) == 0.125
    assert ulp(1.0) == 2 ** -7 and ulp(1.0, "float16") == 2 ** -10 and ulp(1.0, "float32") == 2 ** -23
    assert ulp(0.0) > 0
    import torch

    for x in (0.3, 1.7, 12.0, 37.2, 300.0):  # the next representable value above x is x + ulp
        t = torch.tensor(x, dtype=torch.bfloat16)
        v = float(t)
        nxt = float(torch.nextafter(t, torch.tensor(math.inf, dtype=torch.bfloat16)))
        assert nxt - v == ulp(v)


def test_rescore_threshold_follows_the_magnitude_of_the_logits():
    # same margin (0.2), different sizes: at |logit| ~37 one bf16 step is 0.25, at ~3 it is 1/64
    big, small = [37.1, 36.9, 30.0, 29.0], [3.1, 2.9, 1.0, 0.0]
    assert needs_rescore(big, ulps=1.0) and not needs_rescore(small, ulps=1.0)
    assert rescore_threshold(big, ulps=1.5) == 1.5 * 0.25
    assert rescore_threshold([-40.0, -41.0, -45.0, -70.0], ulps=1.0) == 0.5  # magnitude, not the signed max
    assert not needs_rescore(big, ulps=0.0) and needs_rescore(big, margin=0.3)  # the fixed margin still works
    assert rescore_threshold(small, ulps=1.0, margin=0.1) == 0.1  # whichever is larger
    assert needs_rescore([37.0, 37.0, 1.0, 0.0], ulps=0.01)  # a tie is always re-scored
    assert not needs_rescore([37.0, 37.0, 1.0, 0.0])  # no rule, nothing re-scored
    assert needs_rescore([3.1, 3.09, 0, 0], ulps=1.0, dtype="bfloat16")
    assert not needs_rescore([3.1, 3.09, 0, 0], ulps=1.0, dtype="float16")
    assert rule_text(2.0, 0.0, "bfloat16") == "margin < 2 * ulp_bfloat16(max|logit|)"
    assert rule_text(0.0, 0.1, "bfloat16") == "margin < 0.1" and rule_text(0, 0, "bfloat16") == "none"


@pytest.fixture(scope="module")
def loaded(tiny, shared):
    from tuneforge.eval.models import load_for_eval
    from tuneforge.eval.suites import load_suite

    lm = load_for_eval(str(tiny), device="cpu")
    suite = load_suite(f"ceval:{shared / 'ceval'}", subjects=["law", "logic", "art_studies"])
    return lm, suite


def test_fused_prefix_attention_matches_the_cache_path(loaded):
    """Same questions, same float32 weights: the fused path gives the transformers cache path's logits (its
    batches of 3 mix question lengths, so right padding and the lower-right causal mask are exercised), and
    leaves the model's attention implementation as it found it."""
    from tuneforge.eval.native import NativeEngine

    lm, suite = loaded
    before = lm.model.config._attn_implementation
    ref_eng = NativeEngine(lm.model, lm.tokenizer, "cpu", batch_size=3)
    assert not ref_eng.fused_prefix  # CPU float32 keeps its path
    ref = ref_eng.score_suite(suite, 5, 7)
    eng = NativeEngine(lm.model, lm.tokenizer, "cpu", batch_size=3, fused_prefix=True)
    assert eng.fused_prefix and eng.describe()["attention"].startswith("fused")
    got = eng.score_suite(suite, 5, 7)
    assert len(got) == 21 and [r["pred"] for r in got] == [r["pred"] for r in ref]
    assert max(abs(a - b) for x, y in zip(ref, got, strict=True)
               for a, b in zip(x["logits"], y["logits"], strict=True)) < 1e-3
    assert eng.stats["cached_tokens"] == ref_eng.stats["cached_tokens"] > 0
    assert eng.stats["forward_tokens"] == ref_eng.stats["forward_tokens"]
    assert lm.model.config._attn_implementation == before
    # zero-shot without a shared prefix beyond BOS-less text still runs (prefix may be empty)
    zero = NativeEngine(lm.model, lm.tokenizer, "cpu", batch_size=3, fused_prefix=True).score_suite(suite, 0, 3)
    zref = NativeEngine(lm.model, lm.tokenizer, "cpu", batch_size=3).score_suite(suite, 0, 3)
    assert max(abs(a - b) for x, y in zip(zref, zero, strict=True)
               for a, b in zip(x["logits"], y["logits"], strict=True)) < 1e-3


def test_prefix_attention_without_a_prefix_is_plain_causal_attention():
    import torch
    import torch.nn.functional as F

    from tuneforge.eval.prefix_attention import _PREFIX_KV, prefix_attention

    torch.manual_seed(0)
    q, k, v = torch.randn(2, 4, 5, 8), torch.randn(2, 2, 5, 8), torch.randn(2, 2, 5, 8)
    mod = type("M", (), {"layer_idx": 0})()
    out, _ = prefix_attention(mod, q, k, v)
    ref = F.scaled_dot_product_attention(q, k.repeat_interleave(2, 1), v.repeat_interleave(2, 1), is_causal=True)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)
    # with a prefix of 3: every question token sees the whole prefix and its own earlier tokens
    pk, pv = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    token = _PREFIX_KV.set([(pk, pv)])
    try:
        out, _ = prefix_attention(mod, q, k, v)
    finally:
        _PREFIX_KV.reset(token)
    fk = torch.cat([pk.expand(2, -1, -1, -1), k], 2).repeat_interleave(2, 1)
    fv = torch.cat([pv.expand(2, -1, -1, -1), v], 2).repeat_interleave(2, 1)
    mask = torch.ones(5, 8, dtype=torch.bool).tril(diagonal=3)
    ref = F.scaled_dot_product_attention(q, fk, fv, attn_mask=mask)
    assert torch.allclose(out, ref.transpose(1, 2), atol=1e-5)


def test_results_json_records_the_path_and_the_rule(tiny, shared, tmp_path):
    """CPU default: float32 with the prefix cache on transformers' path, nothing re-scored; bf16 with an explicit
    margin: the fixed rule in force and how many questions float32 scored again."""
    import json

    from tuneforge.eval import run_eval

    suites = [{"benchmark": f"ceval:{shared / 'ceval'}", "subjects": ["law"], "limit": 4, "shots": 1}]
    run_eval({"suites": suites, "device": "cpu"}, out=tmp_path / "fp32", model=str(tiny), report=False)
    t = json.loads((tmp_path / "fp32" / "results.json").read_text())["timing"]
    assert (t["dtype"], t["prefix_cache"], t["rescore_rule"], t["rescored"]) == ("float32", True, "none", 0)
    assert t["attention"] == "transformers cache + mask"
    run_eval({"suites": suites, "device": "cpu", "dtype": "bfloat16", "rescore_margin": 100.0}, out=tmp_path / "bf16",
             model=str(tiny), report=False)
    t = json.loads((tmp_path / "bf16" / "results.json").read_text())["timing"]
    assert (t["dtype"], t["prefix_cache"], t["rescore_rule"]) == ("bfloat16", True, "margin < 100")
    assert t["rescored"] == 4 and t["rescore_margin"] == 100.0


def test_rescore_rule_calibrates_itself_on_the_model_and_stops_paying_half_precision():
    """The self-calibrated term is safety x the largest error seen on a question scored both ways; an overflow
    always goes to float32; once half precision plus re-scoring costs more than float32 alone, the rule says so."""
    from tuneforge.eval.precision import RescoreRule, unit_roundoff

    rule = RescoreRule("bfloat16", calibrate=2, safety=2.0)
    assert rule.calibration_left() == 2 and rule.rel_in_force() == 0.0
    size = 1000.0  # |h| max|w_a - w_b|: one unit of error is u * size = 3.9 logits in bf16
    half, full = [10.0, 9.0, 0.0, 0.0, size], [10.0, 9.5, 0.0, 0.0]  # the margin moved by 0.5
    rule.observe(half, full, 4)
    assert rule.worst == pytest.approx(0.5 / (unit_roundoff("bfloat16") * size))
    # margin 1.0 < 2 x 0.5 x (its size / the calibrating size) only when the size is large enough
    assert rule.flagged([5.0, 4.0, 0.0, 0.0, 1500.0], 4) and not rule.flagged([5.0, 4.0, 0.0, 0.0, 500.0], 4)
    assert rule.flagged([5.0, float("inf"), 0.0, 0.0, 1.0], 4)
    assert not rule.direct
    rule.weigh(100, 64, 1.0, 6.4)  # 7.4 s spent; float32 alone: 100 x 0.1 s = 10 s
    assert not rule.direct
    rule.weigh(100, 90, 1.0, 9.0)  # 17.4 s spent; float32 alone: 200 x 15.4 / 154 = 20 s
    assert not rule.direct
    rule.weigh(100, 100, 5.0, 10.0)  # 32.4 s spent; float32 alone: 300 x 25.4 / 254 = 30 s
    assert rule.direct and rule.switched_after == 300
    # a subject's float32 prefix is paid once however few questions are re-scored: subjects of 100 questions,
    # 40 re-scored each in 2 s (1.5 s of it the prefix) after a 1 s half-precision pass. Float32 alone would
    # cost 1.5 + 100 x 0.0125 = 2.75 s a subject, less than the 3 s spent; spreading the prefix over the re-scored
    # questions (0.05 s each) would have put float32 at 5 s a subject and kept half precision on
    rule = RescoreRule("bfloat16", calibrate=2, safety=2.0)
    rule.weigh(100, 40, 1.0, 2.0, 1.5)
    assert not rule.direct  # 40 re-scored: too few to weigh
    rule.weigh(100, 40, 1.0, 2.0, 1.5)  # 6 s spent; float32 alone: 2 x 1.5 + 200 x 1.0 / 80 = 5.5 s
    assert rule.direct and rule.switched_after == 200
    assert "self-calibrated" in rule.describe()["rescore_rule"]


def test_the_engine_calibrates_on_its_first_questions(tiny, shared):
    """bf16 on CPU with a float32 twin: the first `calibrate` questions are scored both ways (so answered as
    float32 answers them), and every answer is float32's wherever the rule let half precision decide."""
    import torch

    from tuneforge.eval.models import load_for_eval
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.suites import load_suite

    suite = load_suite(f"ceval:{shared / 'ceval'}", subjects=["law", "logic"])
    m32 = load_for_eval(str(tiny), None, "cpu", "float32")
    m16 = load_for_eval(str(tiny), None, "cpu", "bfloat16")
    ref = {r["uid"]: r["pred"] for r in NativeEngine(m32.model, m32.tokenizer, "cpu").score_suite(suite, 1, 6)}
    eng = NativeEngine(m16.model, m16.tokenizer, "cpu", rescore_model=m32.model, calibrate=3, safety=2.0)
    assert eng.rescore is not None and m16.model.dtype == torch.bfloat16
    judged_by = []  # the margin in force each time the rule judges a question
    flagged = eng.rule.flagged
    eng.rule.flagged = lambda lg, n: judged_by.append(eng.rule.rel_in_force()) or flagged(lg, n)
    rows = eng.score_suite(suite, 1, 6)
    # the first subject's other questions too are judged by the calibrated rule, never by margin 0
    assert len(judged_by) == 12 - 3 and all(t > 0 for t in judged_by), judged_by
    assert eng.rule.calibrated == 3 and eng.stats["rescored"] >= 3
    assert [r.get("rescored", False) for r in rows[:3]] == [True] * 3
    assert all(r["pred"] == ref[r["uid"]] for r in rows if r.get("rescored"))
    d = eng.describe()
    assert d["calibrated"] == 3 and d["rescore_rel"] == pytest.approx(2.0 * eng.rule.worst, rel=1e-5)


def test_subjects_prepared_ahead_give_the_same_rows(loaded):
    """`iter_subjects` tokenizes the next subject on a thread while this one runs: the same rows as scoring
    subject by subject, and a subject whose preparation fails raises at that subject, after the earlier ones."""
    from tuneforge.common.errors import TuneforgeError
    from tuneforge.eval.native import NativeEngine

    lm, suite = loaded
    eng = NativeEngine(lm.model, lm.tokenizer, "cpu", batch_size=3)
    one_by_one = [eng.score_subject(suite, s, 2, 3) for s in suite.subjects]
    ahead = NativeEngine(lm.model, lm.tokenizer, "cpu", batch_size=3)
    got = list(ahead.iter_subjects(suite, 2, 3))
    assert [s for s, _ in got] == suite.subjects and [rows for _, rows in got] == one_by_one
    assert ahead.stats["questions"] == 9 and ahead.stats["seconds"] > 0
    shots = suite.shots
    suite.shots = lambda subject, k: [] if subject == suite.subjects[1] else shots(subject, k)
    try:
        it = NativeEngine(lm.model, lm.tokenizer, "cpu").iter_subjects(suite, 2, 3)
        assert next(it)[0] == suite.subjects[0]
        with pytest.raises(TuneforgeError, match="2-shot needs 2 dev examples"):
            next(it)
    finally:
        suite.shots = shots


def test_a_shared_float32_prefix_serves_both_passes(tiny, shared):
    """When the rule says share, the subject's prefix runs once in float32: the half-precision pass reads its
    K/V (no prefix of its own) and the re-scoring reuses it, so float32's answers are bit for bit those of the
    float32 engine running its own prefix."""
    from tuneforge.eval.models import load_for_eval
    from tuneforge.eval.native import NativeEngine
    from tuneforge.eval.suites import load_suite

    suite = load_suite(f"ceval:{shared / 'ceval'}", subjects=["law", "logic"])
    m32 = load_for_eval(str(tiny), None, "cpu", "float32")
    m16 = load_for_eval(str(tiny), None, "cpu", "bfloat16")
    ref = NativeEngine(m32.model, m32.tokenizer, "cpu").score_suite(suite, 2, 4)

    def engine(share: bool) -> NativeEngine:
        # a margin no answer clears: every question is re-scored, so every answer is float32's
        eng = NativeEngine(m16.model, m16.tokenizer, "cpu", fused_prefix=True, rescore_model=m32.model,
                           rescore_margin=1e9)
        eng.rule.share_prefix = lambda: share
        return eng

    apart, together = engine(False), engine(True)
    rows_apart, rows_together = apart.score_suite(suite, 2, 4), together.score_suite(suite, 2, 4)
    assert all(r.get("rescored") for r in rows_apart + rows_together)
    assert rows_together == rows_apart and [r["logits"] for r in rows_together] == [r["logits"] for r in ref]
    assert (apart.stats["shared_prefixes"], together.stats["shared_prefixes"]) == (0, 2)
    assert together.stats["prefix_seconds"] == 0 < apart.stats["prefix_seconds"]  # no half-precision prefix
    prefix_tokens = apart.stats["forward_tokens"] - together.stats["forward_tokens"]
    assert prefix_tokens > 0 and together.rescore.stats["forward_tokens"] == apart.rescore.stats["forward_tokens"]


def test_the_rule_shares_the_float32_prefix_when_most_subjects_are_re_scored():
    """(1 - p) x float32's prefix seconds against half precision's: a small model whose subjects are all
    re-scored shares; a large one whose float32 prefix costs 10 half-precision ones and re-scores a fifth of its
    subjects does not; nothing is shared before the calibration is done or anything was timed."""
    from tuneforge.eval.precision import RescoreRule

    rule = RescoreRule("bfloat16", calibrate=2, safety=2.0)
    assert not rule.share_prefix()  # calibrating
    rule.calibrated = 2
    assert not rule.share_prefix()  # nothing timed yet
    small = RescoreRule("bfloat16", calibrate=2, calibrated=2)
    small.weigh(30, 10, 1.0, 0.5, 0.04, 0.03)  # every subject re-scored: p = 1
    assert small.share_prefix()
    large = RescoreRule("bfloat16", calibrate=2, calibrated=2)
    for rescored in (0, 0, 3, 0, 0):  # p = 0.2; float32 prefix 0.5 s against 0.05 s
        large.weigh(30, rescored, 1.0, 0.6 if rescored else 0.0, 0.5 if rescored else 0.0, 0.05)
    assert not large.share_prefix()
    assert large.spent.prefixes == 1 and large.spent.half_prefixes == 5
    # a shared subject: its float32 prefix is counted once, as float32's, and half precision timed none
    small.weigh(30, 0, 0.5, 0.04, 0.04, None)
    assert (small.spent.prefixes, small.spent.half_prefixes, small.spent.subjects_rescored) == (2, 1, 1)
