"""Multiple-choice benchmark files (C-Eval, CMMLU, MMLU layouts, or a user's own exam) as plain items.

Shared by the clean stage (benchmark contamination) and the eval stage (scoring), so each layout is
parsed in one place.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.common.errors import TuneforgeError

LETTERS = ("A", "B", "C", "D")


@dataclass(frozen=True)
class MCQItem:
    suite: str
    subject: str
    split: str
    id: str
    question: str
    options: tuple[str, ...]
    answer: str | None
    explanation: str | None = None

    @property
    def uid(self) -> str:
        """Unique across a suite: `subject/split/id`."""
        return f"{self.subject}/{self.split}/{self.id}"


@dataclass(frozen=True)
class Subject:
    key: str
    name_en: str
    name_zh: str
    category: str


@dataclass
class Benchmark:
    name: str
    layout: str
    root: Path
    subjects: dict[str, Subject]
    items: dict[tuple[str, str], list[MCQItem]] = field(default_factory=dict)

    def split(self, split: str, subjects: list[str] | None = None) -> list[MCQItem]:
        keys = subjects or sorted(self.subjects)
        return [it for s in keys for it in self.items.get((s, split), [])]

    def splits(self) -> list[str]:
        return sorted({sp for _, sp in self.items})


def _csv_rows(path: Path, header: bool) -> list[list[str]]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        rows = [r for r in csv.reader(f) if r]
    return rows[1:] if header else rows


def _mapping(root: Path, layout: str) -> dict[str, Subject]:
    own = root / "subject_mapping.json"
    if own.is_file():  # C-Eval: subject -> [English, Chinese, category]
        data = json.loads(own.read_text(encoding="utf-8"))
        return {k: Subject(k, v[0], v[1], v[2]) for k, v in data.items()}
    lf = root / "llamafactory_mapping.json"
    if lf.is_file():  # LLaMA-Factory: subject -> {name, category}
        data = json.loads(lf.read_text(encoding="utf-8"))
        return {k: Subject(k, v["name"] if layout == "mmlu" else k, v["name"], v["category"])
                for k, v in data.items()}
    return {}


def _subject_of(path: Path, split: str) -> str:
    stem = path.stem
    return stem[: -len(split) - 1] if stem.endswith(f"_{split}") else stem


def detect_layout(root: Path) -> str:
    if (root / "subject_mapping.json").is_file():
        return "ceval"
    first = next(iter(sorted(root.glob("*/*.csv"))), None)
    if first is None:
        raise TuneforgeError(f"{root}: no <split>/<subject>.csv files; not a C-Eval/CMMLU/MMLU folder")
    with open(first, encoding="utf-8-sig") as f:
        head = f.readline()
    if head.lower().startswith(",question,") or head.startswith("Question,"):
        return "cmmlu"
    if head.startswith("id,question,"):
        return "ceval"
    return "mmlu"


def load_benchmark(path: str | Path, layout: str = "auto", name: str | None = None) -> Benchmark:
    """Load every split folder (dev/val/test) under a C-Eval, CMMLU or MMLU style root."""
    root = Path(path)
    if not root.is_dir():
        raise TuneforgeError(f"benchmark folder not found: {root}")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout not in ("ceval", "cmmlu", "mmlu"):
        raise TuneforgeError(f"unknown benchmark layout {layout!r} (ceval, cmmlu, mmlu)")
    bench = Benchmark(name or layout, layout, root, _mapping(root, layout))
    for split_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        split = split_dir.name
        for f in sorted(split_dir.glob("*.csv")):
            subject = _subject_of(f, split)
            items = []
            for i, row in enumerate(_csv_rows(f, header=layout != "mmlu")):
                if layout == "ceval":
                    rid, q, opts = row[0], row[1], row[2:6]
                    ans = row[6].strip() if len(row) > 6 and row[6].strip() else None
                    expl = row[7] if len(row) > 7 else None
                elif layout == "cmmlu":
                    rid, q, opts, ans, expl = row[0] or str(i), row[1], row[2:6], row[6].strip() or None, None
                else:
                    rid, q, opts, ans, expl = str(i), row[0], row[1:5], row[5].strip() or None, None
                if len(opts) != 4:
                    raise TuneforgeError(f"{f}: row {i + 1} has {len(opts)} options, expected 4")
                items.append(MCQItem(bench.name, subject, split, str(rid), q, tuple(opts), ans, expl))
            bench.items[(subject, split)] = items
            if subject not in bench.subjects:
                bench.subjects[subject] = Subject(subject, subject, subject, "Other")
    present = {s for s, _ in bench.items}
    bench.subjects = {k: v for k, v in bench.subjects.items() if k in present}
    return bench


def load_mcq_file(path: str | Path, columns: dict[str, str] | None = None, name: str | None = None,
                  subject: str = "default", split: str = "test") -> Benchmark:
    """A user's own exam as CSV or JSONL; `columns` maps question/A/B/C/D/answer/id/subject to its fields."""
    p = Path(path)
    cols = {"question": "question", "A": "A", "B": "B", "C": "C", "D": "D", "answer": "answer", "id": "id",
            "subject": "subject", **(columns or {})}
    if p.suffix.lower() == ".jsonl":
        with open(p, encoding="utf-8-sig") as f:
            rows = [json.loads(line) for line in f if line.strip()]
    elif p.suffix.lower() in (".csv", ".tsv"):
        with open(p, encoding="utf-8-sig", newline="") as f:
            rows = list(csv.DictReader(f, delimiter="\t" if p.suffix.lower() == ".tsv" else ","))
    else:
        raise TuneforgeError(f"{p}: a custom MCQ file must be .csv, .tsv or .jsonl")
    bench = Benchmark(name or p.stem, "mcq", p.parent, {})
    for i, row in enumerate(rows):
        missing = [c for c in ("question", "A", "B", "C", "D") if cols[c] not in row]
        if missing:
            raise TuneforgeError(f"{p}: record {i + 1} lacks {', '.join(cols[c] for c in missing)}; map columns")
        subj = str(row.get(cols["subject"]) or subject)
        item = MCQItem(bench.name, subj, split, str(row.get(cols["id"], i)), str(row[cols["question"]]),
                       tuple(str(row[cols[k]]) for k in LETTERS),
                       (str(row.get(cols["answer"]) or "").strip().upper() or None))
        bench.items.setdefault((subj, split), []).append(item)
        bench.subjects.setdefault(subj, Subject(subj, subj, subj, "Other"))
    return bench
