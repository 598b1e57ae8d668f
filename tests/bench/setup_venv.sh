#!/usr/bin/env bash
# Create (or refresh) the Python venv for the opt-in peer benchmarks
# (tests/bench/peers.py): CPU PyTorch, transformers, ONNX Runtime, onnx,
# onnxscript (needed by torch.onnx.export's dynamo exporter), gguf
# (requant_gguf.py).
#
#   bash tests/bench/setup_venv.sh            # venv at ${KILN_BENCH_VENV:-/work/venv-bench}
#   KILN_BENCH_VENV=~/venvs/kb PYTHON=python3.11 bash tests/bench/setup_venv.sh
#
# Idempotent: a stamp file in the venv records the requirements it was built
# from; when it matches and the imports work, nothing is installed again.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REQ="$HERE/requirements.txt"
VENV="${KILN_BENCH_VENV:-/work/venv-bench}"
PYTHON="${PYTHON:-python3}"
CPU_INDEX="https://download.pytorch.org/whl/cpu"
STAMP="$VENV/.kiln-bench-stamp"

want_stamp="$(sha256sum "$REQ" | cut -d' ' -f1)"

check_imports() {
    "$VENV/bin/python" - <<'PY'
import torch, transformers, onnxruntime, onnx, onnxscript, numpy, gguf
import importlib.metadata, onnxruntime.quantization
print(f"torch {torch.__version__}, transformers {transformers.__version__}, "
      f"onnxruntime {onnxruntime.__version__}, onnx {onnx.__version__}, "
      f"onnxscript {onnxscript.__version__}, numpy {numpy.__version__}, "
      f"gguf {importlib.metadata.version('gguf')}")
PY
}

if [[ -x "$VENV/bin/python" && -f "$STAMP" && "$(cat "$STAMP")" == "$want_stamp" ]]; then
    if check_imports; then
        echo "setup_venv: $VENV is up to date"
        exit 0
    fi
    echo "setup_venv: stamp matches but imports fail; reinstalling" >&2
fi

if [[ ! -x "$VENV/bin/python" ]]; then
    echo "setup_venv: creating $VENV with $PYTHON"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
"${PIP[@]}" install --quiet --upgrade pip

torch_pin="$(grep -E '^torch==' "$REQ")"

# Prefer the CPU-only torch wheel (~200 MB instead of several GB of CUDA
# libraries) when the PyTorch index can be reached from here.
cpu_index_ok=0
if "$VENV/bin/python" - "$CPU_INDEX/torch/" <<'PY' 2>/dev/null
import sys, urllib.request
urllib.request.urlopen(sys.argv[1], timeout=10).read(1)
PY
then
    cpu_index_ok=1
fi

if [[ $cpu_index_ok == 1 ]]; then
    echo "setup_venv: installing $torch_pin (CPU build) from $CPU_INDEX"
    "${PIP[@]}" install --quiet --index-url "$CPU_INDEX" "$torch_pin"
else
    echo "setup_venv: PyTorch CPU index unreachable; installing $torch_pin from PyPI (CUDA build, runs on CPU)"
fi
echo "setup_venv: installing requirements from $REQ"
"${PIP[@]}" install --quiet -r "$REQ"

check_imports
echo "$want_stamp" > "$STAMP"
echo "setup_venv: ready: $VENV/bin/python tests/bench/peers.py --help"
