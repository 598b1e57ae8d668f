#!/usr/bin/env bash
# Install the llama.cpp peer of tests/bench/peers.py: the npm package node-llama-cpp, pinned exactly
# (tests/bench/llamacpp/package.json + package-lock.json), into a folder OUTSIDE the repository
# (its node_modules is ~730 MB, mostly CUDA/Vulkan builds that are never loaded).
#
#   bash tests/bench/setup_llamacpp.sh        # into ${KILN_LLAMACPP_DIR:-/work/node-peers}
#
# `npm ci` from the committed lock file; prebuilt CPU binaries, no cmake or compiler. Install scripts are
# skipped (--ignore-scripts): node-llama-cpp's postinstall only checks for a build, and the benchmark
# never builds (getLlama({build: "never"})). Idempotent: a stamp records the lock file it was made from.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
SRC="$HERE/llamacpp"
DIR="${KILN_LLAMACPP_DIR:-/work/node-peers}"
STAMP="$DIR/.kiln-bench-stamp"
want="$(cat "$SRC/package.json" "$SRC/package-lock.json" | sha256sum | cut -d' ' -f1)"

case "$(cd "$HERE/../.." && pwd)/" in
  "$(mkdir -p "$DIR" && cd "$DIR" && pwd)/"*) echo "setup_llamacpp: $DIR is inside the repository; pick a folder outside it" >&2; exit 1 ;;
esac

check() {
    # A file, not `node -e`: node-llama-cpp tests its binary in a child process that inherits execArgv.
    cat > "$DIR/check.mjs" <<'JS'
import { getLlama, LlamaLogLevel } from "node-llama-cpp";
const llama = await getLlama({ gpu: false, build: "never", logLevel: LlamaLogLevel.error });
console.log(`node-llama-cpp ready (${llama.buildType}, gpu ${llama.gpu}): ${llama.systemInfo}`);
await llama.dispose();
JS
    (cd "$DIR" && node check.mjs)
}

if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$want" && -d "$DIR/node_modules/node-llama-cpp" ]]; then
    if check; then
        echo "setup_llamacpp: $DIR is up to date"
        exit 0
    fi
    echo "setup_llamacpp: stamp matches but loading fails; reinstalling" >&2
fi

cp "$SRC/package.json" "$SRC/package-lock.json" "$DIR/"
echo "setup_llamacpp: npm ci in $DIR"
(cd "$DIR" && npm ci --ignore-scripts --no-audit --no-fund)
check
echo "$want" > "$STAMP"
echo "setup_llamacpp: ready: peers.py --llamacpp-dir $DIR (or KILN_LLAMACPP_DIR=$DIR)"
