#!/usr/bin/env bash
# Builds every fuzz target and runs each for SECONDS (default 15); stops at the first crash,
# hang (an input slower than 30 s) or leak of memory past 2 GiB, with the input saved under
# fuzz/artifacts/<target>/. What CI runs (.ci/run); see fuzz/README.md for longer runs.
#
#   fuzz/run-all.sh [SECONDS]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-15}

# cargo-fuzz passes nightly-only flags (-Z sanitizer, -Z build-std is not used); stable accepts
# them with RUSTC_BOOTSTRAP=1, so no nightly toolchain is needed.
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi

cargo fuzz build
log=$(mktemp)
trap 'rm -f "$log"' EXIT
for target in $(cargo fuzz list); do
    mkdir -p "corpus/$target"
    seeds=()
    [[ -d "seeds/$target" ]] && seeds=("seeds/$target")
    # The corpus kept between runs comes first (new inputs are written there), then the
    # committed seeds.
    if ! cargo fuzz run "$target" "corpus/$target" "${seeds[@]}" -- \
        -max_total_time="$seconds" -timeout=30 -rss_limit_mb=2048 -print_final_stats=1 \
        >"$log" 2>&1; then
        tail -n 80 "$log" >&2
        echo "fuzz: $target failed; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    runs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log")
    echo "fuzz: $target: ${runs:-?} inputs in ${seconds}s, no failure"
done
