"""Fitting rows into `max_length` without ever dropping one silently.

The rule (docs/training.md, Truncation), the same for every stage that reads conversations:

1. A row that fits is left as it is.
2. Otherwise the oldest turns go first, a whole round at a time (a round starts at a user turn), then the
   system turn; the last exchange (the final assistant reply, or a prompt's last user turn) always stays.
3. If the last exchange alone is still too long, sft splits `max_length` between the prompt and the reply by
   LLaMA-Factory's length budget (`infer_seqlen`): the prompt loses tokens from the start of its user turn's
   text (template markers stay), the reply loses its end. dpo/kto keep the trimmed prompt and TRL cuts the
   end of the completions (its `keep_start`); rm, orpo and simpo cannot cut a reply, so the row is dropped.
4. A row with nothing left to learn from (no assistant turn, or a prompt that alone fills `max_length`) is
   dropped, and listed with its id and reason in run.json; the share dropped is checked against
   `truncation.max_drop_share` for every split before any model loads, and `--strict` fails on any.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tuneforge.common.errors import RecipeError, TuneforgeError

IGNORE = -100
FIT, TRIMMED, TRUNCATED, DROPPED = "fit", "trimmed", "truncated", "dropped"
STATUS = "_fit_status"
REASON = "_fit_reason"
# How many dropped rows run.json lists one by one (the counts are always complete).
LIST_LIMIT = 1000


class DroppedRowsError(TuneforgeError):
    """`--strict` (or `truncation.strict`) and some rows cannot fit max_length."""


def infer_seqlen(source_len: int, target_len: int, cutoff_len: int) -> tuple[int, int]:
    """LLaMA-Factory's length budget: how many prompt and reply tokens to keep within `cutoff_len`."""
    if target_len * 2 < cutoff_len:  # a short reply: only the prompt is cut
        max_target_len = cutoff_len
    elif source_len * 2 < cutoff_len:  # a short prompt: only the reply is cut
        max_target_len = cutoff_len - source_len
    else:  # both long: shared in proportion
        max_target_len = int(cutoff_len * (target_len / (source_len + target_len)))
    new_target_len = min(max_target_len, target_len)
    new_source_len = min(max(cutoff_len - new_target_len, 0), source_len)
    return new_source_len, new_target_len


