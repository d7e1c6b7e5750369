#!/usr/bin/env bash
# Create .venv with the pinned stack and kexport installed in editable mode.
# torch==2.13.0 is pinned exactly: that CPU wheel is available locally; any
# other version would pull a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e ".[all,dev,zoo,generate,strings]"
# keras_hub without its declared dependencies (see the `zoo` extra in pyproject.toml)
.venv/bin/python -m pip install -q --no-deps "keras-hub==0.32.0"
# TF-Serving's protos only (warm-up records of `kexport export --layout tf-serving`): the
# package declares `tensorflow`, which would install a second TensorFlow beside tensorflow-cpu.
.venv/bin/python -m pip install -q --no-deps "tensorflow-serving-api==2.21.0"
# TF Text's ops (raw string inputs, the `strings` extra): it declares full `tensorflow`.
.venv/bin/python -m pip install -q --no-deps "tensorflow-text==2.21.1"
