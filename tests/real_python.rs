//! The Python interpreter as the host: `python3 -c` programs using the zlib
//! and sqlite3 modules (the interpreter and its extension modules are host
//! code, the system's libz/libsqlite3 foreign), and ctypes calling libz on
//! `create_string_buffer`s. Each records exactly what it does natively
//! (stdout and exit status), with exact call counts and byte ranges.
//! Skipped (with a note) when no python3 with zlib, sqlite3 and ctypes runs.

mod common;
mod real_support;
mod record_support;

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use real_support::{call_bytes, named, one, rw, CallBytes};
use record_support::{native, record};

/// A real python3 binary (not a wrapper script such as a pyenv shim: a shell
/// that execs python is a different test) with zlib, sqlite3 and ctypes.
fn python() -> Option<PathBuf> {
    static P: OnceLock<Option<PathBuf>> = OnceLock::new();
    P.get_or_init(|| {
        let ok = |p: &str| real_support::have(p, &["-c", "import zlib, sqlite3, ctypes"]);
        if ok("/usr/bin/python3") {
            return Some(PathBuf::from("/usr/bin/python3"));
        }
        let exe = Command::new("python3").args(["-c", "import sys; print(sys.executable)"]).output().ok()?;
        let exe = String::from_utf8_lossy(&exe.stdout).trim().to_string();
        if !exe.is_empty() && ok(&exe) {
            return Some(PathBuf::from(exe));
        }
        eprintln!("note: no python3 with zlib, sqlite3 and ctypes; test skipped");
        None
    })
    .clone()
}

const NONE: Vec<(u64, u64)> = Vec::new();

const ZLIB_PY: &str = "import sys, zlib
d = bytes(range(256)) * 40
c = zlib.compress(d, 6)
print(len(c), zlib.crc32(d), zlib.decompress(c) == d)
sys.exit(3)
";

