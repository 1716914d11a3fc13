//! Allocation tracking through the `LD_PRELOAD` shim, with no ptrace stop per
//! allocation.
//!
//! [`AllocTracker`] owns a private directory holding the shim (built from
//! `recorder/shim/` and embedded in this crate) and the shared-memory ring the
//! shim writes to. The recorder starts the tracee with [`AllocTracker::env`],
//! and calls [`AllocTracker::drain`] whenever it likes — from a ptrace stop or
//! from its own thread — to turn records into `Alloc`/`Free`/`Unmap` events in
//! the order each process made the calls.
//!
//! What becomes which event: every allocation function → `Alloc` (`zeroed`
//! for `calloc` and anonymous `mmap`; `old_ptr` for `realloc`/`mremap`);
//! `free` and `realloc(p, 0)` → `Free`; `munmap` of a whole anonymous mapping
//! the shim saw created → `Free`, of part of one → `Unmap` of exactly that
//! part; file mappings → nothing. `caller` is the return address of the call
//! (for C++ `new`, inside libstdc++). The ring file holds two rings: the
//! first traced process owns the primary one (unlocked reservations while it
//! is single-threaded), every other process shares the second; order is exact
//! within a process, and a forked child's events come after the parent's fork.
//!
//! Limits: a malloc replacement already in `LD_PRELOAD` comes first and hides
//! the C allocator from the shim (`mmap` is still seen); threads made with a
//! raw `clone` (not `pthread_create`) in the primary process, or a child made
//! with a raw `clone`/`_Fork` that allocates without exec, can corrupt a record.
//!
//! # Contract with the ptrace recorder
//! - Call [`AllocTracker::set_tracer_present`]`(true)` once the tracee is
//!   traced. From then on a producer that finds the ring full executes the
//!   `int3` at [`AllocTracker::flush_trap_symbol`] instead of yielding. The
//!   stop is a SIGTRAP signal-delivery-stop (`si_code == SI_KERNEL`) with
//!   `rip == load_base + flush_trap_offset() + 1` and `rax ==`
//!   [`FLUSH_MAGIC`], where `load_base` is the start of the shim's mapping with
//!   file offset 0 in `/proc/PID/maps` (path [`AllocTracker::shim_path`]). The
//!   recorder must [`drain`](AllocTracker::drain) and resume the thread with
//!   the signal suppressed (`PTRACE_CONT`, signal 0); the shim re-checks and
//!   traps again if there is still no room. If [`AllocTracker::is_blocked`]
//!   is true after draining, the oldest slot is held by another thread that
//!   reserved it but has not finished writing it: that thread must run
//!   (release held threads) before the ring can advance.
//! - [`AllocTracker::set_foreign_tid`] while a thread runs foreign code (0 when
//!   none): its records get `Domain::Foreign`.
//! - Never guard the ring mapping ([`AllocTracker::ring_path`], mapped
//!   `MAP_SHARED` in every tracee process) nor the shim's own mappings: classify
//!   the shim as neutral code (its writable data is then unguarded).
//! - Allocator activity: at a fault of the foreign thread, if
//!   [`AllocTracker::in_allocator`]`(tid)` the access is the allocator's own
//!   (e.g. glibc's `free` of a host pointer reading the guarded chunk header),
//!   not the library's: tag it, never report it as a finding.
//! - Foreign arena: while a thread is the foreign tid, its allocations are
//!   served from [`AllocTracker::foreign_arena`], one fixed address range in
//!   every tracee process (mapped by the shim on first use), never from the
//!   program's heap; `free`/`realloc` route each pointer to the allocator that
//!   owns it, whoever calls them. Never guard that range unless the user asked
//!   for the library's internal accesses (`--guard-foreign`), or turn the
//!   arena off with [`AllocTracker::set_foreign_arena`]. Anonymous `mmap`s made
//!   in foreign mode are not moved: their `Alloc` events say `Domain::Foreign`.
//!   To keep it unguarded, add [`AllocTracker::foreign_arena`]'s start to the
//!   addresses whose mappings are never guarded (one line in the guard set):
//!   measured on a zlib streaming program, 135 616 → 27 faults per call with
//!   identical host-buffer accesses.
//! - Draining only at ptrace stops makes the tracee wait for every record's
//!   conversion; [`BackgroundDrain`] drains from a thread and hands the events
//!   over, in order, at the recorder's stops.
//! - After the last tracee process has exited, call
//!   [`AllocTracker::drain_final`]: it also skips slots a killed thread
//!   reserved but never committed.

mod background;
mod convert;
mod ring;

pub use background::BackgroundDrain;

