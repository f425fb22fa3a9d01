#!/usr/bin/env bash
# Create the separate virtual environment in which the benchmark runs ANTsPy SyN.
# ANTsPy (antspyx) is kept out of the project environment: it pins its own numpy/ITK
# builds. The benchmark calls it through a subprocess that exchanges NIfTI files
# (benchmarks/peers/ants_syn.py).
#
# Usage: benchmarks/setup_ants_env.sh [VENV_DIR]   (default /work/venvs/ants, or $ANTS_VENV)
set -euo pipefail
VENV="${1:-${ANTS_VENV:-/work/venvs/ants}}"
PYTHON="${PYTHON:-python3}"
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet antspyx nibabel
"$VENV/bin/python" -c "import ants, nibabel; print('antspyx', ants.__version__, 'ready in', '$VENV')"
