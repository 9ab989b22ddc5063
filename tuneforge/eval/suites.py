"""Which benchmark a suite spec names, which split is scored, and how its prompt is laid out.

A spec is `NAME` (the sample shipped under datasets/benchmarks/NAME), `NAME:PATH` (a C-Eval/CMMLU/MMLU
folder, or a CSV/JSONL exam for `mcq`), or a hub dataset id where the network allows.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.mcq import Benchmark, MCQItem, load_benchmark, load_mcq_file
from tuneforge.common.resources import ASSETS

SHIPPED = ASSETS / "datasets" / "benchmarks"

# hkust-nlp/ceval README, "C-Eval Hard Leaderboard": 8 math, physics and chemistry subjects.
CEVAL_HARD = ("advanced_mathematics", "discrete_mathematics", "probability_and_statistics", "college_chemistry",
              "college_physics", "high_school_mathematics", "high_school_chemistry", "high_school_physics")
HUB_IDS = {"ceval/ceval-exam": "ceval", "haonan-li/cmmlu": "cmmlu", "cais/mmlu": "mmlu"}

DEFAULT_SHOTS = 5  # k-shot unless a suite or --shots says otherwise (C-Eval's own protocol)


@dataclass(frozen=True)
class PromptStyle:
    """C-Eval's Chinese layout, or MMLU's English one (lm-eval's mmlu task)."""

    header: str
    cue: str
    answer_sep: str  # between the cue and the letter in few-shot answers and the scored continuation
    subject_field: str  # "zh" or "en"


CEVAL_STYLE = PromptStyle("以下是中国关于{subject}考试的单项选择题，请选出其中的正确答案。", "答案：", "", "zh")
MMLU_STYLE = PromptStyle("The following are multiple choice questions (with answers) about {subject}.",
                         "Answer:", " ", "en")


@dataclass
class Suite:
    name: str
    bench: Benchmark
    split: str
    style: PromptStyle
    subjects: list[str]
    shots_split: str | None = "dev"
    meta: dict = field(default_factory=dict)

    def subject_name(self, key: str) -> str:
        s = self.bench.subjects[key]
        return s.name_zh if self.style.subject_field == "zh" else s.name_en.replace("_", " ").lower()

    def category(self, key: str) -> str:
        return self.bench.subjects[key].category

    def effective_shots(self, k: int) -> int:
        """The shots a run really uses: none where the suite has no split to draw them from (one rule for the
        engines, lm-eval and what results.json reports)."""
        return k if self.shots_split else 0

    def shots(self, key: str, k: int) -> list[MCQItem]:
        if self.effective_shots(k) <= 0:
            return []
        return self.bench.items.get((key, self.shots_split), [])[:k]

    def items(self, key: str, limit: int | None = None) -> list[MCQItem]:
        rows = self.bench.items.get((key, self.split), [])
        return rows[:limit] if limit else rows

    @property
    def hard(self) -> list[str]:
        return [s for s in self.subjects if s in CEVAL_HARD] if self.bench.layout == "ceval" else []


def _default_split(bench: Benchmark) -> str:
    have = bench.splits()
    for sp in ("val", "test"):
        if sp in have:
            return sp
    raise TuneforgeError(f"{bench.root}: no val/ or test/ split to score")


def _hub(repo_id: str) -> Path:
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(repo_id, repo_type="dataset", allow_patterns=["*.csv", "*.json"]))
    except Exception as e:  # offline, gated, or not a CSV release
        raise TuneforgeError(f"benchmark {repo_id!r}: not a local folder and the hub download failed ({e}); "
                             "pass NAME:PATH to a local copy") from None


def parse_spec(spec: str) -> tuple[str, str | None]:
    if spec in HUB_IDS:
        return HUB_IDS[spec], spec
    name, sep, path = spec.partition(":")
    return name.strip().lower(), (path.strip() or None) if sep else None