use std::ffi::OsString;
use std::fs::{DirBuilder, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ffirec_format::Event;

/// The shim, compiled by `build.rs`.
static SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/ffirec_shim.so"));

const TRAP_SYMBOL: &str = "ffirec_shim_flush_trap";

/// The value of `rax` at the shim's flush trap (`"FUSHTRAP"` little-endian).
pub const FLUSH_MAGIC: u64 = u64::from_le_bytes(*b"FUSHTRAP");

/// How many slots ahead of the one it reads the consumer prefetches.
const PREFETCH_AHEAD: u64 = 32;

/// Most plain records the drain hands to its fast path at once.
const RUN: usize = 256;

/// Ring capacity used by [`AllocTracker::new`], in slots of 32 bytes (a
/// malloc or free takes one, a record with an old pointer or aux word two).
pub const DEFAULT_CAPACITY: usize = 1 << 20;

/// Where [`AllocTracker::new`] puts the foreign arena: 16 TiB below the
/// usual top of the mmap area, above PIE executables and the brk heap.
pub const DEFAULT_ARENA: std::ops::Range<u64> = 0x6f00_0000_0000..0x6f00_4000_0000;

/// Where each shim maps its host-init page-state table: one byte per 4 KiB
/// page of the 47-bit user address space (`FFIREC_HI_TABLE` in the shim).
pub const HOSTINIT_TABLE: std::ops::Range<u64> = 0x6e00_0000_0000..0x6e08_0000_0000;

/// How to set up an [`AllocTracker`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllocOptions {
    /// Ring capacity in 32-byte slots: a power of two between 16 and 2^24.
    pub capacity: usize,
    /// The foreign arena's address range (page-aligned), or None for no arena:
    /// foreign-mode allocations then come from the program's heap.
    pub foreign_arena: Option<std::ops::Range<u64>>,
}

impl Default for AllocOptions {
    fn default() -> AllocOptions {
        AllocOptions { capacity: DEFAULT_CAPACITY, foreign_arena: Some(DEFAULT_ARENA) }
    }
}

/// Errors of the allocation tracker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot create the private directory {path}: {source}")]
    CreateDir { path: PathBuf, source: std::io::Error },
    #[error("cannot write the allocation shim to {path}: {source}")]
    WriteShim { path: PathBuf, source: std::io::Error },
    #[error("cannot create the allocation ring {path}: {source}")]
    CreateRing { path: PathBuf, source: std::io::Error },
    #[error("allocation ring capacity {0} must be a power of two between 16 and 2^24 slots")]
    Capacity(usize),
    #[error("foreign arena {start:#x}..{end:#x} must be non-empty, page-aligned and in user space")]
    Arena { start: u64, end: u64 },
    #[error("the embedded allocation shim is not a valid ELF file with symbol {TRAP_SYMBOL}")]
    BadShim,
}

/// A `malloc` (`free` false: ptr, size), `free` (free true: ptr) record, or
/// a malloc and the free of its block in one (`pair`: the free's caller in
/// `free_caller`), for [`AllocTracker::drain_some_fast`]; its events would be
/// an `Alloc` (function malloc, not zeroed, no old pointer), a `Free`, or both.
#[derive(Debug, Clone, Copy, Default)]
pub struct FastRec {
    pub ptr: u64,
    pub size: u64,
    pub caller: u64,
    /// `pair`: the caller of the free.
    pub free_caller: u64,
    pub tid: u32,
    pub pid: u32,
    /// Host init: the epoch the shim read before looking at the page table (0: none).
    pub hi_epoch: u32,
    pub free: bool,
    /// A malloc whose free follows (not with `free`).
    pub pair: bool,
    /// The calling thread was in foreign mode.
    pub foreign: bool,
}

impl FastRec {
    /// The record for a trace writer's run (`TraceWriter::push_plain_mem`).
    #[inline(always)]
    pub fn plain_mem(&self) -> ffirec_format::PlainMem {
        ffirec_format::PlainMem {
            free: self.free,
            tid: self.tid,
            ptr: self.ptr,
            size: self.size,
            caller: self.caller,
            free_caller: self.pair.then_some(self.free_caller),
        }
    }

    /// The ring record it was read from, for the general path
    /// (`convert::Model::convert`, stateless for these kinds).
    pub(crate) fn rec(&self) -> ring::Rec {
        let kind = match (self.free, self.pair) {
            (true, _) => ring::kind::FREE,
            (false, true) => ring::kind::MALLOC_FREE,
            (false, false) => ring::kind::MALLOC,
        };
        ring::Rec {
            kind,
            flags: if self.foreign { ring::F_FOREIGN } else { 0 },
            tid: self.tid,
            pid: self.pid,
            ptr: self.ptr,
            size: self.size,
            old_ptr: 0,
            caller: self.caller,
            aux: if self.pair { self.free_caller } else { 0 },
            hi_epoch: self.hi_epoch,
            slots: 1,
        }
    }
}

/// Counters of the rings (summed over both), for reports and tests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RingStats {
    /// Sequence numbers reserved by producers so far.
    pub reserved: u64,
    /// Records consumed by [`AllocTracker::drain`] so far.
    pub consumed: u64,
    /// Records the shim dropped (only when re-entered from a signal handler on a full ring).
    pub dropped: u64,
    /// Times a producer executed the flush trap.
    pub flush_traps: u64,
    /// Reserved slots skipped by [`AllocTracker::drain_final`] (their writer died).
    pub skipped: u64,
}

/// A handle for the ring's control words, usable from any thread while
/// another owns the [`AllocTracker`] and drains it.
#[derive(Clone)]
pub struct RingControl {
    map: Arc<ring::Mapping>,
}

impl RingControl {
    /// Whether a producer on a full ring traps for a drain (true) or yields.
    pub fn set_tracer_present(&self, on: bool) {
        self.map.set_tracer_present(on);
    }
    /// The thread now in foreign mode, 0 when none.
    pub fn set_foreign_tid(&self, tid: u32) {
        self.map.set_foreign_tid(tid);
    }
    /// Whether foreign-mode allocations go to the foreign arena (when there is one).
    pub fn set_foreign_arena(&self, on: bool) {
        self.map.set_arena_enabled(on);
    }
    /// True while the foreign thread `tid` is inside an allocation function:
    /// a fault it takes now is allocator activity (glibc touching guarded
    /// heap metadata, e.g. freeing a host pointer), not the library's access.
    /// Read it at the fault's ptrace stop.
    pub fn in_allocator(&self, tid: u32) -> bool {
        self.map.in_allocator(tid)
    }
}

