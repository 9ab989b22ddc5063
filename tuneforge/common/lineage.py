"""Model lineage: which weights a model folder holds and which steps made them.

A fine-tune is only proven if the evaluation scored the model training produced. Every model folder
tuneforge writes (a merged model, a full fine-tune, an adapter) carries `lineage.json`: the chain of models
it descends from (the base, then each merged or fully trained stage) with the sha256 of each one's weight
files, and for an adapter the adapter itself. An evaluation reads the lineage of what it loads, checks that
an adapter is loaded onto the very weights it was trained on, and records the whole chain in results.json,
so a pipeline can refuse an evaluation of any other model.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneforge.common.errors import TuneforgeError
from tuneforge.common.io import sha256_file, write_json

LINEAGE_FILE = "lineage.json"
# The files that hold a checkpoint's weights (config and tokenizer files do not change what is scored).
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".gguf", ".h5", ".msgpack")
_HASHES: dict[tuple[str, int, int], str] = {}


def _local_folder(ref: str) -> Path | None:
    """The local folder behind a model reference (a path, `embedded:NAME`, or a hub id already cached)."""
    from tuneforge.common.models import resolve_model

    path = Path(resolve_model(ref))
    if path.is_dir():
        return path
    try:  # a hub id: only what is already in the local cache (never a download)
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(ref, local_files_only=True))
    except Exception:  # not cached, not a hub id: the lineage says it was not hashed
        return None


def _file_sha(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _HASHES:
        _HASHES[key] = sha256_file(path)
    return _HASHES[key]


def weights_sha256(folder: str | Path) -> str:
    """One sha256 over a folder's weight files (names and contents, in name order, subfolders included)."""
    root = Path(folder)
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix in WEIGHT_SUFFIXES
                   and not any(d.startswith("checkpoint-") for d in p.relative_to(root).parts[:-1]))
    if not files:
        raise TuneforgeError(f"{root} holds no weight files ({', '.join(WEIGHT_SUFFIXES)})")
    h = hashlib.sha256()
    for f in files:
        h.update(f"{f.relative_to(root).as_posix()}\0{_file_sha(f)}\n".encode())
    return h.hexdigest()


def read_lineage(folder: str | Path) -> dict[str, Any] | None:
    p = Path(folder) / LINEAGE_FILE
    if not p.is_file():
        return None
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except ValueError as e:
        raise TuneforgeError(f"{p}: not valid JSON ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("model"), list):
        raise TuneforgeError(f"{p}: not a tuneforge lineage file (no `model` chain)")
    return data


def model_chain(ref: str) -> list[dict[str, Any]]:
    """The chain of models a model reference descends from, last entry = the weights it holds now.

    A folder tuneforge wrote has its chain in lineage.json (checked against the weights on disk, so a folder
    overwritten since is caught); any other model is a base: one entry with its weights' hash."""
    folder = _local_folder(ref)
    if folder is None:
        return [{"kind": "base", "ref": ref, "path": None, "sha256": None}]
    saved = read_lineage(folder)
    sha = weights_sha256(folder)
    if saved is None or saved.get("adapter"):
        return [{"kind": "base", "ref": ref, "path": str(folder), "sha256": sha}]
    chain = [dict(e) for e in saved["model"]]
    if chain[-1].get("sha256") != sha:
        raise TuneforgeError(f"{folder}: its weights changed after tuneforge wrote them (lineage.json says "
                             f"{str(chain[-1].get('sha256'))[:12]}, the files hash to {sha[:12]}); "
                             "re-run the step that made it")
    return chain


def adapter_record(adapter: str | Path) -> dict[str, Any]:
    """An adapter folder's lineage: its own hash and, when tuneforge trained it, the chain it was trained on."""
    folder = Path(adapter)
    if not (folder / "adapter_config.json").is_file():
        raise TuneforgeError(f"--adapter {adapter}: not a PEFT adapter folder (no adapter_config.json)")
    saved = read_lineage(folder) or {}
    own = dict(saved.get("adapter") or {})
    own.update({"path": str(folder.resolve()), "sha256": weights_sha256(folder)})
    if saved.get("adapter") and saved["adapter"].get("sha256") not in (None, own["sha256"]):
        raise TuneforgeError(f"{folder}: its weights changed after tuneforge wrote them; re-run its training")
    return {"adapter": own, "trained_on": saved.get("model")}


def eval_lineage(model: str, adapter: str | None) -> dict[str, Any]:
    """What an evaluation of `model` (+ `adapter`) scores; refuses an adapter on weights it was not trained on."""
    chain = model_chain(model)
    if adapter is None:
        return {"model": chain, "adapter": None, "summary": describe(chain, None)}
    rec = adapter_record(adapter)
    trained_on = rec["trained_on"]
    if trained_on and chain[-1].get("sha256") and trained_on[-1].get("sha256") != chain[-1]["sha256"]:
        raise TuneforgeError(
            f"adapter {adapter} was trained on {describe(trained_on, None)} (weights "
            f"{str(trained_on[-1].get('sha256'))[:12]}), but is being loaded onto {describe(chain, None)} "
            f"(weights {chain[-1]['sha256'][:12]}): pass the model it was trained on")
    return {"model": chain, "adapter": rec["adapter"], "summary": describe(chain, rec["adapter"])}


def describe(chain: list[dict[str, Any]], adapter: dict[str, Any] | None) -> str:
    """`embedded:smollm2 → sft (merged) + dpo adapter`: the chain in one line."""
    parts = []
    for e in chain:
        if e["kind"] == "base":
            parts.append(str(e.get("ref") or e.get("path")))
        else:
            parts.append(f"{e.get('stage')} ({e['kind']})")
    text = " → ".join(parts)
    if adapter:
        text += f" + {adapter.get('stage') or 'an'} adapter"
    return text


def fingerprint(lineage: dict[str, Any]) -> list[str | None]:
    """The weights hashes that identify a lineage (the chain's, then the adapter's): equal iff same model."""
    return [e.get("sha256") for e in lineage["model"]] + [(lineage.get("adapter") or {}).get("sha256")]


def write_trained(final: Path, base_model: str, stage: str, run_dir: Path, adapter: bool,
                  merged: Path | None = None) -> dict[str, Any]:
    """Write lineage.json into a training run's outputs (final/, and merged/ when there is one); returns
    the lineage of the model the run produced (what an evaluation of it must show)."""
    chain = model_chain(base_model)
    step = {"stage": stage, "run_dir": str(run_dir.resolve())}
    if adapter:
        own = {**step, "path": str(final.resolve()), "sha256": weights_sha256(final)}
        produced = {"model": chain, "adapter": own}
    else:
        entry = {"kind": "full", **step, "path": str(final.resolve()), "sha256": weights_sha256(final)}
        produced = {"model": [*chain, entry], "adapter": None}
    write_json(final / LINEAGE_FILE, produced)
    if merged is not None:
        entry = {"kind": "merged", **step, "path": str(merged.resolve()), "sha256": weights_sha256(merged),
                 "adapter_sha256": produced["adapter"]["sha256"] if adapter else None}
        write_json(merged / LINEAGE_FILE, {"model": [*chain, entry], "adapter": None})
    produced["summary"] = describe(produced["model"], produced["adapter"])
    return produced