#[test]
fn real_python_zlib_module_output_and_calls() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", ZLIB_PY]);
    assert_eq!(nat.status.code(), Some(3));
    let r = record("real_python_zlib", &py, &["-c", ZLIB_PY], &["--lib", "libz.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "372 3150855069 True\n");
    let calls = call_bytes(&r.trace(), &r.events());
    for (name, count) in [
        ("deflateInit2_", 1),
        ("deflate", 1),
        ("deflateEnd", 1),
        ("crc32", 1),
        ("inflateInit2_", 1),
        ("inflate", 1),
        ("inflateEnd", 1),
    ] {
        assert_eq!(named(&calls, name).len(), count, "calls to {name}");
    }
    // crc32(0, d, 10240): exactly d's 10240 bytes, not its trailing NUL.
    let crc = one(&calls, "crc32");
    let (d, n) = (crc.args[1], crc.args[2]);
    assert_eq!(n, 10240);
    assert_eq!(crc.rax, 3_150_855_069);
    assert_eq!(rw(crc, d, n + 1), (vec![(0, n)], NONE), "crc32 on d");
    // deflate consumed the same bytes of d, once, and wrote none of them.
    assert_eq!(rw(one(&calls, "deflate"), d, n + 1), (vec![(0, n)], NONE), "deflate on d");
    for name in ["inflate", "deflateInit2_", "deflateEnd", "inflateInit2_", "inflateEnd"] {
        assert_eq!(rw(one(&calls, name), d, n + 1), (NONE, NONE), "{name} touched d");
    }
}

const SQLITE_PY: &str = "import sqlite3, zlib
db = sqlite3.connect(':memory:')
db.execute('create table t(a integer, b text, c blob)')
for i in range(5):
    db.execute('insert into t values (?, ?, ?)', (i, 'row-%d-' % i + 'xyz' * i, zlib.compress(b'x' * (i * 100 + 1))))
db.commit()
for a, b, c in db.execute('select a, b, c from t order by a'):
    print(a, b, len(c), len(zlib.decompress(c)))
print(zlib.crc32(b'hello'))
";

/// `import zlib, sqlite3` recorded once with libz foreign and once with
/// libsqlite3 foreign (loaded by `dlopen` when the `_sqlite3` extension is
/// imported): output as native, exact call counts, and with libsqlite3 the
/// bytes of each bound text/blob read exactly by the bind call (Python binds
/// with SQLITE_TRANSIENT, so sqlite copies them there).
#[test]
fn real_python_zlib_and_sqlite3_modules() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", SQLITE_PY]);
    assert!(nat.status.success(), "native run failed: {}", String::from_utf8_lossy(&nat.stderr));

    let r = record("real_python_sqlite_z", &py, &["-c", SQLITE_PY], &["--lib", "libz.so.1"]);
    real_support::assert_same_as_native(&nat, &r);
    let calls = call_bytes(&r.trace(), &r.events());
    for (name, count) in [("deflate", 5), ("inflate", 5), ("crc32", 1)] {
        assert_eq!(named(&calls, name).len(), count, "libz: calls to {name}");
    }
    assert!(calls.iter().all(|c| !c.name.starts_with("sqlite3_")), "libz run recorded sqlite calls");

    let r = record("real_python_sqlite_s", &py, &["-c", SQLITE_PY], &["--lib", "libsqlite3.so.0"]);
    real_support::assert_same_as_native(&nat, &r);
    let calls = call_bytes(&r.trace(), &r.events());
    for (name, count) in
        [("sqlite3_open_v2", 1), ("sqlite3_bind_text", 5), ("sqlite3_bind_blob", 5), ("sqlite3_close_v2", 1)]
    {
        assert_eq!(named(&calls, name).len(), count, "libsqlite3: calls to {name}");
    }
    assert!(
        calls.iter().all(|c| !c.name.starts_with("deflate") && !c.name.starts_with("inflate")),
        "libsqlite3 run recorded zlib calls"
    );
    // sqlite3_bind_text(stmt, i, ptr, len, SQLITE_TRANSIENT) and bind_blob:
    // exactly [0, len) of the argument is read (not the terminating NUL).
    // (Python frees the temporary objects, so later calls may see other
    // objects at the same addresses.)
    for name in ["sqlite3_bind_text", "sqlite3_bind_blob"] {
        for (i, b) in named(&calls, name).into_iter().enumerate() {
            let (ptr, len) = (b.args[2], b.args[3]);
            assert!(len > 0, "{name} #{i}: length {len}");
            assert_eq!(rw(b, ptr, len + 1), (vec![(0, len)], NONE), "{name} #{i} on its argument");
        }
    }
    let texts: Vec<u64> = named(&calls, "sqlite3_bind_text").iter().map(|c| c.args[3]).collect();
    assert_eq!(texts, vec![6, 9, 12, 15, 18], "text lengths ('row-i-' + 'xyz' * i)");
}