/// The shim, its ring, and the conversion of records into events.
pub struct AllocTracker {
    dirs: Vec<PathBuf>,
    shim_path: PathBuf,
    ring_path: PathBuf,
    map: Arc<ring::Mapping>,
    arena: Option<std::ops::Range<u64>>,
    model: convert::Model,
    /// Per ring: every sequence number below it has been consumed.
    tails: [u64; ring::RINGS],
    skipped: u64,
    trap_offset: u64,
    /// The host-init epoch of the record being converted (see [`AllocTracker::hi_epoch_probe`]).
    hi_epoch: Arc<std::sync::atomic::AtomicU32>,
    /// The run of plain records being drained.
    run: Box<[FastRec; RUN]>,
}

impl AllocTracker {
    /// A tracker with [`AllocOptions::default`]: a ring of [`DEFAULT_CAPACITY`]
    /// slots and the foreign arena at [`DEFAULT_ARENA`].
    pub fn new() -> Result<AllocTracker, Error> {
        AllocTracker::with_options(AllocOptions::default())
    }

    /// A tracker whose rings hold `records` slots each (a power of two, ≥ 16;
    /// a record takes one slot or two).
    pub fn with_capacity(records: usize) -> Result<AllocTracker, Error> {
        AllocTracker::with_options(AllocOptions { capacity: records, ..AllocOptions::default() })
    }

    /// A tracker set up as `options` says.
    pub fn with_options(options: AllocOptions) -> Result<AllocTracker, Error> {
        let records = options.capacity;
        if !records.is_power_of_two() || !(16..=1 << 24).contains(&records) {
            return Err(Error::Capacity(records));
        }
        if let Some(r) = &options.foreign_arena {
            let aligned = r.start % 4096 == 0 && r.end % 4096 == 0;
            if !aligned || r.start == 0 || r.end <= r.start || r.end > 0x7fff_ffff_f000 {
                return Err(Error::Arena { start: r.start, end: r.end });
            }
        }
        let trap_offset = trap_offset(SHIM).ok_or(Error::BadShim)?;
        let name = format!("ffirec-{}-{}", std::process::id(), uuid::Uuid::new_v4().simple());
        let shim_dir = private_dir(&std::env::temp_dir(), &name)?;
        // A recorder killed outright (SIGKILL) cannot remove its files: do it
        // for it the next time.
        sweep_stale(&std::env::temp_dir(), &shim_dir);
        sweep_stale(Path::new("/dev/shm"), &shim_dir);
        let mut dirs = vec![shim_dir.clone()];
        // The ring lives on tmpfs when there is one: no writeback of a hot file.
        let shm = Path::new("/dev/shm");
        let ring_dir = match shm.is_dir().then(|| private_dir(shm, &name)) {
            Some(Ok(dir)) => {
                dirs.push(dir.clone());
                dir
            }
            _ => shim_dir.clone(),
        };
        // From here on `dirs` is removed by Drop, even on error.
        let mut tracker_dirs = DirsGuard(dirs);

        let shim_path = shim_dir.join("ffirec_shim.so");
        let write_shim = || -> std::io::Result<()> {
            let mut f = OpenOptions::new().write(true).create_new(true).mode(0o500).open(&shim_path)?;
            f.write_all(SHIM)?;
            f.sync_all()
        };
        write_shim().map_err(|source| Error::WriteShim { path: shim_path.clone(), source })?;

        let ring_path = ring_dir.join("ring");
        let ring_err = |source| Error::CreateRing { path: ring_path.clone(), source };
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&ring_path)
            .map_err(ring_err)?;
        let arena = options.foreign_arena.as_ref().map(|r| (r.start, r.end));
        let map = ring::Mapping::create(&file, records as u64, arena).map_err(ring_err)?;

