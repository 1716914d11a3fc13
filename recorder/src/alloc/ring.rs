//! The consumer side of the shared-memory ring (layout: `shim/ffirec_shim.h`).
//!
//! Owns the ring file's mapping in the recorder. Every offset here mirrors the
//! C header; the shim refuses a ring whose magic, version or sizes differ.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

pub(crate) const MAGIC: u64 = u64::from_le_bytes(*b"FFIRECR1");
pub(crate) const VERSION: u32 = 6;
/// Threads that may be in foreign mode at once (one per traced process).
pub(crate) const FOREIGN_SLOTS: usize = 8;
/// Ring 0 is shared by all processes but one; ring 1 is the primary's.
pub(crate) const RINGS: usize = 2;
pub(crate) const HDR_SIZE: usize = 4096;
/// Bytes per slot; a record takes one slot, or two with [`F_EXT`].
pub(crate) const REC_SIZE: usize = 32;

// Header field offsets (bytes).
const OFF_MAGIC: usize = 0;
const OFF_VERSION: usize = 8;
const OFF_HDR_SIZE: usize = 12;
const OFF_REC_SIZE: usize = 16;
const OFF_ARENA_ENABLED: usize = 20;
const OFF_CAPACITY: usize = 24;
const OFF_TRACER_PRESENT: usize = 32;
const OFF_FOREIGN_TID: usize = 36;
const OFF_ARENA_START: usize = 40;
const OFF_ARENA_END: usize = 48;
const OFF_CLOSED: usize = 56;
const OFF_ALLOCATOR_TID: usize = 60;
const OFF_HOSTINIT_WANT: usize = 64;
const OFF_HOSTINIT_PID: usize = 68;
/// Foreign tid slots 1.. and their allocator words (slot 0: OFF_FOREIGN_TID, OFF_ALLOCATOR_TID).
const OFF_FOREIGN_MORE: usize = 72;
const OFF_ALLOCATOR_MORE: usize = 100;
const OFF_HOSTINIT_EPOCH: usize = 128;
/// Non-zero whenever a foreign tid slot is (the shim's one-load host-mode check).
const OFF_FOREIGN_ANY: usize = 136;
const OFF_HOSTINIT_PROTECTS: usize = 144;
/// `struct ffirec_held`: the held malloc's ptr, size, caller and header words.
const OFF_HELD: usize = 768;

fn foreign_off(slot: usize) -> usize {
    if slot == 0 {
        OFF_FOREIGN_TID
    } else {
        OFF_FOREIGN_MORE + 4 * (slot - 1)
    }
}

fn allocator_off(slot: usize) -> usize {
    if slot == 0 {
        OFF_ALLOCATOR_TID
    } else {
        OFF_ALLOCATOR_MORE + 4 * (slot - 1)
    }
}
// Per-ring control block `struct ffirec_ring`, 256 bytes, ring i at 256 * (i + 1).
const OFF_RING: usize = 256;
const RING_OWNER: usize = 0;
const RING_HEAD: usize = 64;
const RING_TAIL: usize = 128;
const RING_DROPPED: usize = 192;
const RING_FLUSH_TRAPS: usize = 200;

fn ctl(ring: usize, field: usize) -> usize {
    OFF_RING * (ring + 1) + field
}

/// Record kinds written by the shim (`enum ffirec_kind`).
pub(crate) mod kind {
    pub const MALLOC: u16 = 0;
    pub const CALLOC: u16 = 1;
    pub const REALLOC: u16 = 2;
    pub const REALLOCARRAY: u16 = 3;
    pub const POSIX_MEMALIGN: u16 = 4;
    pub const ALIGNED_ALLOC: u16 = 5;
    pub const MEMALIGN: u16 = 6;
    pub const VALLOC: u16 = 7;
    pub const PVALLOC: u16 = 8;
    pub const MMAP: u16 = 9;
    pub const MREMAP: u16 = 10;
    pub const FREE: u16 = 16;
    pub const MUNMAP: u16 = 17;
    /// A MALLOC and the FREE of its block (the free's caller in `aux`).
    pub const MALLOC_FREE: u16 = 19;
    pub const NOP: u16 = 30;
    pub const PROC_START: u16 = 32;
    pub const FORK: u16 = 33;
    pub const FORKED: u16 = 34;
    /// The second slot of an EXT record.
    pub const CONT: u16 = 63;
}