def trims(messages: list[dict], keep: int) -> list[list[dict]]:
    """Shorter forms of a conversation, fewest turns dropped first: whole rounds from the oldest (the system
    turn kept), then the system turn too. `messages[keep]` and everything up to it from its round stay."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    body = messages[len(system):keep + 1]
    k = keep - len(system)
    starts = [i for i in range(1, k + 1) if body[i]["role"] == "user"]
    out = [system + body[s:] for s in starts]
    if system:
        out.append(body[starts[-1]:] if starts else body)
    return out


def first_fit(candidates: list[Any], length: Callable[[Any], int], limit: int) -> tuple[int, int]:
    """(index, length) of the first candidate within `limit` (lengths fall along the list), or (-1, length of
    the last one)."""
    lo, hi, best = 0, len(candidates) - 1, -1
    lengths: dict[int, int] = {}
    while lo <= hi:
        mid = (lo + hi) // 2
        lengths[mid] = length(candidates[mid])
        if lengths[mid] <= limit:
            best, hi = mid, mid - 1
        else:
            lo = mid + 1
    if best >= 0:
        return best, lengths[best]
    last = len(candidates) - 1
    return -1, lengths.get(last, length(candidates[last])) if candidates else 0


def _last_run_start(labels: list[int]) -> int:
    """Index of the first token of the last trained reply."""
    i = len(labels) - 1
    while i >= 0 and labels[i] == IGNORE:
        i -= 1
    while i > 0 and labels[i - 1] != IGNORE:
        i -= 1
    return i


# ------------------------------------------------------------------ sft


def fit_sft(messages: list[dict], tokenizer: Any, template: Any, max_length: int,
            train_on: str = "all") -> dict[str, Any]:
    """input_ids + labels within max_length, and how they were obtained (STATUS, REASON)."""

    def enc(msgs: list[dict]) -> dict[str, list[int]]:
        return template.tokenize(tokenizer, msgs, train_on=train_on)

    def out(e: dict | None, status: str, reason: str = "") -> dict[str, Any]:
        return {"input_ids": list(e["input_ids"]) if e else [], "labels": list(e["labels"]) if e else [],
                STATUS: status, REASON: reason}

    last = max((i for i, m in enumerate(messages) if m["role"] == "assistant"), default=None)
    if last is None:
        return out(None, DROPPED, "no assistant turn")
    full = enc(messages)
    if len(full["input_ids"]) <= max_length:
        return out(full, FIT)
    cands = [messages[:last + 1], *trims(messages, last)]
    cache: dict[int, dict] = {}

    def length(i: int) -> int:
        cache[i] = enc(cands[i])
        return len(cache[i]["input_ids"])

    best, _ = first_fit(list(range(len(cands))), length, max_length)
    if best >= 0:  # whole turns went (or only the turns after the last reply)
        return out(cache[best], TRIMMED)
    # the last exchange alone is too long: LLaMA-Factory's budget between its prompt and its reply
    shortest = cands[-1]
    e = cache.get(len(cands) - 1) or enc(shortest)
    ids, labels = list(e["input_ids"]), list(e["labels"])
    start = _last_run_start(labels)
    if start < 0:
        return out(None, DROPPED, "no trained token (train_on leaves nothing)")
    src, _ = infer_seqlen(start, len(ids) - start, max_length)
    cut = start - src
    if cut > 0:  # take the prompt's share from the start of its user text (template markers stay)
        drop = set(_user_text_tokens(shortest, tokenizer, template, start)[:cut])
        if len(drop) == cut:
            ids = [t for i, t in enumerate(ids) if i not in drop]
            labels = [t for i, t in enumerate(labels) if i not in drop]
        # else: too little user text to cut; the reply gets what the whole prompt leaves
    ids, labels = ids[:max_length], labels[:max_length]
    if not any(t != IGNORE for t in labels):
        return out(None, DROPPED, f"the last exchange's prompt alone is {start} tokens (not enough user text to "
                                  f"cut), max_length {max_length}")
    return out({"input_ids": ids, "labels": labels}, TRUNCATED)


def _user_text_tokens(messages: list[dict], tokenizer: Any, template: Any, before: int) -> list[int]:
    """Indices of the tokens (among the first `before`) that lie inside the first user turn's text."""
    from tuneforge.templates.masking import encode_with_offsets

    user = next((m for m in messages if m["role"] == "user" and m["content"]), None)
    if user is None:
        return []
    text = template.render(messages)
    c0 = text.find(user["content"])
    if c0 < 0:
        return []
    c1 = c0 + len(user["content"])
    _, offsets = encode_with_offsets(tokenizer, text, template.name)
    return [i for i, (a, b) in enumerate(offsets[:before]) if a >= c0 and b <= c1]


# ------------------------------------------------------------------ prompts and pairs


