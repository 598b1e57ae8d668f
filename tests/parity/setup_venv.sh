#!/usr/bin/env bash
# Create the Python virtual environment used to (re)generate kiln's parity fixtures.
# The venv lives OUTSIDE the repository (torch installs as the full CUDA build, ~5 GB; it runs on CPU).
#   usage: tests/parity/setup_venv.sh            # -> $KILN_PARITY_VENV (default /work/venv-parity)
set -euo pipefail
VENV="${KILN_PARITY_VENV:-/work/venv-parity}"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --upgrade pip
"$VENV/bin/pip" install -r "$(dirname "$0")/requirements.txt"
echo "venv ready: $VENV  (activate with: source $VENV/bin/activate)"
