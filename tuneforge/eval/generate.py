"""Generation mode for multiple-choice suites: the model writes its answer, a cascade reads the letter.

Each question is rendered with the model's chat template (few-shot examples as earlier turns), with an
answer-only or chain-of-thought instruction; questions are generated in length-sorted batches with left
padding, stopped at the template's stop strings; reasoning traces are stripped and the letter is read by
`tuneforge.eval.extract`. Unextractable answers count as wrong and are counted, never guessed.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tuneforge.common.decoding import whole_chars
from tuneforge.common.mcq import MCQItem
from tuneforge.eval.extract import extract_answer, reasoning_markers
from tuneforge.eval.suites import PromptStyle, Suite

INSTRUCTIONS = {
    ("zh", False): "请直接给出正确答案的选项字母。",
    ("zh", True): "请逐步分析，最后一行写“答案是X”，X 为正确选项的字母。",
    ("en", False): "Answer with the letter of the correct option.",
    ("en", True): "Think step by step, then finish with \"The answer is X\", where X is the letter of the "
                  "correct option.",
}


def _lang(style: PromptStyle) -> str:
    return "en" if style.cue.startswith("Answer") else "zh"


def question_block(item: MCQItem, instruction: str | None) -> str:
    lines = [item.question] + [f"{letter}. {opt}" for letter, opt in zip(item.letters, item.options, strict=True)]
    return "\n".join(lines) + (f"\n\n{instruction}" if instruction else "")


def shot_reply(shot: MCQItem, style: PromptStyle, cot: bool) -> str:
    zh = _lang(style) == "zh"
    final = f"答案是{shot.answer}。" if zh else f"The answer is {shot.answer}."
    if cot and shot.explanation and shot.explanation.strip():
        return shot.explanation.strip() + "\n" + final
    return final


def generation_messages(header: str, shots: list[MCQItem], item: MCQItem, style: PromptStyle, *,
                        cot: bool = False, instruction: str | None = None) -> list[dict[str, str]]:
    """System: the suite's header; each shot a user turn and a scripted reply; then the question."""
    instr = instruction if instruction is not None else INSTRUCTIONS[(_lang(style), cot)]
    msgs = [{"role": "system", "content": header}]
    for shot in shots:
        msgs += [{"role": "user", "content": question_block(shot, instr)},
                 {"role": "assistant", "content": shot_reply(shot, style, cot)}]
    msgs.append({"role": "user", "content": question_block(item, instr)})
    return msgs


def _cut(text: str, stops: list[str]) -> str:
    idx = [text.find(s) for s in stops if s and s in text]
    return (text[: min(idx)] if idx else text).strip()


