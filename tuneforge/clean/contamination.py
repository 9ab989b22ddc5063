"""Benchmark contamination: training records that contain a benchmark question, by n-gram overlap.

Text is compared as tokens where one Han character or one Latin word/number is one token (after NFKC and case
folding, punctuation dropped), so 13-grams mean the same thing in Chinese and English. A question shorter
than `ngram` tokens is matched with 8-grams; n-grams that occur in more than `max_items_per_gram` benchmark
items are boilerplate ("下列说法正确的是") and are not evidence.
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

from tuneforge.clean.config import BenchmarkRef, CleanConfig
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.mcq import MCQItem, load_benchmark, load_mcq_file
from tuneforge.common.records import Record, texts_of

SHORT_NGRAM = 8
_TOKEN = re.compile(r"[a-z0-9\u00c0-\u024f]+|[^\W_]")


def tokens(text: str) -> list[str]:
    return _TOKEN.findall(unicodedata.normalize("NFKC", text).casefold())


def _grams(toks: list[str], n: int) -> set[tuple[str, ...]]:
    return {tuple(toks[i:i + n]) for i in range(len(toks) - n + 1)}


def _load(ref: BenchmarkRef, recipe_dir: Path) -> list[MCQItem]:
    path = Path(ref.path)
    path = path if path.is_absolute() else recipe_dir / path
    if not path.exists():
        raise TuneforgeError(f"clean.contamination: benchmark {ref.name!r} not found at {path}")
    if ref.layout == "mcq" or path.is_file():
        bench = load_mcq_file(path, ref.columns, name=ref.name, validate=False)  # every question counts
    else:
        bench = load_benchmark(path, ref.layout, name=ref.name, validate=False)
    return [it for key in sorted(bench.items) for it in bench.items[key]]


class BenchmarkIndex:
    """n-gram -> benchmark items, with each item's number of usable n-grams."""

    def __init__(self, cfg: CleanConfig, recipe_dir: Path) -> None:
        c = cfg.contamination
        self.ngram = c.ngram
        self.items: list[tuple[str, MCQItem]] = []
        self.stats: dict[str, dict[str, Any]] = {}
        owners: dict[int, dict[tuple[str, ...], list[int]]] = {c.ngram: defaultdict(list), SHORT_NGRAM: defaultdict(list)}
        for ref in c.benchmarks:
            if ref.name in self.stats:
                raise TuneforgeError(f"clean.contamination: benchmark name {ref.name!r} is used twice")
            items = _load(ref, recipe_dir)
            st = self.stats[ref.name] = {"layout": ref.layout, "path": ref.path, "items": len(items),
                                         "indexed": 0, "too_short": 0, "hits": 0, "records": 0}
            for it in items:
                toks = tokens(it.question)
                n = c.ngram if len(toks) >= c.ngram else SHORT_NGRAM
                if len(toks) < n:
                    st["too_short"] += 1
                    continue
                k = len(self.items)
                self.items.append((ref.name, it))
                for g in _grams(toks, n):
                    owners[n][g].append(k)
        self.index: dict[int, dict[tuple[str, ...], list[int]]] = {}
        self.size = [0] * len(self.items)
        for n, table in owners.items():
            kept = {g: ks for g, ks in table.items() if len(ks) <= c.max_items_per_gram}
            self.index[n] = kept
            for ks in kept.values():
                for k in ks:
                    self.size[k] += 1
        for k, (name, _) in enumerate(self.items):
            if self.size[k]:
                self.stats[name]["indexed"] += 1

    def match(self, texts: list[str]) -> dict[int, float]:
        """Benchmark items (by index) whose question a record's texts contain, with the share of n-grams."""
        found: Counter[int] = Counter()
        for n, table in self.index.items():
            if not table:
                continue
            grams: set[tuple[str, ...]] = set()
            for t in texts:
                grams |= _grams(tokens(t), n)
            for g in grams & table.keys():
                found.update(table[g])
        return {k: hits / self.size[k] for k, hits in found.items()}


    def hits(self, rec: Record, min_overlap: float) -> list[tuple[str, str, float]]:
        """(benchmark, item uid, overlap) of every question the record contains, strongest first."""
        if rec["kind"] == "kb":
            return []
        matched = self.match(texts_of(rec))
        found = sorted(((k, ov) for k, ov in matched.items() if ov >= min_overlap),
                       key=lambda kv: (-kv[1], self.items[kv[0]][0], self.items[kv[0]][1].uid))
        return [(self.items[k][0], self.items[k][1].uid, round(ov, 4)) for k, ov in found]


def empty_stats(idx: BenchmarkIndex) -> dict[str, dict[str, Any]]:
    return {name: {**st, "hits": 0, "records": 0} for name, st in idx.stats.items()}


def add_hits(stats: dict[str, dict[str, Any]], hits: list[tuple[str, str, float]]) -> None:
    for name in sorted({b for b, _, _ in hits}):
        stats[name]["records"] += 1
    for name, _, _ in hits:
        stats[name]["hits"] += 1


def contamination_report(records: list[Record], cfg: CleanConfig, recipe_dir: Path | str) -> dict:
    """Records containing a benchmark question: hits for the dataset card, and the ones to drop if asked."""
    c = cfg.contamination
    report: dict[str, Any] = {"ngram": c.ngram, "min_overlap": c.min_overlap, "benchmarks": {}, "hits": [],
                              "dropped": []}
    if not c.benchmarks:
        return report
    idx = BenchmarkIndex(cfg, Path(recipe_dir))
    stats = report["benchmarks"] = empty_stats(idx)
    for rec in records:
        hits = idx.hits(rec, c.min_overlap)
        if not hits:
            continue
        add_hits(stats, hits)
        report["hits"] += [{"record_id": rec["id"], "benchmark": b, "item": uid, "overlap": ov} for b, uid, ov in hits]
        if c.drop:
            report["dropped"].append(rec["id"])
    return report
