#!/usr/bin/env bash
# Run the whole test suite once per Keras backend, each in its own process.
# Usage: scripts/test.sh [pytest args...]   (set up the venv first: scripts/setup.sh)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${KEXPORT_PYTHON:-.venv/bin/python}
export TF_CPP_MIN_LOG_LEVEL=3 PYTHONHASHSEED=0
status=0
for backend in ${KEXPORT_BACKENDS:-tensorflow jax torch}; do
  echo "=== pytest with KERAS_BACKEND=$backend ==="
  # the slowest tests in every log: where the CI time budget goes
  KERAS_BACKEND=$backend "$PY" -m pytest -q --durations=15 "$@"
  rc=$?
  # 5 = no tests collected in this run: not a failure of the suite.
  if [ $rc -ne 0 ] && [ $rc -ne 5 ]; then status=1; fi
done
exit $status
