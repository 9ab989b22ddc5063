"""Held-out domain evaluation: generate on the built dataset's test split with the training template, score
BLEU-4 and ROUGE-1/2/L on Chinese tokens (characters by default, or jieba words), exact match where answers
are short, and keep every output so a person can read them in the report.
"""

from __future__ import annotations

import json
import unicodedata
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_jsonl
from tuneforge.eval.config import HeldoutConfig


def tokens(text: str, level: str = "char") -> list[str]:
    """Characters (whitespace dropped) or jieba words; both work for Chinese, English and mixed text."""
    if level == "word":
        import jieba

        return [w for w in jieba.lcut(text) if w.strip()]
    return [c for c in text if not c.isspace()]


class _RougeTokenizer:
    def __init__(self, level: str) -> None:
        self.level = level

    def tokenize(self, text: str) -> list[str]:
        return tokens(text, self.level)


def _normalize(text: str) -> str:
    return "".join(c for c in text if not c.isspace() and not unicodedata.category(c).startswith("P")).lower()


def score(outputs: list[str], references: list[str], level: str = "char", em_max_chars: int = 16) -> dict:
    """Corpus BLEU-4 (sacrebleu on pre-tokenized text), mean ROUGE F1 (rouge_score), exact match (short refs)."""
    import sacrebleu
    from rouge_score import rouge_scorer

    hyp = [" ".join(tokens(o, level)) for o in outputs]
    ref = [" ".join(tokens(r, level)) for r in references]
    bleu = sacrebleu.corpus_bleu(hyp, [ref], tokenize="none", force=True)
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_RougeTokenizer(level))
    sums = {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0}
    for o, r in zip(outputs, references, strict=True):
        for k, v in scorer.score(r, o).items():
            sums[k] += v.fmeasure
    n = len(outputs)
    short = [(o, r) for o, r in zip(outputs, references, strict=True) if len(_normalize(r)) <= em_max_chars]
    return {"n": n, "bleu4": round(bleu.score, 2), **{k: round(100 * v / n, 2) for k, v in sums.items()},
            "exact_match": round(100 * sum(_normalize(o) == _normalize(r) for o, r in short) / len(short), 2)
            if short else None, "exact_match_n": len(short), "tokenize": level}


def load_examples(dataset: str, split: str, limit: int | None,
                  counts: dict[str, int] | None = None) -> tuple[list[dict], str | None]:
    """(prompt messages, reference) pairs from a build output folder or a saved DatasetDict, and its template.
    `counts` gets `total` (rows read) and `skipped` (rows with no assistant reply to compare against)."""
    from datasets import load_from_disk

    root = Path(dataset)
    template = None
    if (root / "manifest.json").is_file():
        man = json.loads((root / "manifest.json").read_text(encoding="utf-8"))
        template = man.get("template")
        kinds = man.get("datasets", {})
        kind = next((k for k in ("messages", "preference") if k in kinds), None)
        if kind is None:
            raise TuneforgeError(f"{root}: the build has no messages or preference dataset to generate on")
        root = root / kinds[kind]
    if not root.exists():
        raise TuneforgeError(f"held-out dataset not found: {root}")
    dd = load_from_disk(str(root))
    if split not in dd:
        raise TuneforgeError(f"{root}: no split {split!r} (have {', '.join(dd)})")
    ds = dd[split]
    out = []
    rows = ds.select(range(min(limit, len(ds)))) if limit else ds
    if counts is not None:
        counts.update(total=len(rows), skipped=0)
    for rec in rows:
        if "messages" in rec:
            msgs = rec["messages"]
            last = max((i for i, m in enumerate(msgs) if m["role"] == "assistant"), default=None)
            if last is None:
                if counts is not None:
                    counts["skipped"] += 1
                continue
            out.append({"id": rec["id"], "prompt": msgs[:last], "reference": msgs[last]["content"]})
        elif "chosen" in rec:
            out.append({"id": rec["id"], "prompt": rec["prompt"], "reference": rec["chosen"][0]["content"]})
    if not out:
        raise TuneforgeError(f"{root}[{split}]: no examples with an assistant reply")
    return out, template


def generate(lm: Any, prompts: list[str], cfg: HeldoutConfig, stops: list[str], **kw: Any) -> list[str]:
    from tuneforge.eval.generate import generate_texts

    return generate_texts(lm.model, lm.tokenizer, lm.device, prompts, max_new_tokens=cfg.max_new_tokens,
                          batch_size=cfg.batch_size, stops=stops, do_sample=cfg.do_sample,
                          temperature=cfg.temperature, top_p=cfg.top_p, seed=cfg.seed, **kw)


def _last_user(messages: list[dict]) -> str:
    return next((m["content"] for m in reversed(messages) if m.get("role") == "user"), "")


def run_heldout(lm: Any, cfg: HeldoutConfig, out: Path, progress: Callable[[str], None] | None = None) -> dict:
    """Generate and score; `rows` counts every row read: generated, skipped (no reply), cut at
    max_new_tokens, over the model's context."""
    from tuneforge.eval.progress import Counter
    from tuneforge.templates import get_template

    counts: dict[str, int] = {}
    examples, manifest_template = load_examples(cfg.dataset, cfg.split, cfg.limit, counts)
    name = cfg.template or manifest_template or "tokenizer"
    tpl = get_template(name, tokenizer=lm.tokenizer) if name == "tokenizer" else get_template(name)
    prompts = [tpl.render(e["prompt"], add_generation_prompt=True) for e in examples]
    with Counter("held-out", len(prompts), "rows", progress) as bar:
        outputs = generate(lm, prompts, cfg, list(tpl.stop_strings), on_batch=bar.advance, stats=counts)
    metrics = score(outputs, [e["reference"] for e in examples], cfg.tokenize, cfg.exact_match_max_chars)
    rows = [{"id": e["id"], "prompt": prompts[i], "question": _last_user(e["prompt"]), "reference": e["reference"],
             "output": outputs[i]} for i, e in enumerate(examples)]
    write_jsonl(out / "heldout_outputs.jsonl", rows)
    decoding = "greedy" if not cfg.do_sample else f"sampling T={cfg.temperature} top_p={cfg.top_p}"
    counts["generated"] = len(rows)
    return {"dataset": cfg.dataset, "split": cfg.split, "template": name, "decoding": decoding,
            "metrics": metrics, "examples": rows[:50], "rows": counts,
            "note": (f"{len(rows)} examples of `{cfg.split}` ({counts['skipped']} of {counts['total']} rows "
                     f"skipped: no assistant reply), template `{name}`, {decoding}, max "
                     f"{cfg.max_new_tokens} new tokens ({counts['cut_at_max_new_tokens']} outputs cut there; "
                     f"{counts['over_context']} prompts longer than the model's context). BLEU-4 (sacrebleu, corpus) and ROUGE-1/2/L F1 (rouge_score) "
                     f"on {'characters' if cfg.tokenize == 'char' else 'jieba words'}; exact match on "
                     f"references of at most {cfg.exact_match_max_chars} characters.")}


