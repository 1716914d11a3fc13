//! `ffirec diff`: what changed between two recordings of one program, run
//! against two versions of a library (or with two inputs).
//!
//! Principal items: [`diff`] (two [`DiffInput`]s — a trace and its
//! [`Report`] each — → [`Diff`]), rendered as `+`/`-` text or as JSON
//! (`ffirec.diff/1`, documented in `analyzer/DIFF_SCHEMA.md`).
//!
//! Addresses differ between runs (ASLR, allocation order, another library
//! layout), so both reports are first normalised:
//! - a **thread** is the rank of its tid among the threads that called the
//!   library or allocated (tids grow in creation order);
//! - a **call** is (thread, symbol, ordinal among that thread's calls to the
//!   symbol); loader glue (`_fini`, …) and unnamed targets are named after
//!   their caller;
//! - an **allocation** is (site, thread, ordinal): the site is the
//!   allocation call's return address as `symbol+offset` in host and
//!   C-runtime code, and as `symbol` alone in the foreign library (its
//!   offsets change with every build);
//! - an **access** is (allocation, offset range, read/write), merged per
//!   call — the analyzer's [`CallFootprint`]s, reused as they are;
//! - a **code location** is `symbol (module)`, from one extra pass over the
//!   access events; a change of offsets alone is noise, not a difference;
//! - a **return value** pointing into an allocation becomes
//!   `alloc …+offset`, into a module `symbol+offset`; heap addresses never
//!   appear raw.
//!
//! Noise — shown, never counted: instruction offsets, the foreign library's
//! own memory, and bytes that C-runtime string routines' vector loads read
//! past a terminator up to a block boundary that moves with the heap address.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::Path;

use ffirec_format::{Domain, Event, Module, Trace};
use serde::Serialize;

use crate::decode::Decoder;
use crate::findings::{Finding, Kind, Relation};
use crate::report::{func_name, CallFootprint, Report};
use crate::symbols::ModuleMap;

/// `schema` value of the JSON diff.
pub const DIFF_SCHEMA: &str = "ffirec.diff/1";

/// Why two traces cannot be diffed.
#[derive(Debug, thiserror::Error)]
pub enum DiffError {
    #[error(transparent)]
    Trace(#[from] ffirec_format::Error),
    /// Different programs, different foreign libraries, or one recording
    /// twice; `--force` diffs them anyway.
    #[error("{0} (use --force to diff them anyway)")]
    Mismatch(String),
}

/// How to diff.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DiffOptions {
    /// Diff traces of different programs or foreign libraries (a warning instead of an error).
    pub force: bool,
}

/// One side of a diff: a trace and its analysis.
#[derive(Clone, Copy)]
pub struct DiffInput<'a> {
    pub trace: &'a Trace,
    pub report: &'a Report,
}

/// Everything `ffirec diff` says about two traces.
#[derive(Debug, Clone, Serialize)]
pub struct Diff {
    pub schema: String,
    pub old: SideInfo,
    pub new: SideInfo,
    /// Mismatches tolerated by `--force`.
    pub warnings: Vec<String>,
    /// Calls in OLD with no counterpart in NEW, in OLD's call order.
    pub only_in_old: Vec<CallSummary>,
    /// Calls in NEW with no counterpart in OLD, in NEW's call order.
    pub only_in_new: Vec<CallSummary>,
    /// Symbols called a different number of times (all threads).
    pub call_counts: Vec<CountChange>,
    /// Matched calls that changed (or changed only in noise), in NEW's call order.
    pub calls: Vec<CallDiff>,
    /// Findings NEW has that OLD had not.
    pub new_findings: Vec<FindingView>,
    /// Findings OLD had that NEW has not.
    pub fixed_findings: Vec<FindingView>,
    pub summary: DiffSummary,
}

/// What a diff says about one of its traces.
#[derive(Debug, Clone, Serialize)]
pub struct SideInfo {
    pub path: String,
    pub uuid: String,
    pub command: Vec<String>,
    /// File names of the foreign modules.
    pub foreign: Vec<String>,
    pub calls: usize,
    pub findings: usize,
    pub complete: bool,
}

/// A call by its normalised identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallSummary {
    /// `symbol#ordinal` (ordinal among the thread's calls to the symbol).
    pub name: String,
    pub symbol: String,
    pub ordinal: u32,
    pub thread: u32,
    /// The recorder's call number in its trace.
    pub call: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CountChange {
    pub symbol: String,
    pub old: u32,
    pub new: u32,
}

/// How one matched call changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallDiff {
    pub name: String,
    pub symbol: String,
    pub ordinal: u32,
    pub thread: u32,
    pub old_call: u64,
    pub new_call: u64,
    /// Per memory target, the bytes whose treatment changed.
    pub memory: Vec<TargetDiff>,
    /// Code that touched memory during the call.
    pub code: Vec<CodeChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ret: Option<ValueChange>,
    /// Differences in this call (noise excluded).
    pub differences: usize,
}

/// Byte ranges of one target, `[start, end)` relative to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetDiff {
    /// `alloc`, `module` or `other` (unattributed: compared by byte counts only).
    pub target: String,
    /// `alloc SITE#N (FUNC SIZE)`, `module NAME` or `unattributed memory`.
    pub label: String,
    /// Allocation site (normalised) and ordinal, for `alloc` targets.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ordinal: Option<u64>,
    /// Rank of the thread that allocated it (`alloc` targets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<u32>,
    /// Arguments (0-based) that pointed into the allocation at entry (NEW's, else OLD's).
    pub args: Vec<u8>,
    /// `[old, new]` allocation size when it changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub size: Option<[u64; 2]>,
    pub newly_read: Vec<[u64; 2]>,
    pub no_longer_read: Vec<[u64; 2]>,
    pub newly_written: Vec<[u64; 2]>,
    pub no_longer_written: Vec<[u64; 2]>,
    /// Bytes newly read / no longer read only by the vector loads of C-runtime
    /// string routines (`strlen`, `memchr`, …), which read whole aligned
    /// blocks past a terminator: where the blocks end depends on the heap
    /// address, so these are shown but never counted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overread_newly_read: Vec<[u64; 2]>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub overread_no_longer_read: Vec<[u64; 2]>,
    /// `[old, new]` bytes read and written, for `other` targets whose counts changed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_read: Option<[u64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bytes_written: Option<[u64; 2]>,
    /// False for the foreign library's own memory — its allocations and its
    /// module data, whose layout changes with every build: shown, not counted.
    pub counted: bool,
}

