#!/usr/bin/env bash
# The one-shot GPU check: bash scripts/gpu_check.sh [OUT_DIR] (see scripts/gpu_check.py --help).
# The machine's own python3 (or $PYTHON, e.g. PYTHON=.venv/bin/python where the system's python3 has
# no torch): no venv made, no network, nothing installed.
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
