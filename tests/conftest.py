"""Shared test fixtures: where the real corpora are, and a persistent TUNEFORGE_HOME for converted models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "corpora"

# The embedded model is converted once per checkout and reused across test runs.
os.environ.setdefault("TUNEFORGE_HOME", str(REPO / ".pytest_cache" / "tuneforge-home"))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Under pytest-xdist (scripts/test.sh runs one worker a core), each worker's torch, and every process it
# starts, gets its share of the cores: two workers with a thread a core each left torch's threads waiting on
# each other (a 23 s training test took 130 s beside other work on this 2-core machine).
if os.environ.get("PYTEST_XDIST_WORKER_COUNT"):
    _share = max(1, (os.cpu_count() or 1) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_var, str(_share))


@pytest.fixture(scope="session")
def shared() -> Path:
    """The real public corpora beside the checkout (../shared/corpora); tests need them."""
    if not SHARED.is_dir():
        pytest.fail(f"real corpora not found at {SHARED}: the tests run on a clone with ../shared beside it")
    return SHARED


@pytest.fixture(scope="session")
def smollm2_path() -> Path:
    """The embedded SmolLM2 converted to a transformers folder (once per checkout)."""
    from tuneforge.common.models import embedded_path

    return embedded_path("smollm2")


@pytest.fixture(scope="module")
def tiny(smollm2_path, tmp_path_factory) -> Path:
    """A tiny random Llama with SmolLM2's tokenizer (tests/eval_tiny.py): fast engine tests on real prompts."""
    from eval_tiny import tiny_model_dir  # tests/ is on sys.path under pytest

    return tiny_model_dir(smollm2_path, tmp_path_factory.mktemp("tiny") / "llama")


# The files that take minutes, longest first (a fresh clone's `pytest --durations`, summed per file). scripts/test.sh
# runs `--dist loadfile --no-loadscope-reorder`, so the workers take files in collection order: the long ones
# start first and the workers finish together. xdist's own order (most tests first) left the 106 s embedded
# augment file and the 32 s new-domain file for last on one worker, which then ran 134 s after the other.
LONG_FIRST = ("test_train_e2e.py", "test_pipeline.py", "test_attribute.py", "test_pipeline_lineage.py",
              "test_augment_embedded.py", "test_train_methods.py", "test_build.py", "test_search.py",
              "test_eval_e2e.py", "test_exclude.py", "test_new_domain.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    rank = {name: i for i, name in enumerate(LONG_FIRST)}
    items.sort(key=lambda it: rank.get(it.path.name, len(rank)))  # stable: each file keeps its own order
