#!/usr/bin/env bash
# Record the bundled zlib example and analyse the trace:
#   examples/demo.sh            (from the repository root)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${TMPDIR:-/tmp}/ffirec-demo"
mkdir -p "$out"
cc -O1 -g -o "$out/zlib_demo" "$root/examples/zlib_demo.c" -lz
cargo build --release --quiet --manifest-path "$root/Cargo.toml"
ffirec="${CARGO_TARGET_DIR:-$root/target}/release/ffirec"
"$ffirec" record --lib libz.so.1 -o "$out/zlib_demo.ffr" -- "$out/zlib_demo"
"$ffirec" analyze "$out/zlib_demo.ffr"
