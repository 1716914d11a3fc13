//! Cross-check against valgrind: the bytes of two host buffers that zlib's
//! `compress2` read and wrote, as recorded by ffirec, equal what
//! `valgrind --tool=lackey --trace-mem=yes` reports for the same call.
//! Skipped (with a note) when valgrind or zlib's headers are missing.

mod common;
mod record_support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use record_support::{bytes, parse_addrs, ranges_in, record};

fn build() -> Option<PathBuf> {
    let out = common::fixtures_out().join("rec_zlib");
    let src = common::fixtures_src().join("rec_zlib.c");
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let st = Command::new(cc)
        .args(["-O0", "-g", "-Wall"])
        .arg(&src)
        .arg("-o")
        .arg(&tmp)
        .arg("-lz")
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !st.success() {
        return None;
    }
    std::fs::rename(&tmp, &out).ok()?;
    Some(out)
}

/// Byte sets from a lackey trace, between the two executions of `mark`.
fn lackey_bytes(log: &str, mark: u64) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut read, mut written) = (BTreeSet::new(), BTreeSet::new());
    let mut marks = 0;
    for line in log.lines() {
        let kind = line.get(..2).unwrap_or("");
        let Some((a, n)) = line.get(2..).and_then(|r| r.trim().split_once(',')) else { continue };
        let (Ok(addr), Ok(size)) = (u64::from_str_radix(a.trim(), 16), n.trim().parse::<u64>()) else { continue };
        match kind {
            "I " if addr == mark => marks += 1,
            " L" if marks == 1 => read.extend(addr..addr + size),
            " S" if marks == 1 => written.extend(addr..addr + size),
            " M" if marks == 1 => {
                read.extend(addr..addr + size);
                written.extend(addr..addr + size);
            }
            _ => {}
        }
    }
    assert_eq!(marks, 2, "lackey log does not show both marks");
    (read, written)
}

#[test]
fn record_zlib_compress2_matches_valgrind_lackey() {
    if Command::new("valgrind").arg("--version").output().is_err() {
        eprintln!("note: valgrind not installed; lackey cross-check skipped");
        return;
    }
    let Some(prog) = build() else {
        eprintln!("note: cannot build rec_zlib.c (zlib headers missing?); lackey cross-check skipped");
        return;
    };
    let r = record("zlib_lackey", &prog, &[], &["--lib", "libz.so.1"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    let ours = bytes(&r.events());
    let (src, dst, cap) = (r.addr("src"), r.addr("dst"), r.addr("cap"));
    let _ = cap;

    let dir = common::scratch("zlib_lackey_vg");
    let log = dir.join("lackey.log");
    let out = common::run(
        Command::new("valgrind")
            .arg("--tool=lackey")
            .arg("--trace-mem=yes")
            .arg(format!("--log-file={}", log.display()))
            .arg(&prog),
        std::time::Duration::from_secs(600),
    );
    assert!(out.status.success(), "valgrind failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), r.stdout, "program output differs under valgrind and ffirec");
    let vg = parse_addrs(&String::from_utf8_lossy(&out.stderr));
    let text = std::fs::read_to_string(&log).expect("lackey log");
    let (vr, vw) = lackey_bytes(&text, vg["mark"]);
    // The two runs have their own addresses: compare offsets into the buffers.
    let n = 4096;
    let dlen = r.addr("dlen");
    for (name, ours_base, vg_base, len) in [("src", src, vg["src"], n), ("dst", dst, vg["dst"], r.addr("cap"))] {
        let (or, ow) = (ranges_in(&ours.read, ours_base, len), ranges_in(&ours.written, ours_base, len));
        let (lr, lw) = (ranges_in(&vr, vg_base, len), ranges_in(&vw, vg_base, len));
        assert_eq!(or, lr, "{name}: bytes read differ (ffirec vs lackey)");
        assert_eq!(ow, lw, "{name}: bytes written differ (ffirec vs lackey)");
        eprintln!("{name}: read {or:?} written {ow:?} (dlen {dlen})");
    }
    assert_eq!(ranges_in(&ours.read, src, n), vec![(0, n)]);
    assert_eq!(ranges_in(&ours.written, dst, r.addr("cap")), vec![(0, dlen)]);
}
