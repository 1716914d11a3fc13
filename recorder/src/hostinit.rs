//! Host initialisation state: which bytes of live host allocations the host
//! wrote, learnt without changing what the program computes.
//!
//! The shim write-protects (`PROT_READ`) the pages of every block a host-mode
//! `malloc`-family call returns, before returning it, and marks them in a
//! page-state table in the tracee (contract: "Host init" in
//! `shim/ffirec_shim.h`). From here:
//! - a host write fault on such a page is decoded; its exact range becomes a
//!   `HostWrite`; the write is performed through `/proc/PID/mem` (no window:
//!   simple stores, vector stores, `rep stos`/`rep movs`), or, for anything
//!   else (atomics, unknown forms), the page is released and the instruction
//!   re-executes natively, with `InitUnknown` for the page's bytes still never
//!   written;
//! - a page is released (read-write again, state 2) when no never-written
//!   byte of a live block is left on it, and dies (state 3, never protected
//!   again, `InitUnknown` for the rest) after `budget` faults (its release
//!   batches and the shim's re-protections count too), or when the shim
//!   protects it again after a release more than `max_cycles` times;
//! - host syscalls stop (`PTRACE_SYSCALL`): buffers the kernel writes are
//!   opened for the call (as for foreign syscalls) and the bytes it wrote
//!   become `HostWrite`; `munmap`/`brk`/`mremap`/`mmap` keep the table true;
//!   the program's own `mprotect` on a tracked page kills it;
//! - foreign calls: tracked pages join the guard set and are read-only again
//!   when host code runs (also when a blocked call releases the held
//!   threads); a forked child gets its pages back read-write (it is not
//!   traced: its blocks are `unknown`).
//!
//! Several threads: nothing ever opens a tracked page for one thread while
//! others run. Where the single-threaded path would open a page around one
//! instruction (one the recorder cannot perform) or one syscall, a process
//! with other live threads releases that page for good instead (`dead`, its
//! never-written bytes `InitUnknown`; what the syscall wrote is still a
//! `HostWrite`). The shim and the recorder race on the table; the rules that
//! keep "state 1 ⇒ read-only, every write recorded" true are:
//! - the shim marks a page 4 before its `mprotect` and moves 4 → 1 with a
//!   compare-and-swap; a write fault on a page in state 4 is ours (like 1);
//! - every release (1/4 → 2, 3 or 0) first bumps the epoch the shim reads
//!   before looking at the table and puts in the block's record: a block
//!   whose record's epoch is not above its page's last release may have
//!   been writable without faulting, so its bytes there are unknown;
//! - a release leaves state 2 only after the page is read-write; a shim
//!   `mprotect` that lands after a release is undone at its syscall exit;
//! - a write fault on a page in state 2 or 3 raced a release: the thread runs
//!   the instruction again (while a shim `mprotect` is in flight, or once).
//!
//! Everything lives in one [`HostInit`] value on the tracer; the rest of the
//! recorder calls the small hooks below.

use std::collections::BTreeMap;
use std::hash::{BuildHasherDefault, Hasher};

use ffirec_decode::{Emulation, Rw};
use ffirec_format::{AllocFn, Domain, Event};

use crate::maps::{PROT_R, PROT_W};
use crate::sys::{self, Mem, Pid, RawRegs, RemoteAddr};
use crate::syscalls::{SysState, Touch};
use crate::tracer::Tracer;
use crate::Error;

/// The table's address in every tracee process (see `alloc::HOSTINIT_TABLE`).
pub(crate) const TABLE: u64 = crate::alloc::HOSTINIT_TABLE.start;
const PAGE: u64 = 4096;
const ST_PROTECTED: u8 = 1;
const ST_RELEASED: u8 = 2;
const ST_DEAD: u8 = 3;
/// Being protected by the shim (see `ffirec_shim.h`, "Host init").
const ST_PROTECTING: u8 = 4;
/// `HostInit::blocks` flag: the whole block is unknown, not said yet.
const WHOLE: u64 = 1 << 63;
/// Entries of `HostInit::near` (a loop's blocks cycle through a few dozen pages).
const NEAR: usize = 64;

/// `HostInit::near`: (page number, state), direct-mapped by page number.
struct Near([(u64, u8); NEAR]);

impl Default for Near {
    fn default() -> Near {
        Near([(u64::MAX, 0); NEAR])
    }
}
/// Faults a page may take before it is released for good.
pub(crate) const DEFAULT_BUDGET: u32 = 64;
/// Times a released page may be protected again (a new block on it) before
/// it is released for good (see `HostInit::cycles`).
pub(crate) const DEFAULT_CYCLES: u32 = 3;
/// Largest `rep stos`/`rep movs` performed through `/proc/PID/mem`.
const REP_MAX: u64 = 64 << 20;

/// Multiply-shift hashing for page and block addresses (SipHash was a fifth
/// of the drain's time with host init on).
#[derive(Default, Clone, Copy)]
pub(crate) struct AddrHasher(u64);

impl Hasher for AddrHasher {
    fn finish(&self) -> u64 {
        // The product's entropy is in its high bits; hashbrown picks the
        // bucket from the low ones (as rustc-hash does).
        self.0.rotate_left(26)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
}

pub(crate) type AddrMap<V> = std::collections::HashMap<u64, V, BuildHasherDefault<AddrHasher>>;

/// The recorder's half of host-init tracking. One process is tracked (the
/// first, from its entry point); in every other process (forked children,
/// which inherit the pages read-write again) host bytes are unknown.
#[derive(Default)]
pub(crate) struct HostInit {
    /// The user asked for it and the shim is there.
    pub enabled: bool,
    /// The tracked process (0: none yet), and its memory.
    pid: Pid,
    mem: Option<Mem>,
    /// Other processes whose inherited tracked pages were given back.
    released_procs: std::collections::HashSet<Pid>,
    /// vfork children: they share the tracked process's memory until exec.
    vforked: std::collections::HashSet<Pid>,
    /// The shim protects the main process's blocks now (table mapped, entry reached).
    pub active: bool,
    /// Live host blocks (tracked or not): address → size, with [`WHOLE`]
    /// set while the whole block is unknown and not yet said so.
    blocks: AddrMap<u64>,
    /// Live foreign-mode blocks outside the arena, not yet handed to the host.
    foreign: BTreeMap<u64, u64>,
    /// Pages of foreign blocks the host now holds, to protect at the switch to host mode.
    adopt: Vec<u64>,
    /// Never-written bytes of live tracked blocks: start → end, disjoint.
    never: BTreeMap<u64, u64>,
    /// Faults taken per page.
    faults: AddrMap<u32>,
    /// Live tracked-process blocks whose bytes (absolute ranges) are unknown
    /// but not yet said so: `InitUnknown` goes out before foreign code runs.
    deferred: AddrMap<Vec<(u64, u64)>>,
    /// Blocks that had [`WHOLE`] set (the fast path's), maybe freed since,
    /// maybe twice: `blocks` says which still need their `InitUnknown`.
    deferred_whole: Vec<u64>,
    /// The fast paths' cache of `known` (page number, state), direct-mapped
    /// by page; valid while `generation` is `near_gen` (every change to
    /// `known` but an insert bumps it, and an insert changes no cached state).
    near: Near,
    near_gen: u64,
    /// Pages whose state is known without reading the table: 1 (only the
    /// recorder moves a page out of it) and 3 (only the recorder sets it).
    /// Any change but an insert bumps `generation` (`near` caches it).
    known: AddrMap<u8>,
    /// The release epoch (see the module doc), and each page's last release.
    epoch: u32,
    released_at: AddrMap<u32>,
    /// Shim `mprotect`s between their syscall entry and exit: (tid, start, end).
    inflight: Vec<(Pid, u64, u64)>,
    /// Per thread, the last fault retried on a page in state 2 or 3 (rip, page).
    retried: AddrMap<(u64, u64)>,
    pub budget: u32,
    /// Protections of a page after a release, per page, and how many a page
    /// may take before it dies (FFIREC_HOSTINIT_CYCLES). Each
    /// release/protect cycle of a page whose blocks come and go costs ~4-5
    /// ptrace stops (the shim's mprotect stops twice, a write fault or two,
    /// the release's batch); the budget alone let a page cycle ~13 times.
    /// The price: blocks allocated later on a dead page are `unknown` (never
    /// findings), so a buffer the host fills there is not checked.
    reprotects: AddrMap<u32>,
    pub max_cycles: u32,
    /// Current program break, to see the heap shrink.
    last_brk: u64,
    /// Tracked ranges added to the foreign call's guard set.
    in_guards: Vec<(u64, u64)>,
    /// Changes whenever the set of tracked pages may have (a state the
    /// recorder set, a shim mprotect): part of the guard set's reuse key.
    pub generation: u64,
}

impl HostInit {
    pub(crate) fn new(enabled: bool) -> HostInit {
        let budget = std::env::var("FFIREC_HOSTINIT_BUDGET")
            .ok()
            .and_then(|v| v.parse().ok())
            .filter(|&b: &u32| b > 0)
            .unwrap_or(DEFAULT_BUDGET);
        let max_cycles =
            std::env::var("FFIREC_HOSTINIT_CYCLES").ok().and_then(|v| v.parse().ok()).unwrap_or(DEFAULT_CYCLES);
        HostInit { enabled, budget, max_cycles, ..HostInit::default() }
    }

