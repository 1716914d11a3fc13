//! Real system libraries driven by small C hosts (`tests/fixtures/real_*.c`):
//! libsqlite3, libxml2, libcrypto and libffi. Each test checks that the
//! program's stdout and exit status are the same with and without ffirec and
//! asserts the exact bytes of the host's buffers the library read and wrote.
//! A test whose library or headers are missing prints a note and passes.

mod common;
mod real_support;
mod record_support;

use real_support::{call_bytes, host_memory, named, one, rw, stray, union, CallBytes, Ranges};
use record_support::{native, ranges_in, record, Recorded};

/// Asserts no call touched a byte of the host's heap blocks or globals
/// outside `buffers`.
fn assert_no_stray(r: &Recorded, calls: &[CallBytes], buffers: &[(u64, u64)]) {
    let allocs = host_memory(&r.trace(), &r.events());
    let (all_r, all_w) = union(calls);
    assert_eq!(stray(&all_r, buffers, &allocs), vec![], "host bytes read outside the buffers");
    assert_eq!(stray(&all_w, buffers, &allocs), vec![], "host bytes written outside the buffers");
}

const NONE: Vec<(u64, u64)> = Vec::new();

#[test]
fn real_sqlite_static_binds_read_exactly_the_bound_bytes() {
    let Some(prog) = real_support::build("real_sqlite", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_sqlite", &prog, &[], &["--lib", "libsqlite3.so.0"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(
        r.stdout,
        "0 abcdefghijklmnopqrstuvwxyzabcdefghijk 300 00070E15\n\
         1 hijklmnopqrstuvwxyzabcdefghijklmnopqr 300 1F262D34\n\
         2 opqrstuvwxyzabcdefghijklmnopqrstuvwxy 300 3E454C53\n"
    );
    let (text, blob, tlen, blen, rows) =
        (r.addr("text"), r.addr("blob"), r.addr("tlen"), r.addr("blen"), r.addr("rows"));
    let calls = call_bytes(&r.trace(), &r.events());
    // Binding with SQLITE_STATIC only stores the pointer ...
    for name in ["sqlite3_bind_text", "sqlite3_bind_blob"] {
        let binds = named(&calls, name);
        assert_eq!(binds.len() as u64, rows, "{name} calls");
        for c in binds {
            assert_eq!(rw(c, text, tlen * rows), (NONE, NONE), "{name} touched text");
            assert_eq!(rw(c, blob, blen * rows), (NONE, NONE), "{name} touched blob");
        }
    }
    // ... the INSERT's step reads exactly row r's bytes, once, and writes none.
    let steps: Vec<&CallBytes> =
        named(&calls, "sqlite3_step").into_iter().filter(|c| !rw(c, text, tlen * rows).0.is_empty()).collect();
    assert_eq!(steps.len() as u64, rows, "steps that read the text buffer");
    for (row, c) in (0..rows).zip(&steps) {
        assert_eq!(rw(c, text, tlen * rows), (vec![(row * tlen, (row + 1) * tlen)], NONE), "row {row} text");
        assert_eq!(rw(c, blob, blen * rows), (vec![(row * blen, (row + 1) * blen)], NONE), "row {row} blob");
    }
    // No other call touched the buffers; nothing else of the host's either.
    let others: Vec<&CallBytes> = calls.iter().filter(|c| !steps.iter().any(|s| s.call == c.call)).collect();
    for c in &others {
        assert_eq!(rw(c, text, tlen * rows), (NONE, NONE), "call {} {} touched text", c.call, c.name);
        assert_eq!(rw(c, blob, blen * rows), (NONE, NONE), "call {} {} touched blob", c.call, c.name);
    }
    assert_no_stray(&r, &calls, &[(text, tlen * rows), (blob, blen * rows)]);
}

