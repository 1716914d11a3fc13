//! Support for the "real programs" tests (`tests/real_*.rs`): host programs
//! that drive real system libraries (zlib, sqlite, libxml2, libcrypto, libffi)
//! and interpreters, recorded under `ffirec record`.
//!
//! Fixtures are `tests/fixtures/real_*.c`. Their first line may read
//! `// fixture: cflags=-I/usr/include/foo ldflags=-lfoo`: unlike
//! `common::program` (whose `cflags=` go before the source file, so `-lfoo`
//! there is dropped by `--as-needed` linkers), `ldflags=` go after it. A
//! fixture that does not build (library or header missing) makes the test
//! print a note and pass without checking anything: these libraries are not
//! the project's dependencies.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::Mutex;

use ffirec_format::{Event, Trace};

use crate::common;
use crate::record_support::Recorded;

fn spec_words(src: &Path, key: &str) -> Vec<String> {
    let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let Some(line) = text.lines().next().and_then(|l| l.strip_prefix("// fixture:")) else { return vec![] };
    line.split_whitespace()
        .filter_map(|w| w.strip_prefix(key))
        .flat_map(|v| v.split(',').filter(|s| !s.is_empty()).map(String::from).collect::<Vec<_>>())
        .collect()
}

/// Builds host program `tests/fixtures/NAME.c` (`cflags=` before the source,
/// `ldflags=` after it, plus `extra_ld`), or `None` with a printed note when
/// it does not build here.
pub fn build(name: &str, extra_ld: &[&str]) -> Option<PathBuf> {
    static LOCK: Mutex<()> = Mutex::new(());
    let _g = LOCK.lock().unwrap_or_else(|e| e.into_inner());
    let src = common::fixtures_src().join(format!("{name}.c"));
    let out = common::fixtures_out().join(name);
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let res = Command::new(&cc)
        .args(["-O0", "-g", "-Wall"])
        .args(spec_words(&src, "cflags="))
        .arg(&src)
        .args(spec_words(&src, "ldflags="))
        .args(extra_ld)
        .arg("-o")
        .arg(&tmp)
        .stdout(Stdio::null())
        .output();
    match res {
        Ok(o) if o.status.success() => {
            std::fs::rename(&tmp, &out).expect("install fixture");
            Some(out)
        }
        Ok(o) => {
            eprintln!(
                "note: {name}.c does not build here (library or headers missing?); test skipped\n{}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
        Err(e) => {
            eprintln!("note: cannot run `{cc}` ({e}); test skipped");
            None
        }
    }
}

/// Whether `prog --version` (or `prog -c pass` for python) runs here.
pub fn have(prog: &str, args: &[&str]) -> bool {
    Command::new(prog)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The recorded run's stdout and exit status equal the native run's.
pub fn assert_same_as_native(native: &Output, rec: &Recorded) {
    assert_eq!(
        rec.out.status.code(),
        native.status.code(),
        "exit status differs: native {:?}, recorded {:?}\nffirec stderr:\n{}",
        native.status,
        rec.out.status,
        rec.stderr
    );
    assert_eq!(
        rec.stdout,
        String::from_utf8_lossy(&native.stdout),
        "stdout differs under ffirec\nffirec stderr:\n{}",
        rec.stderr
    );
}

/// What one foreign call (and the calls nested in it) did to host memory.
#[derive(Debug, Default, Clone)]
pub struct CallBytes {
    pub call: u64,
    pub name: String,
    pub args: [u64; 6],
    pub rax: u64,
    /// Return address of the call (in the calling host code).
    pub return_addr: u64,
    pub read: BTreeSet<u64>,
    pub written: BTreeSet<u64>,
    /// Recorded Access events attributed to this call.
    pub accesses: u64,
}

fn add(set: &mut BTreeSet<u64>, addr: u64, size: u64) {
    set.extend(addr..addr.saturating_add(size));
}

/// One entry per Call event, in call order, with the bytes its accesses (and
/// its foreign-mode syscalls) read and wrote. An access belongs to the
/// innermost call active on its thread.
pub fn call_bytes(trace: &Trace, events: &[Event]) -> Vec<CallBytes> {
    let modules = trace.modules();
    let mut calls: Vec<CallBytes> = Vec::new();
    let mut index: BTreeMap<u64, usize> = BTreeMap::new();
    let mut stacks: BTreeMap<u32, Vec<usize>> = BTreeMap::new();
    for e in events {
        match e {
            Event::Call { tid, call, module, symbol, args, return_addr, .. } => {
                let name = modules
                    .get(*module as usize)
                    .and_then(|m| symbol.and_then(|s| m.symbols.get(s as usize)))
                    .map(|s| s.name.clone())
                    .unwrap_or_else(|| "?".into());
                index.insert(*call, calls.len());
                stacks.entry(tid_key(tid)).or_default().push(calls.len());
                calls.push(CallBytes {
                    call: *call,
                    name,
                    args: *args,
                    return_addr: *return_addr,
                    ..Default::default()
                });
            }
            Event::Return { tid, call, rax, .. } => {
                if let Some(&i) = index.get(call) {
                    calls[i].rax = *rax;
                    let st = stacks.entry(tid_key(tid)).or_default();
                    if let Some(pos) = st.iter().rposition(|&j| j == i) {
                        st.truncate(pos);
                    }
                }
            }
            Event::Access { tid, code, regs, vregs, .. } => {
                let Some(&i) = stacks.get(&tid_key(tid)).and_then(|s| s.last()) else { continue };
                let c = &mut calls[i];
                c.accesses += 1;
                let d = ffirec_decode::Decoded::new(regs.rip, code).expect("decode recorded instruction");
                for a in d.accesses(regs, vregs).expect("accesses") {
                    match a.rw {
                        ffirec_decode::Rw::Read => add(&mut c.read, a.addr, a.size),
                        ffirec_decode::Rw::Write => add(&mut c.written, a.addr, a.size),
                        ffirec_decode::Rw::ReadWrite => {
                            add(&mut c.read, a.addr, a.size);
                            add(&mut c.written, a.addr, a.size);
                        }
                    }
                }
            }
            Event::SyscallAccess { tid, ranges, .. } => {
                let Some(&i) = stacks.get(&tid_key(tid)).and_then(|s| s.last()) else { continue };
                for r in ranges {
                    add(if r.write { &mut calls[i].written } else { &mut calls[i].read }, r.addr, r.len);
                }
            }
            _ => {}
        }
    }
    calls
}

fn tid_key(tid: &ffirec_format::Tid) -> u32 {
    *tid
}

/// Offsets into a buffer, merged into `[start, end)` ranges.
pub type Ranges = Vec<(u64, u64)>;

/// The thread of every foreign call, by call number (from the `Call` events).
pub fn call_tids(events: &[Event]) -> BTreeMap<u64, u32> {
    events
        .iter()
        .filter_map(|e| match e {
            Event::Call { tid, call, .. } => Some((*call, *tid)),
            _ => None,
        })
        .collect()
}

/// (read, written) offsets of `c` into `[base, base+len)`.
pub fn rw(c: &CallBytes, base: u64, len: u64) -> (Ranges, Ranges) {
    (crate::record_support::ranges_in(&c.read, base, len), crate::record_support::ranges_in(&c.written, base, len))
}

/// Calls named `name`, in order.
pub fn named<'a>(calls: &'a [CallBytes], name: &str) -> Vec<&'a CallBytes> {
    calls.iter().filter(|c| c.name == name).collect()
}

/// The single call named `name` (panics unless there is exactly one).
pub fn one<'a>(calls: &'a [CallBytes], name: &str) -> &'a CallBytes {
    let v = named(calls, name);
    assert_eq!(
        v.len(),
        1,
        "expected exactly one call to {name}, got {}: {:?}",
        v.len(),
        calls.iter().map(|c| &c.name).collect::<Vec<_>>()
    );
    v[0]
}