def load_suite(spec: str, *, subjects: list[str] | None = None, split: str | None = None,
               columns: dict[str, str] | None = None, style: str | None = None,
               strict_subjects: bool = True) -> Suite:
    """Resolve a suite spec to its loaded benchmark, scored split and subject list."""
    name, where = parse_spec(spec)
    if name == "mcq" or (where and Path(where).suffix.lower() in (".csv", ".tsv", ".jsonl")):
        if not where or not Path(where).is_file():
            raise TuneforgeError(f"suite {spec!r}: an MCQ exam needs mcq:PATH to a .csv/.jsonl file")
        # no `subject` column: the file's name is the one subject (not "default")
        bench = load_mcq_file(where, columns=columns, name=Path(where).stem, subject=Path(where).stem)
        bench.layout = "mcq"
        sty = MMLU_STYLE if style == "mmlu" else CEVAL_STYLE
        suite_name = name if name != "mcq" else Path(where).stem
        chosen = _pick(bench, subjects, spec, strict=strict_subjects)
        return Suite(suite_name, bench, "test", sty, chosen, shots_split=None)
    if name not in ("ceval", "cmmlu", "mmlu"):
        raise TuneforgeError(f"unknown suite {name!r}: use ceval, cmmlu, mmlu or mcq (NAME or NAME:PATH)")
    if where is None:
        root = SHIPPED / name
    elif Path(where).is_dir():
        root = Path(where)
    elif "/" in where and not Path(where).exists() and not where.startswith((".", "/")):
        root = _hub(where)
    else:
        raise TuneforgeError(f"suite {spec!r}: folder not found: {where}")
    bench = load_benchmark(root, layout=name, name=name)
    sp = split or _default_split(bench)
    if sp not in bench.splits():
        raise TuneforgeError(f"{root}: no split {sp!r} (have {', '.join(bench.splits())})")
    sty = MMLU_STYLE if (style or name) == "mmlu" else CEVAL_STYLE
    return Suite(name, bench, sp, sty, _pick(bench, subjects, spec, split=sp, strict=strict_subjects))


def _pick(bench: Benchmark, subjects: list[str] | None, spec: str, split: str | None = None,
          strict: bool = True) -> list[str]:
    """The requested subjects present in this suite; with `strict=False` (several suites share one
    --subjects list) a name only has to exist in some suite, but at least one must exist here."""
    have = sorted(s for s in bench.subjects if split is None or (s, split) in bench.items)
    if not subjects:
        return have
    unknown = [s for s in subjects if s not in bench.subjects]
    if len(unknown) == len(subjects) or (unknown and strict):
        raise TuneforgeError(f"suite {spec!r}: unknown subjects {', '.join(unknown)} (have: {', '.join(have)})")
    return [s for s in have if s in subjects]


def suite_rejects(suite: Suite, shots: int) -> list[dict]:
    """The rows of the scored (and shots) split of the chosen subjects that the loader kept out."""
    splits = {suite.split} | ({suite.shots_split} if shots > 0 and suite.shots_split else set())
    chosen = set(suite.subjects)
    return [{"suite": suite.name, **r} for r in suite.bench.rejects if r["split"] in splits and r["subject"] in chosen]


def check_scorable(suite: Suite, rejects: list[dict], *, limit: int | None, engine: str, mode: str) -> None:
    """Before the model loads: the suite has questions to score, with answers unless it is an unlabelled
    C-Eval test split (scored for the submission file), in option counts its engine and mode can read."""
    items = [it for s in suite.subjects for it in suite.items(s, limit)]
    where = f"suite {suite.name!r} ({suite.bench.root}, split {suite.split!r})"
    if not items:
        first = f"; first: {rejects[0]['file']} line {rejects[0]['line']}: {rejects[0]['reason']}" if rejects else ""
        raise TuneforgeError(f"{where}: no question to score: {len(rejects)} rows rejected{first} "
                             "(every reject is listed in OUT/rejects.jsonl)")
    if all(it.answer is None for it in items) and not (suite.bench.layout == "ceval" and suite.split == "test"):
        raise TuneforgeError(f"{where}: no question has an answer, so there is no accuracy to report; fill the "
                             "answer column (or map it with columns: {answer: ...})")
    counts = sorted({len(it.options) for it in items})
    if engine == "lm-eval" and counts != [4]:
        raise TuneforgeError(f"{where}: engine lm-eval scores four-option questions; this one has questions with "
                             f"{', '.join(map(str, counts))} options: use engine: native")
    if mode == "generate" and counts[-1] > 4:
        raise TuneforgeError(f"{where}: mode generate reads answer letters A-D; questions with {counts[-1]} options "
                             "score in mode: logits")