#[test]
fn real_libxml2_read_memory_reads_exactly_len_bytes() {
    let Some(prog) = real_support::build("real_xml", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_xml", &prog, &[], &["--lib", "libxml2.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "item hello\nitem world\nroot=root items=2\n");
    let (buf, len) = (r.addr("buf"), r.addr("len"));
    assert_eq!(len, 90);
    let calls = call_bytes(&r.trace(), &r.events());
    // The parser reads [0, len) and not one of the 16 bytes after it (no
    // terminator scan); it writes nothing of the host's.
    let c = one(&calls, "xmlReadMemory");
    assert_eq!(rw(c, buf, len + 16), (vec![(0, len)], NONE));
    for c in calls.iter().filter(|c| c.name != "xmlReadMemory") {
        assert_eq!(rw(c, buf, len + 16), (NONE, NONE), "call {} {} touched buf", c.call, c.name);
    }
    // Besides buf, the only host memory libxml2 touched is the program's
    // copy-relocated `xmlFree` pointer (8 bytes of our .bss), read when
    // freeing; nothing of the host's is written.
    let host = host_memory(&r.trace(), &r.events());
    let (all_r, all_w) = union(&calls);
    let xmlfree = r.addr("xmlfree");
    assert_eq!(stray(&all_r, &[(buf, len + 16)], &host), vec![(xmlfree, xmlfree + 8)], "host bytes read outside buf");
    assert_eq!(stray(&all_w, &[(buf, len + 16)], &host), NONE, "host bytes written outside buf");
    let readers: Vec<&str> = calls.iter().filter(|c| c.read.contains(&xmlfree)).map(|c| c.name.as_str()).collect();
    eprintln!("calls reading xmlFree: {readers:?}");
}

#[test]
fn real_libcrypto_sha256_reads_input_writes_32_bytes() {
    let Some(prog) = real_support::build("real_sha256", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_sha256", &prog, &[], &["--lib", "libcrypto.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "ok=1 len=32 e883b510c2a532513fd6a63a80b413de18dbed2c090e7ecd1dc515a8ee9096cd\n");
    let (input, md, n) = (r.addr("in"), r.addr("md"), r.addr("n"));
    let calls = call_bytes(&r.trace(), &r.events());
    let c = one(&calls, "EVP_Digest");
    assert_eq!(c.rax, 1);
    assert_eq!(rw(c, input, n), (vec![(0, n)], NONE), "EVP_Digest on the input");
    assert_eq!(rw(c, md, 64), (NONE, vec![(0, 32)]), "EVP_Digest on the digest buffer");
    for c in calls.iter().filter(|c| c.name != "EVP_Digest") {
        assert_eq!(
            (rw(c, input, n), rw(c, md, 64)),
            ((NONE, NONE), (NONE, NONE)),
            "call {} {} touched a buffer",
            c.call,
            c.name
        );
    }
    assert_no_stray(&r, &calls, &[(input, n), (md, 64)]);
}

/// The libffi host: `fx_sum` in libreal_ffi_target.so called through `ffi_call`.
fn ffi_prog() -> Option<std::path::PathBuf> {
    let lib = real_support::build_lib("real_ffi_target")?;
    let dir = lib.parent().expect("fixture dir").display().to_string();
    real_support::build("real_ffi", &[&format!("-L{dir}"), "-lreal_ffi_target", &format!("-Wl,-rpath,{dir}")])
}

const FFI_OUT: &str = "sum=65 sq: 49 16 1 4 25 64 121 196 289 400\n";

/// Records the libffi host with `opts`; returns the run and the host calls
/// (those returning into the main executable or into libffi).
fn ffi_record(test: &str, opts: &[&str]) -> Option<(Recorded, Vec<CallBytes>, ffirec_format::Trace)> {
    let prog = ffi_prog()?;
    let nat = native(&prog, &[]);
    let r = record(test, &prog, &[], opts);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, FFI_OUT);
    let trace = r.trace();
    let calls = call_bytes(&trace, &r.events());
    Some((r, calls, trace))
}

