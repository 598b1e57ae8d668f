#!/usr/bin/env bash
# Fetch llama.cpp's HF → GGUF converter (convert_hf_to_gguf.py, its conversion/ package and
# gguf-py) from the llama-cpp-python sdist on PyPI, which vendors llama.cpp (no GitHub needed),
# pinned by version and sha256, into a folder OUTSIDE the repository. Idempotent.
#   usage: tests/parity/fetch_llamacpp.sh        # -> ${KILN_LLAMACPP:-/work/llamacpp}
set -euo pipefail
DEST="${KILN_LLAMACPP:-/work/llamacpp}"
VERSION=0.3.36
SHA256=832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e
URL="https://files.pythonhosted.org/packages/ec/e9/e7de2b0463ea3ffbf0ede6cb21b58c1258a8f6521aae45ca773a59fe7cf3/llama_cpp_python-$VERSION.tar.gz"
if [ -f "$DEST/.complete" ]; then echo "$DEST"; exit 0; fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
curl -sSfL -o "$tmp/sdist.tar.gz" "$URL"
echo "$SHA256  $tmp/sdist.tar.gz" | sha256sum -c --quiet -
root="llama_cpp_python-$VERSION/vendor/llama.cpp"
tar xzf "$tmp/sdist.tar.gz" -C "$tmp" "$root/convert_hf_to_gguf.py" "$root/conversion" "$root/gguf-py"
rm -rf "$DEST"
mkdir -p "$(dirname "$DEST")"
mv "$tmp/$root" "$DEST"
touch "$DEST/.complete"
echo "$DEST"