        Ok(AllocTracker {
            dirs: std::mem::take(&mut tracker_dirs.0),
            shim_path,
            ring_path,
            map: Arc::new(map),
            arena: options.foreign_arena,
            model: convert::Model::default(),
            tails: [0; ring::RINGS],
            skipped: 0,
            trap_offset,
            hi_epoch: Arc::default(),
            run: Box::new([FastRec::default(); RUN]),
        })
    }

    /// Environment for the tracee: `LD_PRELOAD` (the shim appended to any
    /// `LD_PRELOAD` this process has) and `FFIREC_SHM` (the ring).
    pub fn env(&self) -> Vec<(OsString, OsString)> {
        let mut preload = OsString::new();
        if let Some(existing) = std::env::var_os("LD_PRELOAD").filter(|v| !v.is_empty()) {
            preload.push(existing);
            preload.push(":");
        }
        preload.push(self.shim_path.as_os_str());
        vec![
            (OsString::from("LD_PRELOAD"), preload),
            (OsString::from("FFIREC_SHM"), self.ring_path.as_os_str().to_owned()),
        ]
    }

    /// The shim file the tracee preloads.
    pub fn shim_path(&self) -> &Path {
        &self.shim_path
    }

    /// The ring file, mapped shared by every tracee process.
    pub fn ring_path(&self) -> &Path {
        &self.ring_path
    }

    /// The exported symbol whose first byte is the flush trap's `int3`.
    pub fn flush_trap_symbol() -> &'static str {
        TRAP_SYMBOL
    }

    /// Address of [`Self::flush_trap_symbol`] relative to the shim's load base.
    pub fn flush_trap_offset(&self) -> u64 {
        self.trap_offset
    }

    /// See [`RingControl::set_tracer_present`].
    pub fn set_tracer_present(&self, on: bool) {
        self.map.set_tracer_present(on);
    }

    /// See [`RingControl::set_foreign_tid`].
    pub fn set_foreign_tid(&self, tid: u32) {
        self.map.set_foreign_tid(tid);
    }

    /// Thread `tid` (of any traced process) runs foreign code too; several
    /// processes may be in foreign calls at once. False when
    /// every slot is taken (its allocations are then the host's).
    pub fn add_foreign_tid(&self, tid: u32) -> bool {
        self.map.add_foreign_tid(tid)
    }

    /// Thread `tid` left foreign mode.
    pub fn remove_foreign_tid(&self, tid: u32) {
        self.map.remove_foreign_tid(tid);
    }

    /// See [`RingControl::set_foreign_arena`].
    pub fn set_foreign_arena(&self, on: bool) {
        self.map.set_arena_enabled(on);
    }

    /// See [`RingControl::in_allocator`].
    pub fn in_allocator(&self, tid: u32) -> bool {
        self.map.in_allocator(tid)
    }

    /// Host-init tracking (see `ffirec_shim.h`, "Host init"): `want` makes
    /// every shim that starts from now on map its page-state table at
    /// [`HOSTINIT_TABLE`]; set it before the tracee starts.
    pub fn set_hostinit_want(&self, want: bool) {
        self.map.set_hostinit_want(want);
    }

    /// The process whose host-mode blocks the shim write-protects, 0 for none.
    pub fn set_hostinit_pid(&self, pid: u32) {
        self.map.set_hostinit_pid(pid);
    }

    /// Host init: protections the shims made so far (all processes), a
    /// cheap "did the tracked pages change" for the guard set's reuse.
    pub fn hostinit_protects(&self) -> u64 {
        self.map.hostinit_protects()
    }

    /// Host init: the epoch producers copy into tracked blocks' records.
    pub fn set_hostinit_epoch(&self, epoch: u64) {
        self.map.set_hostinit_epoch(epoch);
    }

    /// Host init: holds, while an event is handed to a drain's callback, the
    /// epoch its record carried (see `ffirec_shim.h`, "Host init").
    pub fn hi_epoch_probe(&self) -> Arc<std::sync::atomic::AtomicU32> {
        self.hi_epoch.clone()
    }

    /// The address range foreign-mode allocations are served from, the same
    /// in every tracee process; None when the tracker has no arena.
    pub fn foreign_arena(&self) -> Option<std::ops::Range<u64>> {
        self.arena.clone()
    }

    /// A handle to the control words for another thread.
    pub fn control(&self) -> RingControl {
        RingControl { map: Arc::clone(&self.map) }
    }

    /// Consumes every committed record, passing the events they stand for to
    /// `f` in the order each process made its calls (the primary ring first,
    /// then the shared one; a forked child's records wait for its parent's
    /// fork point); stops in each ring at the first slot not yet committed.
    /// Returns the number of events produced.
    pub fn drain(&mut self, mut f: impl FnMut(Event)) -> usize {
        self.drain_inner(&mut |e: &Event| f(e.clone()), &mut |_: &[FastRec]| 0, false, usize::MAX)
    }

    /// [`Self::drain`], stopping after about `max` slots (a recorder that
    /// drains while the program runs stays responsive to ptrace stops).
    /// Returns the number of slots consumed (not events). Events are lent,
    /// not moved: the caller copies what it keeps.
    pub fn drain_some(&mut self, max: usize, mut f: impl FnMut(&Event)) -> usize {
        self.drain_some_fast(max, |_| 0, &mut f)
    }

    /// [`Self::drain_some`] with a fast path for runs of plain `malloc` and
    /// `free` records (a malloc with its free is one, see [`FastRec`]): `fast`
    /// sees each run (consecutive such records, in order) and returns how
    /// many of its first records it has handled (no event is built for
    /// those); the next one becomes events for `f` (both of a pair), and
    /// `fast` sees the rest of the run after it. Everything else becomes
    /// events for `f`.
    pub fn drain_some_fast(
        &mut self,
        max: usize,
        mut fast: impl FnMut(&[FastRec]) -> usize,
        mut f: impl FnMut(&Event),
    ) -> usize {
        let before = self.tails[0] + self.tails[1];
        self.drain_inner(&mut f, &mut fast, false, max);
        (self.tails[0] + self.tails[1] - before) as usize
    }

    /// [`Self::drain`] for when no producer can still be running (every tracee
    /// process has exited): reserved slots that were never committed are
    /// skipped and counted in [`RingStats::skipped`].
    pub fn drain_final(&mut self, mut f: impl FnMut(Event)) -> usize {
        self.drain_inner(&mut |e: &Event| f(e.clone()), &mut |_: &[FastRec]| 0, true, usize::MAX)
    }

    /// Takes the malloc the primary ring's owner holds back for its free
    /// (see "Held malloc" in `ffirec_shim.h`) when thread `tid` wrote it and
    /// the ring holds nothing older: its event goes to `f`. Call it only
    /// while `tid` is in a ptrace stop. Returns the number of events (0 or 1).
    pub fn take_held(&mut self, tid: u32, mut f: impl FnMut(&Event)) -> usize {
        self.take_held_inner(Some(tid), &mut f)
    }

    /// Whether a malloc is held back for its free now (see [`Self::take_held`]).
    pub fn holds(&self) -> bool {
        self.map.holds()
    }

    fn take_held_inner(&mut self, tid: Option<u32>, f: &mut impl FnMut(&Event)) -> usize {
        if self.tails[1] != self.map.head(1) {
            return 0;
        }
        match self.map.take_held(tid) {
            Some(rec) => {
                self.hi_epoch.store(rec.hi_epoch, std::sync::atomic::Ordering::Relaxed);
                self.model.convert(&rec, f)
            }
            None => 0,
        }
    }

    fn drain_inner(
        &mut self,
        f: &mut impl FnMut(&Event),
        fast: &mut impl FnMut(&[FastRec]) -> usize,
        skip_holes: bool,
        max: usize,
    ) -> usize {
        // The primary ring first: a forked child's records (ring 0) may wait
        // for their parent's (ring 1), never the other way round.
        let mut events = self.drain_ring(1, f, fast, skip_holes, max);
        if skip_holes {
            // No process is left to write the held malloc: it is the last
            // record of the primary ring.
            events += self.take_held_inner(None, f);
        }
        events += self.drain_ring(0, f, fast, skip_holes, max);
        events
    }

    fn drain_ring(
        &mut self,
        ring: usize,
        f: &mut impl FnMut(&Event),
        fast: &mut impl FnMut(&[FastRec]) -> usize,
        skip_holes: bool,
        max: usize,
    ) -> usize {
        let AllocTracker { map, model, tails, skipped, hi_epoch, run, .. } = self;
        let map: &ring::Mapping = map;
        // A plain reference: the run loop keeps it in a register.
        let run: &mut [FastRec; RUN] = run;
        // Publish progress often enough that producers on a small ring keep going.
        let publish_every = (map.capacity() / 4).max(1);
        let longest_run = (publish_every as usize).min(RUN);
        let view = map.slots(ring);
        let mut tail = tails[ring];
        let mut events = 0;
        let mut since_publish = 0;
        let mut holes = 0;
        let mut consumed = 0;
        let mut owner = 0;
        while consumed < max {
            // A run of plain malloc/free records: read them all, then hand
            // them to `fast` together.
            if ring == 1 && owner == 0 {
                owner = map.primary_owner();
            }
            // The primary ring's records are its owner's, who claims it
            // before its first record: while it reads unclaimed, a record
            // goes the general way (which reads the owner after it).
            let pid = if ring == 1 { owner } else { 0 };
            let want = if ring == 1 && owner == 0 { 0 } else { longest_run.min(max - consumed) };
            let mut seq = tail;
            // Records in the run, and their events (at most `want`).
            let (mut k, mut n) = (0, 0);
            // At most `want` records (`want` events): no bound check.
            for out in run[..want].iter_mut() {
                view.prefetch(seq + PREFETCH_AHEAD);
                // A MALLOC_FREE is two events: its malloc, then its free.
                let (len, two) = view.read_plain(seq, pid, out);
                if len == 0 || n + two > want {
                    break;
                }
                n += two;
                k += 1;
                seq += len;
                if n == want {
                    break;
                }
            }
            if k > 0 {
                let run = &run[..k];
                let mut i = 0;
                while i < k {
                    i += fast(&run[i..]).min(k - i);
                    if i < k {
                        // Not for the fast path: its events, as any record's.
                        hi_epoch.store(run[i].hi_epoch, std::sync::atomic::Ordering::Relaxed);
                        model.convert(&run[i].rec(), f);
                        i += 1;
                    }
                }
                events += n;
                consumed += n;
                since_publish += seq - tail;
                tail = seq;
                if since_publish >= publish_every {
                    map.publish_tail(ring, tail);
                    since_publish = 0;
                }
                continue;
            }
            consumed += 1;
            let mut slots = 1;
            match map.read(ring, tail) {
                Some(rec) => {
                    slots = rec.slots;
                    if rec.kind == ring::kind::FORK && !skip_holes {
                        // The parent's records up to the fork come first.
                        let parent = rec.old_ptr as usize;
                        let parent_tail = if parent == ring { tail } else { tails[parent.min(ring::RINGS - 1)] };
                        if parent < ring::RINGS && parent_tail < rec.size {
                            break;
                        }
                    }
                    hi_epoch.store(rec.hi_epoch, std::sync::atomic::Ordering::Relaxed);
                    events += model.convert(&rec, f);
                }
                // The ring is shared memory a broken tracee may scribble on:
                // never trust its head for more than two rings' worth of holes.
                None if skip_holes && tail < map.head(ring) && holes < 2 * map.capacity() => {
                    holes += 1;
                    *skipped += 1;
                }
                None => break,
            }
            tail += slots;
            since_publish += slots;
            if since_publish >= publish_every {
                map.publish_tail(ring, tail);
                since_publish = 0;
            }
        }
        tails[ring] = tail;
        map.publish_tail(ring, tail);
        events
    }

    /// Records reserved by producers and not yet consumed (both rings).
    pub fn backlog(&self) -> u64 {
        (0..ring::RINGS).map(|r| self.map.head(r).saturating_sub(self.tails[r])).sum()
    }

    /// True when the oldest unconsumed slot of a ring is reserved but not yet
    /// committed: that ring cannot advance until the thread that reserved it runs.
    pub fn is_blocked(&self) -> bool {
        (0..ring::RINGS).any(|r| self.map.uncommitted(r, self.tails[r]))
    }

    /// The pid of the process that owns the primary ring (the first process
    /// whose shim started), None before any did.
    pub fn primary_pid(&self) -> Option<u32> {
        Some(self.map.primary_owner()).filter(|&p| p != 0)
    }

    /// The ring's counters.
    pub fn stats(&self) -> RingStats {
        let sum = |f: &dyn Fn(usize) -> u64| (0..ring::RINGS).map(f).sum();
        RingStats {
            reserved: sum(&|r| self.map.head(r)),
            consumed: sum(&|r| self.map.tail(r)),
            dropped: sum(&|r| self.map.dropped(r)),
            flush_traps: sum(&|r| self.map.flush_traps(r)),
            skipped: self.skipped,
        }
    }

    /// Capacity of each of the two rings, in slots.
    pub fn capacity(&self) -> usize {
        self.map.capacity() as usize
    }
}

