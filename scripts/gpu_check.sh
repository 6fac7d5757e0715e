#!/usr/bin/env bash
# The one-shot GPU check: bash scripts/gpu_check.sh [OUT_DIR] (see scripts/gpu_check.py --help).
# The machine's own python3 (or $PYTHON): no venv, no network, nothing installed.
exec "${PYTHON:-python3}" "$(dirname "$0")/gpu_check.py" "$@"
