"""`attribute(run_or_forgetting_dir, out)`: rank the training records by how much they pushed the tuned model
away from the answers it lost in the forgetting check.

Steps: find the lost questions (the check's right->wrong flips) and the run that trained the adapter; per
checkpoint, project every training record's and every lost question's gradient on the adapter weights; score
(scoring.py); write attribution.jsonl, totals.json, attribution.json and report.md (report.py). The harm matrix
is cached under $TUNEFORGE_HOME/attribute, keyed on the adapter hashes, the data hash, the lost-question set and
the method's settings: a re-run (another --out, a report change) loads no model.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from tuneforge.attribute import inputs as inp
from tuneforge.common.errors import TuneforgeError
from tuneforge.common.home import tuneforge_home
from tuneforge.common.io import atomic_open, sha256_text, write_json
from tuneforge.eval.progress import Counter, Message, message

log = logging.getLogger("tuneforge.attribute")
CACHE_VERSION = "attribute-v2"


@dataclass(frozen=True)
class Method:
    """The method's settings (all part of the cache key)."""

    proj_dim: int = 256
    proj_type: str = "sjlt"
    seed: int = 0
    normalize: bool = True
    min_lost: int = 5
    bootstrap: int = 1000
    top_lost: int = 3
    batch: int = 32  # records a backward pass when batched (per_example.py)
    # auto: batched on CUDA for LoRA-style adapters, one backward a record on CPU (batching ran 0.67x there: the
    # CPU is busy either way and pads); batched | loop force one
    per_example: str = "auto"


def _cache_path(key: str) -> Path:
    d = tuneforge_home() / "attribute"
    d.mkdir(parents=True, exist_ok=True)
    return d / f"{key}.npz"


def _compute(ins: inp.Inputs, cfg: Any, method: Method, device: str, progress: Message | None
             ) -> tuple[np.ndarray, list[dict], list[dict], dict]:
    """The harm matrix [records, lost questions] (TracIn over the checkpoints), the records' provenance rows,
    the rows the trainer dropped, and timing."""
    import torch

    from tuneforge.attribute import gradients as gr

    t0 = time.perf_counter()
    records, dropped, _ = inp.training_records(cfg, ins.run_dir)
    from tuneforge.common.models import load_tokenizer

    eval_tok = load_tokenizer(ins.base_model)
    model = gr.load_model(ins.base_model, str(ins.adapter), device)
    dim = sum(p.numel() for p in gr.trainable(model))
    from tuneforge.attribute.per_example import linear_owners, project_lost, project_records

    want = method.per_example if method.per_example != "auto" else ("batched" if str(device).startswith("cuda")
                                                                     else "loop")
    owners = linear_owners(model) if want == "batched" else None
    project = gr.make_projector(dim, method.proj_dim, method.seed, method.proj_type, device)
    if owners is not None:  # one backward a batch (LoRA-style adapters)
        def lost_grads(bar: Any) -> Any:
            return project_lost(ins.lost, model, owners, eval_tok, project, device, method.batch, bar.advance)

        def record_grads(bar: Any) -> Any:
            return project_records(records, model, owners, project, device, method.batch, bar.advance)
    else:  # one backward an item (every PEFT method)
        def lost_grads(bar: Any) -> Any:
            return gr.project_batches(ins.lost, gr.lost_loss(model, eval_tok, device), model, project,
                                      on_item=bar.advance)

        def record_grads(bar: Any) -> Any:
            return gr.project_batches(records, gr.train_loss(model, device), model, project, on_item=bar.advance)
    t_load = time.perf_counter() - t0
    train_proj, lost_proj, weights = [], [], []
    for name, folder, w in ins.checkpoints:
        if folder != ins.adapter:
            gr.set_adapter_weights(model, folder)
        message(progress, f"checkpoint {name} (weight {w:.3f}): {len(ins.lost)} lost questions, "
                          f"{len(records)} records, {dim:,} adapter weights -> {method.proj_dim}")
        with torch.enable_grad():
            with Counter(f"lost questions ({name})", len(ins.lost), "questions", progress) as bar:
                lq = lost_grads(bar)
            with Counter(f"training records ({name})", len(records), "records", progress) as bar:
                tr = record_grads(bar)
        lost_proj.append(lq.numpy())
        train_proj.append(tr.numpy())
        weights.append(w)
    from tuneforge.attribute.scoring import harm_matrix

    harm = harm_matrix(train_proj, lost_proj, weights, method.normalize)
    rows = [{"index": r.index, "id": r.id, "meta": r.meta, "text": r.text} for r in records]
    timing = {"load_s": round(t_load, 2), "gradients_s": round(time.perf_counter() - t0 - t_load, 2),
              "adapter_weights": dim, "records": len(records), "lost": len(ins.lost),
              "checkpoints": len(ins.checkpoints), "device": device,
              "per_example": "batched" if owners is not None else "one backward a record"}
    return harm, rows, dropped, timing


