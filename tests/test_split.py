"""The split: 8:1:1, seeded, grouped (nothing leaks), stratified by source, small sources handled."""

from __future__ import annotations

import numpy as np

from tuneforge.ingest import SourceConfig, ingest
from tuneforge.publish.config import SplitConfig
from tuneforge.publish.split import split_records


def _records(shared):
    srcs = [SourceConfig(name="rm", path="chatglm-efficient-tuning/oaast_rm_zh.json"),
            SourceConfig(name="sft", path="chatglm-efficient-tuning/oaast_sft_zh.json"),
            SourceConfig(name="tiny", path="lawgpt/example_infer_data.jsonl")]
    return ingest(srcs, shared).records


def test_ratios_groups_and_strata(shared):
    recs = _records(shared)
    res = split_records(recs, SplitConfig(), seed=7)
    sizes = {k: len(v) for k, v in res.splits.items()}
    assert sum(sizes.values()) == len(recs)
    for source in ("rm", "sft"):
        n = sum(1 for r in recs if r["meta"]["source"] == source)
        got = {k: sum(1 for r in v if r["meta"]["source"] == source) for k, v in res.splits.items()}
        assert abs(got["train"] / n - 0.8) < 0.02 and abs(got["test"] / n - 0.1) < 0.02, got
    # Ranked pairs from one prompt never straddle splits.
    where = {}
    for split, rs in res.splits.items():
        for r in rs:
            assert where.setdefault(r["meta"]["group"], split) == split
    # A source under `small_source` records goes to train whole, and the notes say so.
    assert all(r["meta"]["source"] != "tiny" for r in res.splits["test"] + res.splits["validation"])
    assert any("tiny" in n and "all in train" in n for n in res.notes)


def test_deterministic_and_seeded(shared):
    recs = _records(shared)
    a = split_records(recs, SplitConfig(), seed=1)
    b = split_records(list(recs), SplitConfig(), seed=1)
    c = split_records(recs, SplitConfig(), seed=2)
    ids = lambda s: {k: [r["id"] for r in v] for k, v in s.splits.items()}  # noqa: E731
    assert ids(a) == ids(b) and ids(a) != ids(c)


def test_clusters_join_groups(shared):
    recs = _records(shared)[:200]
    # Pretend the clean stage found each consecutive pair of records near-duplicate.
    clusters = {r["id"]: f"c{i // 2}" for i, r in enumerate(recs)}
    res = split_records(recs, SplitConfig(), seed=3, clusters=clusters)
    where = {r["id"]: s for s, rs in res.splits.items() for r in rs}
    for i in range(0, len(recs) - 1, 2):
        assert where[recs[i]["id"]] == where[recs[i + 1]["id"]]


def test_custom_ratios_and_spread_policy(shared):
    recs = _records(shared)
    res = split_records(recs, SplitConfig(ratios={"train": 0.9, "validation": 0.0, "test": 0.1},
                                          small_source_policy="spread"), seed=0)
    assert not res.splits["validation"]
    assert abs(len(res.splits["test"]) / len(recs) - 0.1) < 0.02


def test_growing_corpus_moves_few_groups_and_shares_stay_exact():
    """A nightly build over a grown corpus: 20,000 groups, then 2,000 more. Shares stay exact to one group,
    and a group that was in the first build changes split only if it sat near a boundary."""
    from tuneforge.publish.config import SplitConfig
    from tuneforge.publish.split import assign_groups

    rng = np.random.default_rng(0)
    codes = np.unique(rng.integers(0, 2**63, 22_000, dtype=np.uint64))
    rng.shuffle(codes)
    old_codes, cfg = codes[:20_000], SplitConfig()

    def table(c: np.ndarray) -> dict[int, int]:
        t = assign_groups(c, np.ones(len(c), np.int64), np.zeros(len(c), np.int64), ["all"], cfg, 7)
        assert abs(int((t.splits == 0).sum()) - 0.8 * len(c)) <= 1 and abs(int((t.splits == 2).sum()) - 0.1 * len(c)) <= 1
        return dict(zip(t.groups.tolist(), t.splits.tolist(), strict=True))

    before, after = table(old_codes), table(codes)
    moved = sum(1 for g, s in before.items() if after[g] != s)
    assert 0 < moved < 0.03 * len(before), moved
    assert table(old_codes) == before  # and the same input gives the same table


def test_the_in_memory_read_and_split_are_the_builds(shared, tmp_path):
    """`ingest` and `split_records` run the build's own steps: a build of the same sources (clean off, so
    every record read is kept) reports the same per-source figures and puts every record in the same split."""
    import shutil

    import pyarrow as pa
    import yaml

    from tuneforge import build

    srcs = [SourceConfig(name="rm", path="chatglm-efficient-tuning/oaast_rm_zh.json"),
            SourceConfig(name="sft", path="chatglm-efficient-tuning/oaast_sft_zh.json"),
            SourceConfig(name="tiny", path="lawgpt/example_infer_data.jsonl")]
    for s in srcs:  # beside the recipe, so that files are named alike in both
        (tmp_path / s.path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(shared / s.path, tmp_path / s.path)
    read = ingest(srcs, tmp_path)
    mem = split_records(read.records, SplitConfig(), seed=7)
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"name": "r", "seed": 7, "clean": {"enabled": False},
                                      "card": {"tokenizer": None},  # characters: no tokenizer to load
                                      "sources": [{"name": s.name, "path": s.path} for s in srcs]}))
    m = build(recipe, tmp_path / "out", runner="serial")
    for name, figures in read.sources.items():
        assert {k: m["sources"][name][k] for k in figures} == figures
    assert m["counts"]["input"] == sum(f["input"] for f in read.sources.values())
    built: dict[str, list[str]] = {s: [] for s in mem.splits}
    for folder in m["datasets"].values():
        for split in built:
            for f in sorted((tmp_path / "out" / folder / split).glob("data-*.arrow")):
                built[split] += pa.ipc.open_stream(pa.memory_map(str(f))).read_all().column("id").to_pylist()
    assert {s: sorted(v) for s, v in built.items()} == {s: sorted(r["id"] for r in v) for s, v in mem.splits.items()}
    assert all(built.values())
