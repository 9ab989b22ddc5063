"""The pipeline's step cache, keyed on content: a step re-runs when its config, its inputs' hashes or the
source of the tuneforge code it runs change, and is reused otherwise (whoever runs it: the plain API, a
Prefect flow, a search trial). Prefect's own cache keys on the run id and the task's source only, so it would
reuse outputs made by edited stage code, or re-run everything in a new flow run."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from tuneforge.common.io import write_json
from tuneforge.common.source_hash import BUILD, source_hash

# Where each kind of step's code starts: the modules holding the functions its step function calls. Its key
# covers the code those run (`common/source_hash.py`: their tuneforge imports, transitively, and the data files
# of the packages reached), so an edit re-runs exactly the steps that run the edited code. The pipeline's own
# glue (`pipeline/run.py`) is not part of any key: it passes the config and inputs, which are.
STEP_CODE: dict[str, tuple[str, ...]] = {
    "build": BUILD,  # tuneforge.builder.run: build()
    "train": ("tuneforge.trainers.run", "tuneforge.trainers.launch"),  # train(), launch() under accelerate
    "evaluate": ("tuneforge.eval.runner",),  # run_eval()
    "forgetting": ("tuneforge.eval.forgetting",),  # run_forgetting()
    "attribute": ("tuneforge.attribute.run",),  # attribute()
}


def step_key(kind: str, **parts: Any) -> str:
    """sha256 over the step kind, its JSON-ready parts (config, input hashes) and the source of the code it runs."""
    blob = json.dumps({"kind": kind, "parts": parts, "source": source_hash(*STEP_CODE[kind])},
                      sort_keys=True, ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class StepCache:
    """One JSON file a step under `<run>/.tuneforge/steps/`: the key it was made with and its result."""

    def __init__(self, root: Path) -> None:
        self.dir = root / ".tuneforge" / "steps"

    def _file(self, name: str) -> Path:
        return self.dir / (name.replace("/", "__") + ".json")

    def get(self, name: str, key: str, output: Path) -> dict[str, Any] | None:
        """The stored result if it was made with `key` and its output (`output`) is still there."""
        f = self._file(name)
        if not f.is_file() or not output.exists():
            return None
        try:
            saved = json.loads(f.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError):
            return None
        return saved["result"] if saved.get("key") == key else None

    def put(self, name: str, key: str, result: dict[str, Any]) -> None:
        write_json(self._file(name), {"key": key, "result": result})