    /// A new program image: nothing is tracked until its entry point.
    pub(crate) fn reset(&mut self) {
        let (enabled, budget, max_cycles) = (self.enabled, self.budget, self.max_cycles);
        *self = HostInit { enabled, budget, max_cycles, ..HostInit::default() };
    }

    /// Process `pid` exec'd: a vfork child has its own memory from now on.
    pub(crate) fn on_exec_of(&mut self, pid: Pid) {
        self.vforked.remove(&pid);
    }

    /// True while host threads of process `pid` must stop at syscalls.
    #[inline]
    pub(crate) fn wants_syscalls(&self, pid: Pid) -> bool {
        self.active && pid == self.pid
    }

    fn never_insert(&mut self, a: u64, b: u64) {
        if a >= b {
            return;
        }
        let (mut a, mut b) = (a, b);
        // Merge with neighbours that touch or overlap.
        if let Some((&s, &e)) = self.never.range(..=a).next_back() {
            if e >= a {
                a = s;
                b = b.max(e);
                self.never.remove(&s);
            }
        }
        let inside: Vec<(u64, u64)> = self.never.range(a..=b).map(|(&s, &e)| (s, e)).collect();
        for (s, e) in inside {
            b = b.max(e);
            self.never.remove(&s);
        }
        self.never.insert(a, b);
    }

    fn never_remove(&mut self, a: u64, b: u64) {
        if a >= b {
            return;
        }
        // From the last range starting below b down to the first ending
        // after a (the ranges are disjoint and sorted): no allocation, this
        // runs for every free.
        while let Some((&s, &e)) = self.never.range(..b).next_back() {
            if e <= a {
                break;
            }
            self.never.remove(&s);
            if e > b {
                self.never.insert(b, e);
            }
            if s < a {
                self.never.insert(s, a);
                break;
            }
        }
    }

    /// Never-written ranges inside [a, b).
    fn never_in(&self, a: u64, b: u64) -> Vec<(u64, u64)> {
        let mut out = Vec::new();
        if let Some((_, &e)) = self.never.range(..a).next_back() {
            if e > a {
                out.push((a, e.min(b)));
            }
        }
        out.extend(self.never.range(a..b).map(|(&s, &e)| (s, e.min(b))));
        out
    }

    /// Table states of the pages covering [a, b), from the cache when every
    /// page is in it (the common case: a block on a page seen before).
    fn cached_states(&mut self, a: u64, b: u64) -> Vec<u8> {
        let (first, last) = (a / PAGE, (b - 1) / PAGE);
        if last - first < 64 {
            let hit: Option<Vec<u8>> = (first..=last).map(|p| self.known.get(&(p * PAGE)).copied()).collect();
            if let Some(v) = hit {
                return v;
            }
        }
        let Some(mem) = &self.mem else { return Vec::new() };
        let states = read_states(mem, a, b);
        for (i, &st) in states.iter().enumerate() {
            if st == ST_PROTECTED || st == ST_DEAD {
                self.known.insert((first + i as u64) * PAGE, st);
            }
        }
        states
    }

    /// Follows one allocation event (after it is written to the trace);
    /// `out` receives the `InitUnknown`s its untracked bytes need.
    /// `epoch`: the one the shim put in the block's record (see the module doc).
    pub(crate) fn on_alloc_event(
        &mut self,
        proc: Pid,
        arena: Option<(u64, u64)>,
        e: &Event,
        epoch: u32,
        out: &mut Vec<Event>,
    ) {
        if !self.enabled {
            return;
        }
        if self.pid == 0 || proc != self.pid {
            // Not the tracked process (or not yet at its entry point): its
            // blocks' writes are not recorded.
            if let Event::Alloc { func, ptr, size, zeroed: false, .. } = *e {
                let in_arena = arena.is_some_and(|(a, b)| ptr >= a && ptr < b);
                if ptr != 0 && size > 0 && !in_arena && !matches!(func, AllocFn::Mmap | AllocFn::Mremap) {
                    out.push(Event::InitUnknown { addr: ptr, len: size });
                }
            }
            return;
        }
        match *e {
            Event::Alloc { func, ptr, size, old_ptr, domain, zeroed, .. } => {
                // realloc: the old bytes' states move with them (the analyzer
                // copies them): never-written ones stay to be tracked, unknown
                // ones stay unknown. Offsets relative to the block.
                let mut old_size = 0;
                let mut carried_never: Vec<(u64, u64)> = Vec::new();
                let mut carried_unknown: Vec<(u64, u64)> = Vec::new();
                if old_ptr != 0 {
                    if let Some(v) = self.blocks.remove(&old_ptr) {
                        let n = v & !WHOLE;
                        if v & WHOLE != 0 {
                            carried_unknown.push((old_ptr, old_ptr.saturating_add(n)));
                        }
                        old_size = n;
                        let end = old_ptr.saturating_add(n);
                        carried_never =
                            self.never_in(old_ptr, end).iter().map(|&(a, b)| (a - old_ptr, b - old_ptr)).collect();
                        self.never_remove(old_ptr, end);
                    }
                    if let Some(v) = self.deferred.remove(&old_ptr) {
                        carried_unknown.extend(v);
                    }
                    carried_unknown.iter_mut().for_each(|r| *r = (r.0 - old_ptr, r.1 - old_ptr));
                    self.foreign.remove(&old_ptr);
                }
                let in_arena = arena.is_some_and(|(a, b)| ptr >= a && ptr < b);
                let mapping = matches!(func, AllocFn::Mmap | AllocFn::Mremap);
                if ptr == 0 || size == 0 || in_arena || mapping {
                    return;
                }
                if domain != Domain::Host {
                    self.foreign.insert(ptr, size);
                    return;
                }
                self.blocks.insert(ptr, size);
                if zeroed {
                    return;
                }
                let keep = old_size.min(size);
                let end = ptr.saturating_add(size);
                let mut unknown: Vec<(u64, u64)> = carried_unknown
                    .iter()
                    .filter(|&&(a, _)| a < keep)
                    .map(|&(a, b)| (ptr + a, ptr + b.min(keep)))
                    .collect();
                let mut want: Vec<(u64, u64)> = carried_never
                    .iter()
                    .filter(|&&(a, _)| a < keep)
                    .map(|&(a, b)| (ptr + a, ptr + b.min(keep)))
                    .collect();
                if ptr + keep < end {
                    want.push((ptr + keep, end));
                }
                for (start, end) in want {
                    let states = self.cached_states(start, end);
                    let first = start / PAGE;
                    let mut pos = start;
                    while pos < end {
                        let pg = pos / PAGE;
                        let pe = end.min((pg + 1) * PAGE);
                        let st = states.get((pg - first) as usize).copied().unwrap_or(0);
                        if st == ST_PROTECTED && self.protected_since(pg * PAGE, epoch) {
                            self.never_insert(pos, pe);
                        } else {
                            match unknown.last_mut() {
                                Some(last) if last.1 == pos => last.1 = pe,
                                _ => unknown.push((pos, pe)),
                            }
                        }
                        pos = pe;
                    }
                }
                // Said at the next switch to foreign code, if still live: a
                // block allocated and freed in between costs no event.
                if !unknown.is_empty() {
                    self.deferred.insert(ptr, unknown);
                }
                let _ = out;
            }
            Event::Free { ptr, .. } => {
                self.foreign.remove(&ptr);
                self.deferred.remove(&ptr);
                if let Some(n) = self.blocks.remove(&ptr).filter(|v| v & WHOLE == 0) {
                    self.never_remove(ptr, ptr.saturating_add(n));
                }
            }
            _ => {}
        }
    }

