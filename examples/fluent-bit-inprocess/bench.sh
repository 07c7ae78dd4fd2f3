#!/usr/bin/env bash
# Cost of the in-process Fluent Bit path over examples/data/sample.ndjson, without Fluent Bit.
#
#   bash examples/fluent-bit-inprocess/bench.sh        # from the repository root, after
#                                                      # cargo build --release
#
# 1. Wall clock under plain LuaJIT (tests/lua/drive.lua): the filter script's `cb` (record
#    walk + detector through the FFI) against the same script's record walk alone (the values
#    are read, the detector is not called), alternately, ROUNDS times each; only the calls are
#    timed. Figures swing with the machine's load (printed); compare the two in one run only.
# 2. Instructions (callgrind, deterministic whatever the load): Ir per event inside
#    `ew_evaluate` (the C face: checks, the event written from the values, the detector, the
#    alert as nodes), inside the detector's evaluation (`Detector::judge`) on that path, and
#    `egresswatch run` end to end (stdin to a discarded stdout, start-up subtracted).
# Every run starts from empty models; the state file lives in a temporary directory.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
sample=examples/data/sample.ndjson
bin=target/release/egresswatch
lib=target/release/libegresswatch_plugin.so
for need in "$bin" "$lib"; do
    [ -e "$need" ] || { echo "bench: $need is missing: run cargo build --release first" >&2; exit 1; }
done
for tool in luajit valgrind callgrind_annotate; do
    command -v "$tool" >/dev/null || { echo "bench: $tool is not installed" >&2; exit 1; }
done
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cat >"$dir/egresswatch.yaml" <<EOF
outputs:
  default: { type: stdout }
state: { path: $dir/egresswatch.state, interval_secs: 60 }
detector:
  rules: [$PWD/rules]
  actions:
    default: { annotate: true }
EOF
"$bin" fluent-bit-lua --config "$dir/egresswatch.yaml" --plugin "$lib" >"$dir/egresswatch.lua"
events=$(wc -l <"$sample")
fresh() { rm -f "$dir"/egresswatch.state*; }

echo "== wall clock, LuaJIT ($(luajit -v | cut -d' ' -f1-2)), $events records x 3 per run, load average $(cut -d' ' -f1-3 /proc/loadavg)"
for _ in $(seq "$ROUNDS"); do
    for mode in walk filter; do
        fresh
        luajit tests/lua/drive.lua "$dir/egresswatch.lua" "$sample" - "$mode" 3 2>&1 | grep '^drive:'
    done
done
echo "   load average after: $(cut -d' ' -f1-3 /proc/loadavg)"

ir() { grep '^summary:' "$1" | cut -d' ' -f2; }
echo "== callgrind, Ir per event"
fresh
valgrind --tool=callgrind --toggle-collect=ew_evaluate --callgrind-out-file="$dir/cg.capi" \
    luajit tests/lua/drive.lua "$dir/egresswatch.lua" "$sample" - filter 1 >/dev/null 2>&1
fresh
valgrind --tool=callgrind --toggle-collect='*Detector::judge' --callgrind-out-file="$dir/cg.judge" \
    luajit tests/lua/drive.lua "$dir/egresswatch.lua" "$sample" - filter 1 >/dev/null 2>&1
fresh
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.run" \
    "$bin" run --config "$dir/egresswatch.yaml" <"$sample" >/dev/null 2>&1
fresh
valgrind --tool=callgrind --callgrind-out-file="$dir/cg.run0" \
    "$bin" run --config "$dir/egresswatch.yaml" </dev/null >/dev/null 2>&1
capi=$(( $(ir "$dir/cg.capi") / events ))
judge=$(( $(ir "$dir/cg.judge") / events ))
run=$(( ($(ir "$dir/cg.run") - $(ir "$dir/cg.run0")) / events ))
printf '%-58s %8d\n' "C face, ew_evaluate (values in, verdict and alert out)" "$capi"
printf '%-58s %8d\n' "  of which the detector's evaluation (Detector::judge)" "$judge"
printf '%-58s %8d\n' "egresswatch run, end to end (read, detect, write)" "$run"