/// Record flag: the calling thread was in a foreign tid slot.
pub(crate) const F_FOREIGN: u16 = 1;
/// Record flag: the record goes on in the next slot (old_ptr, aux, pid).
pub(crate) const F_EXT: u16 = 2;

// Slot header fields (`FFIREC_HDR_*_SHIFT`): the commit tag in bits 0..32.
const HDR_KIND_SHIFT: u32 = 32;
const HDR_FLAGS_SHIFT: u32 = 38;
const HDR_TID_SHIFT: u32 = 40;

/// The commit tag of the slot with sequence number `seq`.
fn tag(seq: u64) -> u32 {
    seq.wrapping_add(1) as u32
}

/// One record as the shim wrote it, in one or two slots.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Rec {
    pub kind: u16,
    pub flags: u16,
    pub tid: u32,
    pub pid: u32,
    pub ptr: u64,
    pub size: u64,
    pub old_ptr: u64,
    pub caller: u64,
    pub aux: u64,
    /// Host init: the epoch the shim read before looking at the page table (0: none).
    pub hi_epoch: u32,
    /// Slots the record took (1, or 2 with [`F_EXT`]).
    pub slots: u64,
}

/// The recorder's shared mapping of the ring file.
pub(crate) struct Mapping {
    base: *mut u8,
    len: usize,
    capacity: u64,
}

