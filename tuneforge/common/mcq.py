"""Multiple-choice benchmark files (C-Eval, CMMLU, MMLU layouts, or a user's own exam) as plain items.

Shared by the clean stage (benchmark contamination) and the eval stage (scoring), so each layout is
parsed in one place. Rows are validated as they are read: a row whose options are missing, or whose answer is
blank or not one of its options ('E' with four options, 'AB'), is kept out of the items and listed in the
benchmark's `rejects` with file, line and reason. A question has as many options as its file has option
columns (A, B, C, D, E...), trailing blank ones aside. A split whose answers are all blank is an unlabelled
split (C-Eval's test), kept whole.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.common.errors import TuneforgeError

LETTERS = ("A", "B", "C", "D")
# Option letters a question may use, in order (C-Eval style files with E, F... columns).
OPTION_LETTERS = tuple("ABCDEFGHIJ")


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

    @property
    def letters(self) -> tuple[str, ...]:
        """This question's option letters (A-D for the official layouts)."""
        return OPTION_LETTERS[: len(self.options)]


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
    # rows kept out of `items`: {file, line, subject, split, id, reason}
    rejects: list[dict] = field(default_factory=list)

    def split(self, split: str, subjects: list[str] | None = None) -> list[MCQItem]:
        keys = subjects or sorted(self.subjects)
        return [it for s in keys for it in self.items.get((s, split), [])]

    def splits(self) -> list[str]:
        return sorted({sp for _, sp in self.items})


def _csv_rows(path: Path, header: bool) -> tuple[list[str] | None, list[tuple[int, list[str]]]]:
    """(header row, [(line number where the row starts, row)]) of a CSV file, blank lines skipped."""
    rows: list[tuple[int, list[str]]] = []
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        start = 1
        for r in reader:
            if r:
                rows.append((start, r))
            start = reader.line_num + 1
    if header and rows:
        return rows[0][1], rows[1:]
    return None, rows


def check_row(options: list[str], answer: str | None, labelled: bool = True) -> tuple[tuple[str, ...], str | None]:
    """(the question's options, why the row is rejected or None). Trailing blank option cells are not options
    (a four-option question in a file with an E column); a blank option before a filled one, fewer than two
    options, a blank answer in a labelled split, or an answer that is not one letter among the options are
    rejects."""
    opts = list(options)
    while opts and not opts[-1].strip():
        opts.pop()
    letters = OPTION_LETTERS[: len(opts)]
    if len(opts) > len(OPTION_LETTERS):
        return tuple(opts), f"{len(opts)} options; at most {len(OPTION_LETTERS)} (A-{OPTION_LETTERS[-1]})"
    if len(opts) < 2:
        return tuple(opts), "fewer than two options"
    blank = [letters[i] for i, o in enumerate(opts) if not o.strip()]
    if blank:
        return tuple(opts), f"option {', '.join(blank)} is blank"
    if answer is None:
        return tuple(opts), "blank answer" if labelled else None
    if answer not in letters:
        return tuple(opts), (f"answer {answer!r} is not one of the options {letters[0]}-{letters[-1]}"
                             + (" (one letter per question)" if len(answer) > 1 else ""))
    return tuple(opts), None


def _option_columns(head: list[str] | None, first: int, default: int) -> tuple[int, int]:
    """(first option column, number of option columns): the header's run of single letters A, B, C...
    from `first`, else `default` columns."""
    if head is None:
        return first, default
    n = 0
    while first + n < len(head) and n < len(OPTION_LETTERS) and head[first + n].strip() == OPTION_LETTERS[n]:
        n += 1
    return first, (n if n >= 2 else default)


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