    /// Page `page` (state 1 now) has not been released since the shim read
    /// `epoch` (0: unknown): it was read-only all along.
    #[inline]
    fn protected_since(&self, page: u64, epoch: u32) -> bool {
        match self.released_at.get(&page) {
            None => true,
            Some(&r) => epoch != 0 && r < epoch,
        }
    }

    /// The deferred `InitUnknown`s of live blocks (see `on_alloc_event`).
    pub(crate) fn take_deferred(&mut self) -> Vec<Event> {
        let d = std::mem::take(&mut self.deferred);
        let mut out: Vec<Event> =
            d.into_values().flatten().map(|(a, b)| Event::InitUnknown { addr: a, len: b - a }).collect();
        for p in std::mem::take(&mut self.deferred_whole) {
            if let Some(v) = self.blocks.get_mut(&p).filter(|v| **v & WHOLE != 0) {
                *v &= !WHOLE;
                out.push(Event::InitUnknown { addr: p, len: *v });
            }
        }
        out
    }

    /// Fast path of [`Self::on_alloc_event`] for a plain host `malloc` of the
    /// tracked process (not zeroed, no old block, not in the arena) whose
    /// few pages' states are all cached and alike. False: nothing done, take
    /// the general path.
    #[inline]
    pub(crate) fn fast_malloc(&mut self, proc: Pid, ptr: u64, size: u64, epoch: u32) -> bool {
        let Some(dead) = self.fast_pages(proc, ptr, size, epoch) else { return false };
        if dead {
            self.blocks.insert(ptr, size | WHOLE);
            self.deferred_whole.push(ptr);
            if self.deferred_whole.len() >= 4096 && self.deferred_whole.len() > 2 * self.blocks.len() {
                // Mostly freed since: keep the live ones, once each.
                let blocks = &self.blocks;
                self.deferred_whole.retain(|p| blocks.get(p).is_some_and(|v| v & WHOLE != 0));
                self.deferred_whole.sort_unstable();
                self.deferred_whole.dedup();
            }
        } else {
            self.blocks.insert(ptr, size);
            self.never_insert(ptr, ptr.saturating_add(size));
        }
        true
    }

    /// [`Self::fast_malloc`] then [`Self::fast_free`] of the same block (a
    /// malloc whose next record is its free, the rule in allocation-heavy
    /// loops). On dead pages the block was never tracked, and freed before
    /// its `InitUnknown` could be said: the pair leaves exactly what the
    /// free alone would (no entry for `ptr` in `blocks`, `foreign` or
    /// `deferred`; a `deferred_whole` entry would find no block), so the
    /// malloc's insert and the free's removal are skipped. False: nothing
    /// done, take the general path for the malloc.
    #[inline]
    pub(crate) fn fast_pair(&mut self, proc: Pid, ptr: u64, size: u64, epoch: u32) -> bool {
        match self.fast_pages(proc, ptr, size, epoch) {
            None => false,
            Some(true) => {
                if !self.foreign.is_empty() {
                    self.foreign.remove(&ptr);
                }
                if !self.deferred.is_empty() {
                    self.deferred.remove(&ptr);
                }
                // An entry left by a free we never saw: the malloc would
                // have replaced it (WHOLE set) and the free removed it.
                self.blocks.remove(&ptr);
                true
            }
            Some(false) => self.fast_malloc(proc, ptr, size, epoch) && self.fast_free(proc, ptr),
        }
    }

    /// The fast paths' check of a block's pages: Some(true) when every page
    /// is dead, Some(false) when every page is tracked (protected since the
    /// record's `epoch`), None when the general path must decide (another
    /// process, an empty block, more than 4 pages, a state not cached,
    /// mixed states).
    #[inline(always)]
    fn fast_pages(&mut self, proc: Pid, ptr: u64, size: u64, epoch: u32) -> Option<bool> {
        if proc != self.pid || self.pid == 0 || ptr == 0 || size == 0 || size & WHOLE != 0 {
            return None;
        }
        let end = ptr.saturating_add(size);
        let (first, last) = (ptr / PAGE, (end - 1) / PAGE);
        if last - first > 3 {
            return None;
        }
        if self.near_gen != self.generation {
            self.near = Near::default();
            self.near_gen = self.generation;
        }
        let (mut tracked, mut dead) = (0, 0);
        for pg in first..=last {
            let slot = &mut self.near.0[pg as usize % NEAR];
            let st = if slot.0 == pg {
                slot.1
            } else {
                let &st = self.known.get(&(pg * PAGE))?;
                *slot = (pg, st);
                st
            };
            match st {
                ST_PROTECTED if self.protected_since(pg * PAGE, epoch) => tracked += 1,
                ST_DEAD => dead += 1,
                _ => return None,
            }
        }
        match (tracked, dead) {
            (0, _) => Some(true),
            (_, 0) => Some(false),
            _ => None,
        }
    }