impl Drop for AllocTracker {
    fn drop(&mut self) {
        // Tracees still running must not wait for a consumer that is gone.
        self.map.close();
        drop(DirsGuard(std::mem::take(&mut self.dirs)));
    }
}

/// Removes the private directories it holds when dropped.
struct DirsGuard(Vec<PathBuf>);

impl Drop for DirsGuard {
    fn drop(&mut self) {
        for dir in &self.0 {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

fn private_dir(parent: &Path, name: &str) -> Result<PathBuf, Error> {
    let path = parent.join(name);
    DirBuilder::new().mode(0o700).create(&path).map_err(|source| Error::CreateDir { path: path.clone(), source })?;
    Ok(path)
}

/// Removes `ffirec-PID-UUID` directories in `parent` left by a tracker whose
/// process no longer exists, if they belong to the owner of `ours`.
fn sweep_stale(parent: &Path, ours: &Path) {
    use std::os::unix::fs::MetadataExt;
    let Ok(uid) = std::fs::metadata(ours).map(|m| m.uid()) else {
        return;
    };
    let Ok(entries) = std::fs::read_dir(parent) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some((pid, id)) = name.to_str().and_then(|n| n.strip_prefix("ffirec-")).and_then(|r| r.split_once('-'))
        else {
            continue;
        };
        let is_ours = id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit()) && pid.parse::<u32>().is_ok();
        if !is_ours || Path::new("/proc").join(pid).exists() {
            continue;
        }
        if entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == uid) {
            let _ = std::fs::remove_dir_all(entry.path());
        }
    }
}

