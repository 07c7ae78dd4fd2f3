#!/usr/bin/env bash
# Builds the release tarball: egresswatch-VERSION-TARGET.tar.gz, to unpack anywhere (e.g.
# /opt/egresswatch) and run with no other step:
#
#   bin/egresswatch                          the program
#   lib/egresswatch/libegresswatch_plugin.so the detector plugin (found from bin/ by itself)
#   share/egresswatch/rules/                 the bundled rules
#   share/egresswatch/data/geo/              the GeoIP country database and its licences
#   share/egresswatch/examples/              the quick start: quickstart.yaml, data/sample.ndjson
#   etc/egresswatch/egresswatch.yaml         a production configuration to start from
#   var/                                     its state file when systemd gives no StateDirectory
#   lib/systemd/system/egresswatch.service   a systemd unit for /opt/egresswatch
#   README.md                                what is where, and the quick start
#
# Usage: dist/build.sh [--out DIR] [--no-build --bin-dir DIR]
#   --out DIR       where the folder and the tarball go (default: target/dist)
#   --no-build      package what --bin-dir holds instead of running `cargo build --release`
#                   (the tests package their debug build this way)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="$root/target/dist"
build=1
bin_dir="$root/target/release"
while [ $# -gt 0 ]; do
    case "$1" in
        --out) out="$2"; shift 2 ;;
        --no-build) build=0; shift ;;
        --bin-dir) bin_dir="$2"; shift 2 ;;
        *) echo "dist/build.sh: unknown argument $1" >&2; exit 2 ;;
    esac
done

version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n 1)"
target="$(rustc -vV 2>/dev/null | sed -n 's/^host: //p')"
target="${target:-$(uname -m)-linux}"
name="egresswatch-$version-$target"

if [ "$build" = 1 ]; then
    (cd "$root" && cargo build --release -p egresswatch-cli -p egresswatch-plugin)
fi
plugin_file="libegresswatch_plugin.so"
for f in "$bin_dir/egresswatch" "$bin_dir/$plugin_file"; do
    [ -f "$f" ] || { echo "dist/build.sh: $f is missing (build first, or drop --no-build)" >&2; exit 1; }
done

mkdir -p "$out"
stage="$out/$name"
rm -rf "$stage" "$out/$name.tar.gz"
mkdir -p "$stage/bin" "$stage/lib/egresswatch" "$stage/share/egresswatch/examples/data" \
    "$stage/share/egresswatch/data" "$stage/etc/egresswatch" "$stage/lib/systemd/system" \
    "$stage/var"

install -m 0755 "$bin_dir/egresswatch" "$stage/bin/egresswatch"
install -m 0644 "$bin_dir/$plugin_file" "$stage/lib/egresswatch/$plugin_file"
# Debug information is for profiling builds, not for what is installed.
if command -v strip >/dev/null; then
    strip --strip-debug "$stage/bin/egresswatch" "$stage/lib/egresswatch/$plugin_file"
fi

cp -R "$root/rules" "$stage/share/egresswatch/rules"
cp -R "$root/data/geo" "$stage/share/egresswatch/data/geo"
# The quick start as the repository has it: its paths (../rules, ../data/geo) resolve the same.
cp "$root/examples/quickstart.yaml" "$stage/share/egresswatch/examples/quickstart.yaml"
cp "$root/examples/data/sample.ndjson" "$root/examples/data/sample.labels.ndjson" \
    "$stage/share/egresswatch/examples/data/"
cp "$root/dist/egresswatch.yaml" "$stage/etc/egresswatch/egresswatch.yaml"
cp "$root/dist/egresswatch.service" "$stage/lib/systemd/system/egresswatch.service"
cp "$root/dist/README.md" "$stage/README.md"

tar -C "$out" -czf "$out/$name.tar.gz" "$name"
echo "$out/$name.tar.gz"