    /// Fast path of [`Self::on_alloc_event`] for a plain host `free` of the
    /// tracked process. False: take the general path.
    #[inline]
    pub(crate) fn fast_free(&mut self, proc: Pid, ptr: u64) -> bool {
        if proc != self.pid || self.pid == 0 {
            return false;
        }
        if !self.foreign.is_empty() {
            self.foreign.remove(&ptr);
        }
        if !self.deferred.is_empty() {
            self.deferred.remove(&ptr);
        }
        if let Some(n) = self.blocks.remove(&ptr).filter(|v| v & WHOLE == 0) {
            self.never_remove(ptr, ptr.saturating_add(n));
        }
        true
    }
}

/// Table states of the pages covering [a, b) (zeros where unreadable).
fn read_states(mem: &Mem, a: u64, b: u64) -> Vec<u8> {
    if a >= b {
        return Vec::new();
    }
    let (first, last) = (a / PAGE, (b - 1) / PAGE);
    let n = (last - first + 1).min(1 << 24) as usize;
    let mut buf = vec![0u8; n];
    if first.saturating_add(n as u64) <= TABLE_PAGES {
        let got = mem.read_partial(RemoteAddr(TABLE + first), &mut buf);
        buf[got..].fill(0);
    } else {
        buf.fill(0);
    }
    buf
}

/// Tracked pages (state 1) as byte ranges, from the read-only private
/// anonymous mappings in `maps`.
fn protected_in(mem: &Mem, maps: &[crate::maps::Mapping]) -> Vec<(u64, u64)> {
    let mut out = Vec::new();
    for m in maps {
        if m.prot != PROT_R || m.shared || m.is_file() || m.start == TABLE {
            continue;
        }
        if m.path.starts_with('[') && m.path != "[heap]" {
            continue;
        }
        out.extend(tracked_runs(mem, m.start, m.end));
    }
    out
}

const TABLE_PAGES: u64 = crate::alloc::HOSTINIT_TABLE.end - crate::alloc::HOSTINIT_TABLE.start;

/// Runs of pages in `[a, b)` whose state is `want`, as byte ranges.
fn runs_of(mem: &Mem, a: u64, b: u64, want: u8) -> Vec<(u64, u64)> {
    runs_where(mem, a, b, |st| st == want)
}

/// Runs of pages in `[a, b)` that are read-only for tracking: protected (1)
/// or being protected by the shim (4: read-only already, or about to be).
fn tracked_runs(mem: &Mem, a: u64, b: u64) -> Vec<(u64, u64)> {
    runs_where(mem, a, b, |st| st == ST_PROTECTED || st == ST_PROTECTING)
}

fn runs_where(mem: &Mem, a: u64, b: u64, f: impl Fn(u8) -> bool) -> Vec<(u64, u64)> {
    let states = read_states(mem, a, b);
    let first = a / PAGE;
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (i, &st) in states.iter().enumerate() {
        if !f(st) {
            continue;
        }
        let s = (first + i as u64) * PAGE;
        match out.last_mut() {
            Some(last) if last.1 == s => last.1 = s + PAGE,
            _ => out.push((s, s + PAGE)),
        }
    }
    out
}

fn set_states(mem: &Mem, a: u64, b: u64, st: u8) -> Result<(), Error> {
    if a >= b || b / PAGE > TABLE_PAGES {
        return Ok(());
    }
    let (first, last) = (a / PAGE, (b - 1) / PAGE);
    let buf = vec![st; (last - first + 1) as usize];
    mem.write(RemoteAddr(TABLE + first), &buf)
}

fn pages(a: u64, b: u64) -> (u64, u64) {
    (a & !(PAGE - 1), (b + PAGE - 1) & !(PAGE - 1))
}

impl Tracer {
    /// Sets the table state of the pages covering [a, b) in the active
    /// process (and the cache, when it is the tracked one).
    fn hi_set(&mut self, a: u64, b: u64, st: u8) -> Result<(), Error> {
        if st != ST_PROTECTED && self.pid == self.hostinit.pid && a < b {
            // A release: the epoch moves first (see the module doc).
            let (s, e) = pages(a, b);
            let states = read_states(&self.mem, s, e);
            if states.iter().any(|&x| x != 0) {
                self.hostinit.epoch += 1;
                let epoch = self.hostinit.epoch;
                if let Some(al) = &self.alloc {
                    al.set_hostinit_epoch(u64::from(epoch));
                }
                for (i, &x) in states.iter().enumerate() {
                    if x != 0 {
                        self.hostinit.released_at.insert(s + i as u64 * PAGE, epoch);
                    }
                }
                set_states(&self.mem, a, b, st)?;
                // Once more after the table says so: a shim that reads this
                // epoch sees the new state, so its blocks are tracked again.
                self.hostinit.epoch += 1;
                if let Some(al) = &self.alloc {
                    al.set_hostinit_epoch(u64::from(self.hostinit.epoch));
                }
            }
        }
        set_states(&self.mem, a, b, st)?;
        self.hostinit.generation += 1;
        if self.pid == self.hostinit.pid && a < b {
            let (s, e) = pages(a, b);
            if (e - s) / PAGE > self.hostinit.known.len() as u64 {
                self.hostinit.known.retain(|&p, _| p < s || p >= e);
            } else {
                let mut p = s;
                while p < e {
                    self.hostinit.known.remove(&p);
                    p += PAGE;
                }
            }
            if st == ST_PROTECTED || st == ST_DEAD {
                let mut p = s;
                while p < e && (e - s) / PAGE <= 1 << 16 {
                    self.hostinit.known.insert(p, st);
                    p += PAGE;
                }
            }
        }
        Ok(())
    }

    /// At the program's entry point: tell the shim to protect host blocks,
    /// if it could map its table.
    pub(crate) fn hostinit_activate(&mut self) -> Result<(), Error> {
        let first = self.hostinit.pid == 0 || self.hostinit.pid == self.pid;
        if !self.hostinit.enabled || self.hostinit.active || self.pid != self.root || !first {
            return Ok(());
        }
        let maps = crate::maps::read(self.pid)?;
        if !maps.iter().any(|m| m.start == TABLE && !m.is_file() && !m.shared) {
            return Ok(());
        }
        self.hostinit.last_brk = maps.iter().find(|m| m.path == "[heap]").map_or(0, |m| m.end);
        if let Some(a) = &self.alloc {
            a.set_hostinit_pid(self.pid as u32);
            self.hostinit.pid = self.pid;
            self.hostinit.mem = Some(Mem::open(self.pid)?);
            self.hostinit.active = true;
            self.hostinit.epoch = 1;
            a.set_hostinit_epoch(1);
        }
        Ok(())
    }

    /// A new image replaced the process: the shim there starts over.
    pub(crate) fn hostinit_on_exec(&mut self) {
        if self.pid != self.hostinit.pid {
            return;
        }
        if let Some(a) = &self.alloc {
            a.set_hostinit_pid(0);
        }
        self.hostinit.reset();
    }

    /// The guard set is reused (see `compute_guards`): the tracked pages in
    /// it are the ones it was computed with.
    pub(crate) fn hostinit_guards_reused(&mut self, tracked: Vec<(u64, u64)>) {
        if self.hi_here() {
            self.hostinit.in_guards = tracked;
        }
    }

    /// Tracked pages (state 1 or 4) of the active process as byte ranges.
    pub(crate) fn hostinit_protected(&self, maps: &[crate::maps::Mapping]) -> Vec<(u64, u64)> {
        if !self.hostinit.enabled {
            return Vec::new();
        }
        protected_in(&self.mem, maps)
    }

    /// A vfork child shares its parent's memory (until it execs): its
    /// "inherited" pages are the parent's own, so they are not given back.
    pub(crate) fn hostinit_on_vfork(&mut self, child: Pid) {
        if self.hi_here() {
            self.hostinit.released_procs.insert(child);
            self.hostinit.vforked.insert(child);
        }
    }

    /// True when the active process is the tracked one and tracking is on.
    #[inline]
    pub(crate) fn hi_here(&self) -> bool {
        self.hostinit.active && self.pid == self.hostinit.pid
    }

    /// At a stop where code may run in the tracee (signal or interrupt
    /// stop): the first stop of another process that inherited tracked pages
    /// (a forked child: its shim never protects, so it gets them back
    /// read-write; its blocks are unknown).
    pub(crate) fn hostinit_at_stop(&mut self, tid: Pid) -> Result<(), Error> {
        if !self.hostinit.enabled || !self.threads.contains_key(&tid) || self.pid == self.hostinit.pid {
            return Ok(());
        }
        if self.hostinit.pid == 0 || !self.hostinit.released_procs.insert(self.pid) {
            return Ok(());
        }
        let maps = crate::maps::read(self.pid)?;
        let ranges = self.hostinit_protected(&maps);
        if ranges.is_empty() {
            return Ok(());
        }
        let regs = sys::getregs(tid)?;
        let batch: Vec<(u64, u64, u32)> = ranges.iter().map(|&(a, b)| (a, b - a, PROT_R | PROT_W)).collect();
        self.run_batch(tid, &regs, &batch)?;
        sys::setregs(tid, &regs)
    }

    /// Before foreign code runs (call entry, callback return): the deferred
    /// `InitUnknown`s of live host blocks.
    pub(crate) fn hostinit_flush(&mut self) -> Result<(), Error> {
        if self.hostinit.deferred.is_empty() && self.hostinit.deferred_whole.is_empty() {
            return Ok(());
        }
        for ev in self.hostinit.take_deferred() {
            self.sink.push(ev)?;
        }
        Ok(())
    }

    /// Guard-set hook: tracked pages are guarded too (their maps protection
    /// is read-only, so `compute_guards` skips them); they are opened
    /// read-write inside the call and read-only again at its end.
    pub(crate) fn hostinit_guards(&mut self, maps: &[crate::maps::Mapping]) -> Vec<(u64, u64)> {
        if !self.hi_here() {
            return Vec::new();
        }
        let ranges = self.hostinit_protected(maps);
        self.hostinit.in_guards = ranges.clone();
        ranges
    }