// SAFETY: the mapping is plain shared memory; every access to a field another
// process may write concurrently goes through an atomic, and record payloads
// are only read after their commit word was observed with acquire ordering.
unsafe impl Send for Mapping {}
// SAFETY: as above; `&self` methods only perform atomic accesses.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Sizes `file` for `capacity` slots per ring, maps it shared and writes the
    /// header (magic last, so a shim never sees a half-written header).
    /// `arena`: the foreign arena's page-aligned range, fixed for the ring's life.
    pub(crate) fn create(file: &File, capacity: u64, arena: Option<(u64, u64)>) -> std::io::Result<Mapping> {
        let len = HDR_SIZE as u64 + RINGS as u64 * capacity * REC_SIZE as u64;
        file.set_len(len)?;
        let len = usize::try_from(len).map_err(|_| std::io::Error::other("ring too large"))?;
        // SAFETY: a fresh shared mapping of a file we own and just sized; the
        // result is checked against MAP_FAILED before use.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                file.as_raw_fd(),
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        let map = Mapping { base: ptr.cast(), len, capacity };
        // Allocates the header's and the primary ring's tmpfs pages now, not
        // on the tracee's hot path (its shim maps them in one batch too).
        // Ring 0, shared by forked children, fills in as they use it. A
        // kernel before 5.14 refuses: the pages then come on first touch.
        let primary = HDR_SIZE + capacity as usize * REC_SIZE;
        for (off, n) in [(0, HDR_SIZE), (primary, capacity as usize * REC_SIZE)] {
            // SAFETY: a range inside the mapping just created; populating
            // changes no contents.
            unsafe {
                libc::madvise(map.base.add(off).cast(), n, libc::MADV_POPULATE_WRITE);
            }
        }
        map.u32_at(OFF_VERSION).store(VERSION, Ordering::Relaxed);
        map.u32_at(OFF_HDR_SIZE).store(HDR_SIZE as u32, Ordering::Relaxed);
        map.u32_at(OFF_REC_SIZE).store(REC_SIZE as u32, Ordering::Relaxed);
        map.u64_at(OFF_CAPACITY).store(capacity, Ordering::Relaxed);
        if let Some((start, end)) = arena {
            map.u64_at(OFF_ARENA_START).store(start, Ordering::Relaxed);
            map.u64_at(OFF_ARENA_END).store(end, Ordering::Relaxed);
            map.u32_at(OFF_ARENA_ENABLED).store(1, Ordering::Relaxed);
        }
        map.u64_at(OFF_MAGIC).store(MAGIC, Ordering::Release);
        Ok(map)
    }

    #[inline]
    fn u64_at(&self, off: usize) -> &AtomicU64 {
        debug_assert!(off & 7 == 0 && off + 8 <= self.len);
        // SAFETY: `off` is an 8-aligned offset inside the live mapping (page
        // aligned base), and the memory is only ever accessed atomically here.
        unsafe { &*self.base.add(off).cast::<AtomicU64>() }
    }

    fn u32_at(&self, off: usize) -> &AtomicU32 {
        debug_assert!(off & 3 == 0 && off + 4 <= self.len);
        // SAFETY: as in `u64_at`, 4-aligned.
        unsafe { &*self.base.add(off).cast::<AtomicU32>() }
    }

    pub(crate) fn capacity(&self) -> u64 {
        self.capacity
    }
    pub(crate) fn set_tracer_present(&self, on: bool) {
        self.u32_at(OFF_TRACER_PRESENT).store(u32::from(on), Ordering::SeqCst);
    }
    /// `tid` is the only thread in foreign mode (0: none).
    pub(crate) fn set_foreign_tid(&self, tid: u32) {
        if tid != 0 {
            self.u32_at(OFF_FOREIGN_ANY).store(1, Ordering::SeqCst);
        }
        self.u32_at(OFF_FOREIGN_TID).store(tid, Ordering::SeqCst);
        for slot in 1..FOREIGN_SLOTS {
            self.u32_at(foreign_off(slot)).store(0, Ordering::SeqCst);
        }
        self.update_foreign_any();
    }
    /// `foreign_any` is set before a slot is and cleared after the last one is.
    fn update_foreign_any(&self) {
        let any = (0..FOREIGN_SLOTS).any(|s| self.u32_at(foreign_off(s)).load(Ordering::SeqCst) != 0);
        self.u32_at(OFF_FOREIGN_ANY).store(u32::from(any), Ordering::SeqCst);
    }
    /// `tid` is in foreign mode too (false: every slot is taken).
    pub(crate) fn add_foreign_tid(&self, tid: u32) -> bool {
        let slots = || (0..FOREIGN_SLOTS).map(|s| self.u32_at(foreign_off(s)));
        if tid == 0 || slots().any(|w| w.load(Ordering::SeqCst) == tid) {
            return true;
        }
        match slots().find(|w| w.load(Ordering::SeqCst) == 0) {
            Some(w) => {
                self.u32_at(OFF_FOREIGN_ANY).store(1, Ordering::SeqCst);
                w.store(tid, Ordering::SeqCst);
                true
            }
            None => false,
        }
    }
    /// `tid` left foreign mode.
    pub(crate) fn remove_foreign_tid(&self, tid: u32) {
        for slot in 0..FOREIGN_SLOTS {
            let w = self.u32_at(foreign_off(slot));
            if tid != 0 && w.load(Ordering::SeqCst) == tid {
                w.store(0, Ordering::SeqCst);
            }
        }
        self.update_foreign_any();
    }
    pub(crate) fn set_arena_enabled(&self, on: bool) {
        self.u32_at(OFF_ARENA_ENABLED).store(u32::from(on), Ordering::SeqCst);
    }
    /// Tells producers nobody will consume any more: they stop waiting for room.
    pub(crate) fn close(&self) {
        self.u32_at(OFF_CLOSED).store(1, Ordering::SeqCst);
    }
    /// Asks each process's shim to map the host-init page table (before it starts).
    pub(crate) fn set_hostinit_want(&self, on: bool) {
        self.u32_at(OFF_HOSTINIT_WANT).store(u32::from(on), Ordering::SeqCst);
    }
    /// The process whose host-mode allocations the shim write-protects (0: none).
    pub(crate) fn set_hostinit_pid(&self, pid: u32) {
        self.u32_at(OFF_HOSTINIT_PID).store(pid, Ordering::SeqCst);
    }
    /// Host init: the shim copies this into each tracked block's record.
    pub(crate) fn set_hostinit_epoch(&self, epoch: u64) {
        self.u64_at(OFF_HOSTINIT_EPOCH).store(epoch, Ordering::SeqCst);
    }
    /// Host init: protections the shims made so far (all processes).
    pub(crate) fn hostinit_protects(&self) -> u64 {
        self.u64_at(OFF_HOSTINIT_PROTECTS).load(Ordering::SeqCst)
    }
    /// Whether foreign thread `tid` is inside an allocation function now.
    pub(crate) fn in_allocator(&self, tid: u32) -> bool {
        tid != 0 && (0..FOREIGN_SLOTS).any(|s| self.u32_at(allocator_off(s)).load(Ordering::Acquire) == tid)
    }
    /// The pid that owns the primary ring, 0 while unclaimed.
    #[inline]
    pub(crate) fn primary_owner(&self) -> u32 {
        self.u32_at(ctl(1, RING_OWNER)).load(Ordering::Acquire)
    }
    pub(crate) fn head(&self, ring: usize) -> u64 {
        self.u64_at(ctl(ring, RING_HEAD)).load(Ordering::Acquire)
    }
    pub(crate) fn tail(&self, ring: usize) -> u64 {
        self.u64_at(ctl(ring, RING_TAIL)).load(Ordering::Acquire)
    }
    pub(crate) fn publish_tail(&self, ring: usize, tail: u64) {
        self.u64_at(ctl(ring, RING_TAIL)).store(tail, Ordering::Release);
    }
    pub(crate) fn dropped(&self, ring: usize) -> u64 {
        self.u64_at(ctl(ring, RING_DROPPED)).load(Ordering::Relaxed)
    }
    pub(crate) fn flush_traps(&self, ring: usize) -> u64 {
        self.u64_at(ctl(ring, RING_FLUSH_TRAPS)).load(Ordering::Relaxed)
    }

    #[inline]
    fn slot(&self, ring: usize, seq: u64) -> usize {
        HDR_SIZE + (ring * self.capacity as usize + (seq & (self.capacity - 1)) as usize) * REC_SIZE
    }

    /// The record whose first slot has sequence number `seq` in `ring`, if it
    /// is committed. A slot that cannot start a record (a CONT slot on its
    /// own, an EXT record whose second slot is not its own) reads as a
    /// one-slot NOP: a shim never writes one, a broken tracee may.
    #[inline(always)]
    pub(crate) fn read(&self, ring: usize, seq: u64) -> Option<Rec> {
        let off = self.slot(ring, seq);
        let hdr = self.u64_at(off).load(Ordering::Acquire);
        if hdr as u32 != tag(seq) {
            return None;
        }
        let word = |off: usize, i: usize| self.u64_at(off + 8 * i).load(Ordering::Relaxed);
        let kind = ((hdr >> HDR_KIND_SHIFT) & 0x3f) as u16;
        let flags = ((hdr >> HDR_FLAGS_SHIFT) & 3) as u16;
        let mut rec = Rec {
            kind,
            flags,
            tid: (hdr >> HDR_TID_SHIFT) as u32,
            pid: if ring == 1 { self.primary_owner() } else { 0 },
            ptr: word(off, 1),
            size: if kind == kind::FREE { 0 } else { word(off, 2) },
            old_ptr: 0,
            caller: word(off, 3),
            aux: 0,
            hi_epoch: 0,
            slots: 1,
        };
        if flags & F_EXT == 0 {
            (rec.ptr, rec.size, rec.hi_epoch) = unpack_one_slot(rec.ptr, rec.size);
            if kind == kind::MALLOC_FREE {
                (rec.caller, rec.aux) = unpack_pair_callers(rec.caller);
            }
        }
        let nop = Rec { kind: kind::NOP, flags: 0, slots: 1, ..rec };
        if kind == kind::CONT {
            return Some(nop);
        }
        if flags & F_EXT != 0 {
            // Written whole before the first slot's header (release): visible.
            let next = seq.wrapping_add(1);
            let cont = self.slot(ring, next);
            let h2 = self.u64_at(cont).load(Ordering::Acquire);
            if h2 as u32 != tag(next) || ((h2 >> HDR_KIND_SHIFT) & 0x3f) as u16 != kind::CONT {
                return Some(nop);
            }
            rec.old_ptr = word(cont, 1);
            rec.aux = word(cont, 2);
            let w = word(cont, 3);
            rec.pid = w as u32;
            rec.hi_epoch = (w >> 32) as u32;
            rec.slots = 2;
        }
        Some(rec)
    }

    /// Takes the held malloc (see "Held malloc" in `ffirec_shim.h`) if there
    /// is one and, with `tid`, if that thread wrote it. The caller makes sure
    /// the thread cannot be writing it (it is in a ptrace stop, or gone) and
    /// that every slot of the primary ring is consumed.
    pub(crate) fn take_held(&self, tid: Option<u32>) -> Option<Rec> {
        let word = |i: usize| self.u64_at(OFF_HELD + 8 * i);
        if !self.holds() {
            return None;
        }
        let hdr = word(3).load(Ordering::Acquire);
        let writer = (hdr >> HDR_TID_SHIFT) as u32;
        if tid.is_some_and(|t| t & 0xff_ffff != writer) {
            return None;
        }
        let w = word(0).swap(0, Ordering::AcqRel);
        if w == 0 {
            return None;
        }
        let (ptr, size, hi_epoch) = unpack_one_slot(w, word(1).load(Ordering::Relaxed));
        Some(Rec {
            kind: ((hdr >> HDR_KIND_SHIFT) & 0x3f) as u16,
            flags: ((hdr >> HDR_FLAGS_SHIFT) & 3) as u16,
            tid: writer,
            pid: self.primary_owner(),
            ptr,
            size,
            old_ptr: 0,
            caller: word(2).load(Ordering::Relaxed),
            aux: 0,
            hi_epoch,
            slots: 0,
        })
    }

    /// Whether a malloc is held now.
    pub(crate) fn holds(&self) -> bool {
        self.u64_at(OFF_HELD).load(Ordering::Acquire) != 0
    }

    /// Writes the held malloc as the shim does (test support).
    #[cfg(test)]
    pub(crate) fn test_hold(&self, tid: u32, w: [u64; 3]) {
        self.u64_at(OFF_HELD + 8).store(w[1], Ordering::Relaxed);
        self.u64_at(OFF_HELD + 16).store(w[2], Ordering::Relaxed);
        let hdr = u64::from(kind::MALLOC) << HDR_KIND_SHIFT | u64::from(tid) << HDR_TID_SHIFT;
        self.u64_at(OFF_HELD + 24).store(hdr, Ordering::Relaxed);
        self.u64_at(OFF_HELD).store(w[0], Ordering::Release);
    }

    /// The slots of `ring`, for reading runs of records.
    pub(crate) fn slots(&self, ring: usize) -> Slots<'_> {
        let off = self.slot(ring, 0);
        // SAFETY: ring `ring`'s `capacity` slots of REC_SIZE (4 words) bytes
        // from `off` (8-aligned: the base is page-aligned) lie inside the
        // live mapping, and are only ever accessed atomically here.
        let slots = unsafe {
            std::slice::from_raw_parts(self.base.add(off).cast::<[AtomicU64; REC_SIZE / 8]>(), self.capacity as usize)
        };
        Slots { slots }
    }

    /// The slot of `seq` in `ring` is reserved by a producer but not committed.
    pub(crate) fn uncommitted(&self, ring: usize, seq: u64) -> bool {
        seq < self.head(ring) && self.u64_at(self.slot(ring, seq)).load(Ordering::Acquire) as u32 != tag(seq)
    }

    /// Writes slot `seq` of `ring` as the shim does (payload words, then the
    /// header with the commit tag of `tag_seq`), and moves the head past it.
    #[cfg(test)]
    #[allow(clippy::too_many_arguments)] // one slot's fields
    pub(crate) fn test_put(&self, ring: usize, seq: u64, tag_seq: u64, kind: u16, flags: u16, tid: u32, w: [u64; 3]) {
        let off = self.slot(ring, seq);
        for (i, v) in w.into_iter().enumerate() {
            self.u64_at(off + 8 + 8 * i).store(v, Ordering::Relaxed);
        }
        let head = self.u64_at(ctl(ring, RING_HEAD));
        head.store(head.load(Ordering::Relaxed).max(seq + 1), Ordering::Relaxed);
        let hdr = u64::from(tag(tag_seq))
            | u64::from(kind) << HDR_KIND_SHIFT
            | u64::from(flags) << HDR_FLAGS_SHIFT
            | u64::from(tid) << HDR_TID_SHIFT;
        self.u64_at(off).store(hdr, Ordering::Release);
    }

    /// Claims the primary ring for `pid` (as the first shim does).
    #[cfg(test)]
    pub(crate) fn test_claim(&self, pid: u32) {
        self.u32_at(ctl(1, RING_OWNER)).store(pid, Ordering::Release);
    }

    /// Writes a committed one-slot record as the shim would (for consumer measurements).
    /// `w`: the payload words (ptr, size, caller; see "Records" in `ffirec_shim.h`).
    #[cfg(test)]
    pub(crate) fn test_write(&self, ring: usize, seq: u64, kind: u16, w: [u64; 3]) {
        let off = self.slot(ring, seq);
        for (i, v) in w.into_iter().enumerate() {
            self.u64_at(off + 8 + 8 * i).store(v, Ordering::Relaxed);
        }
        self.u64_at(ctl(ring, RING_HEAD)).store(seq + 1, Ordering::Relaxed);
        let hdr = u64::from(tag(seq)) | u64::from(kind) << HDR_KIND_SHIFT | 1234u64 << HDR_TID_SHIFT;
        self.u64_at(off).store(hdr, Ordering::Release);
    }
}

