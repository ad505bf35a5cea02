#!/usr/bin/env bash
# The prepared GPU check (issue 13): at most ten minutes on one GPU; prints one table to paste
# into docs/results.md. Run from the repository root with the package installed (make install).
set -euo pipefail
PY=${PY:-.venv/bin/python}
timeout 600 "$PY" benchmarks/gpu_check.py "$@"
