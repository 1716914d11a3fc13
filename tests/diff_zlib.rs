//! `ffirec diff` on a real library in two versions: `scripts/zlib-versions.sh
//! --check` builds zlib from the source the `libz-sys` crate bundles
//! (fetched into cargo's registry cache when missing), records
//! `examples/zlib_demo.c` against it and against the system zlib twice each,
//! and checks that both diffs are byte-identical and that the system zlib
//! against itself is empty.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[test]
fn diff_zlib_system_vs_bundled_is_deterministic() {
    if !Path::new("/usr/include/zlib.h").exists() {
        panic!("zlib headers missing: apt-get install zlib1g-dev (.ci/run installs it)");
    }
    let out_dir = common::scratch("diff_zlib");
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/zlib-versions.sh");
    let out = common::run(
        Command::new("bash")
            .arg(&script)
            .arg("--check")
            .env("FFIREC", env!("CARGO_BIN_EXE_ffirec"))
            .env("OUT", &out_dir),
        Duration::from_secs(600),
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "script failed:\n{stdout}\n{stderr}");
    assert!(stderr.contains("deterministic: two recordings of each version give the same diff"), "{stderr}");
    // The demo makes the same five foreign calls against both versions
    // (compressBound, compress2, uncompress and the two destructors).
    assert!(stdout.contains("  calls: 5 in OLD, 5 in NEW, 5 matched, 0 only in OLD, 0 only in NEW"), "{stdout}");
    assert!(stdout.contains("new findings: none"), "{stdout}");
    // No raw heap address in the diff.
    for (i, _) in stdout.match_indices("0x") {
        let digits: String = stdout[i + 2..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        assert!(u64::from_str_radix(&digits, 16).unwrap_or(u64::MAX) < 0x100_0000, "raw address 0x{digits}:\n{stdout}");
    }
}
