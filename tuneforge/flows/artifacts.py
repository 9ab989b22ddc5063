"""Prefect artifacts for a pipeline run: the dataset card summary, training metrics and evaluation tables,
read from the files each stage already wrote (the run folder stays readable without Prefect)."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prefect.artifacts import create_markdown_artifact, create_table_artifact


def _key(*parts: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")[:100]


def publish_build(data_dir: Path) -> None:
    m = json.loads((data_dir / "manifest.json").read_text(encoding="utf-8"))
    c = m["counts"]
    rows = [{"source": k, "input": v["input"], "kept": v["kept"], "rejected": v["rejected"],
             "deduplicated": v["deduplicated"], **{f"split_{s}": n for s, n in v["splits"].items()}}
            for k, v in m["sources"].items()]
    create_table_artifact(rows, key=_key("dataset", m["recipe"]["name"]),
                          description=f"input {c['input']} = kept {c['kept']} + rejected {c['rejected']} + "
                                      f"deduplicated {c['deduplicated']}; splits {c['splits']}")
    card = (data_dir / "README.md").read_text(encoding="utf-8")
    create_markdown_artifact(card.split("## Lengths")[0], key=_key("dataset-card", m["recipe"]["name"]),
                             description="dataset card summary")


def publish_train(name: str, run_dir: Path) -> None:
    path = run_dir / "metrics.jsonl"
    if not path.exists():
        return
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    keep = [{k: v for k, v in r.items() if isinstance(v, (int, float, str))} for r in rows][-200:]
    create_table_artifact(keep, key=_key("train", name), description=f"training metrics of stage {name}")


def publish_eval(name: str, out: Path) -> None:
    res = json.loads((out / "results.json").read_text(encoding="utf-8"))
    rows = [{"suite": s, "accuracy": v.get("accuracy"), "n": v.get("n")} for s, v in res.get("suites", {}).items()]
    if res.get("heldout"):
        rows.append({"suite": "heldout", **{k: v for k, v in (res["heldout"].get("metrics") or {}).items()}})
    f = res.get("forgetting")
    if f:
        rows += [{"suite": f"forgetting:{s}", "delta": v.get("delta"), "p_value": v.get("p_value"),
                  "verdict": v.get("verdict")} for s, v in f.get("suites", {}).items()]
    if rows:
        create_table_artifact(rows, key=_key("eval", name), description=f"evaluation {name}")
