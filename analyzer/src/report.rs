//! The report: what `analyze` returns, rendered as Valgrind-shaped text or
//! as JSON (`ffirec.report/1`, documented in `analyzer/REPORT_SCHEMA.md`).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use ffirec_format::{AllocFn, Domain};
use serde::Serialize;

use crate::findings::{AllocRef, CallRef, Finding, Kind, Merged, Relation, Verdict};
use crate::state::{AllocInfo, RangeSet, Target, Timeline, NO_ALLOC, NO_CALL};
use crate::symbols::{hex, Location, Symbolizer};
use crate::{decode, state};

/// `schema` value of the JSON report.
pub const SCHEMA: &str = "ffirec.report/1";

/// Everything `ffirec analyze` says about a trace.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub schema: String,
    pub trace: TraceInfo,
    /// Every foreign call, in call order, with its footprint.
    pub calls: Vec<CallFootprint>,
    /// Allocations referred to by `calls` or `findings`, by id.
    pub allocations: Vec<Allocation>,
    pub findings: Vec<Finding>,
    pub summary: Summary,
    /// Every allocation of the trace, by id (not serialised): `diff` numbers
    /// allocations per site and resolves pointer return values with it.
    #[serde(skip)]
    pub(crate) all_allocations: Vec<AllocInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct TraceInfo {
    pub path: String,
    pub uuid: String,
    pub command: Vec<String>,
    pub recorder_version: String,
    /// Events in the readable part of the trace.
    pub events: u64,
    pub chunks: usize,
    /// False when the trace had no valid footer and was recovered by scanning.
    pub complete: bool,
    /// `code N` or `signal N`, when the program's exit was recorded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exit: Option<String>,
    pub track_host_init: bool,
    pub foreign_patterns: Vec<String>,
    pub modules: Vec<ModuleInfo>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ModuleInfo {
    pub name: String,
    pub path: String,
    pub domain: Domain,
    pub base: String,
}

/// One foreign call and what it touched: the normalised footprint `diff` compares.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallFootprint {
    /// The recorder's call number (order of entry).
    pub call: u64,
    pub tid: u32,
    /// Called function (`symbol` or the target address).
    pub symbol: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    pub target: String,
    /// The six integer argument registers.
    pub args: Vec<String>,
    /// `rax` at return; absent when the call never returned in the trace.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<String>,
    /// Where the host called from (the return address).
    pub call_site: Location,
    /// Number of the foreign call this one is nested in (via a callback).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub parent: Option<u64>,
    pub first_event: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_event: Option<u64>,
    /// What the call read and wrote, per allocation / module / other memory.
    pub touched: Vec<Touched>,
    /// Host allocations the call could reach: through its arguments or
    /// through pointers it loaded.
    pub exposed: Vec<Exposure>,
    /// Findings (after suppression) that happened in this call.
    pub findings: usize,
    /// The process that made the call; only when the trace has more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Byte ranges one call read and wrote of one target, merged, as half-open
/// `[start, end)` offsets relative to the target.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Touched {
    /// `alloc` (offsets from the allocation's base), `module` (offsets from
    /// the module's load bias) or `other` (absolute addresses).
    pub target: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alloc: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Which arguments (0-based) pointed into this allocation at entry.
    pub args: Vec<u8>,
    /// Human label of the target.
    pub label: String,
    pub read: Vec<[u64; 2]>,
    pub written: Vec<[u64; 2]>,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Exposure {
    pub alloc: u32,
    /// Offset into the allocation the pointer pointed at.
    pub offset: u64,
    /// `argument` or `load`.
    pub via: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub arg: Option<u8>,
    /// For loads: the instruction.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub at: Option<Location>,
    /// For loads: where the pointer was stored.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub from_alloc: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Allocation {
    pub id: u32,
    pub base: String,
    pub size: u64,
    pub func: AllocFn,
    pub domain: Domain,
    /// The allocation call's return address, symbolised.
    pub site: Location,
    /// Foreign call open when it was allocated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<u64>,
    pub born_event: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub freed_event: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub free_site: Option<Location>,
    /// `alloc#3 (malloc 64 at main+0x2a)`.
    pub label: String,
    /// The process it belongs to; only when the trace has more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Summary {
    pub events: u64,
    pub access_events: u64,
    /// Memory accesses decoded from them (one instruction may make several).
    pub accesses: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub calls: usize,
    pub allocations: u64,
    /// Reported findings (after suppression).
    pub findings: usize,
    /// Reported findings per kind name (every kind present, zeros included).
    pub by_kind: BTreeMap<String, usize>,
    pub suppressed: usize,
    /// Vector loads of C-runtime string routines that read past an
    /// allocation or a terminator within an aligned block: not findings.
    pub overreads: u64,
    /// Bytes read whose initialisation state was unknown (never reported).
    pub unknown_bytes: u64,
    /// Accesses to memory the trace cannot classify.
    pub unclassified_accesses: u64,
    pub decode_errors: u64,
    pub gaps: usize,
    pub callbacks: u64,
    pub truncated: bool,
}

impl Report {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// Valgrind-shaped text: one block per finding, the per-call table, totals.
    pub fn to_text<'a>(&'a self) -> String {
        const P: &str = "==ffirec==";
        let mut o = String::new();
        let s = &self.summary;
        let _ = writeln!(o, "{P} ffirec analyze {}: {} events, {} foreign calls", self.trace.path, s.events, s.calls);
        if !self.trace.complete {
            let _ = writeln!(
                o,
                "{P} WARNING: trace truncated (no footer); analysed the {} events of {} complete chunks recovered",
                self.trace.events, self.trace.chunks
            );
        }
        if !self.trace.track_host_init {
            let _ = writeln!(
                o,
                "{P} note: host writes were not tracked: host memory written before a call has unknown state (never reported)"
            );
        }
        // As Valgrind does, a context (kind, instruction, allocation site)
        // seen in several calls is printed once, with the other calls listed.
        type Ctx<'a> = (Kind, &'a str, Option<&'a str>, Option<u64>, Option<u32>);
        let ctx = |f: &'a Finding| -> Ctx<'a> {
            (f.kind, f.at.addr.as_str(), f.allocation.as_ref().map(|a| a.site.addr.as_str()), f.syscall, f.pid)
        };
        let mut groups: BTreeMap<Ctx, Vec<&Finding>> = BTreeMap::new();
        for f in &self.findings {
            groups.entry(ctx(f)).or_default().push(f);
        }
        for f in &self.findings {
            let group = groups.get(&ctx(f)).map_or(&[][..], |g| g.as_slice());
            if group.first().is_some_and(|first| !std::ptr::eq(*first, f)) {
                continue;
            }
            let others = &group[group.len().min(1)..];
            let _ = writeln!(o, "{P}");
            let rw = match (f.read, f.write) {
                (true, true) => "read-write",
                (true, false) => "read",
                (false, true) => "write",
                _ => "",
            };
            match f.kind {
                Kind::Crash | Kind::ForeignLeak | Kind::ExposedPointer => {
                    let _ = writeln!(o, "{P} {}: {}", f.kind.title(), f.detail);
                }
                _ => {
                    let _ = writeln!(o, "{P} {} ({rw} of size {} at {})", f.kind.title(), f.size, f.addr);
                }
            }
            let _ = writeln!(o, "{P}    at {}: {}", f.at.addr, f.at.describe());
            if let Some(nr) = f.syscall {
                let _ = writeln!(o, "{P}    by the kernel in syscall {nr}");
            }
            if let Some(pid) = f.pid {
                let _ = writeln!(o, "{P}    in process {pid}");
            }
            if let Some(c) = &f.call {
                let _ = writeln!(
                    o,
                    "{P}    in foreign call #{} {}, called from {}",
                    c.call,
                    c.symbol,
                    c.call_site.describe()
                );
            }
            if let Some(a) = &f.allocation {
                let rel = match a.relation {
                    Relation::Inside => format!("{} bytes inside", a.distance),
                    Relation::After => format!("{} bytes after the end of", a.distance),
                    Relation::Before => format!("{} bytes before", a.distance),
                    Relation::Freed => format!("{} bytes inside freed", a.distance),
                };
                if !matches!(f.kind, Kind::ExposedPointer | Kind::ForeignLeak) {
                    let _ = writeln!(o, "{P}  Address {} is {rel} {}", f.addr, a.label);
                } else {
                    let _ = writeln!(o, "{P}  Block: {}", a.label);
                }
            }
            // Out-of-bounds detail repeats the Address line; the others add to it.
            if !matches!(f.kind, Kind::Crash | Kind::ForeignLeak | Kind::ExposedPointer | Kind::OutOfBounds)
                || f.allocation.is_none()
            {
                let _ = writeln!(o, "{P}  {}", f.detail);
            }
            let _ = writeln!(
                o,
                "{P}  (seen {} time{}, first at event {})",
                f.count,
                if f.count == 1 { "" } else { "s" },
                f.first_event
            );
            if !others.is_empty() {
                let mut calls: Vec<String> = others
                    .iter()
                    .take(8)
                    .map(|x| x.call.as_ref().map_or("-".into(), |c| format!("#{}", c.call)))
                    .collect();
                if others.len() > 8 {
                    calls.push("…".into());
                }
                let _ = writeln!(
                    o,
                    "{P}  (and {} more like it, in call{} {})",
                    others.len(),
                    if others.len() == 1 { "" } else { "s" },
                    calls.join(", ")
                );
            }
        }
        let _ = writeln!(o, "{P}");
        let _ = writeln!(o, "{P} Foreign calls:");
        let _ = writeln!(o, "{P}   {:>6}  {:<24} {:<18} footprint", "call", "symbol", "returned");
        for c in &self.calls {
            let ret = c.ret.clone().unwrap_or_else(|| "-".into());
            let pid_symbol = c.pid.map(|p| format!("{} [pid {p}]", c.symbol));
            let symbol = pid_symbol.as_deref().unwrap_or(&c.symbol);
            let mut first = true;
            if c.touched.is_empty() {
                let _ =
                    writeln!(o, "{P}   {:>6}  {:<24} {:<18} (no traced accesses)", format!("#{}", c.call), symbol, ret);
            }
            for t in &c.touched {
                let mut parts = Vec::new();
                let abs = t.target != "alloc";
                if !t.read.is_empty() {
                    parts.push(format!("read {}", ranges(&t.read, abs)));
                }
                if !t.written.is_empty() {
                    parts.push(format!("wrote {}", ranges(&t.written, abs)));
                }
                let args = if t.args.is_empty() {
                    String::new()
                } else {
                    format!(" [arg {}]", t.args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","))
                };
                let line = format!("{} of {}{args}", parts.join(", "), t.label);
                if first {
                    let _ = writeln!(o, "{P}   {:>6}  {:<24} {:<18} {line}", format!("#{}", c.call), symbol, ret);
                    first = false;
                } else {
                    let _ = writeln!(o, "{P}   {:>6}  {:<24} {:<18} {line}", "", "", "");
                }
            }
        }
        let _ = writeln!(o, "{P}");
        let kinds: Vec<String> = s.by_kind.iter().filter(|(_, &n)| n > 0).map(|(k, n)| format!("{n} {k}")).collect();
        let _ = writeln!(o, "{P} ERROR SUMMARY: {} findings from {} contexts", s.findings, groups.len());
        let _ = writeln!(
            o,
            "{P} TOTALS: {} accesses ({} bytes read, {} written) in {} calls; {} finding{}{}",
            s.accesses,
            s.bytes_read,
            s.bytes_written,
            s.calls,
            s.findings,
            if s.findings == 1 { "" } else { "s" },
            if kinds.is_empty() { String::new() } else { format!(" ({})", kinds.join(", ")) }
        );
        let _ = writeln!(
            o,
            "{P}   suppressed: {}, vector over-reads ignored: {}, bytes of unknown state read: {}, unclassified accesses: {}, undecodable: {}, gaps: {}",
            s.suppressed, s.overreads, s.unknown_bytes, s.unclassified_accesses, s.decode_errors, s.gaps
        );
        o
    }
}