/// With `--lib` naming only the target library, libffi is host code: the
/// call recorded is `fx_sum` itself (returning into libffi), with exactly the
/// target's accesses; libffi's reads of the argument block are not foreign.
/// Declaring libffi neutral gives the same trace. This is what a user asking
/// "what does fx_sum do to my memory" wants.
#[test]
fn real_libffi_call_with_libffi_as_host_or_neutral() {
    for (test, opts) in [
        ("real_ffi_host", vec!["--lib", "libreal_ffi_target.so"]),
        ("real_ffi_neutral", vec!["--lib", "libreal_ffi_target.so", "--neutral", "libffi.so*"]),
    ] {
        let Some((r, calls, trace)) = ffi_record(test, &opts) else { return };
        let (v, sq, vals, avalues, n) = (r.addr("v"), r.addr("sq"), r.addr("vals"), r.addr("avalues"), r.addr("n"));
        let ffi = &trace.modules()[real_support::module_named(&trace, "libffi.so")];
        let c = one(&calls, "fx_sum");
        assert!(
            ffi.contains(c.return_addr),
            "{test}: fx_sum should return into libffi, returns to {:#x}",
            c.return_addr
        );
        assert_eq!(c.rax, 65, "{test}");
        assert_eq!([c.args[0], c.args[1], c.args[2]], [v, n, sq], "{test}: arguments as passed by libffi");
        assert_eq!(rw(c, v, 4 * n), (vec![(0, 4 * n)], NONE), "{test}: v");
        assert_eq!(rw(c, sq, 4 * n), (NONE, vec![(0, 4 * n)]), "{test}: sq");
        // -O0: v[i] is loaded three times (the sum, both factors), sq[i] stored once.
        assert_eq!(c.accesses, 4 * n, "{test}: accesses");
        let (all_r, all_w) = union(&calls);
        assert_eq!(ranges_in(&all_r, vals, 24), NONE, "{test}: libffi's argument reads are not the library's");
        assert_eq!(ranges_in(&all_r, avalues, 24), NONE, "{test}: libffi's argument reads are not the library's");
        assert_no_stray(&r, &calls, &[(v, 4 * n), (sq, 4 * n)]);
        assert!(all_w.iter().all(|&a| a >= sq && a < sq + 4 * n), "{test}: writes outside sq");
    }
}

/// With no `--lib`, libffi is foreign too (it is not part of the C runtime):
/// the host's call is `ffi_call`, and the bytes it read include libffi's own
/// reads of the pointer array and the argument values.
#[test]
fn real_libffi_call_with_libffi_foreign_by_default() {
    let Some((r, calls, _trace)) = ffi_record("real_ffi_default", &[]) else { return };
    let (v, sq, vals, avalues, n) = (r.addr("v"), r.addr("sq"), r.addr("vals"), r.addr("avalues"), r.addr("n"));
    assert!(r.stderr.contains("libffi.so"), "libffi should be listed as foreign:\n{}", r.stderr);
    assert_eq!(named(&calls, "fx_sum").len(), 0, "foreign-to-foreign calls are not boundaries");
    let c = one(&calls, "ffi_call");
    assert_eq!(rw(c, v, 4 * n), (vec![(0, 4 * n)], NONE));
    assert_eq!(rw(c, sq, 4 * n), (NONE, vec![(0, 4 * n)]));
    // The three pointers of avalues[], and the values they point to: v and sq
    // (8 bytes each) and n (4 bytes at offset 16; the padding is not read).
    assert_eq!(rw(c, avalues, 24), (vec![(0, 24)], NONE));
    assert_eq!(rw(c, vals, 24), (vec![(0, 20)], NONE));
    let prep = one(&calls, "ffi_prep_cif");
    assert_eq!((rw(prep, v, 4 * n), rw(prep, vals, 24)), ((NONE, NONE), (NONE, NONE)));
}

