#!/usr/bin/env bash
# Build every kiln fuzz target and run each for a bounded time, then print
# executions, speed, corpus size and findings per target.
#
#   tests/fuzz/run.sh [SECONDS_PER_TARGET] [TARGET ...]     (default: 60 s, all targets)
#
# Needs the nightly toolchain and cargo-fuzz (`cargo install cargo-fuzz`).
# One process per target, one at a time (libFuzzer in-process mode: one core).
# Limits: -rss_limit_mb=2048 (the whole process) and -malloc_limit_mb=512
# (any single allocation): a header claiming a huge tensor must be refused
# before allocating, so any larger request is reported as a finding.
# Each input gets -timeout=20 s.
#
# The working corpus (tests/fuzz/corpus/TARGET, not committed) starts from the
# committed seeds (tests/fuzz/seeds/TARGET, made by make_seeds.py) plus the
# repository's real files of that kind; it persists between runs. Findings
# land in tests/fuzz/artifacts/TARGET (crash-*, oom-*, timeout-*, leak-*);
# reproduce one with
#   cargo +nightly fuzz run --fuzz-dir tests/fuzz TARGET tests/fuzz/artifacts/TARGET/crash-...
set -euo pipefail

secs=${1:-60}
shift || true
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
fuzz=tests/fuzz
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(spec hf_config safetensors gguf jit)
fi
# A target directory of its own: nightly + sanitizer builds share nothing
# with the workspace's.
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$root/target/fuzz}

echo "== building ${targets[*]} (cargo +nightly fuzz build, ASan, debug assertions)"
cargo +nightly fuzz build --fuzz-dir "$fuzz" >/dev/null

seed_repo_files() {
    local t=$1 dir=$2
    case $t in
        spec)
            cp models/*.toml "$dir"/
            for f in models/tiny/*.toml; do cp "$f" "$dir/tiny-$(basename "$f")"; done
            for f in tests/specs/broken/*.toml; do cp "$f" "$dir/broken-$(basename "$f")"; done
            ;;
        hf_config)
            cp tests/import/*.json "$dir"/
            for d in tests/parity/fixtures/*/; do
                cp "$d/config.json" "$dir/$(basename "$d")-config.json"
            done
            ;;
        safetensors)
            for d in tests/parity/fixtures/*/; do
                cp "$d/model.safetensors" "$dir/$(basename "$d").safetensors"
            done
            ;;
        gguf) ;; # no small real GGUF in the repository: the seeds are hand-made
        jit) ;; # 8 bytes of random-spec seed, then token ids: the seeds are hand-made
    esac
}

summary=()
for t in "${targets[@]}"; do
    corpus=$fuzz/corpus/$t
    artifacts=$fuzz/artifacts/$t
    log=$fuzz/artifacts/$t.log
    mkdir -p "$corpus" "$artifacts"
    cp "$fuzz/seeds/$t"/* "$corpus"/
    seed_repo_files "$t" "$corpus"
    before=$(find "$artifacts" -type f | wc -l)
    echo "== $t: ${secs}s, corpus $(find "$corpus" -type f | wc -l) files"
    set +e
    cargo +nightly fuzz run --fuzz-dir "$fuzz" "$t" "$corpus" -- \
        -max_total_time="$secs" -rss_limit_mb=2048 -malloc_limit_mb=512 -timeout=20 \
        -artifact_prefix="$artifacts/" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    set -e
    stat() { grep -a "^stat::$1:" "$log" | tail -1 | awk '{print $2}'; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    peak=$(stat peak_rss_mb)
    files=$(find "$corpus" -type f | wc -l)
    new=$(find "$artifacts" -type f | wc -l)
    found=$((new - before))
    line=$(printf '%-12s execs %-9s exec/s %-6s peak RSS %-5s MB  corpus %-5s findings %s (exit %s)' \
        "$t" "${execs:-?}" "${rate:-?}" "${peak:-?}" "$files" "$found" "$rc")
    summary+=("$line")
    echo "$line"
    if [ "$found" -gt 0 ] || [ "$rc" -ne 0 ]; then
        echo "   log: $log"
        grep -a -m3 -E "^==[0-9]+==ERROR|panicked at|^SUMMARY|out-of-memory|malloc\(|Test unit written" "$log" | sed 's/^/   /' || true
    fi
done

echo
echo "== summary (${secs}s per target)"
printf '%s\n' "${summary[@]}"
