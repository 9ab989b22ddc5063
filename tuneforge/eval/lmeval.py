"""lm-eval as a second engine on the same local questions, mapped into the same per-question rows.

Task YAMLs are generated per subject and `include` lm-eval's own `ceval` default config (output type,
choices, few-shot sampler, metrics); only what differs is overridden: a local JSONL `dataset_path`, and the
prompt text of `tuneforge.eval.prompts` (C-Eval's official header with 考试, no strip, `答案：A` with no
space), so both engines score identical prompts.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import write_jsonl, write_text
from tuneforge.common.mcq import LETTERS, MCQItem
from tuneforge.eval.prompts import header
from tuneforge.eval.suites import Suite


def _default_yaml() -> Path:
    import lm_eval

    return Path(lm_eval.__file__).parent / "tasks" / "ceval" / "_default_ceval_yaml"


def _doc(it: MCQItem) -> dict[str, str]:
    return {"id": it.id, "question": it.question, "A": it.options[0], "B": it.options[1], "C": it.options[2],
            "D": it.options[3], "answer": it.answer or ""}


def task_name(suite: Suite, subject: str) -> str:
    return f"tuneforge_{suite.name}_{subject}"


def write_tasks(suites: list[Suite], k: int, limit: int | None, folder: Path) -> dict[str, tuple[Suite, str]]:
    """One YAML + val/dev JSONL per subject; returns task name -> (suite, subject)."""
    tasks: dict[str, tuple[Suite, str]] = {}
    base = _default_yaml()
    for suite in suites:
        sty = suite.style
        for subject in suite.subjects:
            items = suite.items(subject, limit)
            if not items:
                continue
            if any(len(it.options) != 4 for it in items + suite.shots(subject, k)):
                raise TuneforgeError(f"{suite.name}/{subject}: engine lm-eval scores four-option questions "
                                     "(lm-eval's C-Eval task config); this file has other option counts: use "
                                     "engine: native")
            if any(it.answer is None for it in items):
                raise TuneforgeError(f"{suite.name}/{subject}: split {suite.split!r} has no answers; "
                                     "lm-eval scores labelled splits only")
            name = task_name(suite, subject)
            d = folder / suite.name / subject
            write_jsonl(d / "eval.jsonl", [_doc(it) for it in items])
            files = {"eval": str(d / "eval.jsonl")}
            shots = suite.shots(subject, max(k, 1))  # a dev split even for 0-shot: the included config names it
            if shots:
                write_jsonl(d / "dev.jsonl", [_doc(it) for it in shots])
                files["dev"] = str(d / "dev.jsonl")
            cfg: dict[str, Any] = {
                "include": str(base),
                "task": name,
                "dataset_path": "json",
                "dataset_kwargs": {"data_files": files},
                "validation_split": "eval",
                "fewshot_split": "dev" if shots else None,
                "description": header(suite.subject_name(subject), sty) + "\n\n",
                "doc_to_text": "{{question}}\nA. {{A}}\nB. {{B}}\nC. {{C}}\nD. {{D}}\n" + sty.cue,
                "doc_to_target": "{{['A', 'B', 'C', 'D'].index(answer)}}",
                "target_delimiter": sty.answer_sep,
                "fewshot_delimiter": "\n\n",
                "metric_list": [{"metric": "acc", "aggregation": "mean", "higher_is_better": True}],
            }
            write_text(d / f"{name}.yaml", yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False))
            tasks[name] = (suite, subject)
    return tasks


def run_lm_eval(model: str | Any, suites: list[Suite], *, k: int, limit: int | None, workdir: Path,
                adapter: str | None = None, device: str = "cpu", dtype: str = "auto", batch_size: int = 8,
                chat: bool = False, tokenizer: Any = None) -> tuple[list[dict], dict]:
    """Run `lm_eval.simple_evaluate` on the generated tasks; returns per-question rows and timing stats.

    `model` is a path or hub id (lm-eval loads it, with `adapter` through its `peft=` argument), or an
    already loaded transformers model with its `tokenizer` (so a benchmark times scoring, not loading).
    """
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    tasks = write_tasks(suites, k, limit, workdir / "lm_eval_tasks")
    if not tasks:
        raise TuneforgeError("no questions to evaluate")
    tm = TaskManager(include_path=str(workdir / "lm_eval_tasks"), include_defaults=False)
    if isinstance(model, str):
        lm: Any = "hf"
        model_args: dict[str, Any] | None = {"pretrained": model, "dtype": dtype}
        if adapter:
            model_args["peft"] = adapter
    else:
        from lm_eval.models.huggingface import HFLM

        lm, model_args = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size), None
    t0 = time.perf_counter()
    out = simple_evaluate(model=lm, model_args=model_args, tasks=list(tasks), num_fewshot=k,
                          batch_size=batch_size, device=device, task_manager=tm, log_samples=True,
                          apply_chat_template=chat, fewshot_as_multiturn=chat, bootstrap_iters=0)
    seconds = time.perf_counter() - t0
    rows: list[dict] = []
    for name, (suite, subject) in tasks.items():
        by_id = {it.id: it for it in suite.items(subject, limit)}
        for s in sorted(out["samples"][name], key=lambda s: s["doc_id"]):
            lls = [float(r[0]) for r in s["filtered_resps"]]
            pred = LETTERS[max(range(len(lls)), key=lambda j: lls[j])]
            it = by_id[str(s["doc"]["id"])]
            rows.append({"suite": suite.name, "subject": subject, "category": suite.category(subject),
                         "id": it.id, "uid": it.uid, "answer": it.answer, "pred": pred,
                         "correct": pred == it.answer, "logits": [round(x, 4) for x in lls]})
    write_text(workdir / "lm_eval_results.json",
               json.dumps({k2: v for k2, v in out.items() if k2 in ("results", "configs", "versions")},
                          ensure_ascii=False, indent=2, default=str))
    return rows, {"questions": len(rows), "seconds": seconds}