    /// `values` reached host code (a foreign call's return registers, a
    /// callback's arguments): a foreign block they point into is the host's
    /// now, and its host writes must be recorded too. Its pages are protected
    /// at the switch to host mode; where that cannot be, its bytes become unknown.
    pub(crate) fn hostinit_on_escape(&mut self, values: &[u64]) -> Result<(), Error> {
        if !self.hostinit.enabled || self.pid != self.hostinit.pid {
            return Ok(());
        }
        for &v in values {
            let Some((&p, &n)) = self.hostinit.foreign.range(..=v).next_back() else { continue };
            if v >= p.saturating_add(n) {
                continue;
            }
            self.hostinit.foreign.remove(&p);
            self.hostinit.blocks.insert(p, n);
            let end = p.saturating_add(n);
            let states = read_states(&self.mem, p, end);
            let mut pos = p;
            while pos < end {
                let pg = pos & !(PAGE - 1);
                let pe = end.min(pg + PAGE);
                if states.get(((pg - (p & !(PAGE - 1))) / PAGE) as usize).copied() == Some(ST_DEAD) {
                    self.sink.push(Event::InitUnknown { addr: pos, len: pe - pos })?;
                } else {
                    // Everything counts as never written: the library's writes
                    // are the analyzer's to know; host writes fault and are recorded.
                    self.hostinit.never_insert(pos, pe);
                    if !self.hostinit.adopt.contains(&pg) {
                        self.hostinit.adopt.push(pg);
                    }
                }
                pos = pe;
            }
        }
        Ok(())
    }

    /// `switch_to_host` hook: the tracked pages among the guards go back to
    /// read-only (after the guard batch has restored them read-write), and
    /// pages of foreign blocks the host now holds become tracked.
    pub(crate) fn hostinit_unguard_batch(&mut self) -> Vec<(u64, u64, u32)> {
        if !self.hi_here() {
            return Vec::new();
        }
        let ranges = std::mem::take(&mut self.hostinit.in_guards);
        let mut out = Vec::new();
        for p in std::mem::take(&mut self.hostinit.adopt) {
            if self.hi_set(p, p + PAGE, ST_PROTECTED).is_ok() {
                out.push((p, PAGE, PROT_R));
            }
        }
        for (a, b) in ranges {
            for (s, e) in tracked_runs(&self.mem, a, b) {
                out.push((s, e - s, PROT_R));
            }
        }
        out
    }

    /// `release_blocked` hook: the guard batch restores tracked pages
    /// read-write; this batch makes them read-only again, except those the
    /// owner's syscall in progress may be writing (`open`): they leave
    /// tracking for good (the kernel must not fail with EFAULT).
    pub(crate) fn hostinit_release_batch(&mut self, open: &[(u64, u64, u32)]) -> Result<Vec<(u64, u64, u32)>, Error> {
        if !self.hi_here() {
            return Ok(Vec::new());
        }
        let mut kill = Vec::new();
        for (a, b) in self.hostinit.in_guards.clone() {
            for (s, e) in tracked_runs(&self.mem, a, b) {
                let mut p = s;
                while p < e {
                    if open.iter().any(|&(x, l, _)| x < p + PAGE && p < x + l) {
                        kill.push(p);
                    }
                    p += PAGE;
                }
            }
        }
        for &p in &kill {
            self.hostinit_kill(p, p + PAGE)?;
        }
        Ok(self.hostinit_unguard_batch())
    }

    /// A forked child is not traced: its copy of the tracked pages goes back
    /// to read-write (added to `release_child`'s batch).
    pub(crate) fn hostinit_child_batch(&self) -> Vec<(u64, u64, u32)> {
        let Some(mem) = self.hostinit.mem.as_ref().filter(|_| self.hostinit.active) else { return Vec::new() };
        let Ok(maps) = crate::maps::read(self.hostinit.pid) else { return Vec::new() };
        protected_in(mem, &maps).into_iter().map(|(a, b)| (a, b - a, PROT_R | PROT_W)).collect()
    }

    /// A write fault in host mode. Ok(false): not ours (the program's).
    pub(crate) fn hostinit_fault(&mut self, tid: Pid, raw: RawRegs, addr: u64) -> Result<bool, Error> {
        let page = addr & !(PAGE - 1);
        // A vfork child writes its parent's memory: the same pages, the same model.
        if self.pid != self.hostinit.pid && !self.hostinit.vforked.contains(&self.pid) {
            return Ok(false);
        }
        if !self.hostinit.active {
            return Ok(false);
        }
        // States 1 and 3 in the cache are the table's (only the recorder
        // moves a page out of them): no read of the table then.
        let st = match self.hostinit.known.get(&page) {
            Some(&st) => st,
            None => read_states(&self.mem, page, page + 1).first().copied().unwrap_or(0),
        };
        if st == ST_PROTECTED || st == ST_PROTECTING || st == ST_RELEASED || st == ST_DEAD {
            self.burst_stop(tid);
        }
        if st == ST_RELEASED || st == ST_DEAD {
            // Raced a release (the fault was queued before the page became
            // writable), or a shim mprotect that landed after one is still
            // in flight (its exit undoes it): run it again. Once otherwise.
            let inflight = self.hostinit.inflight.iter().any(|&(_, a, b)| page >= a && page < b);
            let again = self.hostinit.retried.get(&(tid as u64)) != Some(&(raw.rip, page));
            if inflight || again {
                self.hostinit.retried.insert(tid as u64, (raw.rip, page));
                self.resume(tid, 0)?;
                return Ok(true);
            }
            self.hostinit.retried.remove(&(tid as u64));
            return Ok(false);
        }
        if st != ST_PROTECTED && st != ST_PROTECTING {
            return Ok(false);
        }
        self.hostinit.retried.remove(&(tid as u64));
        self.sink.counters.hostinit_faults += 1;
        // The analyzer gives each process its own memory; a vfork child's
        // writes land in its parent's, so they are recorded as the parent's
        // (a zero-length write first, so an `InitUnknown` lands there too).
        let wtid = if self.pid == self.hostinit.pid { tid } else { self.hostinit.pid };
        if wtid != tid {
            self.sink.push(Event::HostWrite { tid: wtid as u32, addr, len: 0 })?;
        }
        // Decode: every range the instruction writes.
        let mut code = [0u8; 16];
        let n = self.mem.read_partial(RemoteAddr(raw.rip), &mut code);
        let regs = sys::to_regs(&raw);
        let mut ranges = Vec::with_capacity(4);
        let mut emulation: Option<Emulation> = None;
        let mut instr: Option<iced_x86::Instruction> = None;
        let mut next_ip = 0;
        if let Ok(d) = self.decode.get_or_decode(raw.rip, &code[..n]) {
            next_ip = d.next_ip();
            emulation = d.emulation().copied();
            instr = Some(*d.instruction());
            let mut vregs = Vec::new();
            if !d.needed_vregs().is_empty() {
                let need: Vec<(ffirec_format::VecRegKind, u8)> = d.needed_vregs().to_vec();
                let got = sys::get_xstate(tid, &mut self.xsave)?;
                for (kind, index) in need {
                    let bytes = self.xsave_layout.get(&self.xsave[..got], kind, usize::from(index));
                    vregs.push(ffirec_format::VecReg { kind, index, bytes });
                }
            }
            if d.accesses_into(&regs, &vregs, &mut ranges).is_err() {
                ranges.clear();
            }
        }
        let writes: Vec<(u64, u64)> = ranges
            .iter()
            .filter(|r| r.rw != Rw::Read && r.size > 0)
            .map(|r| (r.addr, r.addr.saturating_add(r.size)))
            .collect();
        let covers_fault = writes.iter().any(|&(a, b)| a <= addr && addr < b);
        for &(a, b) in &writes {
            if covers_fault {
                self.sink.push(Event::HostWrite { tid: wtid as u32, addr: a, len: b - a })?;
                self.hostinit.never_remove(a, b);
            }
        }
        // The tracked pages this instruction writes (at least the fault's).
        let mut touched: Vec<u64> = vec![page];
        if covers_fault {
            for &(a, b) in &writes {
                let (s, e) = pages(a, b);
                if (s, e) == (page, page + PAGE) {
                    continue; // the fault's own page, in already
                }
                for (rs, re) in runs_of(&self.mem, s, e, ST_PROTECTED) {
                    let mut p = rs;
                    while p < re {
                        if !touched.contains(&p) {
                            touched.push(p);
                        }
                        p += PAGE;
                    }
                }
            }
        }
        let emulate = covers_fault
            && match emulation {
                Some(Emulation::Store { .. } | Emulation::VecStore { .. }) => true,
                _ => instr.as_ref().is_some_and(is_rep_string),
            };
        let mut release: Vec<(u64, u8)> = Vec::new();
        let mut keep: Vec<u64> = Vec::new();
        for &p in &touched {
            let count = {
                let c = self.hostinit.faults.entry(p).or_insert(0);
                *c += 1;
                *c
            };
            let left = self.hostinit.never_in(p, p + PAGE);
            if left.is_empty() {
                // The release's batch is a stop too.
                if let Some(c) = self.hostinit.faults.get_mut(&p) {
                    *c += 1;
                }
                release.push((p, ST_RELEASED));
            } else if count > self.hostinit.budget || !covers_fault {
                for &(a, b) in &left {
                    self.sink.push(Event::InitUnknown { addr: a, len: b - a })?;
                }
                self.hostinit.never_remove(p, p + PAGE);
                release.push((p, if count > self.hostinit.budget { ST_DEAD } else { ST_RELEASED }));
            } else {
                keep.push(p);
            }
        }
        if !release.is_empty() {
            let batch: Vec<(u64, u64, u32)> = release.iter().map(|&(p, _)| (p, PAGE, PROT_R | PROT_W)).collect();
            self.run_batch(tid, &raw, &batch)?;
            for &(p, st) in &release {
                self.hi_set(p, p + PAGE, st)?;
                if st == ST_DEAD {
                    self.sink.counters.hostinit_dead += 1;
                } else {
                    self.sink.counters.hostinit_released += 1;
                }
            }
            sys::setregs(tid, &raw)?;
        }
        if emulate {
            let done = match (emulation, instr) {
                (Some(emu), _) => self.emulate(tid, raw, regs, &emu, next_ip, None)?,
                (None, Some(i)) => self.emulate_rep(tid, raw, &i)?,
                _ => false,
            };
            if done {
                self.sink.counters.hostinit_emulated += 1;
                return Ok(true);
            }
        }
        self.sink.counters.hostinit_reexecuted += 1;
        if keep.is_empty() {
            // Every page it writes is released: it runs natively.
            self.resume(tid, 0)?;
            return Ok(true);
        }
        if self.others_live(tid) {
            // Opening the pages for one instruction would open them for
            // every other thread too: they leave tracking for good instead
            // (never-written bytes unknown) and the instruction runs natively.
            let mut batch = Vec::with_capacity(keep.len());
            for &p in &keep {
                self.hostinit_kill(p, p + PAGE)?;
                batch.push((p, PAGE, PROT_R | PROT_W));
            }
            self.run_batch(tid, &raw, &batch)?;
            sys::setregs(tid, &raw)?;
            self.resume(tid, 0)?;
            return Ok(true);
        }
        // Anything else (masked or atomic stores, ...): open the pages, step
        // over it, protect them again. This process has one thread, so the
        // window is this instruction's alone.
        self.hostinit_step(tid, raw, &keep)?;
        Ok(true)
    }

