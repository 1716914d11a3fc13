#!/bin/sh
# Cross-check the recorder against valgrind's lackey: zlib's compress2 on two
# heap buffers, recorded by `ffirec record --lib libz.so.1` and traced by
# `valgrind --tool=lackey --trace-mem=yes`; the bytes of both buffers read and
# written inside the call must be identical. The comparison itself lives in
# tests/record_lackey.rs (fixture: tests/fixtures/rec_zlib.c).
# Needs: valgrind, zlib headers (apt-get install valgrind zlib1g-dev), cc.
set -eu
cd "$(dirname "$0")/.."
command -v valgrind >/dev/null || { echo "lackey-crosscheck: valgrind not installed" >&2; exit 2; }
exec cargo test --test record_lackey -- --nocapture