/// The value of the flush-trap symbol in the shim's dynamic symbol table.
fn trap_offset(elf: &[u8]) -> Option<u64> {
    use object::{Object, ObjectSymbol};
    let file = object::File::parse(elf).ok()?;
    let found = file.dynamic_symbols().find(|s| s.name() == Ok(TRAP_SYMBOL)).map(|s| s.address());
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use ffirec_format::{AllocFn, Domain};
    use ring::F_FOREIGN;

    /// A plain malloc's event.
    fn malloc_event(tid: u32, ptr: u64, size: u64, caller: u64, domain: Domain) -> Event {
        Event::Alloc { tid, func: AllocFn::Malloc, ptr, size, old_ptr: 0, caller, domain, zeroed: false }
    }

    /// Writes records of every shape the fast path sees or must not see, on
    /// the primary ring (owner 4242) and the shared one, as the shim does;
    /// returns the events they stand for, the primary ring's first.
    fn fill(t: &AllocTracker) -> Vec<Event> {
        use ring::kind::*;
        t.map.test_claim(4242);
        let mut seq = [0u64; ring::RINGS];
        let mut put = |ring: usize, kind: u16, flags: u16, tid: u32, w: [u64; 3], cont: Option<[u64; 3]>| {
            let s = seq[ring];
            if let Some(c) = cont {
                t.map.test_put(ring, s + 1, s + 1, CONT, 0, tid, c);
            }
            t.map.test_put(ring, s, s, kind, flags | if cont.is_some() { ring::F_EXT } else { 0 }, tid, w);
            seq[ring] += 1 + u64::from(cont.is_some());
        };
        let mut events = [Vec::new(), Vec::new()];
        let malloc = malloc_event;
        for i in 0..90u64 {
            let (ptr, caller) = (0x5555_0000_1000 + 64 * (i % 7), 0x4000 + i % 3);
            let tid = 10 + u32::from(i % 4 == 3);
            let (domain, mut size, mut func) = (Domain::Host, 16 + i, Some(AllocFn::Malloc));
            match i % 9 {
                0 | 1 => put(1, MALLOC, 0, tid, [ptr, size, caller], None),
                // A malloc and its free in one record: the free's caller 5
                // bytes before the malloc's (one slot), or anywhere (EXT).
                5 => {
                    let free_caller = caller - 5;
                    if i % 2 == 0 {
                        put(1, MALLOC_FREE, 0, tid, [ptr, size, caller | 0xfffb << 48], None);
                    } else {
                        put(1, MALLOC_FREE, 0, tid, [ptr, size, caller], Some([0, free_caller, 4242 | (i + 1) << 32]));
                    }
                    events[1].extend([
                        malloc(tid, ptr, size, caller, domain),
                        Event::Free { tid, ptr, caller: free_caller, domain },
                    ]);
                    continue;
                }
                2 | 6 => {
                    put(1, FREE, 0, tid, [ptr, 0xdead, caller], None);
                    func = None;
                }
                // A tracked block's record: two slots, pid and epoch in the second.
                3 => put(1, MALLOC, 0, tid, [ptr, size, caller], Some([0, 0, 4242 | (i + 1) << 32])),
                4 => {
                    put(1, CALLOC, 0, tid, [ptr, size, caller], None);
                    func = Some(AllocFn::Calloc);
                }
                7 => {
                    put(1, FREE, F_FOREIGN, tid, [ptr, 0, caller], None);
                    let e = Event::Free { tid, ptr, caller, domain: Domain::Foreign };
                    events[1].push(e);
                    continue;
                }
                _ => {
                    size = 8;
                    put(0, MALLOC, 0, 77, [ptr, size, caller], Some([0, 0, 99 | 5 << 32]));
                    events[0].push(malloc(77, ptr, size, caller, domain));
                    continue;
                }
            }
            events[1].push(match func {
                None => Event::Free { tid, ptr, caller, domain },
                Some(func) => {
                    Event::Alloc { tid, func, ptr, size, old_ptr: 0, caller, domain, zeroed: func == AllocFn::Calloc }
                }
            });
        }
        let [shared, primary] = events;
        primary.into_iter().chain(shared).collect()
    }

    #[test]
    fn fast_path_runs_give_the_events_of_the_general_path_in_order() {
        let mut t = AllocTracker::with_capacity(256).unwrap();
        let want = fill(&t);
        assert_eq!(want.len(), 100);
        // The fast path declines every record whose pointer is a multiple of
        // 192 bytes in (so runs break at different places) and every free
        // from an odd caller (MALLOC_FREE records too: their two events go
        // to the general path together), and the drain stops every 7 records.
        let got = std::cell::RefCell::new(Vec::new());
        let (mut seen, mut calls) = (Vec::new(), 0);
        loop {
            let n = t.drain_some_fast(
                7,
                |rs| {
                    calls += 1;
                    let declined = |r: &FastRec| {
                        (r.ptr - 0x5555_0000_1000).is_multiple_of(192)
                            || r.free && r.caller % 2 == 1
                            || r.pair && r.free_caller % 2 == 1
                    };
                    let k = rs.iter().position(declined).unwrap_or(rs.len());
                    seen.extend(rs[..k].iter().map(|r| (r.pid, r.hi_epoch, r.free)));
                    let mut model = convert::Model::default();
                    for r in &rs[..k] {
                        model.convert(&r.rec(), &mut |e: &Event| got.borrow_mut().push(e.clone()));
                    }
                    k
                },
                |e| got.borrow_mut().push(e.clone()),
            );
            if n == 0 {
                break;
            }
        }
        // Each ring in order (a drain bounded by `max` takes some of each in turn).
        let got = got.into_inner();
        for shared in [false, true] {
            let ring = |v: &[Event]| v.iter().filter(|e| (e.tid() == Some(77)) == shared).cloned().collect::<Vec<_>>();
            assert_eq!(ring(&got), ring(&want));
        }
        assert_eq!(got.len(), want.len());
        assert_eq!(t.stats().consumed, 115, "90 records, 25 of them in two slots");
        assert!(calls > 10, "{calls} runs");
        // pid: the primary ring's owner, or the second slot's; epoch from there.
        assert!(seen.iter().all(|&(pid, _, _)| pid == 4242 || pid == 99));
        assert!(seen.contains(&(4242, 13, false)) && seen.contains(&(99, 5, false)) && seen.contains(&(4242, 0, true)));
    }

    /// While the primary ring reads unclaimed, its records go the general
    /// way; once claimed, the fast path sees them with the owner's pid.
    #[test]
    fn primary_ring_records_wait_for_its_owner_for_the_fast_path() {
        use ring::kind::*;
        let mut t = AllocTracker::with_capacity(16).unwrap();
        let (ptr, caller) = (0x5555_0000_1000u64, 0x4000u64);
        let alloc = |tid, size| Event::Alloc {
            tid,
            func: AllocFn::Malloc,
            ptr,
            size,
            old_ptr: 0,
            caller,
            domain: Domain::Host,
            zeroed: false,
        };
        let free = |tid| Event::Free { tid, ptr, caller: caller + 8, domain: Domain::Host };
        t.map.test_put(1, 0, 0, MALLOC_FREE, 0, 10, [ptr, 32, caller | 8 << 48]);
        let (mut general, mut fast) = (Vec::new(), Vec::new());
        let mut drain = |t: &mut AllocTracker| {
            t.drain_some_fast(
                usize::MAX,
                |rs| {
                    fast.extend(rs.iter().map(|r| (r.pid, r.tid, r.pair)));
                    rs.len()
                },
                |e| general.push(e.clone()),
            )
        };
        assert_eq!(drain(&mut t), 1);
        t.map.test_claim(4242);
        t.map.test_put(1, 1, 1, MALLOC_FREE, 0, 11, [ptr, 48, caller | 8 << 48]);
        t.map.test_put(1, 2, 2, MALLOC, 0, 11, [ptr, 64, caller]);
        assert_eq!(drain(&mut t), 2);
        assert_eq!(general, [alloc(10, 32), free(10)]);
        assert_eq!(fast, [(4242, 11, true), (4242, 11, false)]);
    }

    /// The held malloc comes out after every record of the primary ring, for
    /// the thread that wrote it, once; and at the final drain for anyone.
    #[test]
    fn held_malloc_is_taken_once_after_the_ring_by_its_thread() {
        use ring::kind::*;
        let mut t = AllocTracker::with_capacity(16).unwrap();
        t.map.test_claim(4242);
        let (ptr, size, caller, epoch) = (0x5555_0000_2000u64, 100u64, 0x4000u64, 0x0007_0003u64);
        let held = |tid| malloc_event(tid, ptr, size, caller, Domain::Host);
        t.map.test_put(1, 0, 0, FREE, 0, 10, [0x5555_0000_1000, 0, caller]);
        t.map.test_hold(10, [ptr | (epoch & 0xffff) << 48, size | (epoch >> 16) << 48, caller]);
        let mut got = Vec::new();
        // Not while a slot of the ring is unconsumed, nor for another thread.
        assert_eq!(t.take_held(10, |e| got.push(e.clone())), 0);
        t.drain(|e| got.push(e));
        assert_eq!(t.take_held(11, |e| got.push(e.clone())), 0);
        assert_eq!(t.take_held(10, |e| got.push(e.clone())), 1);
        assert_eq!(t.hi_epoch.load(std::sync::atomic::Ordering::Relaxed), 0x0007_0003);
        assert_eq!(t.take_held(10, |e| got.push(e.clone())), 0, "taken once");
        let free = Event::Free { tid: 10, ptr: 0x5555_0000_1000, caller, domain: Domain::Host };
        assert_eq!(got, [free, held(10)]);
        // The final drain takes it whoever wrote it.
        t.map.test_hold(12, [ptr, size, caller]);
        let mut last = Vec::new();
        assert_eq!(t.drain_final(|e| last.push(e)), 1);
        assert_eq!(last, [held(12)]);
    }
}