    /// Single-steps the instruction at `raw.rip` with `keep` pages read-write.
    fn hostinit_step(&mut self, tid: Pid, raw: RawRegs, keep: &[u64]) -> Result<(), Error> {
        let open: Vec<(u64, u64, u32)> = keep.iter().map(|&p| (p, PAGE, PROT_R | PROT_W)).collect();
        self.run_batch(tid, &raw, &open)?;
        sys::setregs(tid, &raw)?;
        sys::singlestep(tid, 0)?;
        let mut deferred = Vec::new();
        let after = loop {
            match self.wait_thread(tid)? {
                crate::process::Stop::Signal { signal: libc::SIGTRAP, .. } => break Some(sys::getregs(tid)?),
                crate::process::Stop::Signal { signal: libc::SIGSEGV, .. } => break None,
                crate::process::Stop::Signal { signal, .. } => {
                    deferred.push(signal);
                    sys::singlestep(tid, 0)?;
                }
                crate::process::Stop::Exited { .. } | crate::process::Stop::Killed { .. } => {
                    return Err(Error::TraceeDied { pid: tid })
                }
                _ => sys::singlestep(tid, 0)?,
            }
        };
        match after {
            Some(after) => {
                let mut close = Vec::new();
                for &p in keep {
                    if self.hostinit.never_in(p, p + PAGE).is_empty() {
                        self.hi_set(p, p + PAGE, ST_RELEASED)?;
                        self.sink.counters.hostinit_released += 1;
                    } else {
                        close.push((p, PAGE, PROT_R));
                    }
                }
                if !close.is_empty() {
                    self.run_batch(tid, &after, &close)?;
                }
                sys::setregs(tid, &after)?;
            }
            None => {
                // It faulted elsewhere (a range the decoder did not predict):
                // the opened pages leave tracking; the instruction runs again.
                let now = sys::getregs(tid)?;
                for &p in keep {
                    for (a, b) in self.hostinit.never_in(p, p + PAGE) {
                        self.sink.push(Event::InitUnknown { addr: a, len: b - a })?;
                    }
                    self.hostinit.never_remove(p, p + PAGE);
                    self.hi_set(p, p + PAGE, ST_RELEASED)?;
                }
                sys::setregs(tid, &now)?;
            }
        }
        for s in deferred {
            let _ = sys::tgkill(self.pid, tid, s);
        }
        self.resume(tid, 0)
    }

    /// `rep stos` / `rep movs` (direction flag clear), performed through
    /// `/proc/PID/mem`: one fault for a whole `memset`/`memcpy`.
    fn emulate_rep(&mut self, tid: Pid, mut raw: RawRegs, i: &iced_x86::Instruction) -> Result<bool, Error> {
        use iced_x86::Mnemonic::*;
        let size: u64 = match i.mnemonic() {
            Stosb | Movsb => 1,
            Stosw | Movsw => 2,
            Stosd | Movsd => 4,
            Stosq | Movsq => 8,
            _ => return Ok(false),
        };
        let df = raw.eflags & (1 << 10) != 0;
        if df || i.op0_kind() != iced_x86::OpKind::MemoryESRDI {
            return Ok(false);
        }
        let total = raw.rcx.saturating_mul(size);
        if total == 0 || total > REP_MAX {
            return Ok(false);
        }
        let dst = raw.rdi;
        let buf = if matches!(i.mnemonic(), Stosb | Stosw | Stosd | Stosq) {
            let pat = raw.rax.to_le_bytes();
            (0..total as usize).map(|k| pat[k % size as usize]).collect::<Vec<u8>>()
        } else {
            let src = raw.rsi;
            // Forward copy onto a later overlapping destination repeats a
            // pattern: leave that to the CPU.
            if dst > src && dst < src.saturating_add(total) {
                return Ok(false);
            }
            let mut b = vec![0u8; total as usize];
            if self.mem.read_partial(RemoteAddr(src), &mut b) != b.len() {
                return Ok(false);
            }
            raw.rsi = src + total;
            b
        };
        if self.mem.write(RemoteAddr(dst), &buf).is_err() {
            return Ok(false);
        }
        raw.rdi = dst + total;
        raw.rcx = 0;
        raw.rip = i.next_ip();
        sys::setregs(tid, &raw)?;
        self.resume(tid, 0)?;
        Ok(true)
    }

