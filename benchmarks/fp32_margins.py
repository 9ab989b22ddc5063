"""The float32 top-two margin of given questions, scored by the native engine as the eval-dtype benchmark's
reference scores them (5-shot, the subject's prefix split), alone and together: whether a flip between float32 and
a re-scored answer is a float32 near-tie (a margin inside float32's own noise) or a half-precision answer the rule
let through.

    .venv/bin/python benchmarks/fp32_margins.py cmmlu:../shared/corpora/cmmlu agronomy/test/86 economics/test/13
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    import torch

    from tuneforge.common.models import load_causal_lm, load_tokenizer
    from tuneforge.eval.native import OPTION_LETTERS, NativeEngine, letter_token_ids
    from tuneforge.eval.suites import load_suite

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("suite", help="e.g. cmmlu:DIR")
    ap.add_argument("uids", nargs="+", help="subject/split/index as results.json names them")
    ap.add_argument("--model", default="embedded:smollm2")
    ap.add_argument("--shots", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    a = ap.parse_args()
    subjects = sorted({u.split("/")[0] for u in a.uids})
    suite = load_suite(a.suite, subjects=subjects)
    tok = load_tokenizer(a.model)
    eng = NativeEngine(load_causal_lm(a.model, dtype=torch.float32, device=a.device), tok, a.device)
    print("| question | scored with | float32 letter logits | top-two margin |\n|---|---|---|---:|")
    for subject in subjects:
        items = suite.items(subject, None)
        shots = suite.shots(subject, a.shots)
        texts = [eng.prompt(suite, subject, shots, it) for it in items]
        ids = eng._encode(texts)
        shared = eng._shared(ids)
        letters = letter_token_ids(tok, texts[0][-32:], suite.style.answer_sep,
                                   OPTION_LETTERS[:max(len(it.options) for it in items)])
        idx = [i for i, it in enumerate(items) if it.uid in a.uids]
        for combo in [[i] for i in idx] + ([idx] if len(idx) > 1 else []):
            lg = eng.letter_logits([ids[i] for i in combo], letters, shared)
            for j, i in enumerate(combo):
                x = lg[j][: len(items[i].options)]
                top = sorted(x, reverse=True)
                print(f"| {items[i].uid} | {'alone' if len(combo) == 1 else f'{len(combo)} together'} | "
                      f"{', '.join(f'{v:.5f}' for v in x)} | {top[0] - top[1]:.6f} |")


if __name__ == "__main__":
    main()
