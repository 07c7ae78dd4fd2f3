#!/usr/bin/env bash
# Runs every fuzz target (or the ones named) for SECONDS seconds each (default 30), each from a
# scratch copy of its checked-in corpus: libFuzzer adds what it finds to the first corpus folder
# it is given, and the checked-in seeds stay as they are. Needs a nightly toolchain and
# cargo-fuzz (rustup toolchain install nightly; cargo install cargo-fuzz).
# Usage: bash fuzz/run-all.sh [SECONDS [TARGET...]]
# A crash stops the run with the input in fuzz/artifacts/<target>/ (see fuzz/README.md).
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-30}
shift || true
cargo +nightly fuzz build
for target in $(cargo +nightly fuzz list); do
    if [ $# -gt 0 ] && [[ " $* " != *" $target "* ]]; then
        continue
    fi
    scratch=$(mktemp -d)
    log="$scratch.log"
    echo "== $target: ${seconds}s"
    dict=()
    if [ -f "dicts/$target.dict" ]; then
        dict=("-dict=dicts/$target.dict")
    fi
    status=0
    cargo +nightly fuzz run "$target" "$scratch" "corpus/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 -print_final_stats=1 \
        "${dict[@]}" > "$log" 2>&1 || status=$?
    grep -E "^(Done|stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb))" "$log" || true
    if [ "$status" -ne 0 ]; then
        tail -n 60 "$log"
        echo "fuzz target $target failed (exit $status); the input is in fuzz/artifacts/$target/"
        exit "$status"
    fi
    rm -rf "$scratch" "$log"
done