/// `[0,16) [32,40)`; absolute addresses in hex.
fn ranges(r: &[[u64; 2]], hex: bool) -> String {
    r.iter()
        .map(|[s, e]| if hex { format!("[{s:#x},{e:#x})") } else { format!("[{s},{e})") })
        .collect::<Vec<_>>()
        .join(" ")
}

pub(crate) fn func_name(f: AllocFn) -> &'static str {
    match f {
        AllocFn::Malloc => "malloc",
        AllocFn::Calloc => "calloc",
        AllocFn::Realloc => "realloc",
        AllocFn::Reallocarray => "reallocarray",
        AllocFn::PosixMemalign => "posix_memalign",
        AllocFn::AlignedAlloc => "aligned_alloc",
        AllocFn::Memalign => "memalign",
        AllocFn::Valloc => "valloc",
        AllocFn::Pvalloc => "pvalloc",
        AllocFn::Mmap => "mmap",
        AllocFn::Mremap => "mremap",
    }
}

/// Inputs gathered by the pipeline.
pub(crate) struct Gathered {
    pub trace: TraceInfo,
    pub timeline: Timeline,
    pub merged: Vec<Merged>,
    pub exposures: Vec<state::LoadExposure>,
    pub footprint: BTreeMap<(u32, Target), (RangeSet, RangeSet)>,
    pub stats: state::Stats,
    pub access_events: u64,
    pub decode_errors: u64,
}