    /// Host-mode syscall entry: open the tracked pages the kernel will
    /// write (the syscall is skipped, then re-executed with them open).
    pub(crate) fn hostinit_syscall_entry(
        &mut self,
        tid: Pid,
        regs: RawRegs,
        nr: u64,
        args: [u64; 6],
    ) -> Result<(), Error> {
        if self.pid != self.hostinit.pid || !self.hostinit.active {
            self.set_sys(tid, SysState::InSyscall { nr, args, open: Vec::new(), ranges: Vec::new(), known: true });
            return self.resume(tid, 0);
        }
        self.burst_stop(tid);
        // This thread's previous syscall is over, whether its exit was seen or not.
        self.hostinit.inflight.retain(|&(t, _, _)| t != tid);
        if nr == libc::SYS_mprotect as u64 && self.in_shim_text(regs.rip) {
            // The shim protecting a new block's pages: in flight until its exit.
            let (a, b) = pages(args[0], args[0].saturating_add(args[1]));
            self.hostinit.inflight.push((tid, a, b));
            self.set_sys(tid, SysState::InSyscall { nr, args, open: Vec::new(), ranges: Vec::new(), known: true });
            return self.resume(tid, 0);
        }
        let (ranges, known) = crate::syscalls::ranges_of(self, nr, args);
        // Opening a page for the kernel opens it for every other thread too:
        // with others alive, the pages it writes leave tracking instead.
        let shared = self.others_live(tid);
        let mut open: Vec<(u64, u64, u32)> = Vec::new();
        let mut kill: Vec<(u64, u64)> = Vec::new();
        if nr == libc::SYS_sigaltstack as u64 && args[0] != 0 {
            // The kernel writes signal frames there: never protect it.
            let mut ss = [0u8; 24];
            if self.mem.read_partial(RemoteAddr(args[0]), &mut ss) == 24 {
                let sp = u64::from_le_bytes(ss[0..8].try_into().unwrap_or([0; 8]));
                let size = u64::from_le_bytes(ss[16..24].try_into().unwrap_or([0; 8]));
                if sp != 0 && size != 0 && size < 1 << 30 {
                    let (a, b) = pages(sp, sp + size);
                    kill.extend(runs_of(&self.mem, a, b, ST_PROTECTED));
                    kill.extend(runs_of(&self.mem, a, b, ST_RELEASED));
                }
            }
        }
        for t in &ranges {
            let r = t.range;
            if r.write && r.len > 0 {
                let (a, b) = pages(r.addr, r.addr.saturating_add(r.len));
                kill.extend(runs_of(&self.mem, a, b, ST_PROTECTING));
                for (s, e) in runs_of(&self.mem, a, b, ST_PROTECTED) {
                    if shared {
                        kill.push((s, e));
                    } else if !open.iter().any(|&(x, l, _)| x <= s && e <= x + l) {
                        open.push((s, e - s, PROT_R | PROT_W));
                    }
                }
            }
        }
        if !kill.is_empty() {
            for &(a, b) in &kill {
                self.hostinit_kill(a, b)?;
            }
            let batch: Vec<(u64, u64, u32)> = kill.iter().map(|&(a, b)| (a, b - a, PROT_R | PROT_W)).collect();
            open.retain(|&(x, l, _)| !kill.iter().any(|&(a, b)| a <= x && x + l <= b));
            open.extend(batch.iter().copied().map(|(a, l, p)| (a, l, p | 0x8000_0000)));
        }
        if open.is_empty() {
            self.set_sys(tid, SysState::InSyscall { nr, args, open, ranges, known });
            return self.resume(tid, 0);
        }
        self.sink.counters.hostinit_syscalls += 1;
        let batch: Vec<(u64, u64, u32)> = open.iter().map(|&(a, l, p)| (a, l, p & 0xff)).collect();
        self.reissue_with(tid, &regs, &batch, SysState::Prepared { rip: regs.rip, nr, open, ranges, known })
    }

    /// Host-mode syscall exit: record what the kernel wrote into tracked
    /// blocks, protect again what still has never-written bytes, and keep
    /// the table true across unmaps, moves and the program's own mprotect.
    pub(crate) fn hostinit_syscall_exit(
        &mut self,
        tid: Pid,
        nr: u64,
        args: [u64; 6],
        open: Vec<(u64, u64, u32)>,
        ranges: Vec<Touch>,
        known: bool,
    ) -> Result<(), Error> {
        if self.pid != self.hostinit.pid {
            if self.pinned_tid.is_some() {
                let ret = sys::getregs(tid)?.rax as i64;
                self.hide_pin(tid, nr, args, ret)?;
            }
            return self.resume(tid, 0);
        }
        self.burst_stop(tid);
        let mut regs = sys::getregs(tid)?;
        let ret = regs.rax as i64;
        self.hide_pin(tid, nr, args, ret)?;
        if known {
            for r in crate::syscalls::actual(&ranges, ret) {
                if !r.write || r.len == 0 {
                    continue;
                }
                let (a, b) = (r.addr, r.addr.saturating_add(r.len));
                // Pages released for good at the entry: what it wrote there
                // is still known.
                let killed = open.iter().any(|&(x, l, p)| p & 0x8000_0000 != 0 && x < b && a < x + l);
                if killed || !self.hostinit.never_in(a, b).is_empty() {
                    self.sink.push(Event::HostWrite { tid: tid as u32, addr: a, len: r.len })?;
                    self.hostinit.never_remove(a, b);
                }
            }
        }
        let mut batch: Vec<(u64, u64, u32)> = Vec::new();
        for &(a, l, p) in &open {
            if p & 0x8000_0000 != 0 {
                continue; // killed at entry: stays read-write
            }
            let mut pg = a;
            while pg < a + l {
                if self.hostinit.never_in(pg, pg + PAGE).is_empty() {
                    self.hi_set(pg, pg + PAGE, ST_RELEASED)?;
                    self.sink.counters.hostinit_released += 1;
                } else {
                    batch.push((pg, PAGE, PROT_R));
                }
                pg += PAGE;
            }
        }
        if !batch.is_empty() {
            self.run_batch(tid, &regs, &batch)?;
            sys::setregs(tid, &regs)?;
        }
        if nr == libc::SYS_mprotect as u64 {
            if let Some(i) = self.hostinit.inflight.iter().position(|&(t, _, _)| t == tid) {
                // A shim mprotect that landed after the recorder released one
                // of its pages made it read-only again: writable it stays.
                let (_, a, b) = self.hostinit.inflight.swap_remove(i);
                self.hostinit.generation += 1;
                let states = read_states(&self.mem, a, b);
                let mut undo: Vec<(u64, u64, u32)> = states
                    .iter()
                    .enumerate()
                    .filter(|&(_, &st)| st == ST_RELEASED || st == ST_DEAD)
                    .map(|(k, _)| (a + k as u64 * PAGE, PAGE, PROT_R | PROT_W))
                    .collect();
                // A page protected again counts against its budget too (its
                // two syscall stops), and against its cycles: a page whose
                // blocks come and go is given up instead of cycling
                // release/protect (see `HostInit::reprotects`).
                if ret == 0 {
                    for (k, &st) in states.iter().enumerate() {
                        let p = a + k as u64 * PAGE;
                        if st != ST_PROTECTING || !self.hostinit.released_at.contains_key(&p) {
                            continue;
                        }
                        let c = self.hostinit.faults.entry(p).or_insert(0);
                        *c += 2;
                        let over = *c > self.hostinit.budget;
                        let cycles = self.hostinit.reprotects.entry(p).or_insert(0);
                        *cycles += 1;
                        if over || *cycles > self.hostinit.max_cycles {
                            self.hostinit_kill(p, p + PAGE)?;
                            undo.push((p, PAGE, PROT_R | PROT_W));
                        }
                    }
                }
                if ret == 0 && !undo.is_empty() {
                    self.run_batch(tid, &regs, &undo)?;
                    sys::setregs(tid, &regs)?;
                }
            }
        }
        self.hostinit_mapping_change(&regs, nr, args, ret)?;
        if ret == -i64::from(libc::EFAULT) && !known && self.hostinit.active {
            // A syscall we cannot model wrote into a tracked page: release the
            // tracked pages its pointer arguments fall in, and run it again.
            let maps = crate::maps::read(self.pid)?;
            let mut hit: Vec<(u64, u64)> = Vec::new();
            for &v in &args {
                if let Some(m) = maps.iter().find(|m| m.contains(v) && m.prot == PROT_R) {
                    hit.extend(runs_of(&self.mem, m.start, m.end, ST_PROTECTED));
                }
            }
            if !hit.is_empty() {
                for &(a, b) in &hit {
                    self.hostinit_kill(a, b)?;
                }
                let batch: Vec<(u64, u64, u32)> = hit.iter().map(|&(a, b)| (a, b - a, PROT_R | PROT_W)).collect();
                self.run_batch(tid, &regs, &batch)?;
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
                sys::setregs(tid, &regs)?;
                self.set_sys(tid, SysState::Idle);
                return self.resume(tid, 0);
            }
        }
        self.resume(tid, 0)
    }