#[cfg(test)]
mod bench {
    use super::*;

    /// Consumer cost alone: records written in place (as a producer would),
    /// then drained through the fast path into a trace writer, as the
    /// recorder does. Plain malloc and free records in turn, one slot each.
    /// Prints the mean over 64 rounds of 65 536 slots (`FFIREC_DRAIN_ROUNDS`
    /// rounds, for callgrind) and the best round (other work on the machine
    /// disturbs the mean).
    /// `cargo test --release -p ffirec-recorder --lib drain_cost -- --ignored --nocapture`
    #[test]
    #[ignore = "measurement"]
    fn drain_cost() {
        drain_cost_of("plain", |i| {
            // Heap-like pointers and sizes (multi-byte deltas, as in the alloc bench).
            let size = 16 + (i / 2 * 2654435761) % 1025;
            ((i % 2) as u16 * ring::kind::FREE, [0x5555_0000_0000 + size * 16, size, 0x5555_0000])
        });
    }

    /// [`drain_cost`] of one-slot MALLOC_FREE records (a malloc and the free
    /// of its block in one slot, the common record since ring v6): two
    /// events per slot, the free's caller 0x20 bytes after the malloc's.
    #[test]
    #[ignore = "measurement"]
    fn drain_cost_pairs() {
        drain_cost_of("malloc_free", |i| {
            let size = 16 + (i * 2654435761) % 1025;
            let caller = 0x5555_0000 | 0x20 << 48;
            (ring::kind::MALLOC_FREE, [0x5555_0000_0000 + size * 16, size, caller])
        });
    }