def token_length(tokenizer: Any, template: Any, messages: list[dict], add_generation_prompt: bool = False) -> int:
    text = template.render(messages, add_generation_prompt=add_generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def fit_prompt(prompt: list[dict], tokenizer: Any, template: Any, max_length: int) -> dict[str, Any]:
    """A prompt (for on-policy generation) within max_length: oldest rounds, then the system turn, go first."""
    if not prompt:
        return {"prompt": prompt, STATUS: DROPPED, REASON: "empty prompt"}
    cands = [prompt, *trims(prompt, len(prompt) - 1)]
    best, n = first_fit(cands, lambda m: token_length(tokenizer, template, m, True), max_length)
    if best < 0:
        return {"prompt": prompt, STATUS: DROPPED,
                REASON: f"last prompt turn alone is {n} tokens, over max_length {max_length}"}
    return {"prompt": cands[best], STATUS: FIT if best == 0 else TRIMMED, REASON: ""}


def fit_pair(row: dict, completions: tuple[str, ...], tokenizer: Any, template: Any, max_length: int,
             cut_completion: bool) -> dict[str, Any]:
    """A preference/unpaired row whose prompt is trimmed so prompt + its longest completion fit; with
    `cut_completion` (dpo, kto: TRL keeps the start of a too-long completion) a prompt shorter than max_length
    is enough."""
    prompt = row["prompt"]

    def longest(p: list[dict]) -> int:
        return max(token_length(tokenizer, template, p + row[c]) for c in completions)

    cands = [prompt, *trims(prompt, len(prompt) - 1)]
    best, n = first_fit(cands, longest, max_length)
    if best >= 0:
        return {"prompt": cands[best], STATUS: FIT if best == 0 else TRIMMED, REASON: ""}
    shortest = cands[-1]
    p_len = token_length(tokenizer, template, shortest, True)
    if cut_completion and p_len < max_length:
        return {"prompt": shortest, STATUS: TRUNCATED, REASON: ""}
    if p_len >= max_length:
        return {"prompt": prompt, STATUS: DROPPED, REASON: f"prompt alone is {p_len} tokens, max_length {max_length}"}
    return {"prompt": prompt, STATUS: DROPPED,
            REASON: f"prompt + reply is {n} tokens, over max_length {max_length} (this stage cannot cut a reply)"}


# ------------------------------------------------------------------ report


@dataclass
class SplitReport:
    split: str
    rows: int = 0
    counts: dict[str, int] = field(default_factory=dict)
    dropped: list[dict[str, str]] = field(default_factory=list)

    @property
    def n_dropped(self) -> int:
        return self.counts.get(DROPPED, 0)

    @property
    def kept(self) -> int:
        return self.rows - self.n_dropped

    def share(self) -> float:
        return self.n_dropped / self.rows if self.rows else 0.0

    def to_json(self) -> dict[str, Any]:
        return {"rows": self.rows, "kept": self.kept, "fit": self.counts.get(FIT, 0),
                "trimmed": self.counts.get(TRIMMED, 0), "truncated": self.counts.get(TRUNCATED, 0),
                "dropped": self.n_dropped, "dropped_share": round(self.share(), 6),
                "dropped_rows": self.dropped[:LIST_LIMIT]}


def apply(ds: Any, fn: Callable[[dict], dict], split: str, desc: str) -> tuple[Any, SplitReport]:
    """Map `fn` over the rows (it returns STATUS/REASON with the new columns), then keep the rows that were
    not dropped; the report says what happened to each."""
    mapped = ds.map(fn, desc=desc)
    status, reasons = mapped[STATUS], mapped[REASON]
    ids = mapped["id"] if "id" in mapped.column_names else [str(i) for i in range(len(mapped))]
    report = SplitReport(split=split, rows=len(mapped), counts=dict(Counter(status)))
    report.dropped = [{"id": str(i), "reason": r} for i, s, r in zip(ids, status, reasons, strict=True) if s == DROPPED]
    keep = [i for i, s in enumerate(status) if s != DROPPED]
    kept = mapped.select(keep) if len(keep) != len(mapped) else mapped
    return kept.remove_columns([STATUS, REASON]), report


def untouched(ds: Any, split: str) -> SplitReport:
    """A split nothing is cut from (pt: documents are packed into blocks)."""
    return SplitReport(split=split, rows=len(ds), counts={FIT: len(ds)})


def preflight(reports: list[SplitReport], max_length: int, max_drop_share: float, strict: bool) -> None:
    """Fail before training when any split drops more than `max_drop_share` of its rows (or any, if strict)."""
    for r in reports:
        if not r.n_dropped:
            continue
        examples = "; ".join(f"{d['id']} ({d['reason']})" for d in r.dropped[:3])
        what = (f"{r.split}: {r.n_dropped} of {r.rows} rows ({100 * r.share():.1f}%) cannot fit max_length "
                f"{max_length} even after trimming older turns, e.g. {examples}")
        if strict:
            raise DroppedRowsError(f"--strict: {what}")
        if r.share() > max_drop_share:
            raise RecipeError(f"{what}; that is over truncation.max_drop_share {100 * max_drop_share:g}%: raise "
                              f"max_length or max_drop_share")
    if not reports or reports[0].kept == 0:
        raise TuneforgeError(f"no training row fits within max_length {max_length}")


def fitting_line(fitting: dict[str, dict[str, Any]], max_length: int) -> str:
    """One line per run for logs and summaries: per split, how many rows were cut to fit and how many dropped
    (`fitting` is run.json's `truncation`: SplitReport.to_json per split, with TRL's own drops)."""
    parts = []
    for split, r in fitting.items():
        cut = r.get("trimmed", 0) + r.get("truncated", 0)
        by_trl = r.get("dropped_by_trl", 0)
        parts.append(f"{split}: {cut} of {r['rows']} rows truncated at max_length {max_length} "
                     f"({r.get('trimmed', 0)} lost older turns, {r.get('truncated', 0)} cut inside a turn), "
                     f"{r.get('dropped', 0) + by_trl} dropped" + (f" ({by_trl} by TRL)" if by_trl else ""))
    return "; ".join(parts)