/// Union of the bytes of several calls.
pub fn union<'a>(calls: impl IntoIterator<Item = &'a CallBytes>) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let (mut r, mut w) = (BTreeSet::new(), BTreeSet::new());
    for c in calls {
        r.extend(&c.read);
        w.extend(&c.written);
    }
    (r, w)
}

/// Byte sets from a `valgrind --tool=lackey --trace-mem=yes` log, one pair
/// (read, written) per window between consecutive executions of the
/// instruction at `mark` (window k lies between the (2k+1)-th and the
/// (2k+2)-th execution).
pub fn lackey_windows(log: &str, mark: u64) -> Vec<(BTreeSet<u64>, BTreeSet<u64>)> {
    let mut out: Vec<(BTreeSet<u64>, BTreeSet<u64>)> = Vec::new();
    let mut marks = 0usize;
    for line in log.lines() {
        let kind = line.get(..2).unwrap_or("");
        let Some((a, n)) = line.get(2..).and_then(|r| r.trim().split_once(',')) else { continue };
        let (Ok(addr), Ok(size)) = (u64::from_str_radix(a.trim(), 16), n.trim().parse::<u64>()) else { continue };
        if kind == "I " && addr == mark {
            marks += 1;
            if marks % 2 == 1 {
                out.push(Default::default());
            }
            continue;
        }
        if marks % 2 == 0 {
            continue;
        }
        let Some((read, written)) = out.last_mut() else { continue };
        match kind {
            " L" => add(read, addr, size),
            " S" => add(written, addr, size),
            " M" => {
                add(read, addr, size);
                add(written, addr, size);
            }
            _ => {}
        }
    }
    assert_eq!(marks % 2, 0, "lackey log has an unclosed mark window");
    out
}