/// zlib's gz* layer in transparent mode: the library makes write(2) and
/// read(2) syscalls on the host's guarded heap buffers. They must work (same
/// output, same file) and be recorded: gzwrite reads exactly out[0, n), gzread
/// writes exactly in[0, n) (its first 8 KiB copied from zlib's own buffer, the
/// rest read(2) straight into ours).
#[test]
fn real_zlib_gz_transparent_io_syscalls_on_host_buffers() {
    let Some(prog) = real_support::build("real_gzio", &[]) else { return };
    let nat_dir = common::scratch("real_gzio_native");
    let nat = native(&prog, &[&nat_dir.display().to_string()]);
    let dir = common::scratch("real_gzio_files");
    let r = record("real_gzio", &prog, &[&dir.display().to_string()], &["--lib", "libz.so.1"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "w=100000 c1=0 r=100000 direct=1 c2=0 same=1\n");
    assert_eq!(
        std::fs::read(dir.join("plain.bin")).expect("written file"),
        std::fs::read(nat_dir.join("plain.bin")).expect("native file")
    );
    let (out, input, n) = (r.addr("out"), r.addr("in"), r.addr("n"));
    let events = r.events();
    // The kernel's side, as SyscallAccess events on our buffers.
    let sys: Vec<(u64, u64, u64, bool)> = events
        .iter()
        .filter_map(|e| match e {
            ffirec_format::Event::SyscallAccess { nr, ranges, .. } => {
                Some(ranges.iter().map(move |g| (*nr, g.addr, g.len, g.write)))
            }
            _ => None,
        })
        .flatten()
        .filter(|&(_, a, _, _)| (a >= out && a < out + n) || (a >= input && a < input + n))
        .map(
            |(nr, a, len, w)| if a >= input && a < input + n { (nr, a - input, len, w) } else { (nr, a - out, len, w) },
        )
        .collect();
    assert_eq!(sys, vec![(1, 0, n, false), (0, 8192, n - 8192, true)], "write(out, n), then read(in + 8192, n - 8192)");
    let calls = call_bytes(&r.trace(), &events);
    let w = one(&calls, "gzwrite");
    assert_eq!((rw(w, out, n), rw(w, input, n)), ((vec![(0, n)], NONE), (NONE, NONE)), "gzwrite");
    let g = one(&calls, "gzread");
    assert_eq!((rw(g, out, n), rw(g, input, n)), ((NONE, NONE), (NONE, vec![(0, n)])), "gzread");
    for c in calls.iter().filter(|c| c.name != "gzwrite" && c.name != "gzread") {
        assert_eq!((rw(c, out, n), rw(c, input, n)), ((NONE, NONE), (NONE, NONE)), "call {} {}", c.call, c.name);
    }
}

/// A real foreign call that blocks on another host thread: gzread on a pipe
/// that a host thread fills (after its own deflate). No deadlock: the
/// blocked call is recorded as a Blocked gap, the writer's foreign calls run
/// meanwhile, and after the gap the guards are back: gzread's writes to dst
/// are exactly [0, n), the writer's deflate read exactly src[0, n) and wrote
/// exactly z[0, zlen).
#[test]
fn real_zlib_gzread_blocked_on_pipe_filled_by_host_thread() {
    let Some(prog) = real_support::build("real_gzpipe", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_gzpipe", &prog, &[], &["--lib", "libz.so.1"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "got=30000 same=1\n");
    let (src, dst, n, z, zlen) = (r.addr("src"), r.addr("dst"), r.addr("n"), r.addr("z"), r.addr("zlen"));
    let events = r.events();
    let blocked = events
        .iter()
        .filter(|e| matches!(e, ffirec_format::Event::Gap { reason: ffirec_format::GapReason::Blocked, .. }))
        .count();
    assert!(blocked >= 1, "the blocked gzread should be recorded as a gap");
    let calls = call_bytes(&r.trace(), &events);
    let (gr, gw) = union(named(&calls, "gzread"));
    assert_eq!((ranges_in(&gr, dst, n), ranges_in(&gw, dst, n)), (NONE, vec![(0, n)]), "gzread on dst");
    let d = one(&calls, "deflate");
    assert_eq!(rw(d, src, n), (vec![(0, n)], NONE), "writer's deflate on src");
    assert_eq!(rw(d, z, zlen + 64), (NONE, vec![(0, zlen)]), "writer's deflate on z");
    assert_eq!(ranges_in(&gr, src, n), NONE);
}

/// Real libpng encoding host rows to memory through a host write callback
/// and decoding them back through a host read callback. With only libpng
/// foreign, the zlib it uses is host code (its calls are callbacks, and its
/// calls back into libpng's allocator are new calls); with libz foreign too
/// they are one domain. Either way: png_write_image reads exactly the image
/// rows, png_read_image writes exactly the output rows, the PNG bytes in the
/// host's buffer are touched only by the host's callbacks (9 writes, 9 reads).
#[test]
fn real_libpng_write_and_read_through_host_callbacks() {
    let Some(prog) = real_support::build("real_png", &[]) else { return };
    let nat = native(&prog, &[]);
    for (test, opts) in [
        ("real_png", vec!["--lib", "libpng16.so*"]),
        ("real_png_z", vec!["--lib", "libpng16.so*", "--lib", "libz.so.1"]),
    ] {
        let r = record(test, &prog, &[], &opts);
        real_support::assert_same_as_native(&nat, &r);
        assert_eq!(r.stdout, "png=112 bytes writes=9 reads=9 same=1\n");
        let (img, out, size, mem, len) =
            (r.addr("img"), r.addr("out"), r.addr("size"), r.addr("mem"), r.addr("pnglen"));
        let events = r.events();
        let calls = call_bytes(&r.trace(), &events);
        let w = one(&calls, "png_write_image");
        assert_eq!(
            (rw(w, img, size), rw(w, out, size)),
            ((vec![(0, size)], NONE), (NONE, NONE)),
            "{test}: png_write_image"
        );
        let rd = one(&calls, "png_read_image");
        assert_eq!(
            (rw(rd, img, size), rw(rd, out, size)),
            ((NONE, NONE), (NONE, vec![(0, size)])),
            "{test}: png_read_image"
        );
        for c in calls.iter().filter(|c| c.call != w.call && c.call != rd.call) {
            assert_eq!(
                (rw(c, img, size), rw(c, out, size)),
                ((NONE, NONE), (NONE, NONE)),
                "{test}: call {} {}",
                c.call,
                c.name
            );
        }
        let (all_r, all_w) = union(&calls);
        assert_eq!(
            (ranges_in(&all_r, mem, 4096), ranges_in(&all_w, mem, 4096)),
            (NONE, NONE),
            "{test}: the library touched the PNG buffer ({len} bytes)"
        );
        let targets = |f: u64| {
            events.iter().filter(|e| matches!(e, ffirec_format::Event::Callback { target, .. } if *target == f)).count()
        };
        assert_eq!(
            (targets(r.addr("wr")), targets(r.addr("rd"))),
            (9, 9),
            "{test}: callbacks into the host's write/read functions"
        );
        // libpng's calls into zlib: callbacks into host code, or nothing.
        let trace = r.trace();
        let z = &trace.modules()[real_support::module_named(&trace, "libz.so")];
        let into_zlib = events
            .iter()
            .filter(|e| matches!(e, ffirec_format::Event::Callback { target, .. } if z.contains(*target)))
            .count();
        if opts.len() == 2 {
            assert!(into_zlib > 0, "{test}: libpng's zlib calls should be callbacks into host code");
        } else {
            assert_eq!(into_zlib, 0, "{test}: zlib is foreign too");
        }
    }
}

/// Real libcrypto AES-256-GCM (AES-NI, carry-less multiply, vector code) on
/// heap buffers: EncryptUpdate reads pt[0, n) and writes ct[0, n) (and reads
/// part of ct back for GHASH: which part is the implementation's business, so
/// it is checked against valgrind's lackey, window by window), the tag is
/// written by GET_TAG and read by SET_TAG, DecryptUpdate reads ct[0, n) and
/// writes back[0, n).
#[test]
fn real_libcrypto_aes_gcm_exact_bytes_and_lackey() {
    let Some(prog) = real_support::build("real_aes_gcm", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_aes_gcm", &prog, &[], &["--lib", "libcrypto.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "ok=1 clen=4000 verify=1 same=1 hash=6d1cf71833949ea6 tag0=64\n");
    let (pt, ct, back, tag, n) = (r.addr("pt"), r.addr("ct"), r.addr("back"), r.addr("tag"), r.addr("n"));
    let calls = call_bytes(&r.trace(), &r.events());
    let enc = one(&calls, "EVP_EncryptUpdate");
    assert_eq!(rw(enc, pt, n), (vec![(0, n)], NONE), "EncryptUpdate on pt");
    let (ct_read, ct_written) = rw(enc, ct, n + 32);
    assert_eq!(ct_written, vec![(0, n)], "EncryptUpdate writes ct");
    assert!(ct_read.iter().all(|&(_, e)| e <= n), "EncryptUpdate reads ct only inside what it wrote: {ct_read:?}");
    assert_eq!((rw(enc, back, n), rw(enc, tag, 16)), ((NONE, NONE), (NONE, NONE)));
    let dec = one(&calls, "EVP_DecryptUpdate");
    assert_eq!((rw(dec, ct, n + 32), rw(dec, back, n)), ((vec![(0, n)], NONE), (NONE, vec![(0, n)])), "DecryptUpdate");
    let ctrl = named(&calls, "EVP_CIPHER_CTX_ctrl");
    assert_eq!(ctrl.len(), 2);
    assert_eq!(
        (rw(ctrl[0], tag, 16), rw(ctrl[1], tag, 16)),
        ((NONE, vec![(0, 16)]), (vec![(0, 16)], NONE)),
        "GET_TAG writes, SET_TAG reads"
    );
    eprintln!("EncryptUpdate read back ct {ct_read:?}");

    if !real_support::have("valgrind", &["--version"]) {
        eprintln!("note: valgrind not installed; lackey cross-check skipped");
        return;
    }
    let (out, log) = real_support::lackey("real_aes_gcm_vg", &prog, &[]);
    assert!(out.status.success(), "valgrind failed: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), r.stdout);
    let vg = record_support::parse_addrs(&String::from_utf8_lossy(&out.stderr));
    let windows = real_support::lackey_windows(&log, vg["mark"]);
    assert_eq!(windows.len(), 2);
    for (w, c) in [enc, dec].into_iter().enumerate() {
        let (lr, lw) = &windows[w];
        for (name, len) in [("pt", n), ("ct", n + 32), ("back", n), ("tag", 16)] {
            let (ob, lb) = (r.addr(name), vg[name]);
            assert_eq!(
                (ranges_in(&c.read, ob, len), ranges_in(&c.written, ob, len)),
                (ranges_in(lr, lb, len), ranges_in(lw, lb, len)),
                "{}: {name} differs from lackey",
                c.name
            );
        }
    }
}

/// A library call whose OpenMP region runs on four threads, three of them
/// created by libgomp (host code: only the library is foreign) during the
/// call. The outlined loop body runs as one foreign call per thread, each
/// on its own static chunk of 1000 elements: exactly v[k*1000, (k+1)*1000)
/// read twice per element and out[...) written once; the program's output
/// is unchanged and no thread deadlocks.
#[test]
fn real_openmp_threads_created_inside_a_foreign_call() {
    let Some(lib) = real_support::build_lib("real_omp_target") else { return };
    let dir = lib.parent().expect("fixture dir").display().to_string();
    let Some(prog) =
        real_support::build("real_omp", &[&format!("-L{dir}"), "-lreal_omp_target", &format!("-Wl,-rpath,{dir}")])
    else {
        return;
    };
    let nat = native(&prog, &[]);
    let r = record("real_omp", &prog, &[], &["--lib", "libreal_omp_target.so"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "191149 382298\n");
    let (v, out, n) = (r.addr("v"), r.addr("out"), r.addr("n"));
    let events = r.events();
    let calls = call_bytes(&r.trace(), &events);
    let outer = one(&calls, "fx_par_sum");
    assert_eq!(outer.rax, 191_149);
    let starts = events.iter().filter(|e| matches!(e, ffirec_format::Event::ThreadStart { .. })).count();
    assert_eq!(starts, 3, "libgomp's three worker threads");
    let tid_of = real_support::call_tids(&events);
    // Every call that touched v: one per thread, each its own chunk.
    let mut chunks: Vec<(u64, u32, Ranges, Ranges, u64)> = calls
        .iter()
        .filter(|c| !rw(c, v, 4 * n).0.is_empty())
        .map(|c| (rw(c, v, 4 * n).0[0].0, tid_of[&c.call], rw(c, v, 4 * n).0, rw(c, out, 4 * n).1, c.accesses))
        .collect();
    chunks.sort_unstable();
    assert_eq!(chunks.len(), 4, "one loop-body call per thread: {chunks:?}");
    let tids: std::collections::BTreeSet<u32> = chunks.iter().map(|c| c.1).collect();
    assert_eq!(tids.len(), 4, "four distinct threads");
    for (k, (_, tid, vr, ow, accesses)) in chunks.into_iter().enumerate() {
        let k = k as u64;
        assert_eq!(vr, vec![(4000 * k, 4000 * (k + 1))], "thread {tid}: v chunk");
        assert_eq!(ow, vec![(4000 * k, 4000 * (k + 1))], "thread {tid}: out chunk");
        assert_eq!(accesses, 3000, "thread {tid}: two loads and a store per element");
    }
}

/// Six host threads hashing concurrently with libcrypto (its locks and
/// lazy initialisation race for real): output as native; per thread exactly
/// five EVP_Digest calls on its own tid, each reading exactly its input
/// [0, 5000) and writing exactly its digest [0, 32), and none of another
/// thread's buffers.
#[test]
fn real_libcrypto_six_threads_sha256() {
    let Some(prog) = real_support::build("real_sha256_threads", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_sha256_threads", &prog, &[], &["--lib", "libcrypto.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    let events = r.events();
    let calls = call_bytes(&r.trace(), &events);
    let tid_of = real_support::call_tids(&events);
    let bufs: Vec<(u64, u64)> = (0..6).map(|k| (r.addr(&format!("in{k}")), r.addr(&format!("md{k}")))).collect();
    let digests = named(&calls, "EVP_Digest");
    assert_eq!(digests.len(), 30);
    let mut tids = std::collections::BTreeSet::new();
    for (k, &(input, md)) in bufs.iter().enumerate() {
        let mine: Vec<&CallBytes> = digests.iter().copied().filter(|c| c.args[0] == input).collect();
        assert_eq!(mine.len(), 5, "thread {k}: five digests");
        let t: std::collections::BTreeSet<u32> = mine.iter().map(|c| tid_of[&c.call]).collect();
        assert_eq!(t.len(), 1, "thread {k}: all on one tid");
        tids.extend(t);
        for c in mine {
            assert_eq!(
                (rw(c, input, 5000), rw(c, md, 32)),
                ((vec![(0, 5000)], NONE), (NONE, vec![(0, 32)])),
                "thread {k}: call {}",
                c.call
            );
            for (j, &(oi, om)) in bufs.iter().enumerate().filter(|&(j, _)| j != k) {
                assert_eq!(
                    (rw(c, oi, 5000), rw(c, om, 32)),
                    ((NONE, NONE), (NONE, NONE)),
                    "thread {k} touched thread {j}'s buffers"
                );
            }
        }
    }
    assert_eq!(tids.len(), 6);
}

/// libsqlite3 calling back into the host: a user SQL function called 40
/// times (and each time calling sqlite3_value_int / sqlite3_result_int back
/// into the library: calls nested in callbacks) and one exec row callback.
/// sqlite3_exec reads the heap query text including its terminating NUL
/// (it was given no length), and the host table the callback reads is never
/// the library's access.
#[test]
fn real_sqlite_user_function_and_row_callbacks() {
    let Some(prog) = real_support::build("real_sqlite_callbacks", &[]) else { return };
    let nat = native(&prog, &[]);
    let r = record("real_sqlite_callbacks", &prog, &[], &["--lib", "libsqlite3.so.0"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "15190 20 3390\nrc=0 fn_calls=40 rows=1\n");
    let (weights, q, qlen, weight, row) =
        (r.addr("weights"), r.addr("q"), r.addr("qlen"), r.addr("weight"), r.addr("row"));
    let events = r.events();
    let calls = call_bytes(&r.trace(), &events);
    let exec = one(&calls, "sqlite3_exec");
    assert_eq!(rw(exec, q, qlen + 16), (vec![(0, qlen + 1)], NONE), "sqlite3_exec on the query text");
    let callbacks = |f: u64| {
        events.iter().filter(|e| matches!(e, ffirec_format::Event::Callback { call, target, .. } if *call == exec.call && *target == f)).count()
    };
    assert_eq!((callbacks(weight), callbacks(row)), (40, 1), "callbacks into weight() and row()");
    let trace = r.trace();
    let main = &trace.modules()[0];
    for name in ["sqlite3_value_int", "sqlite3_result_int"] {
        let nested = named(&calls, name);
        assert_eq!(nested.len(), 40, "{name} calls");
        assert!(nested.iter().all(|c| main.contains(c.return_addr)), "{name} is called from the host's callback");
    }
    let (all_r, all_w) = union(&calls);
    assert_eq!(
        (ranges_in(&all_r, weights, 64), ranges_in(&all_w, weights, 64)),
        (NONE, NONE),
        "weights are read by host code only"
    );
}