/// A one-slot record's ptr and size words: the values (below 2^48) and the
/// host-init epoch in their top 16 bits (see "Records" in `ffirec_shim.h`; a
/// FREE's size word reads 0 here, so its epoch is its ptr word's half, 0).
#[inline(always)]
fn unpack_one_slot(ptr: u64, size: u64) -> (u64, u64, u32) {
    const LOW: u64 = (1 << 48) - 1;
    (ptr & LOW, size & LOW, ((ptr >> 48) | (size >> 48) << 16) as u32)
}

/// A one-slot MALLOC_FREE's caller word: the malloc's caller (bits 0..48)
/// and the free's, from the signed difference in bits 48..64.
#[inline(always)]
fn unpack_pair_callers(w: u64) -> (u64, u64) {
    let caller = w & ((1 << 48) - 1);
    (caller, caller.wrapping_add((w >> 48) as u16 as i16 as u64))
}

/// One ring's slots ([`Mapping::slots`]).
pub(crate) struct Slots<'a> {
    /// A power of two of them.
    slots: &'a [[AtomicU64; REC_SIZE / 8]],
}

impl Slots<'_> {
    /// [`Mapping::read`] for the drain's runs of plain records: the `malloc`,
    /// `free` or MALLOC_FREE record at `seq` into `out` (a MALLOC_FREE as its
    /// malloc with `pair` and the free's caller); returns the slots it takes
    /// and its events (1, or 2 for a pair): (0, 0) when the slot is not
    /// committed or holds any other record (or a broken one: `read` says
    /// what), `out` then partly written. `pid`: the process of a one-slot
    /// record (the primary ring's owner, or 0 in the shared ring, whose
    /// records say theirs in an EXT slot).
    #[inline(always)]
    pub(crate) fn read_plain(&self, seq: u64, pid: u32, out: &mut super::FastRec) -> (u64, usize) {
        const PLAIN: u64 = 1 << kind::MALLOC | 1 << kind::FREE | 1 << kind::MALLOC_FREE;
        let w = &self.slots[seq as usize & (self.slots.len() - 1)];
        let hdr = w[0].load(Ordering::Acquire);
        let kind = ((hdr >> HDR_KIND_SHIFT) & 0x3f) as u16;
        if hdr as u32 != tag(seq) || PLAIN >> kind & 1 == 0 {
            return (0, 0);
        }
        let flags = ((hdr >> HDR_FLAGS_SHIFT) & 3) as u16;
        let free = kind == kind::FREE;
        let pair = kind == kind::MALLOC_FREE;
        out.free = free;
        out.pair = pair;
        out.foreign = flags & F_FOREIGN != 0;
        out.tid = (hdr >> HDR_TID_SHIFT) as u32;
        out.pid = pid;
        let (ptr, size, caller) =
            (w[1].load(Ordering::Relaxed), w[2].load(Ordering::Relaxed), w[3].load(Ordering::Relaxed));
        // A free leaves its size word unwritten: whatever is there reads as 0.
        let size = if free { 0 } else { size };
        if flags & F_EXT == 0 {
            (out.ptr, out.size, out.hi_epoch) = unpack_one_slot(ptr, size);
            out.caller = caller;
            if pair {
                (out.caller, out.free_caller) = unpack_pair_callers(caller);
            }
            return (1, 1 + usize::from(pair));
        }
        (out.ptr, out.size, out.caller) = (ptr, size, caller);
        // Written whole before the first slot's header (release): visible.
        let next = seq.wrapping_add(1);
        let c = &self.slots[next as usize & (self.slots.len() - 1)];
        let h2 = c[0].load(Ordering::Acquire);
        if h2 as u32 != tag(next) || ((h2 >> HDR_KIND_SHIFT) & 0x3f) as u16 != kind::CONT {
            return (0, 0);
        }
        let pw = c[3].load(Ordering::Relaxed);
        out.pid = pw as u32;
        out.hi_epoch = (pw >> 32) as u32;
        out.free_caller = c[2].load(Ordering::Relaxed);
        (2, 1 + usize::from(pair))
    }

    /// Asks the CPU to start loading the slot of `seq` (a hint, never a
    /// fault): each record is a cache line last written by another CPU, and
    /// waiting for them one at a time was most of the drain's cost.
    #[inline(always)]
    pub(crate) fn prefetch(&self, seq: u64) {
        let at = seq as usize & (self.slots.len() - 1);
        // SAFETY: `at` is inside `slots` (masked), and a prefetch reads
        // nothing architecturally.
        #[cfg(target_arch = "x86_64")]
        unsafe {
            core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(self.slots.as_ptr().add(at).cast());
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: `base`/`len` are exactly the mapping created in `create`,
        // and no reference into it outlives `self`.
        unsafe {
            libc::munmap(self.base.cast(), self.len);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fresh ring file for one test: tests run in parallel threads of one
    /// process, so the name carries a counter (it carried only the pid and
    /// capacity, and two tests truncated each other's file).
    fn mapping(capacity: u64) -> (Mapping, std::path::PathBuf) {
        static NEXT: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("ffirec-ring-test-{}-{capacity}-{n}", std::process::id()));
        let file = std::fs::OpenOptions::new().read(true).write(true).create(true).truncate(true).open(&path).unwrap();
        let map = Mapping::create(&file, capacity, None).unwrap();
        (map, path)
    }

    /// A slot as the shim writes it: payload words, then the header.
    #[allow(clippy::too_many_arguments)] // one slot's fields
    fn put(map: &Mapping, ring: usize, seq: u64, tag_seq: u64, kind: u16, flags: u16, tid: u32, w: [u64; 3]) {
        let off = map.slot(ring, seq);
        for (i, v) in w.into_iter().enumerate() {
            map.u64_at(off + 8 + 8 * i).store(v, Ordering::Relaxed);
        }
        let hdr = u64::from(tag(tag_seq))
            | u64::from(kind) << HDR_KIND_SHIFT
            | u64::from(flags) << HDR_FLAGS_SHIFT
            | u64::from(tid) << HDR_TID_SHIFT;
        map.u64_at(off).store(hdr, Ordering::Release);
    }

    #[test]
    fn ring_v5_slots_decode_exactly() {
        let (map, path) = mapping(16);
        map.u32_at(ctl(1, RING_OWNER)).store(4242, Ordering::Release);
        // A one-slot malloc on the primary ring: pid is the ring's owner.
        put(&map, 1, 0, 0, kind::MALLOC, F_FOREIGN, 4_194_303, [0x5555_0000_1000, 48, 0x5555_0000_2000]);
        let r = map.read(1, 0).unwrap();
        assert_eq!(
            r,
            Rec {
                kind: kind::MALLOC,
                flags: F_FOREIGN,
                tid: 4_194_303,
                pid: 4242,
                ptr: 0x5555_0000_1000,
                size: 48,
                old_ptr: 0,
                caller: 0x5555_0000_2000,
                aux: 0,
                hi_epoch: 0,
                slots: 1
            }
        );
        // A free leaves the size word unwritten: whatever is there reads as 0.
        put(&map, 1, 1, 1, kind::FREE, 0, 7, [0x5555_0000_1000, 0xdead_beef, 0x5555_0000_3000]);
        let r = map.read(1, 1).unwrap();
        assert_eq!((r.kind, r.size, r.ptr, r.caller, r.slots), (kind::FREE, 0, 0x5555_0000_1000, 0x5555_0000_3000, 1));
        // The host-init epoch of a one-slot record: its low half in ptr's top
        // 16 bits, its high half in size's; the run reader agrees.
        let (ptr, size, epoch) = (0x7fff_ffff_f000u64, 0xffff_ffff_fffeu64, 0x0003_0002u64);
        put(&map, 1, 2, 2, kind::MALLOC, 0, 7, [ptr | (epoch & 0xffff) << 48, size | (epoch >> 16) << 48, 0x5555]);
        let r = map.read(1, 2).unwrap();
        assert_eq!((r.ptr, r.size, r.hi_epoch, r.slots, r.pid), (ptr, size, 0x0003_0002, 1, 4242));
        let mut f = super::super::FastRec::default();
        let n = map.slots(1).read_plain(2, 4242, &mut f);
        assert_eq!(
            (f.ptr, f.size, f.hi_epoch, f.free, f.pid, n, f.pair),
            (ptr, size, 0x0003_0002, false, 4242, (1, 1), false)
        );
        // A malloc and its free in one slot: the free's caller 0x20 before the
        // malloc's (top 16 bits of the caller word); and in two slots (EXT).
        put(&map, 1, 3, 3, kind::MALLOC_FREE, 0, 7, [0x5555_0000_1000 | 5 << 48, 64, 0x5555_0000_3000 | 0xffe0 << 48]);
        let r = map.read(1, 3).unwrap();
        assert_eq!(
            (r.kind, r.ptr, r.size, r.caller, r.aux, r.hi_epoch, r.slots),
            (kind::MALLOC_FREE, 0x5555_0000_1000, 64, 0x5555_0000_3000, 0x5555_0000_2fe0, 5, 1)
        );
        let n = map.slots(1).read_plain(3, 4242, &mut f);
        assert_eq!(
            (f.ptr, f.size, f.caller, f.free, n, f.pair, f.free_caller),
            (0x5555_0000_1000, 64, 0x5555_0000_3000, false, (1, 2), true, 0x5555_0000_2fe0)
        );
        put(&map, 1, 5, 5, kind::CONT, 0, 7, [0, 0x7777_0000_0000, 4242 | 9 << 32]);
        put(&map, 1, 4, 4, kind::MALLOC_FREE, F_EXT, 7, [0x5555_0000_1000, 64, 0x5555_0000_3000]);
        let r = map.read(1, 4).unwrap();
        assert_eq!(
            (r.kind, r.caller, r.aux, r.hi_epoch, r.slots),
            (kind::MALLOC_FREE, 0x5555_0000_3000, 0x7777_0000_0000, 9, 2)
        );
        let n = map.slots(1).read_plain(4, 4242, &mut f);
        assert_eq!(
            (f.caller, f.hi_epoch, n, f.pair, f.free_caller),
            (0x5555_0000_3000, 9, (2, 2), true, 0x7777_0000_0000)
        );
        // The held malloc: taken by its writer's tid only, once.
        map.test_hold(7, [0x5555_0000_1000 | 5 << 48, 64 | 1 << 48, 0x5555_0000_3000]);
        assert_eq!(map.take_held(Some(8)), None);
        let r = map.take_held(Some(7)).unwrap();
        assert_eq!(
            (r.kind, r.tid, r.pid, r.ptr, r.size, r.caller, r.hi_epoch),
            (kind::MALLOC, 7, 4242, 0x5555_0000_1000, 64, 0x5555_0000_3000, 0x0001_0005)
        );
        assert_eq!(map.take_held(None), None);
        // An EXT realloc over two slots, the second one wrapping round the ring end.
        put(&map, 0, 16, 16, kind::CONT, 0, 9, [0x7000, 0, 99 | 5 << 32]);
        put(&map, 0, 15, 15, kind::REALLOC, F_EXT, 9, [0x8000, 64, 0x9000]);
        let r = map.read(0, 15).unwrap();
        assert_eq!(
            r,
            Rec {
                kind: kind::REALLOC,
                flags: F_EXT,
                tid: 9,
                pid: 99,
                ptr: 0x8000,
                size: 64,
                old_ptr: 0x7000,
                caller: 0x9000,
                aux: 0,
                hi_epoch: 5,
                slots: 2
            }
        );
        let _ = std::fs::remove_file(path);
    }

    #[test]
    fn ring_v5_stale_and_broken_slots() {
        let (map, path) = mapping(16);
        // The previous lap's record in slot 3 is not record 19.
        put(&map, 1, 3, 3, kind::MALLOC, 0, 1, [1, 2, 3]);
        assert!(map.read(1, 19).is_none());
        map.u64_at(ctl(1, RING_HEAD)).store(20, Ordering::Release);
        assert!(map.uncommitted(1, 19));
        assert!(!map.uncommitted(1, 3));
        // A continuation slot on its own, or an EXT record whose second slot
        // is not its own, is skipped as a one-slot NOP.
        put(&map, 1, 5, 5, kind::CONT, 0, 1, [1, 2, 3]);
        assert_eq!(map.read(1, 5).map(|r| (r.kind, r.slots)), Some((kind::NOP, 1)));
        put(&map, 1, 7, 7u64.wrapping_sub(16), kind::CONT, 0, 1, [1, 2, 3]);
        put(&map, 1, 6, 6, kind::MMAP, F_EXT, 1, [1, 2, 3]);
        assert_eq!(map.read(1, 6).map(|r| (r.kind, r.slots)), Some((kind::NOP, 1)));
        let _ = std::fs::remove_file(path);
    }
}
