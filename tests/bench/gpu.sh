#!/usr/bin/env bash
# The wgpu backend's benchmark, prepared to run as one command on a lent GPU
# machine (see README.md, "GPU benchmark"): every model on the GPU (f32 and
# f16 weights) and on the CPU JIT of the same machine, one JSON line per run
# in $OUT/bench.jsonl, the log in $OUT/log.txt. Nothing here runs in CI.
#
#   KILN=path/to/kiln OUT=/tmp/gpu-bench bash tests/bench/gpu.sh
#   MODELS="models/tiny/gpt2.toml" ITERS=1 SEQ=16 DECODE=4 bash tests/bench/gpu.sh   # a dry run
set -uo pipefail

KILN="${KILN:-.gpu/kiln}"
OUT="${OUT:-/tmp/kiln-gpu-bench}"
MODELS="${MODELS:-models/gpt2.toml models/bert-base-uncased.toml models/smollm2-135m.toml}"
ITERS="${ITERS:-10}"
SEQ="${SEQ:-128}"
DECODE="${DECODE:-64}"
# Seconds allowed per run, so one hung adapter cannot eat the whole lease.
PER_RUN="${PER_RUN:-150}"
mkdir -p "$OUT"
exec > >(tee -a "$OUT/log.txt") 2>&1

# A Vulkan loader brought along in .gl/ (README) when the machine has none.
if ! ldconfig -p 2>/dev/null | grep -q libvulkan && compgen -G ".gl/*.deb" >/dev/null; then
    for f in .gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
fi
nvidia_icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -z "${VK_DRIVER_FILES:-}" ] && [ -f "$nvidia_icd" ]; then
    export VK_DRIVER_FILES="$nvidia_icd"
fi
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-$(mktemp -d)}"
export KILN_WGPU_BACKEND="${KILN_WGPU_BACKEND:-vulkan}"

echo "== machine"
uname -m
nproc
nvidia-smi --query-gpu=name,clocks.max.sm,memory.total,driver_version --format=csv 2>/dev/null ||
    echo "(no nvidia-smi)"
"$KILN" --version || { echo "no kiln binary at $KILN"; exit 1; }

failures=0
# run NAME ARGS...: one `kiln bench` as a JSON line {"run": NAME, "result": ...}.
run() {
    local name="$1"
    shift
    echo "== $name: kiln bench $*"
    local res rc
    res="$(timeout "$PER_RUN" "$KILN" bench "$@" --iters "$ITERS" --seq-len "$SEQ" \
        --decode-tokens "$DECODE" --format json 2>"$OUT/stderr.txt")"
    rc=$?
    tail -n 5 "$OUT/stderr.txt"
    if [ "$rc" -ne 0 ] || [ -z "$res" ]; then
        failures=$((failures + 1))
        res=null
        echo "   failed (exit $rc)"
    fi
    # kiln prints one JSON object; keep it on one line.
    printf '{"run": "%s", "exit": %d, "result": %s}\n' "$name" "$rc" "$(echo "$res" | tr -d '\n')" \
        >>"$OUT/bench.jsonl"
}

for spec in $MODELS; do
    model="$(basename "$spec" .toml)"
    run "$model-wgpu-f32" "$spec" --backend wgpu --no-machine
    run "$model-wgpu-f16" "$spec" --backend wgpu --precision f16 --no-machine
    run "$model-jit" "$spec" --backend jit
done
rm -f "$OUT/stderr.txt"

echo "== summary (prefill/encode ms, decode tok/s, matmul GFLOP/s)"
python3 - "$OUT/bench.jsonl" <<'PY' || true
import json, sys
for line in open(sys.argv[1]):
    row = json.loads(line)
    r = row["result"] or {}
    pre = r.get("prefill_ms", r.get("encode_ms"))
    print(f'{row["run"]:<32} pre {pre}  decode {r.get("decode_tokens_per_s")}  '
          f'matmul {r.get("matmul_gflops")}  decode-matmul {r.get("decode_matmul_gflops")}')
PY
echo "$failures run(s) failed"
[ "$failures" -eq 0 ]
