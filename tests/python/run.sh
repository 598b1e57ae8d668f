#!/usr/bin/env bash
# The Python package's tests in one command (what CI runs): the venv and wheel (setup.sh), the
# release `kiln` binary the tests compare with, then pytest. Extra arguments go to pytest.
#   usage: tests/python/run.sh [-k PATTERN] ...
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
VENV="${KILN_PY_VENV:-/work/venv-py}"
"$ROOT/tests/python/setup.sh"
echo "== building the kiln binary (release)" >&2
# With kiln-python in the selection, dependency features resolve as in the wheel's build, so the
# binary reuses every dependency maturin compiled (alone, syn & co. differ and everything rebuilds).
(cd "$ROOT" && cargo build --release -p kiln -p kiln-python --bin kiln)
export KILN_BIN="${KILN_BIN:-${CARGO_TARGET_DIR:-$ROOT/target}/release/kiln}"
cd "$ROOT"
exec "$VENV/bin/python" -m pytest tests/python -q "$@"
