"""Exact and near-duplicate removal on real corpora, clusters, and the cross-split leakage check."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest

from tuneforge.clean import CleanConfig, leakage_report, run_clean
from tuneforge.common.io import dumps
from tuneforge.common.records import new_record, provenance, texts_of


def _alpaca(shared: Path, name: str, source: str) -> list[dict]:
    rows = json.loads((shared / "llamafactory" / name).read_text(encoding="utf-8"))
    out = []
    for i, r in enumerate(rows):
        user = r["instruction"] + ("\n" + r["input"] if r["input"] else "")
        out.append(new_record("messages", provenance(source, name, None, i),
                              messages=[{"role": "user", "content": user},
                                        {"role": "assistant", "content": r["output"]}]))
    return out


def _own_jaccard(a: dict, b: dict, n: int = 5) -> float:
    """Jaccard of character n-grams, computed here independently of the product's code."""
    def grams(rec: dict) -> set[str]:
        s = re.sub(r"[\W_]+", "", "\n".join(texts_of(rec)).casefold())
        return {s[i:i + n] for i in range(max(1, len(s) - n + 1))}
    ga, gb = grams(a), grams(b)
    return len(ga & gb) / len(ga | gb)


def _near_copy(rec: dict, k: int, rng: random.Random) -> dict:
    """A lightly edited copy from another source file: a typo, changed punctuation, a phrase added."""
    answer = list(rec["messages"][1]["content"])
    i = rng.randrange(len(answer))
    answer[i] = "的" if answer[i] != "的" else "了"
    text = "".join(answer).replace("，", ",") + "希望对你有帮助。"
    return new_record("messages", provenance("mirror", "mirror.jsonl", k + 1, None),
                      messages=[{"role": "user", "content": "  " + rec["messages"][0]["content"].upper()},
                                {"role": "assistant", "content": text}])


@pytest.fixture(scope="module")
def planted(shared: Path) -> tuple[list[dict], dict[str, str]]:
    """alpaca_zh with 40 near-duplicates and 5 exact duplicates (whitespace/case changes) shuffled in."""
    rng = random.Random(7)
    base = _alpaca(shared, "alpaca_zh_demo.json", "alpaca_zh")
    long_enough = [r for r in base if len(r["messages"][1]["content"]) >= 150]
    originals = rng.sample(long_enough, 45)
    copies, truth = [], {}
    for k, src in enumerate(originals[:40]):
        c = _near_copy(src, k, rng)
        assert _own_jaccard(src, c) >= 0.85
        copies.append(c)
        truth[c["id"]] = src["id"]
    for k, src in enumerate(originals[40:]):
        c = new_record("messages", provenance("mirror", "exact.jsonl", k + 1, None),
                       messages=[{"role": m["role"], "content": m["content"].replace("，", " , ") + "\n\n"}
                                 for m in src["messages"]])
        copies.append(c)
        truth[c["id"]] = src["id"]
    records = base + copies
    rng.shuffle(records)
    return records, truth


def test_planted_duplicates_are_found_and_nothing_else_is_wrong(planted):
    records, truth = planted
    res = run_clean(records, CleanConfig())
    by_id = {r["id"]: r for r in records}
    removed = {r["id"]: r for r in res.rejects if r["reason"] == "deduplicated"}
    pairs = {frozenset((a, b)) for a, b in truth.items()}
    found = {frozenset((i, r["duplicate_of"])) for i, r in removed.items()}
    assert pairs <= found, f"missed {len(pairs - found)} planted pairs"
    for rid, row in removed.items():
        assert row["raw"] == by_id[rid] and row["duplicate_of"] in {r["id"] for r in res.kept}
        # Every removal beyond the planted ones (alpaca_zh has a few of its own) is a real duplicate.
        assert _own_jaccard(by_id[rid], by_id[row["duplicate_of"]]) >= 0.8
        assert row["method"] in ("exact", "minhash")
    assert res.counts["deduplicated"]["near"] >= 40 and res.counts["deduplicated"]["exact"] >= 5
    for rid, row in removed.items():
        assert res.clusters[rid] == row["duplicate_of"] == res.clusters[row["duplicate_of"]]
    assert len(res.kept) + len(res.rejects) == len(records)


def test_same_group_and_other_kinds_are_not_near_duplicates():
    prompt = [{"role": "user", "content": "请比较一下北京和上海这两座城市在历史、文化、经济和生活方式上的异同，并给出你的看法。"}]
    meta = provenance("rm", "oaast_rm.json", None, 0)
    ranked = [new_record("preference", meta, sub=k, prompt=prompt,
                         chosen=[{"role": "assistant", "content": "北京历史悠久。"}],
                         rejected=[{"role": "assistant", "content": f"上海很繁华{k}。"}]) for k in range(3)]
    res = run_clean(ranked, CleanConfig())
    assert len(res.kept) == 3 and res.clusters == {}
    other = new_record("preference", provenance("rm", "oaast_rm.json", None, 1), prompt=prompt,
                       chosen=[{"role": "assistant", "content": "北京历史悠久。"}],
                       rejected=[{"role": "assistant", "content": "上海很繁华9。"}])
    res = run_clean([*ranked, other], CleanConfig())
    assert [r["reason"] for r in res.rejects] == ["deduplicated"]
    assert res.rejects[0]["id"] == other["id"] and res.rejects[0]["method"] == "minhash"


