"""`compare` on pipeline folders: every metric shown, ties as ties, chance next to every accuracy; the
deltas plot's tolerance per suite; `forgetting --base-eval` on the command line."""

from __future__ import annotations

import json
from pathlib import Path

from tuneforge.eval.compare import compare_runs, competition_ranks


def _write(folder: Path, obj: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "results.json").write_text(json.dumps(obj), encoding="utf-8")
    return folder


def _suite(acc: float, q: str, chance: float | None = 25.0, layout: str = "ceval") -> dict:
    return {"accuracy": acc, "n": 40, "questions": q, "chance": chance, "layout": layout,
            "categories": {"Other": {"accuracy": acc, "n": 40}}, "hard": None}


def _pipeline(root: Path, exam_base: float, exam_tuned: float) -> Path:
    """A `tuneforge run` output as the pipeline writes it: evaluate step per model, forgetting with its own
    base/tuned evaluations (general suites, perplexity)."""
    held = {"n": 5, "bleu4": 3.1, "rouge1": 20.5, "rougeL": 18.0, "tokenize": "char", "exact_match": None,
            "exact_match_n": 0}
    for model, acc in (("base", exam_base), ("tuned", exam_tuned)):
        _write(root / "eval" / model, {"model": "embedded:smollm2", "suites": {"exam": _suite(acc, "x", 50.0, "mcq")},
                                       "heldout": {"metrics": {**held, "bleu4": held["bleu4"] + (model == "tuned")}}})
    _write(root / "forgetting" / "base", {"model": "embedded:smollm2", "suites": {"ceval": _suite(20.2, "c")},
                                          "perplexity": {"perplexity": 12.5}})
    _write(root / "forgetting" / "tuned", {"model": "x", "suites": {"ceval": _suite(30.0, "c")},
                                           "perplexity": {"perplexity": 13.25}})
    _write(root / "forgetting", {"base_eval": str(root / "forgetting" / "base"), "suites": {}})
    return _write(root, {
        "pipeline": "demo", "build": {}, "train": [{"stage": "sft", "final_loss": 1.5, "eval_loss": 1.75}],
        "evaluations": {m: {"out": str(root / "eval" / m), "suites": {}, "heldout": None} for m in ("base", "tuned")},
        "forgetting": {"verdict": "inconclusive", "suites": {"ceval": {"delta": 9.8}}}})


def test_compare_reads_a_pipeline_folder_and_shows_every_metric(tmp_path):
    res = compare_runs([_pipeline(tmp_path / "p", 40.0, 60.0)], tmp_path / "cmp")
    board = {e["run"]: e for e in res["leaderboard"]}
    assert list(board) == ["demo: tuned", "demo: base"]
    base, tuned = board["demo: base"], board["demo: tuned"]
    # the evaluate step's exam and the forgetting check's general suite, both with their chance level
    assert tuned["suites"] == {"ceval": 30.0, "exam": 60.0} and tuned["mean"] == 45.0
    assert base["chance"] == {"ceval": 25.0, "exam": 50.0}
    assert base["below_chance"] == ["ceval", "exam"] and tuned["below_chance"] == []
    assert (base["perplexity"], tuned["perplexity"]) == (12.5, 13.25)
    assert tuned["heldout"]["bleu4"] == 4.1 and tuned["forgetting"] == "inconclusive"
    assert tuned["train"] == {"stage": "sft", "final_loss": 1.5, "eval_loss": 1.75}
    md = (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    board_md = md.split("## Leaderboard")[1].split("\n## ")[0]
    assert "mean None" not in board_md and "not measured" not in board_md.split("| eval loss |")[0]
    assert "20.20 (chance 25.00) ⚠ below chance" in board_md
    assert "30.00 (chance 25.00) |" in board_md
    assert "held-out bleu4" in board_md and "| 13.2500 |" in board_md and "| 1.75 |" in board_md
    assert "Below chance" in board_md and "demo: base: ceval, exam" in board_md


def test_compare_ranks_ties_as_ties(tmp_path):
    runs = [_write(tmp_path / n, {"model": n, "suites": {"ceval": _suite(acc, "q")}})
            for n, acc in (("a", 30.0), ("b", 40.0), ("c", 30.0))]
    res = compare_runs(runs, tmp_path / "cmp")
    assert [(e["run"], e["rank"]) for e in res["leaderboard"]] == [("b", 1), ("a", 2), ("c", 2)]
    assert "Tied ranks: 2." in (tmp_path / "cmp" / "report.md").read_text(encoding="utf-8")
    assert competition_ranks([5.0, 5.0, 3.0, None]) == [1, 1, 3, 4]


def test_older_runs_get_the_chance_of_their_layout(tmp_path):
    old = {"accuracy": 20.0, "n": 10, "questions": "q", "layout": "ceval", "categories": {}, "hard": None}
    a = _write(tmp_path / "a", {"model": "a", "suites": {"ceval": old}})
    b = _write(tmp_path / "b", {"model": "b", "suites": {"ceval": {**old, "accuracy": 26.0}}})
    res = compare_runs([a, b], tmp_path / "cmp")
    assert [e["below_chance"] for e in res["leaderboard"]] == [[], ["ceval"]]


def test_delta_chart_draws_each_suites_tolerance(monkeypatch):
    from tuneforge.eval import report

    drawn = []
    plt = report._plt()
    real = plt.Axes.hlines

    def spy(self, y, *a, **k):
        drawn.append(y)
        return real(self, y, *a, **k)

    monkeypatch.setattr(plt.Axes, "hlines", spy)
    png = report.delta_chart("t", ["ceval", "cmmlu", "mmlu"], [-0.5, -1.0, 2.0], [-2, -3, 0], [1, 1, 4],
                             [1.0, 2.0, 5.0])
    assert png.startswith(b"\x89PNG") and drawn == [-1.0, -2.0, -5.0]


def test_report_forgetting_plot_uses_suite_tolerances(monkeypatch):
    from tuneforge.eval import report

    seen = {}
    monkeypatch.setattr(report, "delta_chart", lambda *a: seen.setdefault("tol", a[-1]) and b"")
    r = {"tier": "critical", "n": 10, "base_accuracy": 50.0, "tuned_accuracy": 40.0, "delta": -10.0, "ci_low": -20.0,
         "ci_high": 0.0, "lost": 1, "gained": 0, "p_value": 0.5, "mde": 30.0, "verdict": "inconclusive",
         "categories": {}, "subjects": {}, "flips": []}
    fg = {"base": "b", "alpha": 0.05, "bootstrap": 10, "tolerance": 1.0, "verdict": "inconclusive",
          "suites": {"ceval": {**r, "tolerance": 1.0}, "cmmlu": {**r, "tier": "advisory", "tolerance": 5.0}}}
    report.build_sections({"forgetting": fg}, [])
    assert seen["tol"] == [1.0, 5.0]


def test_forgetting_cli_takes_base_eval(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from tuneforge.cli import app
    from tuneforge.eval import forgetting

    got = {}

    def fake(base, tuned, **kw):
        got.update(kw)
        raise SystemExit(0)

    monkeypatch.setattr(forgetting, "run_forgetting", fake)
    CliRunner().invoke(app, ["forgetting", "--base", "embedded:smollm2", "--adapter", "a", "--suites", "ceval",
                             "--base-eval", str(tmp_path / "shared-base"), "--out", str(tmp_path / "o")])
    assert got["base_eval"] == tmp_path / "shared-base"