def generate_texts(model: Any, tok: Any, device: str, prompts: list[str], *, max_new_tokens: int,
                   batch_size: int = 8, stops: list[str] | None = None, do_sample: bool = False,
                   temperature: float = 1.0, top_p: float = 1.0, seed: int = 0,
                   max_batch_tokens: int | None = None, on_batch: Callable[[int], None] | None = None,
                   stats: dict[str, int] | None = None) -> list[str]:
    """Batched generation: length-sorted batches, left padding, single-token stops as EOS ids and the rest
    as `stop_strings`; each output is cut at its first stop string. `on_batch(n)` after each batch; `stats`
    gets `cut_at_max_new_tokens` (outputs that ran out of tokens before a stop) and `over_context` (prompts
    longer than the model's context, which it cannot read whole)."""
    import torch

    stops = [s for s in (stops or []) if s]
    torch.manual_seed(seed)
    old_side = tok.padding_side
    tok.padding_side = "left"
    enc_all = tok(prompts, add_special_tokens=False).input_ids
    order = sorted(range(len(prompts)), key=lambda i: len(enc_all[i]))
    vocab = tok.get_vocab()
    eos = {tok.eos_token_id} | {vocab[s] for s in stops if s in vocab}
    kw: dict[str, Any] = {"max_new_tokens": max_new_tokens, "pad_token_id": tok.pad_token_id,
                          "do_sample": do_sample, "eos_token_id": sorted(i for i in eos if i is not None)}
    if do_sample:
        kw.update(temperature=temperature, top_p=top_p)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    multi = [s for s in stops if s not in vocab]
    context = getattr(getattr(model, "config", None), "max_position_embeddings", None)
    counts = {"cut_at_max_new_tokens": 0,
              "over_context": sum(len(e) > context for e in enc_all) if isinstance(context, int) else 0}
    if multi:  # stop_strings' set-up scans the vocabulary: only for stops that are not one token
        kw.update(stop_strings=multi, tokenizer=tok)
    by_index: dict[int, str] = {}
    try:
        start = 0
        while start < len(order):
            end = min(len(order), start + batch_size)
            if max_batch_tokens:
                while end - start > 1 and (end - start) * (len(enc_all[order[end - 1]]) + max_new_tokens) \
                        > max_batch_tokens:
                    end -= 1
            idx = order[start:end]
            enc = tok([prompts[i] for i in idx], return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.inference_mode():
                gen = model.generate(**{k: v.to(device) for k, v in enc.items()}, **kw)
            ends = set(kw["eos_token_id"]) | {tok.pad_token_id}
            for row, i in enumerate(idx):
                new = gen[row, enc.input_ids.shape[1]:]
                raw = tok.decode(new, skip_special_tokens=False)
                # cut at max_new_tokens inside a character: no broken character at the end
                by_index[i] = whole_chars(_cut(raw, stops + [t for t in (tok.eos_token, tok.pad_token) if t])).rstrip()
                if len(new) >= max_new_tokens and int(new[-1]) not in ends and not any(s in raw for s in multi):
                    counts["cut_at_max_new_tokens"] += 1
            if on_batch is not None:
                on_batch(len(idx))
            start = end
    finally:
        tok.padding_side = old_side
    if stats is not None:
        for k, v in counts.items():
            stats[k] = stats.get(k, 0) + v
    return [by_index[i] for i in range(len(prompts))]


class GenerativeEngine:
    """`mode: generate` for MCQ suites; rows carry the raw `output`, `extracted` and the cascade level."""

    def __init__(self, model: Any, tokenizer: Any, device: str, *, gen: Any,
                 render: Callable[[list[dict]], str] | None, stops: list[str]) -> None:
        self.model, self.tok, self.device, self.gen = model, tokenizer, device, gen
        self.render, self.stops = render, stops
        self.markers = reasoning_markers(tokenizer)
        self.stats = {"questions": 0, "seconds": 0.0, "generated_tokens": 0}

    def prompt(self, suite: Suite, subject: str, shots: list[MCQItem], item: MCQItem, cot: bool) -> str:
        from tuneforge.eval.prompts import completion_prompt, header

        head = header(suite.subject_name(subject), suite.style)
        if self.render is not None:
            return self.render(generation_messages(head, shots, item, suite.style, cot=cot,
                                                   instruction=self.gen.instruction))
        # no chat template (a base model): the completion layout, which ends in the answer cue
        return completion_prompt(suite.subject_name(subject), shots, item, suite.style)

    def score_suite(self, suite: Suite, k: int, limit: int | None = None, cot: bool = False,
                    progress: Callable[[str], None] | None = None,
                    on_batch: Callable[[int], None] | None = None) -> list[dict]:
        g = self.gen
        max_new = g.max_new_tokens or (512 if cot else 32)
        stops = list(self.stops) + list(g.stop or []) + ([] if self.render is not None else ["\n\n"])
        # every subject's questions in one length-sorted queue: batches are full even for small subjects
        work: list[tuple[str, MCQItem]] = []
        prompts: list[str] = []
        for subject in suite.subjects:
            shots = suite.shots(subject, k)
            for it in suite.items(subject, limit):
                work.append((subject, it))
                prompts.append(self.prompt(suite, subject, shots, it, cot))
        if not work:
            return []
        t0 = time.perf_counter()
        outs = generate_texts(self.model, self.tok, self.device, prompts, max_new_tokens=max_new,
                              batch_size=g.batch_size, stops=stops, do_sample=g.do_sample,
                              temperature=g.temperature, top_p=g.top_p, seed=g.seed, on_batch=on_batch,
                              stats=self.stats)
        self.stats["seconds"] += time.perf_counter() - t0
        self.stats["questions"] += len(work)
        rows: list[dict] = []
        for (subject, it), out in zip(work, outs, strict=True):
            ex = extract_answer(out, it.options, self.markers)
            rows.append({"suite": suite.name, "subject": subject, "category": suite.category(subject),
                         "id": it.id, "uid": it.uid, "answer": it.answer, "pred": ex.letter,
                         "correct": None if it.answer is None else ex.letter == it.answer,
                         "mode": "generate", "cot": cot, "output": out, "extracted": ex.letter,
                         "extraction": ex.method})
        if progress:
            progress(f"{suite.name}: {len(rows)} questions (generate)")
        return rows