def test_threshold_is_a_recipe_switch(planted):
    records, _ = planted
    strict = run_clean(records, CleanConfig.model_validate({"dedup": {"threshold": 0.99}}))
    loose = run_clean(records, CleanConfig())
    assert strict.counts["deduplicated"]["near"] < loose.counts["deduplicated"]["near"]
    off = run_clean(records, CleanConfig.model_validate({"dedup": {"near": False}}))
    assert off.counts["deduplicated"]["near"] == 0


@pytest.mark.slow
def test_worker_processes_give_identical_results(planted, shared: Path, monkeypatch):
    from tuneforge.clean import minhash

    monkeypatch.setattr(minhash, "CHUNK", 400)  # several chunks for both the cleaning and the signature pools
    records = planted[0] + _alpaca(shared, "alpaca_en_demo.json", "alpaca_en")
    one = run_clean(records, CleanConfig(), num_proc=1)
    two = run_clean(records, CleanConfig(), num_proc=2)
    dump = lambda r: dumps({"kept": r.kept, "rejects": r.rejects, "counts": r.counts, "clusters": r.clusters})  # noqa: E731
    assert dump(one) == dump(two)


def test_no_near_duplicates_straddle_splits_after_clean(planted):
    from tuneforge.publish.config import SplitConfig
    from tuneforge.publish.split import split_records

    records, truth = planted
    cfg = CleanConfig()
    # Without dedup the planted pairs land in different splits and the check sees them.
    raw_split = split_records(records, SplitConfig(stratify=False), seed=0)
    raw = leakage_report(raw_split.splits, cfg)
    assert raw["n"] > 0
    assert all(frozenset((p["a"], p["b"])) in {frozenset(x) for x in truth.items()} or p["jaccard"] >= 0.8
               for p in raw["pairs"])
    # After dedup, with the clusters given to the split, there are none.
    res = run_clean(records, cfg)
    clean_split = split_records(res.kept, SplitConfig(stratify=False), seed=0, clusters=res.clusters)
    report = leakage_report(clean_split.splits, cfg)
    assert report == {"threshold": 0.8, "checked": len(res.kept), "candidates": 0, "pairs": [], "n": 0}


def test_batched_signatures_equal_datasketch_minhash():
    """The batched signature code is datasketch's MinHash, value for value, only without per-text overhead."""
    from tuneforge.clean.minhash import base_minhash, shingles, signatures

    texts = ["", "短", "abcde", "abcdef", "中华人民共和国成立于一九四九年", "Hello world, hello MinHash! " * 30]
    # Many texts fill several blocks of windows; one text longer than a block gets a block of its own.
    rng = random.Random(0)
    texts += ["".join(rng.choice("天地玄黄宇宙洪荒日月盈昃abc ") for _ in range(rng.randrange(1, 400)))
              for _ in range(150)]
    texts.insert(40, "长文本" * 4000)
    got = signatures(texts, 5, 64, 3)
    for text, row in zip(texts, got, strict=True):
        m = base_minhash(64, 3)
        m.update_batch(shingles(text, 5))
        assert row.tolist() == m.hashvalues.tolist()


def test_shard_key_texts_equal_key_text():
    """`key_texts` (a whole shard in one array pass) gives exactly `key_text` of each record's texts: case
    folding that changes length, underscores, combining marks, lone surrogates, astral characters, and the
    fallback to the raw text when nothing alphanumeric is left."""
    from tuneforge.clean.minhash import key_text, key_texts

    rng = random.Random(1)
    alphabet = "aBß_ ,.中文１２\u0301\ud800ﬁİ\U0001F600\U00020001\n\t!"
    groups = [[], [""], ["", ""], ["___"], ["!!"], ["Straße", "ＡＢＣ"]]
    groups += [["".join(rng.choice(alphabet) for _ in range(rng.randrange(12))) for _ in range(rng.randrange(3))]
               for _ in range(5000)]
    assert key_texts(groups) == [key_text(g) for g in groups]
    assert key_texts([]) == []


def test_alnum_table_is_str_isalnum_for_every_code_point():
    """The per-code-point table `key_texts` filters with (NumPy's isalnum over all of Unicode) says exactly
    what `str.isalnum` says, for every code point, surrogates included."""
    import numpy as np

    from tuneforge.clean.minhash import _alnum

    ref = np.fromiter((chr(c).isalnum() for c in range(0x110000)), dtype=bool, count=0x110000)
    table = _alnum()
    assert table.dtype == bool and table.shape == (0x110000,)
    assert np.array_equal(table, ref)