    /// Drains rounds of 65 536 slots, slot `i` of each round written as
    /// `record(i)` says (kind, payload words) by thread 1234 of the primary
    /// ring's owner.
    fn drain_cost_of(label: &str, record: impl Fn(u64) -> (u16, [u64; 3])) {
        let cap = 1 << 16;
        let mut t = AllocTracker::with_capacity(cap).unwrap();
        t.map.test_claim(4242);
        let dir = std::env::temp_dir().join(format!("ffirec-drain-cost-{label}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let header = ffirec_format::Header {
            recorder_version: String::new(),
            uuid: [0; 16],
            command: vec![],
            start_time_ns: 0,
            page_size: 4096,
            policy: Default::default(),
        };
        let mut w = ffirec_format::TraceWriter::create(dir.join("t.ffr"), header).unwrap();
        let rounds: u64 = std::env::var("FFIREC_DRAIN_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(64);
        let mut total = std::time::Duration::ZERO;
        let mut best = std::time::Duration::MAX;
        let (mut slots, mut events) = (0usize, 0usize);
        for round in 0..rounds {
            for i in 0..cap as u64 {
                let (kind, words) = record(i);
                t.map.test_write(1, round * cap as u64 + i, kind, words);
            }
            let t0 = thread_cpu();
            slots += t.drain_some_fast(
                usize::MAX,
                |rs| {
                    w.push_plain_mem(ffirec_format::Domain::Host, rs, FastRec::plain_mem).unwrap();
                    events += rs.iter().map(|r| 1 + usize::from(r.pair)).sum::<usize>();
                    rs.len()
                },
                |e| {
                    std::hint::black_box(e);
                },
            );
            let took = thread_cpu() - t0;
            total += took;
            best = best.min(took);
        }
        assert_eq!(slots as u64, rounds * cap as u64);
        drop(w);
        let _ = std::fs::remove_dir_all(&dir);
        println!(
            "drain_cost {label}: {slots} slots, {events} events, {:.1} ns/slot (thread CPU time), best round {:.1} ns/slot",
            total.as_nanos() as f64 / slots as f64,
            best.as_nanos() as f64 / cap as f64
        );
    }

    /// This thread's CPU time (a loaded machine's preemptions do not count).
    fn thread_cpu() -> std::time::Duration {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: clock_gettime writes the timespec we own.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        std::time::Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }
}
