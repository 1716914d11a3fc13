//! Support for the recorder's integration tests: run a fixture under
//! `ffirec record`, read the trace back, and turn Access events into exact
//! byte sets relative to the buffers the fixture printed.
#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ffirec_format::{Event, Trace};

use crate::common;

pub struct Recorded {
    pub out: Output,
    pub trace: PathBuf,
    pub stdout: String,
    pub stderr: String,
    /// `name=0x...` lines the fixture printed to stderr.
    pub addrs: BTreeMap<String, u64>,
}

impl Recorded {
    pub fn addr(&self, name: &str) -> u64 {
        *self.addrs.get(name).unwrap_or_else(|| panic!("fixture did not print {name}=; stderr:\n{}", self.stderr))
    }
    pub fn code(&self) -> i32 {
        self.out.status.code().unwrap_or(-1)
    }
    pub fn trace(&self) -> Trace {
        Trace::open(&self.trace).unwrap_or_else(|e| panic!("open trace: {e}\nstderr:\n{}", self.stderr))
    }
    pub fn events(&self) -> Vec<Event> {
        self.trace().events().map(|r| r.expect("event").1).collect()
    }
}

pub fn parse_addrs(text: &str) -> BTreeMap<String, u64> {
    let mut m = BTreeMap::new();
    for line in text.lines() {
        if let Some((k, v)) = line.split_once("=0x") {
            if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                if let Ok(x) = u64::from_str_radix(v.trim(), 16) {
                    m.insert(k.to_string(), x);
                }
            }
        }
    }
    m
}

/// Runs `ffirec record [extra] -o SCRATCH/trace.ffr -- prog args`.
pub fn record(test: &str, prog: &Path, args: &[&str], extra: &[&str]) -> Recorded {
    let dir = common::scratch(test);
    let trace = dir.join("trace.ffr");
    let mut cmd = common::ffirec();
    cmd.arg("record").args(extra).arg("-o").arg(&trace).arg("--").arg(prog).args(args);
    let out = common::run(&mut cmd, common::TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let addrs = parse_addrs(&stderr);
    Recorded { out, trace, stdout, stderr, addrs }
}

/// Runs the program natively.
pub fn native(prog: &Path, args: &[&str]) -> Output {
    common::run(Command::new(prog).args(args), common::TIMEOUT)
}

/// Read and written absolute byte addresses of every recorded access.
#[derive(Debug, Default)]
pub struct Bytes {
    pub read: BTreeSet<u64>,
    pub written: BTreeSet<u64>,
}

pub fn bytes(events: &[Event]) -> Bytes {
    let mut b = Bytes::default();
    for e in events {
        if let Event::Access { code, regs, vregs, .. } = e {
            let d = ffirec_decode::Decoded::new(regs.rip, code).expect("decode recorded instruction");
            for a in d.accesses(regs, vregs).expect("accesses") {
                let set = match a.rw {
                    ffirec_decode::Rw::Read => &mut b.read,
                    ffirec_decode::Rw::Write => &mut b.written,
                    ffirec_decode::Rw::ReadWrite => {
                        b.read.extend(a.addr..a.addr + a.size);
                        &mut b.written
                    }
                };
                set.extend(a.addr..a.addr + a.size);
            }
        }
    }
    b
}

/// The bytes of `set` inside `[base, base+len)`, as offsets merged into ranges.
pub fn ranges_in(set: &BTreeSet<u64>, base: u64, len: u64) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for &a in set.range(base..base + len) {
        let off = a - base;
        match out.last_mut() {
            Some(last) if last.1 == off => last.1 = off + 1,
            _ => out.push((off, off + 1)),
        }
    }
    out
}

/// Names of the called symbols, in order.
pub fn call_names(trace: &Trace, events: &[Event]) -> Vec<String> {
    let modules = trace.modules();
    events
        .iter()
        .filter_map(|e| match e {
            Event::Call { module, symbol, .. } => {
                let m = modules.get(*module as usize)?;
                Some(
                    symbol
                        .and_then(|s| m.symbols.get(s as usize))
                        .map(|s| s.name.clone())
                        .unwrap_or_else(|| "?".into()),
                )
            }
            _ => None,
        })
        .collect()
}

pub fn counter(trace: &Trace, name: &str) -> u64 {
    trace.summary().and_then(|s| s.counter(name)).unwrap_or_else(|| panic!("no counter {name}"))
}

/// Names of the calls made from the main executable (not the loader's
/// constructor/destructor calls), in order.
pub fn host_calls(trace: &Trace, events: &[Event]) -> Vec<String> {
    let modules = trace.modules();
    let main = &modules[0];
    events
        .iter()
        .filter_map(|e| match e {
            Event::Call { module, symbol, return_addr, .. } if main.contains(*return_addr) => {
                let m = modules.get(*module as usize)?;
                Some(
                    symbol
                        .and_then(|s| m.symbols.get(s as usize))
                        .map(|s| s.name.clone())
                        .unwrap_or_else(|| "?".into()),
                )
            }
            _ => None,
        })
        .collect()
}

/// Whether the CPU advertises `flag` (e.g. `avx2`, `avx512f`) in /proc/cpuinfo;
/// tests of instruction-set fixtures skip with a note when it does not.
pub fn cpu_has(flag: &str) -> bool {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    cpuinfo.lines().filter(|l| l.starts_with("flags")).any(|l| l.split_whitespace().any(|w| w == flag))
}
