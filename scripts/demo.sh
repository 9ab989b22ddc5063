#!/usr/bin/env bash
# The main job on the embedded defaults: no network, no GPU, no API key.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PREFECT_SERVER_ANALYTICS_ENABLED=false
exec .venv/bin/tuneforge demo --out runs/demo "$@"
