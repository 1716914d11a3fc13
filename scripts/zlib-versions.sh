#!/usr/bin/env bash
# `ffirec diff` on a real library in two versions: the system zlib
# (libz.so.1) against zlib built from the source the `libz-sys` crate bundles.
# Records examples/zlib_demo.c against both and diffs the traces.
#
#   scripts/zlib-versions.sh            # prints the diff (exit status: ffirec diff's)
#   scripts/zlib-versions.sh --check    # records everything twice and checks that
#                                       # both diffs are byte-identical, and that
#                                       # system-vs-system is empty
#
# The zlib source comes from cargo's registry cache: if no libz-sys is there,
# a throwaway project in the output directory runs `cargo fetch` for it.
# Environment: FFIREC (binary; default: built with cargo), OUT (work
# directory; default $TMPDIR/ffirec-zlib-versions), CC.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
out="${OUT:-${TMPDIR:-/tmp}/ffirec-zlib-versions}"
cc="${CC:-cc}"
mkdir -p "$out"

zlib_src() {
    ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/libz-sys-*/src/zlib 2>/dev/null | sort -V | tail -n 1
}
src="$(zlib_src)"
if [ -z "$src" ]; then
    echo "zlib-versions: fetching the libz-sys crate (bundled zlib source) with cargo" >&2
    mkdir -p "$out/fetch/src"
    printf '[package]\nname = "zfetch"\nversion = "0.0.0"\nedition = "2021"\n[dependencies]\nlibz-sys = { version = "1", default-features = false, features = ["static"] }\n' \
        >"$out/fetch/Cargo.toml"
    echo 'fn main() {}' >"$out/fetch/src/main.rs"
    (cd "$out/fetch" && cargo fetch --quiet)
    src="$(zlib_src)"
    [ -n "$src" ] || { echo "zlib-versions: libz-sys source not found after cargo fetch" >&2; exit 2; }
fi
version="$(sed -n 's/^#define ZLIB_VERSION "\(.*\)".*/\1/p' "$src/zlib.h")"
system="$(readlink -f "$(ldconfig -p | sed -n 's/.*libz.so.1 (libc6,x86-64) => //p' | head -n 1)")"
echo "zlib-versions: OLD = system zlib ($system), NEW = zlib $version from $src" >&2

# The bundled zlib as libz.so.1, with the ZLIB_1.2.0 symbol version the
# system library gives the symbols the demo binds to.
lib="$out/zlib-$version"
mkdir -p "$lib"
if [ ! -e "$lib/libz.so.1" ]; then
    printf 'ZLIB_1.2.0 { global: compressBound; deflateBound; inflateBack; inflateBackEnd; inflateBackInit_; inflateCopy; };\n' >"$lib/zlib.map"
    "$cc" -O2 -g -fPIC -shared -DHAVE_UNISTD_H -DHAVE_STDARG_H -D_LARGEFILE64_SOURCE=1 \
        -Wl,-soname,libz.so.1 -Wl,--version-script,"$lib/zlib.map" \
        -I"$src" "$src"/{adler32,compress,crc32,deflate,gzclose,gzlib,gzread,gzwrite,infback,inffast,inflate,inftrees,trees,uncompr,zutil}.c \
        -o "$lib/libz.so.1.tmp"
    mv "$lib/libz.so.1.tmp" "$lib/libz.so.1"
fi
"$cc" -O1 -g -o "$out/zlib_demo" "$root/examples/zlib_demo.c" -lz

if [ -z "${FFIREC:-}" ]; then
    cargo build --quiet --manifest-path "$root/Cargo.toml"
    FFIREC="${CARGO_TARGET_DIR:-$root/target}/debug/ffirec"
fi

cd "$out"
rec() { # NAME [LD_LIBRARY_PATH]
    env ${2:+LD_LIBRARY_PATH="$2"} "$FFIREC" record -q --lib libz.so.1 -o "$1.ffr" -- ./zlib_demo >"$1.stdout"
}
rec system
rec "zlib-$version" "$lib"
if [ "${1:-}" != "--check" ]; then
    exec "$FFIREC" diff system.ffr "zlib-$version.ffr"
fi

rec system2
rec "zlib-$version-2" "$lib"
set +e
"$FFIREC" diff system.ffr "zlib-$version.ffr" >diff1.txt
rc1=$?
"$FFIREC" diff system2.ffr "zlib-$version-2.ffr" | sed "s/system2.ffr/system.ffr/; s/zlib-$version-2.ffr/zlib-$version.ffr/" >diff2.txt
rc2=$?
"$FFIREC" diff system.ffr system2.ffr >same.txt
rc3=$?
set -e
cat diff1.txt
if ! cmp -s diff1.txt diff2.txt || [ "$rc1" != "$rc2" ]; then
    echo "zlib-versions: NOT deterministic (exit $rc1 vs $rc2):" >&2
    diff diff1.txt diff2.txt >&2 || true
    exit 1
fi
if [ "$rc3" != 0 ]; then
    echo "zlib-versions: system zlib against itself is not empty (exit $rc3):" >&2
    cat same.txt >&2
    exit 1
fi
echo "zlib-versions: deterministic: two recordings of each version give the same diff (exit $rc1); system vs system: no differences" >&2