/// A function (`symbol (module)`) that touched memory in one trace's call
/// and not the other's (`added`/`removed`, a difference), or in both at
/// different instruction offsets (`moved`, noise).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CodeChange {
    /// `added`, `removed` or `moved`.
    pub change: String,
    pub symbol: String,
    pub module: String,
    /// Offsets into `symbol` of the instructions that accessed memory.
    pub old_offsets: Vec<u64>,
    pub new_offsets: Vec<u64>,
    /// False for `moved`, and for `added`/`removed` in a module that one of
    /// the traces could not symbolise completely (code there shows as `?`).
    pub counted: bool,
}

/// A return value, normalised (`42`, `0x2a`, `alloc main+0x1c#0+16`, `symbol+0x10 (module)`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ValueChange {
    pub old: String,
    pub new: String,
    /// False when only an address inside the foreign library moved.
    pub counted: bool,
}

/// A finding, normalised.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FindingView {
    /// The analyzer's kind name (`uninit`, `out_of_bounds`, ...).
    pub kind: String,
    /// `read`, `write`, `read-write` or empty.
    pub access: String,
    pub size: u64,
    /// The call it happened in (`symbol#N`), when in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub thread: Option<u32>,
    /// The allocation concerned, normalised label.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<String>,
    /// `inside`, `after`, `before`, `freed` (see `distance`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relation: Option<Relation>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub distance: Option<u64>,
    /// The instruction, `symbol+offset (module)`.
    pub at: String,
    /// Times seen (in the trace that has it).
    pub count: u64,
    /// One line for a code review.
    pub description: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DiffSummary {
    /// Behavioural differences: calls only in one trace, changed memory
    /// targets, added/removed code, changed return values, new and fixed findings.
    pub differences: usize,
    pub matched_calls: usize,
    pub changed_calls: usize,
    pub only_in_old: usize,
    pub only_in_new: usize,
    pub new_findings: usize,
    pub fixed_findings: usize,
    /// Changes shown but not counted (instruction offsets, library-internal addresses).
    pub noise: usize,
}

// ---------------------------------------------------------------------------
// Normalisation

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct CallKey {
    thread: u32,
    symbol: String,
    ordinal: u32,
}

