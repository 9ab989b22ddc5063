"""What a command prints: tuneforge's own progress at INFO, third-party noise filtered where it is noise.

Each filter names the message it silences and why, so a real warning from the same library still shows.
"""

from __future__ import annotations

import logging
import os
import warnings

NOISE = [
    # torch on a CPU-only machine: DataLoader's pin_memory has no device to pin to; nothing is wrong.
    (r".*pin_memory.*no accelerator is found.*", UserWarning),
    (r".*'pin_memory' argument is set as true but no accelerator.*", UserWarning),
    # transformers/TRL deprecation notices about arguments tuneforge does not pass itself.
    (r".*`torch_dtype` is deprecated.*", FutureWarning),
    (r".*`tokenizer` is deprecated.*", FutureWarning),
    # PEFT's PeftModel and TRL's disable_gradient_checkpointing read this deprecated property, not tuneforge.
    (r"`is_gradient_checkpointing` is deprecated.*", FutureWarning),
    # datasets announces every save_to_disk/map with a progress bar; the build has its own.
]


def quiet_third_party(debug: bool = False) -> None:
    """Filter known noise (kept with --debug) and keep library progress bars off the build's terminal."""
    if debug:
        return
    for pattern, category in NOISE:
        warnings.filterwarnings("ignore", message=pattern, category=category)
    os.environ.setdefault("HF_DATASETS_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    for name in ("httpx", "httpcore", "urllib3", "datasets", "filelock", "distributed", "asyncio"):
        logging.getLogger(name).setLevel(logging.WARNING)


def setup(debug: bool = False) -> None:
    """tuneforge's loggers to stderr: INFO normally, DEBUG (and every third-party warning) with --debug."""
    root = logging.getLogger("tuneforge")
    if not root.handlers:
        h = logging.StreamHandler()
        h.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S"))
        root.addHandler(h)
        root.propagate = False
    root.setLevel(logging.DEBUG if debug else logging.INFO)
    quiet_third_party(debug)
