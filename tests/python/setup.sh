#!/usr/bin/env bash
# Create (or update) the venv for the Python tests and install the kiln package built from this
# checkout into it. Idempotent: a second run reinstalls only the freshly built wheel.
#   usage: tests/python/setup.sh        venv: $KILN_PY_VENV (default /work/venv-py)
#   env:   KILN_PYTHON   interpreter the venv is made from (default python3, >= 3.9)
#          CARGO_TARGET_DIR   where cargo (through maturin) builds, as usual
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${KILN_PY_VENV:-/work/venv-py}"
PYTHON="${KILN_PYTHON:-python3}"

if [ ! -x "$VENV/bin/python" ]; then
  echo "== creating $VENV" >&2
  "$PYTHON" -m venv "$VENV"
fi
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -r "$ROOT/tests/python/requirements.txt"

WHEELS="$(mktemp -d)"
trap 'rm -rf "$WHEELS"' EXIT
echo "== building the wheel (maturin, release)" >&2
"$VENV/bin/maturin" build --release --strip --manifest-path "$ROOT/runtime/python/Cargo.toml" \
  --interpreter "$VENV/bin/python" --out "$WHEELS" >&2
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --force-reinstall --no-deps "$WHEELS"/*.whl
"$VENV/bin/python" -c 'import kiln; print(f"kiln {kiln.__version__} installed in '"$VENV"'")'
