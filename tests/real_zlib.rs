//! Real zlib (the system's libz.so.1) driven by a C host on three heap
//! buffers (`tests/fixtures/real_zlib.c`): crc32, a streaming deflate fed in
//! three 2000-byte chunks, uncompress. Exact byte ranges per call, the
//! program's output unchanged, and the same byte sets as valgrind's lackey.
//! `compress2` itself is cross-checked in tests/record_lackey.rs.
//! Skipped (with a note) when zlib's headers or valgrind are missing.

mod common;
mod real_support;
mod record_support;

use std::path::PathBuf;
use std::sync::OnceLock;

use real_support::{call_bytes, host_memory, named, one, stray, union};
use record_support::{native, ranges_in, record};

const N: u64 = 6000;

fn prog() -> Option<PathBuf> {
    static P: OnceLock<Option<PathBuf>> = OnceLock::new();
    P.get_or_init(|| real_support::build("real_zlib", &[])).clone()
}

#[test]
fn real_zlib_crc32_deflate_stream_uncompress_exact_bytes() {
    let Some(prog) = prog() else { return };
    let nat = native(&prog, &[]);
    assert!(nat.status.success());
    let r = record("real_zlib", &prog, &[], &["--lib", "libz.so.1"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "crc=2e08b006 deflate=1 clen=401 uncompress=0 blen=6000 same=1\n");
    let (src, dst, back, cap, clen) = (r.addr("src"), r.addr("dst"), r.addr("back"), r.addr("cap"), r.addr("clen"));
    assert_eq!(clen, 401);
    let trace = r.trace();
    let events = r.events();
    let calls = call_bytes(&trace, &events);
    let bufs = [("src", src, N), ("dst", dst, cap), ("back", back, N)];
    // (read, written) offsets of each buffer touched by a set of calls.
    let touched = |read: &std::collections::BTreeSet<u64>, written: &std::collections::BTreeSet<u64>| {
        bufs.iter()
            .map(|&(name, base, len)| (name, ranges_in(read, base, len), ranges_in(written, base, len)))
            .filter(|(_, r, w)| !r.is_empty() || !w.is_empty())
            .collect::<Vec<_>>()
    };
    let none: Vec<(u64, u64)> = vec![];

    // crc32: reads the whole input once, writes nothing of ours.
    let crc = one(&calls, "crc32");
    assert_eq!(crc.rax, 0x2e08_b006);
    assert_eq!(touched(&crc.read, &crc.written), vec![("src", vec![(0, N)], none.clone())]);

    // deflate: each call reads exactly the chunk it was handed; the first
    // writes the 2-byte zlib header, the middle one buffers, the last
    // (Z_FINISH) writes the rest of the stream.
    let d = named(&calls, "deflate");
    assert_eq!(d.len(), 3, "deflate calls");
    assert_eq!(
        touched(&d[0].read, &d[0].written),
        vec![("src", vec![(0, 2000)], none.clone()), ("dst", none.clone(), vec![(0, 2)])]
    );
    assert_eq!(touched(&d[1].read, &d[1].written), vec![("src", vec![(2000, 4000)], none.clone())]);
    assert_eq!(
        touched(&d[2].read, &d[2].written),
        vec![("src", vec![(4000, N)], none.clone()), ("dst", none.clone(), vec![(2, clen)])]
    );
    assert_eq!(d.iter().map(|c| c.rax).collect::<Vec<_>>(), vec![0, 0, 1], "Z_OK, Z_OK, Z_STREAM_END");
    for name in ["deflateInit_", "deflateEnd"] {
        let c = one(&calls, name);
        assert_eq!(touched(&c.read, &c.written), vec![], "{name} touched a host buffer");
    }

    // uncompress: reads the compressed bytes, writes the whole output and
    // reads it back (window copies and the adler32 check).
    let u = one(&calls, "uncompress");
    assert_eq!(
        touched(&u.read, &u.written),
        vec![("dst", vec![(0, clen)], none.clone()), ("back", vec![(0, N)], vec![(0, N)])]
    );

    // Nothing else of the host's (heap blocks, globals) was touched.
    let (all_r, all_w) = union(&calls);
    let allocs = host_memory(&trace, &events);
    let b: Vec<(u64, u64)> = bufs.iter().map(|&(_, b, n)| (b, n)).collect();
    assert_eq!(stray(&all_r, &b, &allocs), vec![], "host bytes read outside the buffers");
    assert_eq!(stray(&all_w, &b, &allocs), vec![], "host bytes written outside the buffers");
}

#[test]
fn real_zlib_stream_matches_valgrind_lackey() {
    if !real_support::have("valgrind", &["--version"]) {
        eprintln!("note: valgrind not installed; lackey cross-check skipped");
        return;
    }
    let Some(prog) = prog() else { return };
    let r = record("real_zlib_lackey", &prog, &[], &["--lib", "libz.so.1"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    let calls = call_bytes(&r.trace(), &r.events());
    // The host's calls between each pair of marks: 1-2 crc32, 3-4 the deflate
    // stream (init, three deflates, end), 5-6 uncompress.
    let windows: Vec<Vec<&str>> =
        vec![vec!["crc32"], vec!["deflateInit_", "deflate", "deflateEnd"], vec!["uncompress"]];
    let ours: Vec<_> =
        windows.iter().map(|names| union(calls.iter().filter(|c| names.contains(&c.name.as_str())))).collect();

    let (out, log) = real_support::lackey("real_zlib_lackey_vg", &prog, &[]);
    assert!(out.status.success(), "valgrind failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), r.stdout, "program output differs under valgrind and ffirec");
    let vg = record_support::parse_addrs(&String::from_utf8_lossy(&out.stderr));
    let theirs = real_support::lackey_windows(&log, vg["mark"]);
    assert_eq!(theirs.len(), 3, "lackey mark windows");
    let cap = r.addr("cap");
    for (w, ((or, ow), (lr, lw))) in ours.iter().zip(&theirs).enumerate() {
        for (name, len) in [("src", N), ("dst", cap), ("back", N)] {
            let (ob, lb) = (r.addr(name), vg[name]);
            assert_eq!(
                ranges_in(or, ob, len),
                ranges_in(lr, lb, len),
                "window {w} {name}: bytes read differ (ffirec vs lackey)"
            );
            assert_eq!(
                ranges_in(ow, ob, len),
                ranges_in(lw, lb, len),
                "window {w} {name}: bytes written differ (ffirec vs lackey)"
            );
            eprintln!("window {w} {name}: read {:?} written {:?}", ranges_in(or, ob, len), ranges_in(ow, ob, len));
        }
    }
}

/// Eight host threads, each running compress2 then uncompress on its own
/// heap buffers concurrently: output as native; per thread exactly one call
/// of each on its own tid, touching exactly its own buffers' bytes and none
/// of the other threads'.
#[test]
fn real_zlib_eight_threads_compress2_uncompress() {
    let Some(prog) = real_support::build("real_zlib_threads", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_zlib_threads", &prog, &[], &["--lib", "libz.so.1"]);
    real_support::assert_same_as_native(&nat, &r);
    let events = r.events();
    let calls = call_bytes(&r.trace(), &events);
    let tid_of = real_support::call_tids(&events);
    let n = 3000;
    let bufs: Vec<[(u64, u64); 3]> = (0..8)
        .map(|k| {
            [
                (r.addr(&format!("src{k}")), n),
                (r.addr(&format!("dst{k}")), r.addr(&format!("cap{k}"))),
                (r.addr(&format!("back{k}")), n),
            ]
        })
        .collect();
    let mut tids = std::collections::BTreeSet::new();
    for k in 0..8 {
        let [(src, _), (dst, cap), (back, _)] = bufs[k];
        let clen = r.addr(&format!("clen{k}"));
        let c: Vec<_> = named(&calls, "compress2").into_iter().filter(|c| c.args[0] == dst).collect();
        let u: Vec<_> = named(&calls, "uncompress").into_iter().filter(|c| c.args[0] == back).collect();
        assert_eq!((c.len(), u.len()), (1, 1), "thread {k}: one compress2 and one uncompress");
        let (c, u) = (c[0], u[0]);
        assert_eq!(tid_of[&c.call], tid_of[&u.call], "thread {k}: both calls on one tid");
        tids.insert(tid_of[&c.call]);
        let rw = |x: &real_support::CallBytes, b: u64, l: u64| (ranges_in(&x.read, b, l), ranges_in(&x.written, b, l));
        let none: Vec<(u64, u64)> = vec![];
        assert_eq!(rw(c, src, n), (vec![(0, n)], none.clone()), "thread {k}: compress2 on src");
        assert_eq!(rw(c, dst, cap), (none.clone(), vec![(0, clen)]), "thread {k}: compress2 on dst");
        assert_eq!(rw(u, dst, cap), (vec![(0, clen)], none.clone()), "thread {k}: uncompress on dst");
        assert_eq!(rw(u, back, n), (vec![(0, n)], vec![(0, n)]), "thread {k}: uncompress on back");
        for (j, other) in bufs.iter().enumerate().filter(|&(j, _)| j != k) {
            for &(b, l) in other {
                for x in [c, u] {
                    assert_eq!(
                        rw(x, b, l),
                        (none.clone(), none.clone()),
                        "thread {k}'s {} touched thread {j}'s buffer",
                        x.name
                    );
                }
            }
        }
    }
    assert_eq!(tids.len(), 8, "eight distinct threads");
    // Eight threads' accesses interleaved over several chunks: the report
    // is byte-identical whatever the analysis thread count.
    assert!(r.trace().chunks().len() >= 2, "{} chunks", r.trace().chunks().len());
    let analyse = |threads: &str| {
        let out = common::run(
            common::ffirec().args(["analyze", "--format", "json", "--threads", threads]).arg(&r.trace),
            common::TIMEOUT,
        );
        assert!(matches!(out.status.code(), Some(0 | 1)), "{}", String::from_utf8_lossy(&out.stderr));
        out.stdout
    };
    let one = analyse("1");
    assert!(one == analyse("2") && one == analyse("3"), "JSON differs between --threads 1, 2 and 3");
}