const CTYPES_PY: &str = "import ctypes, sys
z = ctypes.CDLL('libz.so.1')
n = 5000
src = ctypes.create_string_buffer(bytes((i * 7 + i // 300) & 0xff for i in range(n)), n)
cap = z.compressBound(ctypes.c_ulong(n))
dst = ctypes.create_string_buffer(cap)
back = ctypes.create_string_buffer(n)
dlen = ctypes.c_ulong(cap)
sys.stderr.write('src=%#x\\ndst=%#x\\nback=%#x\\ncap=%#x\\n' % (ctypes.addressof(src), ctypes.addressof(dst), ctypes.addressof(back), cap))
rc = z.compress2(dst, ctypes.byref(dlen), src, ctypes.c_ulong(n), 6)
sys.stderr.write('clen=%#x\\n' % dlen.value)
blen = ctypes.c_ulong(n)
rc2 = z.uncompress(back, ctypes.byref(blen), dst, dlen)
print(rc, dlen.value, rc2, blen.value, back.raw == src.raw)
";

/// ctypes (through libffi, host code here) calling libz's compress2 and
/// uncompress on `create_string_buffer` buffers: exact byte sets.
#[test]
fn real_python_ctypes_compress2_uncompress_exact_bytes() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", CTYPES_PY]);
    let r = record("real_python_ctypes", &py, &["-c", CTYPES_PY], &["--lib", "libz.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "0 382 0 5000 True\n");
    let (src, dst, back, cap, clen) = (r.addr("src"), r.addr("dst"), r.addr("back"), r.addr("cap"), r.addr("clen"));
    let n = 5000;
    let calls = call_bytes(&r.trace(), &r.events());
    let c = one(&calls, "compress2");
    assert_eq!(c.args[0], dst, "compress2's first argument is dst's buffer");
    assert_eq!(c.rax, 0);
    assert_eq!(rw(c, src, n), (vec![(0, n)], NONE), "compress2 on src");
    assert_eq!(rw(c, dst, cap), (NONE, vec![(0, clen)]), "compress2 on dst");
    assert_eq!(rw(c, back, n), (NONE, NONE), "compress2 on back");
    let u = one(&calls, "uncompress");
    assert_eq!(u.rax, 0);
    assert_eq!(rw(u, src, n), (NONE, NONE), "uncompress on src");
    assert_eq!(rw(u, dst, cap), (vec![(0, clen)], NONE), "uncompress on dst");
    // The output is written once and read back (window copies, adler32).
    assert_eq!(rw(u, back, n), (vec![(0, n)], vec![(0, n)]), "uncompress on back");
    assert_eq!(named(&calls, "compressBound").len(), 1);
}

const THREADS_PY: &str = "import threading, zlib
res = {}
def work(k):
    d = bytes((i * k + i // 77) & 0xff for i in range(1000))
    c = zlib.compress(d, 6)
    res[k] = (len(c), zlib.crc32(d), zlib.decompress(c) == d)
ts = [threading.Thread(target=work, args=(k,)) for k in range(1, 5)]
for t in ts: t.start()
for t in ts: t.join()
for k in sorted(res): print(k, *res[k])
";

/// Four Python threads compressing concurrently (the zlib module releases
/// the GIL around deflate/inflate): output as native, and each worker
/// thread's seven zlib calls recorded once each on its own thread; each
/// crc32 reads exactly its thread's 1000 bytes.
#[test]
fn real_python_threads_calling_zlib() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", THREADS_PY]);
    let r = record("real_python_threads", &py, &["-c", THREADS_PY], &["--lib", "libz.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    let calls = call_bytes(&r.trace(), &r.events());
    let names = ["deflateInit2_", "deflate", "deflateEnd", "crc32", "inflateInit2_", "inflate", "inflateEnd"];
    let events = r.events();
    let tid_of = real_support::call_tids(&events);
    let mut per_tid: std::collections::BTreeMap<u32, Vec<&str>> = std::collections::BTreeMap::new();
    for c in calls.iter().filter(|c| names.contains(&c.name.as_str())) {
        per_tid.entry(tid_of[&c.call]).or_default().push(c.name.as_str());
    }
    assert_eq!(per_tid.len(), 4, "worker threads that called zlib: {per_tid:?}");
    for (tid, mut v) in per_tid {
        v.sort_unstable();
        let mut want = names.to_vec();
        want.sort_unstable();
        assert_eq!(v, want, "thread {tid}'s calls");
    }
    for c in named(&calls, "crc32") {
        assert_eq!(c.args[2], 1000);
        assert_eq!(rw(c, c.args[1], 1001), (vec![(0, 1000)], NONE), "crc32 call {}", c.call);
    }
}

const CALLBACK_PY: &str = "import ctypes, sys
lib = ctypes.CDLL(sys.argv[1])
n = 8
v = (ctypes.c_int * n)(*range(3, 3 + n))
out = (ctypes.c_int * n)()
seen = []
def f(x):
    seen.append(x)
    return x * x + 1
cb = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_int)(f)
lib.fx_apply.restype = ctypes.c_long
sys.stderr.write('v=%#x\\nout=%#x\\n' % (ctypes.addressof(v), ctypes.addressof(out)))
print(lib.fx_apply(cb, v, n, out), list(out), seen)
";

/// ctypes calling a C library that calls back into Python (a libffi
/// closure) for each element: output as native, 8 Callback events returning
/// x*x+1, and the library's own accesses exactly v[0, 8) read, out[0, 8)
/// written and read back.
#[test]
fn real_python_ctypes_callback_into_python() {
    let Some(py) = python() else { return };
    let Some(lib) = real_support::build_lib("real_cb_target") else { return };
    let lib = lib.display().to_string();
    let nat = native(&py, &["-c", CALLBACK_PY, &lib]);
    let r = record("real_python_callback", &py, &["-c", CALLBACK_PY, &lib], &["--lib", "libreal_cb_target.so"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "388 [10, 17, 26, 37, 50, 65, 82, 101] [3, 4, 5, 6, 7, 8, 9, 10]\n");
    let events = r.events();
    let calls = call_bytes(&r.trace(), &events);
    let c = one(&calls, "fx_apply");
    assert_eq!(c.rax, 388);
    let rets: Vec<u64> = events
        .iter()
        .filter_map(|e| match e {
            ffirec_format::Event::CallbackReturn { call, rax, .. } if *call == c.call => Some(*rax & 0xffff_ffff),
            _ => None,
        })
        .collect();
    assert_eq!(rets, vec![10, 17, 26, 37, 50, 65, 82, 101], "callback results");
    let (v, out) = (r.addr("v"), r.addr("out"));
    assert_eq!(rw(c, v, 32), (vec![(0, 32)], NONE), "v");
    assert_eq!(rw(c, out, 32), (vec![(0, 32)], vec![(0, 32)]), "out");
}

const CRASH_PY: &str = "import ctypes
z = ctypes.CDLL('libz.so.1')
print('before', flush=True)
z.crc32(0, ctypes.c_void_p(16), 100)
print('after')
";

/// A genuine crash inside the real library (crc32 on address 16): python
/// dies of SIGSEGV as natively, ffirec exits 139, and the trace ends with the
/// fatal Signal event at the faulting load (0x10 + 0x20) inside the call.
#[test]
fn real_python_ctypes_crash_inside_libz() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", CRASH_PY]);
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(nat.status.signal(), Some(11), "native run should die of SIGSEGV");
    }
    let r = record("real_python_crash", &py, &["-c", CRASH_PY], &["--lib", "libz.so*"]);
    assert_eq!(r.code(), 139, "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.stdout, "before\n");
    let events = r.events();
    let calls = call_bytes(&r.trace(), &events);
    assert_eq!(calls.iter().map(|c| c.name.as_str()).collect::<Vec<_>>(), vec!["crc32"]);
    let sig: Vec<(i32, u64, bool)> = events
        .iter()
        .filter_map(|e| match e {
            ffirec_format::Event::Signal { signo, addr, fatal, .. } => Some((*signo, *addr, *fatal)),
            _ => None,
        })
        .collect();
    assert_eq!(sig, vec![(11, 0x30, true)]);
    assert!(
        matches!(events.last(), Some(ffirec_format::Event::Exit { status: ffirec_format::ExitStatus::Signal(11), .. })),
        "last event: {:?}",
        events.last()
    );
}

const SIGNAL_PY: &str = "import ctypes, signal, sys
z = ctypes.CDLL('libz.so.1')
z.crc32.restype = ctypes.c_ulong
hits = [0]
def h(s, f): hits[0] += 1
signal.signal(signal.SIGALRM, h)
n = 100000
buf = ctypes.create_string_buffer(bytes((i * 7) & 0xff for i in range(n)), n)
sys.stderr.write('buf=%#x\\nhandler_hits_are_timing=1\\n' % ctypes.addressof(buf))
signal.setitimer(signal.ITIMER_REAL, 0.001, 0.001)
c = z.crc32(0, buf, n)
signal.setitimer(signal.ITIMER_REAL, 0, 0)
print(c)
";

/// SIGALRM every 1 ms while libz's crc32 runs on a ctypes buffer: every
/// signal delivered inside the call runs Python's C-level handler as a
/// callback into host code (host mode), the call still reads exactly
/// [0, n) with one Access per 8-byte load (none lost or repeated), and the
/// result is the native one.
#[test]
fn real_python_sigalrm_during_libz_call() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", SIGNAL_PY]);
    let r = record("real_python_sigalrm", &py, &["-c", SIGNAL_PY], &["--lib", "libz.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "246350163\n");
    let events = r.events();
    let calls = call_bytes(&r.trace(), &events);
    let c = one(&calls, "crc32");
    let (buf, n) = (r.addr("buf"), 100_000);
    assert_eq!(rw(c, buf, n + 1), (vec![(0, n)], NONE));
    assert_eq!(c.accesses, n / 8, "one access per 8-byte load");
    // Signals while inside the call, and the callbacks they caused.
    let (mut inside, mut signals, mut callbacks) = (false, 0, 0);
    for e in &events {
        match e {
            ffirec_format::Event::Call { call, .. } if *call == c.call => inside = true,
            ffirec_format::Event::Return { call, .. } if *call == c.call => inside = false,
            ffirec_format::Event::Signal { signo: 14, .. } if inside => signals += 1,
            ffirec_format::Event::Callback { call, .. } if *call == c.call => callbacks += 1,
            _ => {}
        }
    }
    eprintln!("SIGALRMs inside crc32: {signals}");
    // 12 500 recorded faults take far longer than 1 ms, even at the ceiling.
    assert!(signals >= 1, "no SIGALRM arrived during the call");
    assert_eq!(callbacks, signals, "each SIGALRM inside the call runs the host's handler as a callback");
}

const HASH_XML_PY: &str = "import hashlib, xml.etree.ElementTree as ET
d = bytes(range(256)) * 100
print(hashlib.sha256(d).hexdigest(), hashlib.md5(d).hexdigest())
r = ET.fromstring('<a><b x=\"1\">hi</b><b x=\"2\">yo</b></a>')
print([(b.get('x'), b.text) for b in r])
";

/// hashlib (libcrypto) and ElementTree (libexpat) from Python, each recorded
/// with its library foreign: output as native; the two digests' updates read
/// exactly the 25 600 bytes of d; XML_Parse reads exactly the document.
#[test]
fn real_python_hashlib_and_expat() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", HASH_XML_PY]);
    assert_eq!(
        String::from_utf8_lossy(&nat.stdout),
        "22c27b021752596140145a93194d9cdf33b0b1b454f50fd1b430491eb3eb3cb9 c73a756d7c65cb6991030bff87439016\n[('1', 'hi'), ('2', 'yo')]\n"
    );
    let r = record("real_python_hashlib", &py, &["-c", HASH_XML_PY], &["--lib", "libcrypto.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    let calls = call_bytes(&r.trace(), &r.events());
    let updates: Vec<&CallBytes> =
        named(&calls, "EVP_DigestUpdate").into_iter().filter(|c| c.args[2] == 25600).collect();
    assert_eq!(updates.len(), 2, "sha256 and md5 updates of d");
    assert_eq!(updates[0].args[1], updates[1].args[1], "both hash the same buffer");
    for c in updates {
        assert_eq!(rw(c, c.args[1], 25601), (vec![(0, 25600)], NONE), "EVP_DigestUpdate call {}", c.call);
    }

    let r = record("real_python_expat", &py, &["-c", HASH_XML_PY], &["--lib", "libexpat.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    let calls = call_bytes(&r.trace(), &r.events());
    let parses: Vec<&CallBytes> = named(&calls, "XML_Parse").into_iter().filter(|c| c.args[2] > 0).collect();
    assert_eq!(parses.len(), 1, "one XML_Parse with data");
    let (s, len) = (parses[0].args[1], parses[0].args[2]);
    assert_eq!(len, 37);
    assert_eq!(rw(parses[0], s, len + 1), (vec![(0, len)], NONE), "XML_Parse on the document");
}

/// The same crash with Python's faulthandler on: the program's own SIGSEGV
/// handler (on its heap-allocated alternate stack) runs as a callback in
/// host mode, prints the Python traceback, and re-raises: exit 139 as
/// natively, the trace shows the non-fatal fault at 0x30, the handler's
/// callback, then the fatal re-raised SIGSEGV.
#[test]
fn real_python_faulthandler_handles_crash_inside_libz() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-X", "faulthandler", "-c", CRASH_PY]);
    {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(nat.status.signal(), Some(11), "native run should die of SIGSEGV");
    }
    let nat_err = String::from_utf8_lossy(&nat.stderr);
    assert!(nat_err.starts_with("Fatal Python error: Segmentation fault\n"), "{nat_err}");
    let r = record("real_python_faulthandler", &py, &["-X", "faulthandler", "-c", CRASH_PY], &["--lib", "libz.so*"]);
    assert_eq!(r.code(), 139, "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, "before\n");
    // The program's own stderr, without ffirec's lines and the thread address.
    let prog_err = |s: &str| -> Vec<String> {
        s.lines().filter(|l| !l.starts_with("ffirec:") && !l.starts_with("Current thread")).map(String::from).collect()
    };
    assert_eq!(prog_err(&r.stderr), prog_err(&nat_err), "faulthandler's report differs");
    let events = r.events();
    let kinds: Vec<String> = events
        .iter()
        .filter_map(|e| match e {
            ffirec_format::Event::Call { .. } => Some("call".to_string()),
            ffirec_format::Event::Signal { signo, addr, fatal, .. } => {
                Some(format!("signal {signo} {addr:#x} fatal={fatal}"))
            }
            ffirec_format::Event::Callback { args, .. } => Some(format!("callback({})", args[0])),
            ffirec_format::Event::Exit { status, .. } => Some(format!("exit {}", status.shell_code())),
            _ => None,
        })
        .collect();
    assert_eq!(kinds[0], "call");
    assert_eq!(kinds[1], "signal 11 0x30 fatal=false");
    assert_eq!(kinds[2], "callback(11)", "the handler runs as a callback: {kinds:?}");
    assert!(kinds[3].starts_with("signal 11 ") && kinds[3].ends_with("fatal=true"), "re-raised: {kinds:?}");
    assert_eq!(kinds[4..], ["exit 139".to_string()]);
}

/// The interpreter reached through exec: `sh -c 'exec env PY -c …'` (as a
/// pyenv shim or a `#!/usr/bin/env python3` script does). ffirec follows the
/// two execs in the same process, so the result is the same as recording
/// python directly: exit status 3, one call of each, crc32 reads exactly d.
#[test]
fn real_python_through_sh_and_env_execs() {
    let Some(py) = python() else { return };
    let py = py.display().to_string();
    let args = ["-c", "exec env \"$0\" -c \"$1\"", py.as_str(), ZLIB_PY];
    let nat = native(std::path::Path::new("/bin/sh"), &args);
    assert_eq!(nat.status.code(), Some(3));
    let r = record("real_python_execs", std::path::Path::new("/bin/sh"), &args, &["--lib", "libz.so*"]);
    real_support::assert_same_as_native(&nat, &r);
    assert_eq!(r.stdout, "372 3150855069 True\n");
    let events = r.events();
    let execs = events.iter().filter(|e| matches!(e, ffirec_format::Event::Exec { .. })).count();
    assert_eq!(execs, 2, "sh -> env -> python");
    let calls = call_bytes(&r.trace(), &events);
    for name in ["deflate", "crc32", "inflate"] {
        assert_eq!(named(&calls, name).len(), 1, "calls to {name}");
    }
    let crc = one(&calls, "crc32");
    assert_eq!(rw(crc, crc.args[1], crc.args[2] + 1), (vec![(0, 10240)], NONE));
}