def _key(ins: inp.Inputs, cfg: Any, method: Method) -> str:
    lost = sorted(f"{q.suite}/{q.uid}/{q.answer}" for q in ins.lost)
    parts = {"v": CACHE_VERSION, "adapters": inp.adapter_hashes(ins.checkpoints),
             "weights": [round(w, 9) for _, _, w in ins.checkpoints], "data": ins.data_hash, "lost": lost,
             "base": ins.base_model, "max_length": cfg.max_length, "train_on": cfg.train_on, "seed": cfg.seed,
             "method": {k: v for k, v in asdict(method).items() if k in ("proj_dim", "proj_type", "seed",
                                                                        "normalize", "batch", "per_example")}}
    return sha256_text(json.dumps(parts, sort_keys=True))[:32]


def _load_cache(path: Path) -> tuple[np.ndarray, list[dict], list[dict], dict] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            harm = z["harm"]
            side = json.loads(str(z["side"]))
        return harm, side["rows"], side["dropped"], side["timing"]
    except (OSError, ValueError, KeyError):
        return None  # a torn or foreign file: computed again and replaced


def _save_cache(path: Path, harm: np.ndarray, rows: list[dict], dropped: list[dict], timing: dict) -> None:
    side = json.dumps({"rows": rows, "dropped": dropped, "timing": timing}, ensure_ascii=False)
    with atomic_open(path, "wb", encoding=None) as f:
        np.savez_compressed(f, harm=harm, side=np.array(side))


def attribute(run_or_forgetting_dir: str | Path, out: str | Path, *, device: str | None = None,
              method: Method | None = None, progress: Message | None = None, use_cache: bool = True) -> dict:
    """Rank the training records by their estimated contribution to the questions the forgetting check lost.

    Writes OUT/attribution.json (the summary; `status` is `ranked` or `too_few_lost`), and when ranked
    OUT/attribution.jsonl (one line per record, highest score first), OUT/totals.json and OUT/report.md.
    Returns the summary."""
    from tuneforge.attribute.report import too_few, write_outputs
    from tuneforge.eval.models import pick_device

    method = method or Method()
    if method.per_example not in ("auto", "batched", "loop"):
        raise TuneforgeError(f"per_example must be auto, batched or loop, not {method.per_example!r}")
    out = Path(out)
    t0 = time.perf_counter()
    fdir, results = inp.forgetting_results(run_or_forgetting_dir)
    adapter, run_dir = inp.training_run(results)
    lost, n_questions, notes = inp.lost_questions(results)
    ins = inp.Inputs(fdir, results, results["model"], adapter, run_dir, lost, n_questions)
    out.mkdir(parents=True, exist_ok=True)
    if len(lost) < method.min_lost:
        return too_few(out, ins, method, notes)
    cfg = inp.train_config(run_dir)
    ins.data_hash = inp.data_hash(run_dir, cfg)
    ins.checkpoints = inp.checkpoints(run_dir, adapter)
    device = pick_device(device)
    key = _key(ins, cfg, method)
    cpath = _cache_path(key)
    cached = _load_cache(cpath) if use_cache else None
    if cached is not None:
        message(progress, f"attribution served from the cache ({cpath})")
        harm, rows, dropped, timing = cached
    else:
        harm, rows, dropped, timing = _compute(ins, cfg, method, device, progress)
        _save_cache(cpath, harm, rows, dropped, timing)
    summary = write_outputs(out, ins, method, harm, rows, dropped, notes, timing)
    summary.update({"cache": {"key": key, "path": str(cpath), "hit": cached is not None}, "timing": timing,
                    "seconds": round(time.perf_counter() - t0, 2)})
    write_json(out / "attribution.json", summary)
    return summary