/// Runs `valgrind --tool=lackey --trace-mem=yes PROG ARGS`; returns the
/// program's output and the log text.
pub fn lackey(test: &str, prog: &Path, args: &[&str]) -> (Output, String) {
    let dir = common::scratch(test);
    let log = dir.join("lackey.log");
    let out = common::run(
        Command::new("valgrind")
            .arg("--tool=lackey")
            .arg("--trace-mem=yes")
            .arg(format!("--log-file={}", log.display()))
            .arg(prog)
            .args(args),
        std::time::Duration::from_secs(600),
    );
    let text = std::fs::read_to_string(&log).expect("lackey log");
    (out, text)
}

/// Merged `[start, end)` ranges of the host's own memory that a library has
/// no business touching unless handed it: every allocation made in host mode
/// (freed or not) and the writable segments of the main executable. Stacks
/// are not included (`call [m]` through guarded memory pushes a return
/// address), nor the library's own allocations and allocator internals.
pub fn host_memory(trace: &Trace, events: &[Event]) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = events
        .iter()
        .filter_map(|e| match e {
            Event::Alloc { ptr, size, domain: ffirec_format::Domain::Host, .. } if *size > 0 => {
                Some((*ptr, ptr.saturating_add(*size)))
            }
            _ => None,
        })
        .collect();
    if let Some(main) = trace.modules().first() {
        v.extend(main.segments.iter().filter(|s| s.prot & 2 != 0).map(|s| (s.start, s.start + s.len)));
    }
    v.sort_unstable();
    let mut merged: Vec<(u64, u64)> = Vec::new();
    for (s, e) in v {
        match merged.last_mut() {
            Some(last) if s <= last.1 => last.1 = last.1.max(e),
            _ => merged.push((s, e)),
        }
    }
    merged
}

/// The bytes of `set` inside `host` (merged, sorted ranges from
/// [`host_memory`]) but in none of `buffers` (`(base, len)`), merged into
/// absolute ranges: what the library touched of the host's that it was not
/// handed.
pub fn stray(set: &BTreeSet<u64>, buffers: &[(u64, u64)], host: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &a in set {
        let i = host.partition_point(|&(s, _)| s <= a);
        let in_host = i > 0 && a < host[i - 1].1;
        if !in_host || buffers.iter().any(|&(b, n)| a >= b && a < b + n) {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.1 == a => last.1 = a + 1,
            _ => out.push((a, a + 1)),
        }
    }
    out
}

/// Builds `tests/fixtures/NAME.c` as the shared library `libNAME.so` (soname
/// `libNAME.so`, `cflags=`/`ldflags=` as for programs) in the fixture output
/// directory, or `None` with a note.
pub fn build_lib(name: &str) -> Option<PathBuf> {
    let src = common::fixtures_src().join(format!("{name}.c"));
    let out = common::fixtures_out().join(format!("lib{name}.so"));
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let ok = Command::new(&cc)
        .args(["-O0", "-g", "-Wall", "-fPIC", "-shared"])
        .args(spec_words(&src, "cflags="))
        .arg(format!("-Wl,-soname,lib{name}.so"))
        .arg(&src)
        .args(spec_words(&src, "ldflags="))
        .arg("-o")
        .arg(&tmp)
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    if !ok {
        eprintln!("note: cannot build lib{name}.so; test skipped");
        return None;
    }
    std::fs::rename(&tmp, &out).expect("install fixture library");
    Some(out)
}

/// Index of the module whose file name starts with `prefix`.
pub fn module_named(trace: &Trace, prefix: &str) -> usize {
    trace
        .modules()
        .iter()
        .position(|m| Path::new(&m.path).file_name().is_some_and(|f| f.to_string_lossy().starts_with(prefix)))
        .unwrap_or_else(|| {
            panic!("no module {prefix}*: {:?}", trace.modules().iter().map(|m| &m.path).collect::<Vec<_>>())
        })
}
