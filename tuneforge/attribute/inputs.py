"""What attribution reads: the forgetting check's lost questions, the adapter it scored, and the training run
(its config, data and checkpoints) that made that adapter.

A forgetting folder's results.json names the adapter it evaluated; the adapter's lineage.json names the run
that trained it; the run's config.yaml names the data. Each link is checked (the data's manifest hash against
run.json's), so the records ranked are the records trained on.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import read_json_file, sha256_file
from tuneforge.common.lineage import read_lineage, weights_sha256


@dataclass
class LostQuestion:
    """A question the base answered right and the tuned model wrong, with the prompt the check scored."""

    suite: str
    uid: str
    subject: str
    answer: str
    tuned: str
    prompt: str
    letters: tuple[str, ...]
    sep: str


@dataclass
class TrainRecord:
    """One training row as the trainer saw it: its ids/labels after fitting into max_length, and provenance."""

    index: int
    id: str
    meta: dict
    text: str
    input_ids: list[int]
    labels: list[int]


@dataclass
class Inputs:
    forgetting_dir: Path
    results: dict
    base_model: str
    adapter: Path
    run_dir: Path
    lost: list[LostQuestion]
    n_questions: int
    checkpoints: list[tuple[str, Path, float]] = field(default_factory=list)  # (name, adapter folder, weight)
    data_hash: str = ""


def forgetting_results(path: str | Path) -> tuple[Path, dict]:
    """A forgetting folder, or a pipeline run folder holding forgetting/ (its results.json has the block)."""
    p = Path(path)
    for folder in (p, p / "forgetting"):
        f = folder / "results.json"
        if f.is_file():
            res = read_json_file(f, f"{f} is unreadable")
            if isinstance(res, dict) and "forgetting" in res:
                return folder, res
    raise TuneforgeError(f"{path}: no forgetting check found (neither {p}/results.json nor "
                         f"{p}/forgetting/results.json has a forgetting block); run `tuneforge forgetting` "
                         "(or a pipeline with a forgetting step) first")


def training_run(results: dict) -> tuple[Path, Path]:
    """The adapter the tuned side scored and the training run folder that produced it."""
    adapter = results.get("adapter")
    if not adapter:
        raise TuneforgeError("attribution needs a PEFT adapter: this forgetting check scored a full model "
                             f"({results.get('model')}) with no adapter")
    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise TuneforgeError(f"adapter {adapter} (named by the forgetting check) is missing or not a PEFT adapter")
    own = (read_lineage(adapter) or {}).get("adapter") or {}
    run_dir = Path(own["run_dir"]) if own.get("run_dir") else adapter.parent
    if not (run_dir / "config.yaml").is_file() or not (run_dir / "run.json").is_file():
        raise TuneforgeError(f"{run_dir}: not a `tuneforge train` run folder (config.yaml and run.json are needed "
                             "to find the training data)")
    return adapter, run_dir


def lost_questions(results: dict) -> tuple[list[LostQuestion], int, list[str]]:
    """Every right->wrong flip of the forgetting check, with its exact prompt (rebuilt from the check's own
    eval config); the number of questions compared; and notes on suites that cannot be attributed."""
    from tuneforge.eval.config import load_config
    from tuneforge.eval.prompts import chat_messages, completion_prompt
    from tuneforge.eval.runner import _suites

    fg = results["forgetting"]
    cfg = load_config(results.get("config") or {})
    by_name = {s.name: (sc, s) for sc, s in _suites(cfg)} if cfg.suites else {}
    chat = None
    if cfg.chat:
        from tuneforge.common.models import load_tokenizer
        from tuneforge.eval.prompts import chat_renderer

        chat = chat_renderer(load_tokenizer(results["model"]), cfg.chat_template)
    lost, notes, n = [], [], 0
    for name, block in fg.get("suites", {}).items():
        n += int(block.get("n") or 0)
        flips = block.get("flips") or []
        if not flips:
            continue
        if name not in by_name:
            notes.append(f"{name}: its questions could not be reloaded; {len(flips)} lost questions left out")
            continue
        sc, suite = by_name[name]
        mode = sc.mode or cfg.mode
        if mode == "generate":
            notes.append(f"{name}: generate-mode suite, {len(flips)} lost questions left out (attribution scores "
                         "the answer letter's likelihood, a logits-mode quantity)")
            continue
        k = sc.shots if suite.shots_split else 0
        items = {it.uid: it for subj in suite.subjects for it in suite.items(subj, sc.limit)}
        for f in flips:
            it = items.get(f["uid"])
            if it is None:
                notes.append(f"{name}: {f['uid']} no longer in the suite; left out")
                continue
            shots = suite.shots(it.subject, k)
            sname = suite.subject_name(it.subject)
            if chat is not None:
                text, sep = chat(chat_messages(sname, shots, it, suite.style)), ""
            else:
                text, sep = completion_prompt(sname, shots, it, suite.style), suite.style.answer_sep
            lost.append(LostQuestion(name, f["uid"], f["subject"], f["answer"], f["tuned"], text, it.letters, sep))
    return lost, n, notes


def checkpoints(run_dir: Path, adapter: Path) -> list[tuple[str, Path, float]]:
    """TracIn's checkpoints: every kept `checkpoints/checkpoint-N` adapter and the final one, each weighted by
    the learning rate summed over the logged steps since the previous checkpoint (metrics.jsonl); equal
    weights when the run logged no learning rate. Weights sum to 1."""
    found = []
    for d in (run_dir / "checkpoints").glob("checkpoint-*"):
        m = re.search(r"(\d+)$", d.name)
        if m and (d / "adapter_model.safetensors").is_file():
            found.append((int(m.group(1)), d))
    found.sort()
    steps_lr: list[tuple[int, float]] = []
    mpath = run_dir / "metrics.jsonl"
    if mpath.is_file():
        for line in mpath.read_text(encoding="utf-8").splitlines():
            try:
                row = json.loads(line)
            except ValueError:
                continue
            if isinstance(row.get("learning_rate"), (int, float)) and isinstance(row.get("step"), int):
                steps_lr.append((row["step"], float(row["learning_rate"])))
    last = max([s for s, _ in steps_lr] + [s for s, _ in found] + [0])
    points = [(s, d, f"checkpoint-{s}") for s, d in found if s < last] + [(last, adapter, "final")]
    out, prev = [], -1
    for step, folder, name in points:
        lr = sum(v for s, v in steps_lr if prev < s <= step)
        out.append((name, folder, lr))
        prev = step
    total = sum(w for _, _, w in out)
    if total <= 0:
        return [(n, f, 1.0 / len(out)) for n, f, _ in out]
    return [(n, f, w / total) for n, f, w in out if w > 0]


def adapter_hashes(ckpts: list[tuple[str, Path, float]]) -> list[str]:
    """The weights hash of each checkpoint (lineage.json's when it carries one, else hashed now)."""
    out = []
    for _, folder, _ in ckpts:
        own = (read_lineage(folder) or {}).get("adapter") or {}
        out.append(own.get("sha256") or weights_sha256(folder))
    return out


def train_config(run_dir: Path) -> Any:
    from tuneforge.trainers.config import load_config

    cfg = load_config(run_dir / "config.yaml")
    if cfg.stage != "sft":
        raise TuneforgeError(f"{run_dir}: a {cfg.stage!r} run; attribution scores sft runs (their per-record loss "
                             "is the template's assistant-token loss)")
    return cfg


def data_hash(run_dir: Path, cfg: Any) -> str:
    """The training data's manifest hash, checked against the one the run recorded."""
    from tuneforge.trainers.data import pinned, read_manifest

    run = read_json_file(run_dir / "run.json", f"{run_dir}/run.json is unreadable")
    folder = pinned(cfg.dataset)
    manifest = read_manifest(folder)
    now = manifest.get("sha256") or sha256_file(folder / "manifest.json")
    was = run.get("dataset_manifest_sha256")
    if was and was != now:
        raise TuneforgeError(f"{cfg.dataset}: the dataset changed since {run_dir} trained on it (manifest "
                             f"{str(was)[:12]} then, {now[:12]} now); rebuild it or retrain before attributing")
    replay = ""
    if cfg.replay:
        rm = read_manifest(pinned(cfg.replay.dataset))
        replay = rm.get("sha256") or sha256_file(pinned(cfg.replay.dataset) / "manifest.json")
    return f"{now}+{replay}" if replay else now


def _meta(raw: Any) -> dict:
    if isinstance(raw, dict):
        return raw
    if isinstance(raw, str) and raw:
        try:
            v = json.loads(raw)
            return v if isinstance(v, dict) else {}
        except ValueError:
            return {}
    return {}


def preview(messages: list[dict], limit: int = 200) -> str:
    """The last user turn and the reply after it, on one line, cut at `limit` characters."""
    last_user = next((m["content"] for m in reversed(messages) if m["role"] == "user"), "")
    last_reply = next((m["content"] for m in reversed(messages) if m["role"] == "assistant"), "")
    text = f"{last_user} → {last_reply}".replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def training_records(cfg: Any, run_dir: Path) -> tuple[list[TrainRecord], list[dict], Any]:
    """Every row the sft run trained on, fitted into max_length exactly as the trainer fitted it (replay rows
    included, with their own provenance); the rows it dropped, with id and reason; and the tokenizer."""
    from tuneforge.trainers import truncation as tr
    from tuneforge.trainers.data import load_stage_data
    from tuneforge.trainers.models import load_tokenizer_and_template

    data = load_stage_data(cfg)
    template_name = cfg.template or data["manifest"].get("template")
    tok, template = load_tokenizer_and_template(cfg, template_name)
    records, dropped = [], []
    for i, row in enumerate(data["train"]):
        fit = tr.fit_sft(row["messages"], tok, template, cfg.max_length, cfg.train_on)
        rid = str(row.get("id") or f"row{i}")
        if fit[tr.STATUS] == tr.DROPPED:
            dropped.append({"id": rid, "reason": fit[tr.REASON]})
            continue
        records.append(TrainRecord(i, rid, _meta(row.get("meta")), preview(row["messages"]),
                                   fit["input_ids"], fit["labels"]))
    return records, dropped, tok
