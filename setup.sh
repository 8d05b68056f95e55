#!/usr/bin/env bash
# Creates .venv with moe-lab and its dev tools. Idempotent: a second run only checks.
# torch is installed first and pinned to 2.13.0: on the project's CPU machines that release is a
# local CPU wheel; pyproject.toml itself accepts any torch>=2.5 (GPU users keep their own build:
# run `pip install -e .[dev]` in their own environment instead of this script).
set -euo pipefail
cd "$(dirname "$0")"
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
if ! .venv/bin/python -c "import moe, torch, hydra, hydra_plugins.hydra_joblib_launcher, accelerate, datasets, pytest, lm_eval" 2>/dev/null; then
  .venv/bin/pip install -q --disable-pip-version-check "torch==2.13.0" 2>&1 | grep -v "is ignored" || true
  .venv/bin/pip install -q --disable-pip-version-check -e ".[dev]" 2>&1 | grep -v "is ignored" || true
fi
.venv/bin/python -c "import moe, torch; print(f'moe-lab ready: torch {torch.__version__}')"
