"""Make the raw model outputs behind tests/data/extraction_outputs.jsonl (the answer-extraction check).

The embedded SmolLM2-135M-Instruct answers real C-Eval val and MMLU val questions through
`tuneforge.eval.generate` (its own chat template, greedy) in four prompt variants: answer-only 1-shot and
chain-of-thought 0-shot, in Chinese (C-Eval) and English (MMLU). Each row keeps the question, options, gold
answer and raw output; `expected` (the letter the output gives, or "unextractable") was then filled in by
reading every output by hand, not by the extractor.

    .venv/bin/python benchmarks/eval_extraction_data.py --shared ../shared/corpora --out runs/extraction_raw.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--shared", default=str(REPO.parent / "shared" / "corpora"))
    ap.add_argument("--out", required=True)
    ap.add_argument("--per-subject", type=int, default=2)
    ap.add_argument("--subjects", type=int, default=28)
    args = ap.parse_args()

    from tuneforge.eval.config import GenerationConfig
    from tuneforge.eval.generate import GenerativeEngine
    from tuneforge.eval.models import load_for_eval
    from tuneforge.eval.runner import _generation_template
    from tuneforge.eval.suites import load_suite

    lm = load_for_eval("embedded:smollm2", device="cpu")
    render, stops = _generation_template(lm.tokenizer, None)
    rows = []
    for spec, offset in ((f"ceval:{args.shared}/ceval", 0), (f"mmlu:{args.shared}/mmlu", 0)):
        suite = load_suite(spec)
        suite.subjects = suite.subjects[offset: offset + args.subjects]
        for cot, shots, max_new in ((False, 1, 32), (True, 0, 160)):
            eng = GenerativeEngine(lm.model, lm.tokenizer, "cpu", render=render, stops=stops,
                                   gen=GenerationConfig(cot=cot, max_new_tokens=max_new, batch_size=14))
            got = eng.score_suite(suite, shots, args.per_subject, cot, progress=print)
            for r in got:
                it = next(i for i in suite.items(r["subject"]) if i.uid == r["uid"])
                rows.append({"suite": suite.name, "subject": r["subject"], "uid": r["uid"],
                             "variant": f"{'cot' if cot else 'answer-only'}-{shots}shot",
                             "question": it.question, "options": list(it.options), "gold": it.answer,
                             "output": r["output"]})
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    with open(args.out, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
    print(len(rows), "rows ->", args.out)


if __name__ == "__main__":
    main()
