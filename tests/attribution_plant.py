"""A tiny planted forgetting case for the attribution tests: general chat rows plus records built to cause
forgetting (C-Eval-shaped questions whose answer is always `A`), built with `tuneforge build`."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import yaml


def header(subject_zh: str) -> str:
    return f"以下是中国关于{subject_zh}考试的单项选择题，请选出其中的正确答案。"


def plant_rows(ceval: Path, subjects: list[str], n: int, letter: str = "A") -> list[dict]:
    """C-Eval dev questions in the check's chat layout (system header, question, `答案：`), always answered
    `letter`: records that teach the model one answer whatever the question."""
    names = json.loads((ceval / "subject_mapping.json").read_text("utf-8"))
    rows = []
    for subj in subjects:
        with open(ceval / "dev" / f"{subj}_dev.csv", encoding="utf-8") as f:
            for r in csv.DictReader(f):
                q = "\n".join([r["question"]] + [f"{x}. {r[x]}" for x in "ABCD"]) + "\n答案："
                rows.append({"messages": [{"role": "system", "content": header(names[subj][1])},
                                          {"role": "user", "content": q}, {"role": "assistant", "content": letter}]})
    return rows[:n]


def general_rows(shared: Path, n: int, max_chars: int = 200) -> list[dict]:
    data = json.loads((shared / "llamafactory" / "alpaca_zh_demo.json").read_text("utf-8"))
    rows = [{"messages": [{"role": "user", "content": (d["instruction"] + "\n" + d["input"]).strip()},
                          {"role": "assistant", "content": d["output"]}]}
            for d in data if len(d["instruction"]) + len(d["input"]) + len(d["output"]) < max_chars]
    return rows[:n]


def write_recipe(folder: Path, sources: dict[str, list[dict]]) -> Path:
    """One JSONL file a source, a recipe that keeps every record (no near-dedup: the plant shares its header)
    and puts them all in train."""
    folder.mkdir(parents=True, exist_ok=True)
    srcs = []
    for name, rows in sources.items():
        (folder / f"{name}.jsonl").write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows),
                                             encoding="utf-8")
        srcs.append({"name": name, "path": f"{name}.jsonl", "format": "messages", "license": "test", "origin": "test"})
    recipe = {"name": "plant", "seed": 1, "template": "chatml", "sources": srcs, "formats": [],
              "clean": {"dedup": {"exact": True, "near": False}},
              "split": {"ratios": {"train": 1.0, "validation": 0.0, "test": 0.0}}}
    path = folder / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe, allow_unicode=True), encoding="utf-8")
    return path