    /// A prepared host syscall did not run as prepared (a signal handler ran
    /// first): the pages opened for it stay open and leave tracking.
    pub(crate) fn hostinit_abandon(&mut self, open: &[(u64, u64, u32)]) -> Result<(), Error> {
        for &(a, l, p) in open {
            if p & 0x8000_0000 == 0 {
                self.hostinit_kill(a, a + l)?;
            }
        }
        Ok(())
    }

    /// `rip` is in the shim's text.
    fn in_shim_text(&self, rip: u64) -> bool {
        self.module_text(rip)
            .zip(self.alloc.as_ref())
            .is_some_and(|(l, a)| std::path::Path::new(&l.module.path) == a.shim_path())
    }

    /// Pages [a, b) leave tracking for good: their never-written bytes
    /// become unknown (the caller makes them read-write if needed).
    fn hostinit_kill(&mut self, a: u64, b: u64) -> Result<(), Error> {
        for (s, e) in self.hostinit.never_in(a, b) {
            self.sink.push(Event::InitUnknown { addr: s, len: e - s })?;
        }
        self.hostinit.never_remove(a, b);
        self.sink.counters.hostinit_dead += (b - a) / PAGE;
        self.hi_set(a, b, ST_DEAD)
    }

    fn hostinit_mapping_change(&mut self, regs: &RawRegs, nr: u64, args: [u64; 6], ret: i64) -> Result<(), Error> {
        let nr = nr as i64;
        let clear = |t: &mut Tracer, a: u64, len: u64| -> Result<(), Error> {
            let (s, e) = pages(a, a.saturating_add(len));
            if read_states(&t.mem, s, e).iter().any(|&st| st != 0) {
                t.hi_set(s, e, 0)?;
            }
            t.hostinit.faults.retain(|&p, _| p < s || p >= e);
            t.hostinit.reprotects.retain(|&p, _| p < s || p >= e);
            t.hostinit.never_remove(s, e);
            Ok(())
        };
        match nr {
            libc::SYS_munmap if ret == 0 => clear(self, args[0], args[1])?,
            libc::SYS_mmap if ret >= 0 => clear(self, ret as u64, args[1])?,
            libc::SYS_brk => {
                let new = ret as u64;
                let old = self.hostinit.last_brk;
                if old != 0 && new < old {
                    let (s, _) = pages(new, new);
                    let (_, e) = pages(old, old);
                    clear(self, s, e - s)?;
                }
                self.hostinit.last_brk = new;
            }
            libc::SYS_mremap if ret >= 0 => {
                let (old, old_len, new_len, new) = (args[0], args[1], args[2], ret as u64);
                let states = read_states(&self.mem, old, old.saturating_add(old_len));
                let tail = states.last().copied().filter(|&s| s == ST_PROTECTED).unwrap_or(0);
                if new != old {
                    clear(self, old, old_len)?;
                }
                let mut moved = states;
                let want = pages(0, new_len).1 / PAGE;
                moved.resize(want as usize, tail);
                if new / PAGE + want <= TABLE_PAGES && !moved.is_empty() {
                    self.mem.write(RemoteAddr(TABLE + new / PAGE), &moved)?;
                    let (s, e) = (new & !(PAGE - 1), (new & !(PAGE - 1)) + moved.len() as u64 * PAGE);
                    self.hostinit.known.retain(|&p, _| p < s || p >= e);
                    self.hostinit.generation += 1;
                }
            }
            libc::SYS_mprotect | libc::SYS_pkey_mprotect if ret == 0 && !self.in_shim_text(regs.rip) => {
                let (s, e) = pages(args[0], args[0].saturating_add(args[1]));
                let mut hit = runs_of(&self.mem, s, e, ST_PROTECTED);
                hit.extend(runs_of(&self.mem, s, e, ST_RELEASED));
                hit.extend(runs_of(&self.mem, s, e, ST_PROTECTING));
                for (a, b) in hit {
                    self.hostinit_kill(a, b)?;
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// `rep stos*` / `rep movs*`.
fn is_rep_string(i: &iced_x86::Instruction) -> bool {
    use iced_x86::Mnemonic::*;
    (i.has_rep_prefix() || i.has_repe_prefix())
        && matches!(i.mnemonic(), Stosb | Stosw | Stosd | Stosq | Movsb | Movsw | Movsd | Movsq)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_written_ranges_split_and_merge() {
        let mut h = HostInit::new(true);
        h.never_insert(100, 200);
        h.never_insert(300, 400);
        h.never_insert(200, 250);
        assert_eq!(h.never.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(), vec![(100, 250), (300, 400)]);
        h.never_remove(120, 130);
        h.never_remove(240, 310);
        assert_eq!(h.never.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(), vec![(100, 120), (130, 240), (310, 400)]);
        assert_eq!(h.never_in(110, 135), vec![(110, 120), (130, 135)]);
        assert_eq!(h.never_in(0, 100), vec![]);
        h.never_insert(0, 1000);
        assert_eq!(h.never.iter().map(|(&a, &b)| (a, b)).collect::<Vec<_>>(), vec![(0, 1000)]);
    }

    /// What the tracker holds (blocks, never-written ranges, foreign blocks,
    /// deferred blocks), for comparing two of them.
    type State = (Vec<(u64, u64)>, Vec<(u64, u64)>, Vec<(u64, u64)>, Vec<u64>);

    fn state(h: &HostInit) -> State {
        let mut blocks: Vec<_> = h.blocks.iter().map(|(&a, &b)| (a, b)).collect();
        blocks.sort_unstable();
        let mut deferred: Vec<_> = h.deferred.keys().copied().collect();
        deferred.sort_unstable();
        (
            blocks,
            h.never.iter().map(|(&a, &b)| (a, b)).collect(),
            h.foreign.iter().map(|(&a, &b)| (a, b)).collect(),
            deferred,
        )
    }

    #[test]
    fn fast_pair_leaves_what_malloc_then_free_leave() {
        // Page 0x10000 dead, 0x11000 and 0x12000 tracked (protected, never
        // released), 0x13000 released (not cached: general path).
        let setup = || {
            let mut h = HostInit::new(true);
            h.pid = 100;
            h.known.insert(0x10000, ST_DEAD);
            h.known.insert(0x11000, ST_PROTECTED);
            h.known.insert(0x12000, ST_PROTECTED);
            // A live block on the dead page, one tracked, a stale entry (a
            // free never seen, tracked once), a foreign block and a deferred one.
            assert!(h.fast_malloc(100, 0x10100, 0x80, 0));
            assert!(h.fast_malloc(100, 0x11f00, 0x200, 0));
            h.blocks.insert(0x10800, 0x40);
            h.never_insert(0x10800, 0x10840);
            h.foreign.insert(0x10900, 0x10);
            h.deferred.insert(0x10a00, vec![(0x10a00, 0x10a10)]);
            h
        };
        let (mut one, mut two) = (setup(), setup());
        // (ptr, size): dead page; tracked page next to the tracked block;
        // over the stale entry, the foreign block, the deferred block; a
        // block across the dead and a tracked page (mixed: general path);
        // a released page (general path); another process.
        let pairs = [
            (0x10200, 0x100),
            (0x12100, 0x300),
            (0x10800, 0x40),
            (0x10900, 0x10),
            (0x10a00, 0x10),
            (0x10f80, 0x100),
            (0x13000, 0x10),
        ];
        for (ptr, size) in pairs {
            let single = one.fast_malloc(100, ptr, size, 7) && one.fast_free(100, ptr);
            assert_eq!(two.fast_pair(100, ptr, size, 7), single, "{ptr:#x}");
            assert_eq!(state(&one), state(&two), "{ptr:#x}");
        }
        assert!(!two.fast_pair(101, 0x10200, 0x10, 7));
        // The stale entry's never-written range stays (the malloc would
        // have replaced the entry, so the free never removed it).
        assert!(state(&two).1.contains(&(0x10800, 0x10840)));
        assert!(!state(&two).0.iter().any(|&(p, _)| p == 0x10800 || p == 0x10200));
        assert_eq!(one.take_deferred(), two.take_deferred());
    }
}