struct Builder<'a> {
    syms: &'a Symbolizer<'a>,
    tl: &'a Timeline,
    used: BTreeSet<u32>,
}

impl Builder<'_> {
    fn alloc(&self, id: u32) -> Option<&AllocInfo> {
        self.tl.allocs.get(id as usize)
    }

    fn label(&self, id: u32) -> String {
        match self.alloc(id) {
            Some(a) => {
                format!("alloc#{id} ({} {} at {})", func_name(a.func), a.size, self.syms.locate(a.caller).short())
            }
            None => format!("alloc#{id}"),
        }
    }

    /// The pid of the process a (space-tagged) address belongs to, when the
    /// trace has more than one process.
    fn pid_of(&self, addr: u64) -> Option<u32> {
        let s = &self.tl.spaces;
        s.multi().then(|| s.pid(crate::state::space::space_of(addr))).flatten()
    }

    /// The pid of thread `tid`'s process at event `seq` (multi-process traces only).
    fn pid_of_thread(&self, tid: u32, seq: u64) -> Option<u32> {
        let s = &self.tl.spaces;
        s.multi().then(|| s.pid(s.at(tid, seq))).flatten()
    }

    fn call_symbol(&self, call: u32) -> String {
        let Some(c) = self.tl.calls.get(call as usize) else { return "?".into() };
        self.syms.symbol_name(c.module, c.symbol).unwrap_or_else(|| self.syms.locate(c.target).short())
    }

    fn call_ref(&self, call: u32) -> Option<CallRef> {
        let c = self.tl.calls.get(call as usize)?;
        Some(CallRef { call: c.call, symbol: self.call_symbol(call), call_site: self.syms.locate(c.return_addr) })
    }

    fn alloc_ref(&mut self, id: u32, addr: u64, end: u64, relation: Option<Relation>) -> Option<AllocRef> {
        let a = self.alloc(id)?.clone();
        self.used.insert(id);
        let (relation, distance) = match relation {
            Some(r) => (r, addr.saturating_sub(a.base)),
            None if addr >= a.end() => (Relation::After, addr - a.end()),
            None if end <= a.base => (Relation::Before, a.base - end),
            None => (Relation::Inside, addr.saturating_sub(a.base)),
        };
        Some(AllocRef {
            id,
            base: hex(a.base),
            size: a.size,
            relation,
            distance,
            label: self.label(id),
            site: self.syms.locate(a.caller),
        })
    }
}