impl CallKey {
    fn name(&self) -> String {
        format!("{}#{}", self.symbol, self.ordinal)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct AllocKey {
    site: String,
    /// Rank of the allocating thread: concurrent threads allocating from one
    /// site race for the order, each thread's own order is stable.
    thread: u32,
    ordinal: u64,
}

impl AllocKey {
    /// `main+0x2a#0`, `worker+0x10#1@t2` (thread shown when not the first).
    fn name(&self) -> String {
        if self.thread == 0 {
            format!("{}#{}", self.site, self.ordinal)
        } else {
            format!("{}#{}@t{}", self.site, self.ordinal, self.thread)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
enum TargetKey {
    Alloc(AllocKey),
    Module(String),
    Other,
}

/// `libz.so.1.2.13` → `libz.so`: versions of one library share it.
fn stem(name: &str) -> String {
    match name.find(".so") {
        Some(i) => name[..i + 3].to_string(),
        None => name.to_string(),
    }
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().map_or_else(|| path.to_string(), |f| f.to_string_lossy().into_owned())
}

/// Where a code or data address is.
struct Place {
    module: String,
    domain: Domain,
    symbol: Option<String>,
    /// Offset into the symbol, or into the module without one.
    offset: u64,
}

impl Place {
    /// `sym+0x1c`, `sym` (offset 0) or `module+0x1c`.
    fn short(&self) -> String {
        match (&self.symbol, self.offset) {
            (Some(s), 0) => s.clone(),
            (Some(s), o) => format!("{s}+{o:#x}"),
            (None, o) => format!("{}+{o:#x}", self.module),
        }
    }
    /// The part that is stable across builds of the foreign library.
    fn stable(&self) -> String {
        if self.domain == Domain::Foreign {
            match &self.symbol {
                Some(s) => s.clone(),
                None => self.module.clone(),
            }
        } else {
            self.short()
        }
    }
}

/// Per call: `(symbol, module stem)` → (module file name, instruction offsets).
type CodeMap = BTreeMap<(String, String), (String, BTreeSet<u64>)>;

struct Side<'a> {
    report: &'a Report,
    modules: &'a [Module],
    map: ModuleMap,
    alloc_keys: Vec<AllocKey>,
    /// Allocation bases → ids (several over time), for return values.
    by_base: BTreeMap<u64, Vec<u32>>,
    calls: BTreeMap<CallKey, usize>,
    key_of_call: HashMap<u64, CallKey>,
    /// Per call number: `(symbol, module stem)` → (module file name, offsets).
    code: HashMap<u64, CodeMap>,
    /// Per call number: absolute ranges read by vector loads of C-runtime
    /// string routines (they read whole blocks past a terminator).
    overreads: HashMap<u64, Vec<(u64, u64)>>,
}

impl<'a> Side<'a> {
    fn new(input: DiffInput<'a>) -> Result<Self, DiffError> {
        let report = input.report;
        let modules = input.trace.modules();
        let map = ModuleMap::new(modules);
        let mut side = Side {
            report,
            modules,
            map,
            alloc_keys: Vec::new(),
            by_base: BTreeMap::new(),
            calls: BTreeMap::new(),
            key_of_call: HashMap::new(),
            code: HashMap::new(),
            overreads: HashMap::new(),
        };
        // Threads: rank of the tid among every thread that called the
        // library or allocated (tids grow in creation order).
        let tids: BTreeSet<u32> =
            report.calls.iter().map(|c| c.tid).chain(report.all_allocations.iter().map(|a| a.tid)).collect();
        let rank: HashMap<u32, u32> = tids.iter().enumerate().map(|(i, &t)| (t, i as u32)).collect();
        // Allocations: site + thread + ordinal.
        let mut site_of: HashMap<u64, String> = HashMap::new();
        let mut counts: HashMap<(String, u32), u64> = HashMap::new();
        for (id, a) in report.all_allocations.iter().enumerate() {
            let site = match site_of.get(&a.caller) {
                Some(s) => s.clone(),
                None => {
                    let s = side.place(a.caller).map_or_else(|| "?".to_string(), |p| p.stable());
                    site_of.insert(a.caller, s.clone());
                    s
                }
            };
            let thread = rank.get(&a.tid).copied().unwrap_or(0);
            let n = counts.entry((site.clone(), thread)).or_default();
            side.alloc_keys.push(AllocKey { site, thread, ordinal: *n });
            *n += 1;
            side.by_base.entry(a.base).or_default().push(id as u32);
        }
        // Calls: thread rank, symbol, ordinal.
        let mut ordinals: HashMap<(u32, String), u32> = HashMap::new();
        for (i, c) in report.calls.iter().enumerate() {
            let thread = rank.get(&c.tid).copied().unwrap_or(0);
            let symbol = call_symbol(c);
            let n = ordinals.entry((thread, symbol.clone())).or_default();
            let key = CallKey { thread, symbol, ordinal: *n };
            *n += 1;
            side.key_of_call.insert(c.call, key.clone());
            side.calls.insert(key, i);
        }
        side.code_locations(input.trace)?;
        Ok(side)
    }

    fn place(&self, addr: u64) -> Option<Place> {
        let seg = self.map.find(addr)?;
        let m = self.modules.get(seg.module as usize)?;
        let module = file_name(&m.path);
        Some(match m.symbolize(addr) {
            Some((s, off)) => Place { module, domain: m.domain, symbol: Some(s.name.clone()), offset: off },
            None => Place { module, domain: m.domain, symbol: None, offset: addr.wrapping_sub(m.base) },
        })
    }

    /// One pass over the access events: which functions touched memory in
    /// which call, and which bytes string routines read with vector loads.
    fn code_locations(&mut self, trace: &Trace) -> Result<(), DiffError> {
        let mut out: HashMap<u64, CodeMap> = HashMap::new();
        let mut overreads: HashMap<u64, Vec<(u64, u64)>> = HashMap::new();
        let mut stacks: HashMap<u32, Vec<u64>> = HashMap::new();
        let mut places: HashMap<u64, Option<(String, String, String, u64)>> = HashMap::new();
        let mut string_code: HashMap<u64, bool> = HashMap::new();
        let mut decoder = Decoder::default();
        let mut scratch: Vec<ffirec_decode::MemAccess> = Vec::new();
        for index in 0..trace.chunks().len() {
            for ev in trace.read_chunk(index)?.iter() {
                match ev {
                    Event::Call { tid, call, .. } => stacks.entry(*tid).or_default().push(*call),
                    Event::Return { tid, call, .. } => {
                        if let Some(st) = stacks.get_mut(tid) {
                            if let Some(pos) = st.iter().rposition(|c| c == call) {
                                st.truncate(pos);
                            }
                        }
                    }
                    Event::Access { tid, regs, code, vregs, .. } => {
                        let Some(&call) = stacks.get(tid).and_then(|s| s.last()) else { continue };
                        let ip = regs.rip;
                        let is_string = *string_code.entry(ip).or_insert_with(|| {
                            self.place(ip).is_some_and(|p| {
                                p.domain == Domain::Neutral && p.symbol.as_deref().is_none_or(is_string_routine)
                            })
                        });
                        if is_string {
                            scratch.clear();
                            if decoder
                                .decoded(ip, code)
                                .and_then(|d| d.accesses_into(regs, vregs, &mut scratch))
                                .is_ok()
                            {
                                for a in &scratch {
                                    if a.rw == ffirec_decode::Rw::Read && matches!(a.size, 16 | 32 | 64) {
                                        overreads
                                            .entry(call)
                                            .or_default()
                                            .push((a.addr, a.addr.saturating_add(a.size)));
                                    }
                                }
                            }
                        }
                        let place = places
                            .entry(ip)
                            .or_insert_with(|| {
                                self.place(ip).map(|p| {
                                    let sym = p.symbol.clone().unwrap_or_else(|| "?".into());
                                    (sym, stem(&p.module), p.module, p.offset)
                                })
                            })
                            .clone();
                        let (sym, st, module, off) = place.unwrap_or_else(|| ("?".into(), "?".into(), "?".into(), ip));
                        out.entry(call)
                            .or_default()
                            .entry((sym, st))
                            .or_insert_with(|| (module, BTreeSet::new()))
                            .1
                            .insert(off);
                    }
                    _ => {}
                }
            }
        }
        self.code = out;
        self.overreads = overreads.into_iter().map(|(k, v)| (k, normalize(v))).collect();
        Ok(())
    }

    fn alloc_label(&self, id: u32) -> String {
        let Some(k) = self.alloc_keys.get(id as usize) else { return format!("alloc#{id}") };
        match self.report.all_allocations.get(id as usize) {
            Some(a) => format!("alloc {} ({} {})", k.name(), func_name(a.func), a.size),
            None => format!("alloc {}", k.name()),
        }
    }

    /// `(key, display)` of a register value.
    fn value(&self, raw: &str, at_event: Option<u64>) -> (String, String) {
        let Some(v) = parse_hex(raw) else { return (raw.to_string(), raw.to_string()) };
        // Into an allocation live when the call returned?
        // The nearest few bases below: a later, smaller block may sit between
        // `v` and the base of the block that contains it.
        for (_, ids) in self.by_base.range(..=v).rev().take(16) {
            for &id in ids.iter().rev() {
                let Some(a) = self.report.all_allocations.get(id as usize) else { continue };
                let live = match at_event {
                    None => true,
                    Some(e) => a.born <= e && a.freed.is_none_or(|f| f > e),
                };
                if live && (a.contains(v) || (a.size == 0 && v == a.base)) {
                    let s = format!("{}+{}", self.alloc_label(id), v - a.base);
                    return (s.clone(), s);
                }
            }
        }
        if let Some(p) = self.place(v) {
            let shown = if p.symbol.is_some() { format!("{} ({})", p.short(), p.module) } else { p.short() };
            let key = if p.domain == Domain::Foreign {
                format!("an address in {}", stem(&p.module))
            } else {
                format!("{} ({})", p.short(), stem(&p.module))
            };
            return (key, shown);
        }
        if (0x1_0000_0000..0x8000_0000_0000).contains(&v) {
            return ("an unattributed address".into(), "an unattributed address".into());
        }
        let s = if v < 0x1_0000 { v.to_string() } else { format!("{v:#x}") };
        (s.clone(), s)
    }

    fn touched(&self, c: &CallFootprint) -> BTreeMap<TargetKey, Norm> {
        let mut out = BTreeMap::new();
        for t in &c.touched {
            let ranges = |r: &[[u64; 2]]| r.iter().map(|&[s, e]| (s, e)).collect::<Vec<_>>();
            let mut overread = Vec::new();
            let (key, label, size, counted) = match (t.target.as_str(), t.alloc, &t.module) {
                ("alloc", Some(id), _) => {
                    let Some(k) = self.alloc_keys.get(id as usize) else { continue };
                    let a = self.report.all_allocations.get(id as usize);
                    let size = a.map_or(0, |a| a.size);
                    if let (Some(a), Some(v)) = (a, self.overreads.get(&c.call)) {
                        overread = v
                            .iter()
                            .filter(|&&(_, e)| e > a.base)
                            .map(|&(s, e)| (s.max(a.base) - a.base, e - a.base))
                            .collect();
                    }
                    // The library's own allocations: their layout is its business.
                    let host = !a.is_some_and(|a| a.domain == Domain::Foreign);
                    (TargetKey::Alloc(k.clone()), self.alloc_label(id), size, host)
                }
                ("module", _, Some(m)) => {
                    let foreign = self.report.trace.modules.iter().any(|mi| &mi.name == m && mi.domain != Domain::Host);
                    (TargetKey::Module(stem(m)), format!("module {m}"), 0, !foreign)
                }
                _ => (TargetKey::Other, "unattributed memory".to_string(), 0, true),
            };
            let n = Norm {
                overread,
                label,
                args: t.args.clone(),
                size,
                read: ranges(&t.read),
                written: ranges(&t.written),
                bytes_read: t.bytes_read,
                bytes_written: t.bytes_written,
                counted,
            };
            match out.entry(key) {
                std::collections::btree_map::Entry::Vacant(v) => {
                    v.insert(n);
                }
                std::collections::btree_map::Entry::Occupied(mut o) => {
                    let e: &mut Norm = o.get_mut();
                    e.read = union(&e.read, &n.read);
                    e.written = union(&e.written, &n.written);
                    e.bytes_read += n.bytes_read;
                    e.bytes_written += n.bytes_written;
                }
            }
        }
        out
    }

    fn finding_key(&self, f: &Finding) -> (FindingKey, FindingView) {
        let call = f.call.as_ref().and_then(|c| self.key_of_call.get(&c.call)).cloned();
        let alloc = f.allocation.as_ref().and_then(|a| self.alloc_keys.get(a.id as usize)).cloned();
        let at_place = parse_hex(&f.at.addr).and_then(|a| self.place(a));
        let (at_key, at_shown) = match &at_place {
            Some(p) => (
                format!("{} ({})", p.symbol.clone().unwrap_or_else(|| "?".into()), stem(&p.module)),
                format!("{} ({})", p.short(), p.module),
            ),
            None if f.syscall.is_some() => ("syscall".into(), format!("syscall {}", f.syscall.unwrap_or(0))),
            None => ("?".into(), "?".into()),
        };
        let relation = f.allocation.as_ref().map(|a| a.relation);
        let distance = f.allocation.as_ref().map(|a| a.distance);
        let key = FindingKey {
            kind: f.kind,
            call: call.clone(),
            alloc: alloc.clone(),
            relation: relation.map(|r| r as u8),
            distance,
            size: f.size,
            read: f.read,
            write: f.write,
            at: at_key,
        };
        let access = match (f.read, f.write) {
            (true, true) => "read-write",
            (true, false) => "read",
            (false, true) => "write",
            _ => "",
        };
        let alloc_label = f.allocation.as_ref().map(|a| self.alloc_label(a.id));
        let call_name = call.as_ref().map(|c| c.name());
        let mut d = String::new();
        let plural = |n: u64| if n == 1 { "" } else { "s" };
        match (f.kind, &f.allocation) {
            (Kind::ForeignLeak, _) => {
                let _ = write!(d, "{} bytes allocated by the library were never freed", f.size);
            }
            (Kind::ExposedPointer, _) => {
                let _ = write!(d, "the library loaded a pointer to offset {}", distance.unwrap_or(0));
            }
            (Kind::Crash, _) => d.push_str("the program received a fault signal"),
            (_, Some(a)) => {
                let rel = match a.relation {
                    Relation::Inside => format!("at offset {}", a.distance),
                    Relation::Freed => format!("at offset {} (freed)", a.distance),
                    Relation::After if a.distance == 0 => "just past the end".to_string(),
                    Relation::After => format!("{} byte{} past the end", a.distance, plural(a.distance)),
                    Relation::Before => format!("{} byte{} before the start", a.distance, plural(a.distance)),
                };
                let _ = write!(d, "{access} of {} byte{} {rel}", f.size, plural(f.size));
            }
            (_, None) => {
                let _ = write!(d, "{access} of {} byte{} outside every allocation", f.size, plural(f.size));
            }
        }
        if let Some(l) = &alloc_label {
            let _ = write!(d, " of {l}");
        }
        if let Some(c) = &call {
            let _ = write!(d, " in call {} (thread {})", c.name(), c.thread);
        }
        let _ = write!(d, ", at {at_shown}");
        let view = FindingView {
            kind: f.kind.name().to_string(),
            access: access.to_string(),
            size: f.size,
            call: call_name,
            thread: call.as_ref().map(|c| c.thread),
            allocation: alloc_label,
            relation,
            distance,
            at: at_shown,
            count: f.count,
            description: format!("{}: {d}", f.kind.name()),
        };
        (key, view)
    }

    fn summary(&self, key: &CallKey, c: &CallFootprint) -> CallSummary {
        CallSummary {
            name: key.name(),
            symbol: key.symbol.clone(),
            ordinal: key.ordinal,
            thread: key.thread,
            call: c.call,
            bytes_read: c.touched.iter().map(|t| t.bytes_read).sum(),
            bytes_written: c.touched.iter().map(|t| t.bytes_written).sum(),
        }
    }

    fn info(&self) -> SideInfo {
        let t = &self.report.trace;
        SideInfo {
            path: t.path.clone(),
            uuid: t.uuid.clone(),
            command: t.command.clone(),
            foreign: foreign_modules(self.report),
            calls: self.report.calls.len(),
            findings: self.report.findings.len(),
            complete: t.complete,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct FindingKey {
    kind: Kind,
    call: Option<CallKey>,
    alloc: Option<AllocKey>,
    relation: Option<u8>,
    distance: Option<u64>,
    size: u64,
    read: bool,
    write: bool,
    at: String,
}

struct Norm {
    /// Bytes (relative) read by string routines' vector loads.
    overread: Vec<(u64, u64)>,
    label: String,
    args: Vec<u8>,
    size: u64,
    read: Vec<(u64, u64)>,
    written: Vec<(u64, u64)>,
    bytes_read: u64,
    bytes_written: u64,
    counted: bool,
}

/// C-runtime routines that scan for a terminator a vector block at a time.
/// (A stripped libc has no names for its internal variants: there every
/// C-runtime vector load qualifies, as in the analyzer's over-read rule.)
fn is_string_routine(symbol: &str) -> bool {
    ["str", "stp", "wcs", "memchr", "memrchr", "rawmemchr", "wmemchr"]
        .iter()
        .any(|p| symbol.trim_start_matches('_').starts_with(p))
}

fn parse_hex(s: &str) -> Option<u64> {
    u64::from_str_radix(s.strip_prefix("0x")?, 16).ok()
}

/// ELF glue the loader runs: not the library's API, and stripped from many builds.
const RUNTIME_GLUE: [&str; 8] = [
    "_init",
    "_fini",
    "__do_global_dtors_aux",
    "frame_dummy",
    "register_tm_clones",
    "deregister_tm_clones",
    "__libc_csu_init",
    "__libc_csu_fini",
];

/// The call's symbol. Calls to unnamed code or to ELF glue (constructors and
/// destructors the loader runs) are named after their caller instead —
/// `(runtime call from ld-linux-x86-64.so.2+0x112a)` — since one build may
/// have the symbols and the other not; other unnamed targets are `module+?`.
fn call_symbol(c: &CallFootprint) -> String {
    let unnamed = match &c.module {
        Some(m) => c.symbol.starts_with(&format!("{m}+0x")),
        None => c.symbol.starts_with("0x"),
    };
    if unnamed || RUNTIME_GLUE.contains(&c.symbol.as_str()) {
        let site = c.call_site.short();
        if c.call_site.module.is_some() && !site.starts_with("0x") {
            return format!("(runtime call from {site})");
        }
    }
    match &c.module {
        Some(m) if unnamed => format!("{}+?", stem(m)),
        None if unnamed => "?".into(),
        _ => c.symbol.clone(),
    }
}

fn foreign_modules(r: &Report) -> Vec<String> {
    let set: BTreeSet<String> =
        r.trace.modules.iter().filter(|m| m.domain == Domain::Foreign).map(|m| m.name.clone()).collect();
    set.into_iter().collect()
}

/// Sorted, merged ranges.
fn normalize(mut v: Vec<(u64, u64)>) -> Vec<(u64, u64)> {
    v.retain(|&(s, e)| s < e);
    v.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(v.len());
    for (s, e) in v {
        match out.last_mut() {
            Some(l) if s <= l.1 => l.1 = l.1.max(e),
            _ => out.push((s, e)),
        }
    }
    out
}

fn union(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    normalize(a.iter().chain(b.iter()).copied().collect())
}

/// Splits `diff` (bytes one side read and the other not) into (counted,
/// over-read noise). Noise: a range shorter than one 64-byte block that only
/// string-routine vector loads read, and that continues a range the other
/// side read — the same scan, ending at another block boundary.
fn split_overread(
    diff: &[(u64, u64)],
    overread: &[(u64, u64)],
    other: &[(u64, u64)],
) -> (Vec<[u64; 2]>, Vec<[u64; 2]>) {
    let plain = pairs(&subtract(diff, overread));
    let cand = subtract(diff, &plain);
    let mut counted: Vec<(u64, u64)> = plain;
    let mut noise = Vec::new();
    for [s, e] in cand {
        let continues = other.iter().any(|&(os, oe)| oe == s || os == e);
        if e - s < 64 && continues {
            noise.push([s, e]);
        } else {
            counted.push((s, e));
        }
    }
    (normalize(counted).into_iter().map(|(s, e)| [s, e]).collect(), noise)
}

fn pairs(r: &[[u64; 2]]) -> Vec<(u64, u64)> {
    r.iter().map(|&[s, e]| (s, e)).collect()
}

/// `a \ b`, both sorted and merged.
fn subtract(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<[u64; 2]> {
    let mut out = Vec::new();
    let mut j = 0;
    for &(s, e) in a {
        let mut cur = s;
        while j < b.len() && b[j].1 <= cur {
            j += 1;
        }
        let mut k = j;
        while cur < e {
            match b.get(k) {
                Some(&(bs, be)) if bs < e => {
                    if bs > cur {
                        out.push([cur, bs]);
                    }
                    cur = cur.max(be);
                    k += 1;
                }
                _ => {
                    out.push([cur, e]);
                    cur = e;
                }
            }
        }
    }
    out
}

fn check(old: &Side, new: &Side) -> Vec<String> {
    let mut problems = Vec::new();
    let (o, n) = (&old.report.trace, &new.report.trace);
    if o.uuid == n.uuid {
        problems.push(format!("OLD and NEW are the same recording (uuid {})", o.uuid));
    }
    let prog = |c: &[String]| c.first().map(|p| file_name(p)).unwrap_or_default();
    if prog(&o.command) != prog(&n.command) {
        problems.push(format!(
            "the traces are of different programs: OLD ran {}, NEW ran {}",
            prog(&o.command),
            prog(&n.command)
        ));
    }
    if o.foreign_patterns != n.foreign_patterns {
        problems.push(format!(
            "the traces were recorded with different --lib patterns: OLD {:?}, NEW {:?}",
            o.foreign_patterns, n.foreign_patterns
        ));
    }
    let stems = |r: &Report| foreign_modules(r).iter().map(|m| stem(m)).collect::<BTreeSet<_>>();
    let (so, sn) = (stems(old.report), stems(new.report));
    if so != sn {
        problems.push(format!(
            "the traces observed different foreign libraries: OLD {}, NEW {}",
            so.into_iter().collect::<Vec<_>>().join(","),
            sn.into_iter().collect::<Vec<_>>().join(",")
        ));
    }
    problems
}

/// Compares two analysed traces.
pub fn diff(old: DiffInput<'_>, new: DiffInput<'_>, opts: &DiffOptions) -> Result<Diff, DiffError> {
    let o = Side::new(old)?;
    let n = Side::new(new)?;
    let problems = check(&o, &n);
    if !problems.is_empty() && !opts.force {
        return Err(DiffError::Mismatch(problems.join("; ")));
    }
    let mut summary = DiffSummary::default();
    let mut only_in_old = Vec::new();
    let mut only_in_new = Vec::new();
    for (k, &i) in &o.calls {
        if !n.calls.contains_key(k) {
            if let Some(c) = o.report.calls.get(i) {
                only_in_old.push((c.call, o.summary(k, c)));
            }
        }
    }
    for (k, &i) in &n.calls {
        if !o.calls.contains_key(k) {
            if let Some(c) = n.report.calls.get(i) {
                only_in_new.push((c.call, n.summary(k, c)));
            }
        }
    }
    only_in_old.sort_by_key(|x| x.0);
    only_in_new.sort_by_key(|x| x.0);
    let only_in_old: Vec<CallSummary> = only_in_old.into_iter().map(|x| x.1).collect();
    let only_in_new: Vec<CallSummary> = only_in_new.into_iter().map(|x| x.1).collect();

    let mut counts: BTreeMap<String, (u32, u32)> = BTreeMap::new();
    for k in o.calls.keys() {
        counts.entry(k.symbol.clone()).or_default().0 += 1;
    }
    for k in n.calls.keys() {
        counts.entry(k.symbol.clone()).or_default().1 += 1;
    }
    let call_counts: Vec<CountChange> = counts
        .into_iter()
        .filter(|(_, (a, b))| a != b)
        .map(|(symbol, (old, new))| CountChange { symbol, old, new })
        .collect();

    let mut calls = Vec::new();
    for (k, &ni) in &n.calls {
        let Some(&oi) = o.calls.get(k) else { continue };
        let (Some(oc), Some(nc)) = (o.report.calls.get(oi), n.report.calls.get(ni)) else { continue };
        summary.matched_calls += 1;
        let cd = call_diff(&o, &n, k, oc, nc, &mut summary.noise);
        if !cd.memory.is_empty() || !cd.code.is_empty() || cd.ret.is_some() {
            calls.push((nc.call, cd));
        }
    }
    calls.sort_by_key(|x| x.0);
    let calls: Vec<CallDiff> = calls.into_iter().map(|x| x.1).collect();

    // Findings as multisets of normalised keys.
    let fold = |s: &Side| {
        let mut m: BTreeMap<FindingKey, Vec<FindingView>> = BTreeMap::new();
        for f in &s.report.findings {
            let (k, v) = s.finding_key(f);
            m.entry(k).or_default().push(v);
        }
        m
    };
    let (fo, fnew) = (fold(&o), fold(&n));
    let extra = |a: &BTreeMap<FindingKey, Vec<FindingView>>, b: &BTreeMap<FindingKey, Vec<FindingView>>| {
        let mut out = Vec::new();
        for (k, v) in a {
            let have = b.get(k).map_or(0, Vec::len);
            out.extend(v.iter().skip(have).cloned());
        }
        out
    };
    let new_findings = extra(&fnew, &fo);
    let fixed_findings = extra(&fo, &fnew);

    summary.only_in_old = only_in_old.len();
    summary.only_in_new = only_in_new.len();
    summary.changed_calls = calls.iter().filter(|c| c.differences > 0).count();
    summary.new_findings = new_findings.len();
    summary.fixed_findings = fixed_findings.len();
    summary.differences = summary.only_in_old
        + summary.only_in_new
        + calls.iter().map(|c| c.differences).sum::<usize>()
        + summary.new_findings
        + summary.fixed_findings;
    Ok(Diff {
        schema: DIFF_SCHEMA.to_string(),
        old: o.info(),
        new: n.info(),
        warnings: problems,
        only_in_old,
        only_in_new,
        call_counts,
        calls,
        new_findings,
        fixed_findings,
        summary,
    })
}

fn call_diff(o: &Side, n: &Side, k: &CallKey, oc: &CallFootprint, nc: &CallFootprint, noise: &mut usize) -> CallDiff {
    let mut differences = 0;
    let (to, tn) = (o.touched(oc), n.touched(nc));
    let keys: BTreeSet<&TargetKey> = to.keys().chain(tn.keys()).collect();
    let empty = Norm {
        overread: Vec::new(),
        label: String::new(),
        args: Vec::new(),
        size: 0,
        read: Vec::new(),
        written: Vec::new(),
        bytes_read: 0,
        bytes_written: 0,
        counted: true,
    };
    let mut memory = Vec::new();
    for key in keys {
        let a = to.get(key);
        let b = tn.get(key);
        let (ea, eb) = (a.unwrap_or(&empty), b.unwrap_or(&empty));
        let shown = b.or(a).unwrap_or(&empty);
        let counted = ea.counted && eb.counted;
        let mut t = TargetDiff {
            target: match key {
                TargetKey::Alloc(_) => "alloc",
                TargetKey::Module(_) => "module",
                TargetKey::Other => "other",
            }
            .to_string(),
            label: shown.label.clone(),
            site: None,
            ordinal: None,
            thread: None,
            args: shown.args.clone(),
            size: None,
            newly_read: Vec::new(),
            no_longer_read: Vec::new(),
            newly_written: Vec::new(),
            no_longer_written: Vec::new(),
            overread_newly_read: Vec::new(),
            overread_no_longer_read: Vec::new(),
            bytes_read: None,
            bytes_written: None,
            counted,
        };
        let changed = if let TargetKey::Other = key {
            if ea.bytes_read != eb.bytes_read {
                t.bytes_read = Some([ea.bytes_read, eb.bytes_read]);
            }
            if ea.bytes_written != eb.bytes_written {
                t.bytes_written = Some([ea.bytes_written, eb.bytes_written]);
            }
            t.bytes_read.is_some() || t.bytes_written.is_some()
        } else {
            if let TargetKey::Alloc(ak) = key {
                t.site = Some(ak.site.clone());
                t.ordinal = Some(ak.ordinal);
                t.thread = Some(ak.thread);
                if a.is_some() && b.is_some() && ea.size != eb.size {
                    t.size = Some([ea.size, eb.size]);
                }
            }
            let newly_read = pairs(&subtract(&eb.read, &ea.read));
            let no_longer_read = pairs(&subtract(&ea.read, &eb.read));
            (t.newly_read, t.overread_newly_read) = split_overread(&newly_read, &eb.overread, &ea.read);
            (t.no_longer_read, t.overread_no_longer_read) = split_overread(&no_longer_read, &ea.overread, &eb.read);
            t.newly_written = subtract(&eb.written, &ea.written);
            t.no_longer_written = subtract(&ea.written, &eb.written);
            t.size.is_some()
                || !t.newly_read.is_empty()
                || !t.no_longer_read.is_empty()
                || !t.newly_written.is_empty()
                || !t.no_longer_written.is_empty()
        };
        let over = !t.overread_newly_read.is_empty() || !t.overread_no_longer_read.is_empty();
        if changed || over {
            t.counted = changed && counted;
            if t.counted {
                differences += 1;
            } else {
                *noise += 1;
            }
            memory.push(t);
        }
    }

    let mut code = Vec::new();
    let none = BTreeMap::new();
    let (co, cn) = (o.code.get(&oc.call).unwrap_or(&none), n.code.get(&nc.call).unwrap_or(&none));
    let ckeys: BTreeSet<&(String, String)> = co.keys().chain(cn.keys()).collect();
    for ck in ckeys {
        let (a, b) = (co.get(ck), cn.get(ck));
        let module = b.or(a).map_or_else(String::new, |x| x.0.clone());
        let offs =
            |x: Option<&(String, BTreeSet<u64>)>| x.map_or_else(Vec::new, |x| x.1.iter().copied().collect::<Vec<_>>());
        let (oo, no) = (offs(a), offs(b));
        let change = match (a.is_some(), b.is_some()) {
            (false, true) => "added",
            (true, false) => "removed",
            _ if oo != no => "moved",
            _ => continue,
        };
        let unsymbolised = |m: &CodeMap| m.keys().any(|(sym, st)| sym == "?" && *st == ck.1);
        let counted = change != "moved" && !unsymbolised(co) && !unsymbolised(cn);
        if counted {
            differences += 1;
        } else {
            *noise += 1;
        }
        code.push(CodeChange {
            change: change.into(),
            symbol: ck.0.clone(),
            module,
            old_offsets: oo,
            new_offsets: no,
            counted,
        });
    }

    let ret = match (&oc.ret, &nc.ret) {
        (None, None) => None,
        (a, b) => {
            let v = |s: &Side, r: &Option<String>, c: &CallFootprint| match r {
                Some(r) => s.value(r, c.last_event),
                None => ("(no return)".to_string(), "(no return)".to_string()),
            };
            let (ko, so) = v(o, a, oc);
            let (kn, sn) = v(n, b, nc);
            if ko != kn {
                differences += 1;
                Some(ValueChange { old: so, new: sn, counted: true })
            } else if so != sn {
                *noise += 1;
                Some(ValueChange { old: so, new: sn, counted: false })
            } else {
                None
            }
        }
    };
    CallDiff {
        name: k.name(),
        symbol: k.symbol.clone(),
        ordinal: k.ordinal,
        thread: k.thread,
        old_call: oc.call,
        new_call: nc.call,
        memory,
        code,
        ret,
        differences,
    }
}

// ---------------------------------------------------------------------------
// Rendering

fn ranges(r: &[[u64; 2]]) -> String {
    r.iter().map(|[s, e]| format!("[{s},{e})")).collect::<Vec<_>>().join(" ")
}

fn offsets(v: &[u64]) -> String {
    match (v.first(), v.last()) {
        (Some(a), Some(b)) if a == b => format!("+{a:#x}"),
        (Some(a), Some(b)) => format!("+{a:#x}..+{b:#x} ({} instructions)", v.len()),
        _ => "-".into(),
    }
}

impl Diff {
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}"))
    }

    /// For a code review: `+` new in NEW, `-` gone from OLD, `~` shown but not counted.
    pub fn to_text(&self) -> String {
        let mut o = String::new();
        let s = &self.summary;
        let _ = writeln!(o, "ffirec diff OLD {} NEW {}", self.old.path, self.new.path);
        let prog = self.new.command.first().map(|p| file_name(p)).unwrap_or_default();
        let _ = writeln!(
            o,
            "  program {prog}; foreign {} -> {}",
            if self.old.foreign.is_empty() { "-".into() } else { self.old.foreign.join(",") },
            if self.new.foreign.is_empty() { "-".into() } else { self.new.foreign.join(",") }
        );
        let _ = writeln!(
            o,
            "  calls: {} in OLD, {} in NEW, {} matched, {} only in OLD, {} only in NEW",
            self.old.calls, self.new.calls, s.matched_calls, s.only_in_old, s.only_in_new
        );
        for w in &self.warnings {
            let _ = writeln!(o, "  warning: {w} (--force)");
        }
        for (side, list, sign) in [("OLD", &self.only_in_old, '-'), ("NEW", &self.only_in_new, '+')] {
            for c in list {
                let _ = writeln!(
                    o,
                    "{sign} call {} (thread {}) only in {side} [call {}]: read {} bytes, wrote {} bytes",
                    c.name, c.thread, c.call, c.bytes_read, c.bytes_written
                );
            }
        }
        for c in &self.call_counts {
            let _ = writeln!(o, "  calls to {}: {} -> {}", c.symbol, c.old, c.new);
        }
        for c in &self.calls {
            let _ = writeln!(o);
            let _ =
                writeln!(o, "call {} (thread {}) [OLD call {}, NEW call {}]", c.name, c.thread, c.old_call, c.new_call);
            for t in &c.memory {
                let sign = |x: char| if t.counted { x.to_string() } else { format!("~{x}") };
                let tail = if t.counted { "" } else { " (not counted: the library's own memory)" };
                let args = if t.args.is_empty() {
                    String::new()
                } else {
                    format!(" [arg {}]", t.args.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(","))
                };
                let what = format!("{}{args}", t.label);
                if let Some([a, b]) = t.size {
                    let _ = writeln!(o, "  {} size of {what}: {a} -> {b}{tail}", sign('!'));
                }
                for (list, verb, sg) in [
                    (&t.newly_read, "read", '+'),
                    (&t.no_longer_read, "read", '-'),
                    (&t.newly_written, "wrote", '+'),
                    (&t.no_longer_written, "wrote", '-'),
                ] {
                    if !list.is_empty() {
                        let _ = writeln!(o, "  {} {verb} {} of {what}{tail}", sign(sg), ranges(list));
                    }
                }
                for (list, sg) in [(&t.overread_newly_read, '+'), (&t.overread_no_longer_read, '-')] {
                    if !list.is_empty() {
                        let _ = writeln!(
                            o,
                            "  ~{sg} read {} of {what} (not counted: string routine over-read)",
                            ranges(list)
                        );
                    }
                }
                if let Some([a, b]) = t.bytes_read {
                    let _ = writeln!(o, "  {} read {a} -> {b} bytes of {what}{tail}", sign('!'));
                }
                if let Some([a, b]) = t.bytes_written {
                    let _ = writeln!(o, "  {} wrote {a} -> {b} bytes of {what}{tail}", sign('!'));
                }
            }
            for k in &c.code {
                let (plus, minus, tail) = if k.counted {
                    ("+", "-", "")
                } else {
                    ("~+", "~-", " (not counted: a trace lacks symbols for this module)")
                };
                match k.change.as_str() {
                    "added" => {
                        let _ = writeln!(
                            o,
                            "  {plus} code {} ({}) accessed memory at {}{tail}",
                            k.symbol,
                            k.module,
                            offsets(&k.new_offsets)
                        );
                    }
                    "removed" => {
                        let _ = writeln!(
                            o,
                            "  {minus} code {} ({}) accessed memory at {}{tail}",
                            k.symbol,
                            k.module,
                            offsets(&k.old_offsets)
                        );
                    }
                    _ => {
                        let _ = writeln!(
                            o,
                            "  ~ code {} ({}): instruction offsets {} -> {} (not counted)",
                            k.symbol,
                            k.module,
                            offsets(&k.old_offsets),
                            offsets(&k.new_offsets)
                        );
                    }
                }
            }
            if let Some(r) = &c.ret {
                let tail = if r.counted { "" } else { " (not counted)" };
                let _ = writeln!(o, "  {} returned {} -> {}{tail}", if r.counted { '!' } else { '~' }, r.old, r.new);
            }
        }
        let _ = writeln!(o);
        if self.new_findings.is_empty() {
            let _ = writeln!(o, "new findings: none");
        } else {
            let _ = writeln!(o, "new findings:");
            for f in &self.new_findings {
                let _ = writeln!(o, "+ {}", f.description);
            }
        }
        if self.fixed_findings.is_empty() {
            let _ = writeln!(o, "fixed findings: none");
        } else {
            let _ = writeln!(o, "fixed findings:");
            for f in &self.fixed_findings {
                let _ = writeln!(o, "- {}", f.description);
            }
        }
        let _ = writeln!(o);
        let noise = format!("{} change{} not counted", s.noise, if s.noise == 1 { "" } else { "s" });
        if s.differences == 0 {
            let _ = writeln!(o, "no behavioural differences ({noise})");
        } else {
            let _ = writeln!(
                o,
                "{} difference{}: {} call{} changed, {} only in OLD, {} only in NEW, {} new finding{}, {} fixed ({noise})",
                s.differences,
                if s.differences == 1 { "" } else { "s" },
                s.changed_calls,
                if s.changed_calls == 1 { "" } else { "s" },
                s.only_in_old,
                s.only_in_new,
                s.new_findings,
                if s.new_findings == 1 { "" } else { "s" },
                s.fixed_findings,
            );
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subtract_ranges() {
        assert_eq!(subtract(&[(0, 16)], &[(0, 8)]), vec![[8, 16]]);
        assert_eq!(subtract(&[(0, 16), (20, 30)], &[(4, 6), (8, 22)]), vec![[0, 4], [6, 8], [22, 30]]);
        assert_eq!(subtract(&[(0, 4)], &[]), vec![[0, 4]]);
        assert_eq!(subtract(&[], &[(0, 4)]), Vec::<[u64; 2]>::new());
        assert_eq!(subtract(&[(5, 10)], &[(0, 20)]), Vec::<[u64; 2]>::new());
    }

    #[test]
    fn overread_noise_only_continues_the_other_sides_scan() {
        // OLD's strlen read up to 128, NEW's block ended at 112.
        let (counted, noise) = split_overread(&[(112, 128)], &[(96, 128)], &[(0, 112)]);
        assert_eq!((counted, noise), (vec![], vec![[112, 128]]));
        // Not adjacent to what the other side read: counted.
        let (counted, noise) = split_overread(&[(140, 150)], &[(128, 160)], &[(0, 112)]);
        assert_eq!((counted, noise), (vec![[140, 150]], vec![]));
        // A whole block or more: counted.
        let (counted, noise) = split_overread(&[(112, 176)], &[(96, 192)], &[(0, 112)]);
        assert_eq!((counted, noise), (vec![[112, 176]], vec![]));
        // Partly read by other code: that part counts.
        let (counted, noise) = split_overread(&[(112, 130)], &[(112, 128)], &[(0, 112)]);
        assert_eq!((counted, noise), (vec![[128, 130]], vec![[112, 128]]));
    }

    #[test]
    fn stems_join_versions() {
        assert_eq!(stem("libz.so.1.2.13"), "libz.so");
        assert_eq!(stem("libz.so.1"), "libz.so");
        assert_eq!(stem("diff_host"), "diff_host");
    }

    #[test]
    fn normalize_merges_touching() {
        assert_eq!(normalize(vec![(8, 16), (0, 8), (20, 24), (22, 30)]), vec![(0, 16), (20, 30)]);
    }
}