def load_benchmark(path: str | Path, layout: str = "auto", name: str | None = None,
                   validate: bool = True) -> Benchmark:
    """Load every split folder (dev/val/test) under a C-Eval, CMMLU or MMLU style root; with `validate`
    (scoring) invalid rows go to `rejects`, without it (contamination: every question counts) they stay."""
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
            head, rows = _csv_rows(f, header=layout != "mmlu")
            parsed = []
            if layout == "mmlu":  # question, options..., answer (no header)
                for i, (line, row) in enumerate(rows):
                    parsed.append((line, str(i), row[0], row[1:-1], row[-1].strip().upper() or None, None))
            else:
                first, n_opt = _option_columns(head, 2, 4)
                lower = [h.strip().lower() for h in head or []]
                a_col = lower.index("answer") if "answer" in lower else first + n_opt
                e_col = lower.index("explanation") if "explanation" in lower else a_col + 1
                for i, (line, row) in enumerate(rows):
                    rid = row[0] or str(i) if layout == "cmmlu" else row[0]
                    ans = row[a_col].strip().upper() if len(row) > a_col and row[a_col].strip() else None
                    expl = row[e_col] if layout == "ceval" and len(row) > e_col else None
                    parsed.append((line, rid, row[1] if len(row) > 1 else "", row[first:first + n_opt], ans, expl))
            labelled = any(p[4] is not None for p in parsed)  # an all-blank split is unlabelled (C-Eval test)
            items = []
            for line, rid, q, opts, ans, expl in parsed:
                options, why = check_row(opts, ans, labelled)
                if why is None or not validate:
                    items.append(MCQItem(bench.name, subject, split, str(rid), q, options, ans, expl))
                else:
                    bench.rejects.append({"file": str(f), "line": line, "subject": subject, "split": split,
                                          "id": str(rid), "reason": why})
            bench.items[(subject, split)] = items
            if subject not in bench.subjects:
                bench.subjects[subject] = Subject(subject, subject, subject, "Other")
    present = {s for s, _ in bench.items}
    bench.subjects = {k: v for k, v in bench.subjects.items() if k in present}
    return bench


def _mcq_rows(p: Path) -> list[tuple[int, dict]]:
    """(line number where the record starts, record) of a CSV/TSV/JSONL exam."""
    suffix = p.suffix.lower()
    rows: list[tuple[int, dict]] = []
    if suffix == ".jsonl":
        with open(p, encoding="utf-8-sig") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except ValueError as e:
                    raise TuneforgeError(f"{p}: line {n} is not JSON ({e})") from None
                if not isinstance(row, dict):
                    raise TuneforgeError(f"{p}: line {n} is not a JSON object")
                rows.append((n, row))
        return rows
    if suffix in (".csv", ".tsv"):
        with open(p, encoding="utf-8-sig", newline="") as f:
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            start = 2
            for row in reader:
                rows.append((start, row))
                start = reader.line_num + 1
        return rows
    raise TuneforgeError(f"{p}: a custom MCQ file must be .csv, .tsv or .jsonl")


def load_mcq_file(path: str | Path, columns: dict[str, str] | None = None, name: str | None = None,
                  subject: str = "default", split: str = "test", validate: bool = True) -> Benchmark:
    """A user's own exam as CSV or JSONL; `columns` maps question/A/B/C/D/answer/id/subject (and E, F...)
    to its fields. Options are A-D plus every further letter column the file has (E, F...); invalid rows go
    to `rejects` (with `validate`)."""
    p = Path(path)
    cols = {"question": "question", **{k: k for k in OPTION_LETTERS}, "answer": "answer", "id": "id",
            "subject": "subject", **(columns or {})}
    rows = _mcq_rows(p)
    bench = Benchmark(name or p.stem, "mcq", p.parent, {})
    fields = set().union(*(r.keys() for _, r in rows)) if rows else set()
    if rows and cols["question"] not in fields:
        raise TuneforgeError(f"{p}: no {cols['question']!r} field; map it with columns: {{question: ...}}")
    n_opt = 0  # the file's option columns: A, B, C, D, then E, F... while present
    while n_opt < len(OPTION_LETTERS) and cols[OPTION_LETTERS[n_opt]] in fields:
        n_opt += 1
    if rows and n_opt < 2:
        raise TuneforgeError(f"{p}: no option columns {cols['A']!r}, {cols['B']!r}...; map them with columns:")
    labelled = any(str(r.get(cols["answer"]) or "").strip() for _, r in rows)
    for i, (line, row) in enumerate(rows):
        subj = str(row.get(cols["subject"]) or subject)
        rid = str(row.get(cols["id"], i))
        ans = str(row.get(cols["answer"]) or "").strip().upper() or None
        opts = ["" if row.get(cols[k]) is None else str(row[cols[k]]) for k in OPTION_LETTERS[:n_opt]]
        missing = [cols[k] for k in OPTION_LETTERS[:max(2, min(n_opt, 4))] if cols[k] not in row]
        options, why = check_row(opts, ans, labelled)
        why = f"no {', '.join(missing)} field" if missing else why
        if row.get(cols["question"]) is None:
            why = f"no {cols['question']} field"
        bench.subjects.setdefault(subj, Subject(subj, subj, subj, "Other"))  # also when every row is rejected
        if why is not None and validate:
            bench.rejects.append({"file": str(p), "line": line, "subject": subj, "split": split, "id": rid,
                                  "reason": why})
            continue
        item = MCQItem(bench.name, subj, split, rid, str(row.get(cols["question"]) or ""), options, ans)
        bench.items.setdefault((subj, split), []).append(item)
    return bench