/// Turns the pipeline's results into the report (symbolises, suppresses, sorts).
pub(crate) fn build(g: Gathered, syms: &Symbolizer, suppress: &crate::Suppressions) -> Report {
    let tl = &g.timeline;
    let mut b = Builder { syms, tl, used: BTreeSet::new() };
    let mut findings: Vec<Finding> = Vec::new();

    for m in &g.merged {
        let syscall = (m.flags & decode::SYSCALL != 0).then_some(m.ip);
        let at = if syscall.is_some() { Location { addr: hex(0), ..Location::default() } } else { syms.locate(m.ip) };
        let size = m.end - m.addr;
        let relation = match m.kind {
            Kind::Uninit => Some(Relation::Inside),
            Kind::UseAfterFree => Some(Relation::Freed),
            _ => None,
        };
        let allocation = if m.alloc == NO_ALLOC { None } else { b.alloc_ref(m.alloc, m.addr, m.end, relation) };
        let detail = match (m.kind, &allocation) {
            (Kind::Uninit, Some(a)) => {
                format!("bytes [{},{}) of {} were never written", a.distance, a.distance + size, a.label)
            }
            (Kind::OutOfBounds, Some(a)) => format!(
                "outside every live allocation; nearest is {}, {} bytes {}",
                a.label,
                a.distance,
                if a.relation == Relation::After { "past its end" } else { "before its start" }
            ),
            (Kind::OutOfBounds, None) => "outside every live allocation".into(),
            (Kind::UseAfterFree, Some(a)) => {
                let freed = b.alloc(a.id).and_then(|x| x.freed.map(|e| (e, x.free_caller)));
                match freed {
                    Some((e, caller)) if caller != 0 => {
                        format!("{} was freed at event {e} by {}", a.label, syms.locate(caller).short())
                    }
                    Some((e, _)) => format!("{} was freed at event {e}", a.label),
                    None => format!("{} was freed", a.label),
                }
            }
            (Kind::ReadOnlyWrite, _) => "the host mapped this memory without write permission".into(),
            _ => String::new(),
        };
        findings.push(Finding {
            kind: m.kind,
            verdict: Verdict::Exact,
            addr: hex(m.addr),
            size,
            read: m.flags & decode::READ != 0,
            write: m.flags & decode::WRITE != 0,
            at,
            syscall,
            call: if m.call == NO_CALL { None } else { b.call_ref(m.call) },
            allocation,
            count: m.count,
            first_event: m.first_seq,
            detail,
            pid: b.pid_of(m.addr),
        });
    }

    // Exposures: the first load per (call, allocation), unless the call was
    // handed that allocation or loaded the pointer from inside it.
    let mut loads = g.exposures.clone();
    loads.sort_by_key(|e| (e.call, e.alloc, e.seq));
    loads.dedup_by_key(|e| (e.call, e.alloc));
    let args: BTreeSet<(u32, u32)> = tl.arg_exposures.iter().map(|e| (e.call, e.alloc)).collect();
    for e in &loads {
        if args.contains(&(e.call, e.alloc)) || e.from_alloc == e.alloc {
            continue;
        }
        let Some(al) = tl.allocs.get(e.alloc as usize) else { continue };
        let value = al.base + e.offset;
        let allocation = b.alloc_ref(e.alloc, value, value + 1, Some(Relation::Inside));
        let from = if e.from_alloc == NO_ALLOC {
            hex(e.from)
        } else {
            b.used.insert(e.from_alloc);
            let fa = tl.allocs.get(e.from_alloc as usize).map_or(0, |f| f.base);
            format!("{} (offset {} of {})", hex(e.from), e.from - fa, b.label(e.from_alloc))
        };
        findings.push(Finding {
            kind: Kind::ExposedPointer,
            verdict: Verdict::Exact,
            addr: hex(e.from),
            size: 8,
            read: true,
            write: false,
            at: syms.locate(e.ip),
            syscall: None,
            call: b.call_ref(e.call),
            detail: format!(
                "loaded pointer {} into {} (offset {}) from {from}",
                hex(value),
                b.label(e.alloc),
                e.offset
            ),
            allocation,
            count: 1,
            first_event: e.seq,
            pid: b.pid_of(e.from),
        });
    }

    if g.trace.complete {
        for id in tl.live() {
            let Some(a) = tl.allocs.get(id as usize) else { continue };
            // Only blocks the library itself allocated: buffers the C runtime
            // keeps for itself (stdio, locale) are not the library's leaks.
            if a.domain != Domain::Foreign || syms.domain_of(a.caller).is_some_and(|d| d != Domain::Foreign) {
                continue;
            }
            let allocation = b.alloc_ref(id, a.base, a.end(), Some(Relation::Inside));
            findings.push(Finding {
                kind: Kind::ForeignLeak,
                verdict: Verdict::Exact,
                addr: hex(a.base),
                size: a.size,
                read: false,
                write: false,
                at: syms.locate(a.caller),
                syscall: None,
                call: if a.call == NO_CALL { None } else { b.call_ref(a.call) },
                detail: format!("{} bytes allocated by the library were never freed: {}", a.size, b.label(id)),
                allocation,
                count: 1,
                first_event: a.born,
                pid: b.pid_of(a.base),
            });
        }
    }

    for c in &tl.crashes {
        let at = syms.locate(c.rip);
        findings.push(Finding {
            kind: Kind::Crash,
            verdict: Verdict::Exact,
            addr: hex(c.addr),
            size: c.access.map_or(0, |a| a.size),
            read: c.access.is_some_and(|a| a.read),
            write: c.access.is_some_and(|a| a.write),
            detail: format!(
                "signal {} ({}, code {}) at {}{}, fault address {}{}",
                c.signo,
                signal_name(c.signo),
                c.code,
                at.short(),
                if c.fatal { ", fatal" } else { "" },
                hex(c.addr),
                c.access.map_or_else(String::new, |a| format!(
                    " ({} of {} bytes at {:#x})",
                    match (a.read, a.write) {
                        (true, true) => "read-modify-write",
                        (false, true) => "write",
                        _ => "read",
                    },
                    a.size,
                    a.addr
                ))
            ),
            at,
            syscall: None,
            call: if c.call == NO_CALL { None } else { b.call_ref(c.call) },
            allocation: None,
            count: 1,
            first_event: c.seq,
            pid: b.pid_of_thread(c.tid, c.seq),
        });
    }

    findings.sort_by(|x, y| (x.first_event, x.kind, &x.addr).cmp(&(y.first_event, y.kind, &y.addr)));
    let before = findings.len();
    findings.retain(|f| !suppress.matches(f));
    let suppressed = before - findings.len();

    // Per-call footprints.
    let mut per_call: BTreeMap<u32, Vec<Touched>> = BTreeMap::new();
    for (&(call, target), (read, write)) in &g.footprint {
        if call == NO_CALL {
            continue;
        }
        let (kind, alloc, module, label) = match target {
            Target::Alloc(id) => {
                b.used.insert(id);
                ("alloc", Some(id), None, b.label(id))
            }
            Target::Module(m) => {
                let name = syms.module_name(m).unwrap_or_else(|| format!("module#{m}"));
                ("module", None, Some(name.clone()), name)
            }
            Target::Other => ("other", None, None, "unattributed memory".to_string()),
        };
        let args = match target {
            Target::Alloc(id) => {
                tl.arg_exposures.iter().filter(|e| e.call == call && e.alloc == id).map(|e| e.arg).collect()
            }
            _ => Vec::new(),
        };
        per_call.entry(call).or_default().push(Touched {
            target: kind.into(),
            alloc,
            module,
            args,
            label,
            read: read.ranges().iter().map(|&(s, e)| [s, e]).collect(),
            written: write.ranges().iter().map(|&(s, e)| [s, e]).collect(),
            bytes_read: read.len(),
            bytes_written: write.len(),
        });
    }
    let mut exposed: BTreeMap<u32, Vec<Exposure>> = BTreeMap::new();
    for e in &tl.arg_exposures {
        b.used.insert(e.alloc);
        exposed.entry(e.call).or_default().push(Exposure {
            alloc: e.alloc,
            offset: e.offset,
            via: "argument".into(),
            arg: Some(e.arg),
            at: None,
            from: None,
            from_alloc: None,
            event: None,
        });
    }
    for e in &loads {
        b.used.insert(e.alloc);
        exposed.entry(e.call).or_default().push(Exposure {
            alloc: e.alloc,
            offset: e.offset,
            via: "load".into(),
            arg: None,
            at: Some(syms.locate(e.ip)),
            from: Some(hex(e.from)),
            from_alloc: (e.from_alloc != NO_ALLOC).then_some(e.from_alloc),
            event: Some(e.seq),
        });
    }
    let mut findings_per_call: BTreeMap<u64, usize> = BTreeMap::new();
    for f in &findings {
        if let Some(c) = &f.call {
            *findings_per_call.entry(c.call).or_default() += 1;
        }
    }
    let calls: Vec<CallFootprint> = tl
        .calls
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let i = i as u32;
            CallFootprint {
                call: c.call,
                tid: c.tid,
                symbol: b.call_symbol(i),
                module: syms.module_name(c.module),
                target: hex(c.target),
                args: c.args.iter().map(|&a| hex(a)).collect(),
                ret: c.ret.map(|(rax, _)| hex(rax)),
                call_site: syms.locate(c.return_addr),
                parent: tl.calls.get(c.parent as usize).map(|p| p.call),
                first_event: c.enter_seq,
                last_event: c.exit_seq,
                touched: per_call.remove(&i).unwrap_or_default(),
                exposed: exposed.remove(&i).unwrap_or_default(),
                findings: findings_per_call.get(&c.call).copied().unwrap_or(0),
                pid: b.pid_of_thread(c.tid, c.enter_seq),
            }
        })
        .collect();

    let allocations: Vec<Allocation> = b
        .used
        .iter()
        .filter_map(|&id| {
            let a = tl.allocs.get(id as usize)?;
            Some(Allocation {
                id,
                base: hex(a.base),
                size: a.size,
                func: a.func,
                domain: a.domain,
                site: syms.locate(a.caller),
                call: tl.calls.get(a.call as usize).map(|c| c.call),
                born_event: a.born,
                freed_event: a.freed,
                free_site: a.freed.filter(|_| a.free_caller != 0).map(|_| syms.locate(a.free_caller)),
                label: b.label(id),
                pid: b.pid_of(a.base),
            })
        })
        .collect();

    let mut by_kind: BTreeMap<String, usize> = Kind::ALL.iter().map(|k| (k.name().to_string(), 0)).collect();
    for f in &findings {
        *by_kind.entry(f.kind.name().to_string()).or_default() += 1;
    }
    let summary = Summary {
        events: g.trace.events,
        access_events: g.access_events,
        accesses: g.stats.accesses,
        bytes_read: g.stats.bytes_read,
        bytes_written: g.stats.bytes_written,
        calls: tl.calls.len(),
        allocations: tl.allocs.len() as u64,
        findings: findings.len(),
        by_kind,
        suppressed,
        overreads: g.stats.overreads,
        unknown_bytes: g.stats.unknown_bytes,
        unclassified_accesses: g.stats.unclassified,
        decode_errors: g.decode_errors,
        gaps: tl.gaps.len(),
        callbacks: tl.callbacks,
        truncated: !g.trace.complete,
    };
    let all_allocations = g.timeline.allocs;
    Report { schema: SCHEMA.to_string(), trace: g.trace, calls, allocations, findings, summary, all_allocations }
}

fn signal_name(signo: i32) -> &'static str {
    match signo {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        11 => "SIGSEGV",
        _ => "signal",
    }
}
