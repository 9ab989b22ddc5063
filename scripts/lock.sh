#!/usr/bin/env bash
# Write constraints/ci-locked.txt from the locked venv (.venv, or $VENV): after a deliberate upgrade there, this
# is how the new exact versions reach CI and scripts/setup.sh. torch is written without its local label
# (+cpu), so the same line pins a CUDA build of 2.13.0 elsewhere.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
out=constraints/ci-locked.txt
py=$("$VENV/bin/python" -c "import platform; print(platform.python_version())")
{
  echo "# The exact versions CI (scripts/test.sh, the locked set) and scripts/setup.sh install: 'pip freeze' of the"
  echo "# project's venv on $(date -u +%F) (Python $py), used as 'pip install -c constraints/ci-locked.txt'."
  echo "# torch is the CPU build, installed first from the machine's disk (scripts/setup.sh). pyproject.toml holds"
  echo "# the ranges a user's install resolves within; refresh this file with scripts/lock.sh."
  "$VENV/bin/python" -m pip freeze --all --exclude-editable --disable-pip-version-check 2>/dev/null \
    | grep -v '^#\|^\(pip\|setuptools\)==' | sed 's/^\(torch==[^+]*\)+.*/\1/'
} > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out ($(grep -vc '^#' "$out") packages)"
