#!/usr/bin/env bash
# The test command: set up the environment, then run the whole suite (slow end-to-end tests included).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# One worker a core, a test file each (module fixtures are built once); tests/conftest.py gives each worker's
# torch its share of the cores. The slowest durations are printed so that a slow test is seen.
workers=${TUNEFORGE_TEST_WORKERS:-$(nproc | awk '{print ($1 > 4) ? 4 : $1}')}
exec .venv/bin/python -m pytest -n "$workers" --dist loadfile --durations=25 "$@"
