//! The columnar encoding of one chunk of events (format version 1).
//!
//! A batch stores one kind byte per event. Access events, the bulk of any
//! trace, are split into columns that compress well:
//! - instruction bytes live once per distinct `(rip, code)` in a per-batch
//!   table; each access stores a small index into it;
//! - the fault address is the difference from the same thread's previous
//!   access (zigzag LEB128: a stride of 8 is one byte, repeating);
//! - registers are compared with a prediction — the same thread's previous
//!   access, with `rip` taken from the table — and only changed registers
//!   are stored: a bitmask, then each change as a zigzag LEB128 difference (a
//!   loop counter or striding pointer becomes the same byte every time);
//! - data bytes are a length column plus one concatenated byte stream;
//! - extended registers (rare) are a sparse list keyed by access ordinal.
//!
//! Alloc and Free events (format v2; v1 stored them as `WEvent`s) have
//! columns of their own, because a program can make millions of them between
//! two foreign calls: a head byte each (function, domain, zeroed, old pointer
//! present), the thread as a difference from the previous one, the pointer as
//! a difference from the previous Alloc's (a Free of the block just allocated
//! is one byte), the size, and the caller as a difference from the previous
//! caller of the same kind. The writer builds these columns on its caller's
//! thread as the events arrive ([`MemCols`]): a few bytes per event instead of
//! moving a whole `Event` to the background thread.
//!
//! Every other kind is stored as a `wire::WEvent` in event order. All
//! prediction state is per batch, so each chunk decodes on its own.

use std::collections::HashMap;

use rkyv::{Archive, Deserialize, Serialize};

use crate::event::{AccessRef, AllocFn, Domain, Event, EventRef, Regs, Tid, VecReg};
use crate::wire::{self, ArchivedWAccessVReg, ArchivedWEvent, WAccessVReg, WEvent, WRegs};

/// Kind byte of every event (index into [`crate::EVENT_KINDS`]; frozen).
pub fn kind_id(e: &Event) -> u8 {
    match e {
        Event::Access { .. } => 0,
        Event::Call { .. } => 1,
        Event::Return { .. } => 2,
        Event::Callback { .. } => 3,
        Event::CallbackReturn { .. } => 4,
        Event::Alloc { .. } => KIND_ALLOC,
        Event::Free { .. } => KIND_FREE,
        Event::Map { .. } => 7,
        Event::Unmap { .. } => 8,
        Event::Protect { .. } => 9,
        Event::SyscallAccess { .. } => 10,
        Event::Signal { .. } => 11,
        Event::Gap { .. } => 12,
        Event::ThreadStart { .. } => 13,
        Event::ThreadExit { .. } => 14,
        Event::Fork { .. } => 15,
        Event::Exec { .. } => 16,
        Event::Exit { .. } => 17,
        Event::HostWrite { .. } => 18,
        Event::InitUnknown { .. } => 19,
    }
}

fn wire_kind_id(e: &WEvent) -> u8 {
    match e {
        WEvent::Call { .. } => 1,
        WEvent::Return { .. } => 2,
        WEvent::Callback { .. } => 3,
        WEvent::CallbackReturn { .. } => 4,
        WEvent::Alloc { .. } => 5,
        WEvent::Free { .. } => 6,
        WEvent::Map { .. } => 7,
        WEvent::Unmap { .. } => 8,
        WEvent::Protect { .. } => 9,
        WEvent::SyscallAccess { .. } => 10,
        WEvent::Signal { .. } => 11,
        WEvent::Gap { .. } => 12,
        WEvent::ThreadStart { .. } => 13,
        WEvent::ThreadExit { .. } => 14,
        WEvent::Fork { .. } => 15,
        WEvent::Exec { .. } => 16,
        WEvent::Exit { .. } => 17,
        WEvent::HostWrite { .. } => 18,
        WEvent::InitUnknown { .. } => 19,
    }
}

const KIND_ACCESS: u8 = 0;
/// [`kind_id`] of an `Event::Alloc`.
pub const KIND_ALLOC: u8 = 5;
/// [`kind_id`] of an `Event::Free`.
pub const KIND_FREE: u8 = 6;
const NREGS: usize = 20;
const RIP: usize = 16;

/// The batch layout of format version 1 (frozen: old files still decode).
#[derive(Archive, Serialize, Deserialize, Debug, Default)]
pub struct BatchV1 {
    pub kinds: Vec<u8>,
    pub ip_addr: Vec<u64>,
    pub ip_code_len: Vec<u32>,
    pub ip_code: Vec<u8>,
    pub a_tid: Vec<u8>,
    pub a_ip: Vec<u8>,
    pub a_fault: Vec<u8>,
    pub a_mask: Vec<u8>,
    pub a_regs: Vec<u8>,
    pub a_data_len: Vec<u8>,
    pub a_data: Vec<u8>,
    pub a_vregs: Vec<WAccessVReg>,
    pub others: Vec<WEvent>,
}

/// The batch layout of format version 2: version 1's plus the Alloc/Free columns.
#[derive(Archive, Serialize, Deserialize, Debug, Default)]
pub struct Batch {
    /// One kind byte per event.
    pub kinds: Vec<u8>,
    /// Distinct `(rip, code)` pairs of the batch's accesses.
    pub ip_addr: Vec<u64>,
    pub ip_code_len: Vec<u32>,
    pub ip_code: Vec<u8>,
    /// LEB128 streams, one value per access (`a_regs`: one per changed register).
    pub a_tid: Vec<u8>,
    pub a_ip: Vec<u8>,
    pub a_fault: Vec<u8>,
    pub a_mask: Vec<u8>,
    pub a_regs: Vec<u8>,
    pub a_data_len: Vec<u8>,
    pub a_data: Vec<u8>,
    /// Sorted by `access`.
    pub a_vregs: Vec<WAccessVReg>,
    pub others: Vec<WEvent>,
    /// Alloc/Free columns, one head byte per event (see the module doc).
    pub m_head: Vec<u8>,
    pub m_tid: Vec<u8>,
    pub m_ptr: Vec<u8>,
    pub m_size: Vec<u8>,
    pub m_old: Vec<u8>,
    pub m_caller: Vec<u8>,
}

// Alloc/Free head byte: bits 0-3 allocator function (Alloc), bits 4-5 domain,
// bit 6 zeroed, bit 7 an old pointer follows (Alloc).
const M_FUNC: u8 = 0x0f;
const M_DOMAIN_SHIFT: u8 = 4;
const M_ZEROED: u8 = 0x40;
const M_OLD: u8 = 0x80;

/// Alloc/Free columns under construction, with their prediction state.
#[derive(Debug, Default)]
pub struct MemCols {
    pub head: Vec<u8>,
    pub tid: Vec<u8>,
    pub ptr: Vec<u8>,
    pub size: Vec<u8>,
    pub old: Vec<u8>,
    pub caller: Vec<u8>,
    prev_tid: u32,
    prev_alloc_ptr: u64,
    prev_alloc_caller: u64,
    prev_free_caller: u64,
}

impl MemCols {
    /// Empty columns (fresh prediction state) with room for as many bytes as
    /// `like` holds: the next batch is usually the same size, and growing
    /// each column by doubling copied it over and over.
    pub fn with_capacity_like(like: &MemCols) -> MemCols {
        MemCols {
            head: Vec::with_capacity(like.head.len()),
            tid: Vec::with_capacity(like.tid.len()),
            ptr: Vec::with_capacity(like.ptr.len()),
            size: Vec::with_capacity(like.size.len()),
            old: Vec::with_capacity(like.old.len()),
            caller: Vec::with_capacity(like.caller.len()),
            ..MemCols::default()
        }
    }

    /// Appends `e` if it is an Alloc or a Free; returns whether it was.
    #[inline]
    pub fn push(&mut self, e: &Event) -> bool {
        match *e {
            Event::Alloc { tid, func, ptr, size, old_ptr, caller, domain, zeroed } => {
                let mut h = wire::alloc_fn_code(func) & M_FUNC;
                h |= wire::domain_code(domain) << M_DOMAIN_SHIFT;
                if zeroed {
                    h |= M_ZEROED;
                }
                if old_ptr != 0 {
                    h |= M_OLD;
                    put(&mut self.old, zigzag(old_ptr.wrapping_sub(ptr)));
                }
                self.head.push(h);
                self.put_tid(tid);
                put(&mut self.ptr, zigzag(ptr.wrapping_sub(self.prev_alloc_ptr)));
                self.prev_alloc_ptr = ptr;
                put(&mut self.size, size);
                put(&mut self.caller, zigzag(caller.wrapping_sub(self.prev_alloc_caller)));
                self.prev_alloc_caller = caller;
                true
            }
            Event::Free { tid, ptr, caller, domain } => {
                self.head.push(wire::domain_code(domain) << M_DOMAIN_SHIFT);
                self.put_tid(tid);
                put(&mut self.ptr, zigzag(ptr.wrapping_sub(self.prev_alloc_ptr)));
                put(&mut self.caller, zigzag(caller.wrapping_sub(self.prev_free_caller)));
                self.prev_free_caller = caller;
                true
            }
            _ => false,
        }
    }

    #[inline]
    fn put_tid(&mut self, tid: u32) {
        put(&mut self.tid, zigzag(tid.wrapping_sub(self.prev_tid) as i32 as i64 as u64));
        self.prev_tid = tid;
    }

    /// Appends a run of plain mallocs and frees, all in `domain` — the same
    /// bytes as [`Self::push`] of each one's `Event::Alloc` (function malloc,
    /// no old pointer, not zeroed) or `Event::Free` in turn, a malloc with
    /// its free ([`PlainMem::free_caller`]) as both — and their kind bytes
    /// to `kinds`. Each column is grown once for the run and written through
    /// a pointer (capacity and bounds checks were a third of the recorder's
    /// cost per malloc/free), in one pass over the run (`get` once per
    /// record) while its thread is the previous one's (the rule: the thread
    /// column then gets zeros at the end). Returns how many Alloc and how
    /// many Free events it wrote.
    #[inline]
    pub fn push_plain<T>(
        &mut self,
        kinds: &mut Vec<u8>,
        domain: Domain,
        recs: &[T],
        get: impl Fn(&T) -> PlainMem,
    ) -> (usize, usize) {
        // At most two events per record, one of them with a size.
        let n = recs.len();
        let k0 = kinds.len();
        let mut c = PlainCols {
            kind: Leb::with_width(kinds, 2 * n, 1),
            ptr: Leb::new(&mut self.ptr, 2 * n),
            size: Leb::new(&mut self.size, n),
            caller: Leb::new(&mut self.caller, 2 * n),
            prev_ptr: self.prev_alloc_ptr,
            prev_ac: self.prev_alloc_caller,
            prev_fc: self.prev_free_caller,
        };
        let mut tid = Leb::new(&mut self.tid, 2 * n);
        let mut prev_tid = self.prev_tid;
        let mut rest = recs;
        while let Some((r, after)) = rest.split_first() {
            let m = get(r);
            if m.tid != prev_tid {
                break;
            }
            // SAFETY: `recs` has `n` records, each puts at most two events.
            unsafe { c.put(&m) };
            rest = after;
        }
        // SAFETY: one thread delta (0) per event so far, at most `2 * n`.
        unsafe { tid.zeros(c.kind.written()) };
        for r in rest {
            let m = get(r);
            let dt = zigzag(m.tid.wrapping_sub(prev_tid) as i32 as i64 as u64);
            prev_tid = m.tid;
            // SAFETY: as above, one thread delta per event.
            unsafe {
                tid.put(dt);
                if !m.free && m.free_caller.is_some() {
                    tid.byte(0);
                }
                c.put(&m);
            }
        }
        let PlainCols { kind, ptr, size, caller, prev_ptr, prev_ac, prev_fc } = c;
        for col in [kind, ptr, size, caller, tid] {
            col.finish();
        }
        (self.prev_tid, self.prev_alloc_ptr) = (prev_tid, prev_ptr);
        (self.prev_alloc_caller, self.prev_free_caller) = (prev_ac, prev_fc);
        // The head bytes follow from the kinds: the domain's alone, as
        // malloc's function code is 0 (both loops vectorise).
        let d = wire::domain_code(domain) << M_DOMAIN_SHIFT;
        let malloc_head = (wire::alloc_fn_code(AllocFn::Malloc) & M_FUNC) | d;
        let new = &kinds[k0..];
        if malloc_head == d {
            self.head.resize(self.head.len() + new.len(), d);
        } else {
            self.head.extend(new.iter().map(|&k| if k == KIND_FREE { d } else { malloc_head }));
        }
        // KIND_ALLOC is odd, KIND_FREE even.
        const { assert!(KIND_ALLOC & 1 == 1 && KIND_FREE & 1 == 0) };
        let allocs = new.iter().map(|&k| u32::from(k & 1)).sum::<u32>() as usize;
        (allocs, new.len() - allocs)
    }
}

/// [`MemCols::push_plain`]'s columns but the thread's, and their prediction state.
struct PlainCols<'a> {
    kind: Leb<'a>,
    ptr: Leb<'a>,
    size: Leb<'a>,
    caller: Leb<'a>,
    prev_ptr: u64,
    prev_ac: u64,
    prev_fc: u64,
}

impl PlainCols<'_> {
    /// Appends the one or two events of `m` (all but their thread deltas).
    ///
    /// # Safety
    /// Each column has room for them (see [`Leb::put`]).
    #[inline(always)]
    unsafe fn put(&mut self, m: &PlainMem) {
        // SAFETY: the caller's.
        unsafe {
            self.ptr.put(zigzag(m.ptr.wrapping_sub(self.prev_ptr)));
            if m.free {
                self.kind.byte(KIND_FREE);
                self.caller.put(zigzag(m.caller.wrapping_sub(self.prev_fc)));
                self.prev_fc = m.caller;
                return;
            }
            self.prev_ptr = m.ptr;
            self.size.put(m.size);
            self.caller.put(zigzag(m.caller.wrapping_sub(self.prev_ac)));
            self.prev_ac = m.caller;
            let Some(fc) = m.free_caller else {
                self.kind.byte(KIND_ALLOC);
                return;
            };
            // Its free: the pointer just allocated.
            self.kind.two([KIND_ALLOC, KIND_FREE]);
            self.ptr.byte(0);
            self.caller.put(zigzag(fc.wrapping_sub(self.prev_fc)));
            self.prev_fc = fc;
        }
    }
}

/// Appends LEB128 values to a column through room reserved once for `room`
/// of them ([`Leb::new`]); [`Leb::finish`] makes them part of the column.
struct Leb<'a> {
    col: &'a mut Vec<u8>,
    start: *mut u8,
    p: *mut u8,
    /// Values still allowed, and bytes reserved per value (checked in debug builds).
    #[cfg(debug_assertions)]
    room: usize,
    #[cfg(debug_assertions)]
    width: usize,
}

impl<'a> Leb<'a> {
    #[inline(always)]
    fn new(col: &'a mut Vec<u8>, room: usize) -> Leb<'a> {
        Leb::with_width(col, room, 10)
    }

    /// Room for `room` values of at most `width` bytes: 10 for [`Leb::put`], 1 for [`Leb::byte`].
    #[inline(always)]
    fn with_width(col: &'a mut Vec<u8>, room: usize, width: usize) -> Leb<'a> {
        col.reserve(width * room);
        let start = col.spare_capacity_mut().as_mut_ptr().cast::<u8>();
        Leb {
            col,
            start,
            p: start,
            #[cfg(debug_assertions)]
            room,
            #[cfg(debug_assertions)]
            width,
        }
    }

    /// Appends `v`.
    ///
    /// # Safety
    /// At most `room` (see [`Leb::new`]) values may be put, in a column made
    /// by `new` (width 10).
    #[inline(always)]
    unsafe fn put(&mut self, mut v: u64) {
        #[cfg(debug_assertions)]
        {
            assert!(self.room > 0 && self.width == 10, "LEB128 column without room");
            self.room -= 1;
        }
        // SAFETY: the caller puts at most `room` values of at most 10 bytes
        // each, into the spare capacity reserved for `10 * room` bytes; a
        // value of 2 or 3 bytes is written as 2 or 4 (the rest stays spare).
        unsafe {
            if v < 0x80 {
                self.p.write(v as u8);
                self.p = self.p.add(1);
                return;
            }
            // Sizes and pointer deltas, without the loop.
            if v < 1 << 14 {
                let b = (v & 0x7f) | 0x80 | (v >> 7) << 8;
                self.p.cast::<[u8; 2]>().write_unaligned((b as u16).to_le_bytes());
                self.p = self.p.add(2);
                return;
            }
            if v < 1 << 21 {
                let b = (v & 0x7f) | 0x80 | ((v >> 7) & 0x7f | 0x80) << 8 | (v >> 14) << 16;
                self.p.cast::<[u8; 4]>().write_unaligned((b as u32).to_le_bytes());
                self.p = self.p.add(3);
                return;
            }
            while v >= 0x80 {
                self.p.write(v as u8 | 0x80);
                self.p = self.p.add(1);
                v >>= 7;
            }
            self.p.write(v as u8);
            self.p = self.p.add(1);
        }
    }

    /// Appends the byte `b` (a kind or head byte, not LEB128).
    ///
    /// # Safety
    /// At most `room` values may be put (any width).
    #[inline(always)]
    unsafe fn byte(&mut self, b: u8) {
        #[cfg(debug_assertions)]
        {
            assert!(self.room > 0, "column without room");
            self.room -= 1;
        }
        // SAFETY: as in `put`: room for this value was reserved.
        unsafe {
            self.p.write(b);
            self.p = self.p.add(1);
        }
    }

    /// Appends the bytes `b` (two values of one byte).
    ///
    /// # Safety
    /// At most `room` values may be put (any width).
    #[inline(always)]
    unsafe fn two(&mut self, b: [u8; 2]) {
        #[cfg(debug_assertions)]
        {
            assert!(self.room >= 2, "column without room");
            self.room -= 2;
        }
        // SAFETY: as in `byte`: room for two more values was reserved.
        unsafe {
            self.p.cast::<[u8; 2]>().write_unaligned(b);
            self.p = self.p.add(2);
        }
    }

    /// Appends `k` zeros (`k` values 0).
    ///
    /// # Safety
    /// At most `room` values may be put in all.
    #[inline(always)]
    unsafe fn zeros(&mut self, k: usize) {
        #[cfg(debug_assertions)]
        {
            assert!(self.room >= k, "column without room");
            self.room -= k;
        }
        // SAFETY: room for `k` more values of at least a byte was reserved.
        unsafe {
            self.p.write_bytes(0, k);
            self.p = self.p.add(k);
        }
    }

    /// Bytes put so far.
    #[inline(always)]
    fn written(&self) -> usize {
        // SAFETY: as in `finish`.
        unsafe { self.p.offset_from(self.start) as usize }
    }

    #[inline(always)]
    fn finish(self) {
        // SAFETY: `p` lies in the spare capacity `start` begins (the same
        // allocation, not before it), and every byte up to it was written.
        unsafe {
            let written = self.p.offset_from(self.start) as usize;
            self.col.set_len(self.col.len() + written);
        }
    }
}

/// A plain `malloc` (an `Event::Alloc` of function malloc, no old pointer,
/// not zeroed) or `free`, or a malloc and then the free of its block by the
/// same thread, for [`crate::TraceWriter::push_plain_mem`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlainMem {
    pub free: bool,
    pub tid: u32,
    pub ptr: u64,
    /// Not stored for a free.
    pub size: u64,
    pub caller: u64,
    /// A malloc (`free` false) followed by its `free(ptr)`: that free's
    /// caller. Two events: the Alloc, then the Free.
    pub free_caller: Option<u64>,
}

/// Access events of a batch as they arrive, in order, before encoding: a
/// fixed-size record each (registers copied, instruction bytes inline), the
/// data bytes concatenated, the rare extended registers apart. Appending one
/// copies ~220 bytes and allocates nothing once the vectors have grown, so
/// the recorder's stop path never builds an [`Event::Access`]; the encoding
/// into columns happens on the writer's thread ([`encode_parts`]).
#[derive(Debug, Default)]
pub struct AccessCols {
    recs: Vec<RawAccess>,
    data: Vec<u8>,
    /// (access ordinal in this batch, register).
    vregs: Vec<(u32, VecReg)>,
}

#[derive(Debug, Clone, Copy)]
struct RawAccess {
    tid: Tid,
    code_len: u8,
    code: [u8; 15],
    data_len: u32,
    regs: Regs,
    fault_addr: u64,
}

impl AccessCols {
    /// Appends one access; `code` longer than 15 bytes is cut to 15 (an
    /// x86 instruction is never longer).
    #[inline]
    pub fn push(&mut self, a: &AccessRef<'_>) {
        let n = a.code.len().min(15);
        let mut code = [0u8; 15];
        code[..n].copy_from_slice(&a.code[..n]);
        for v in a.vregs {
            self.vregs.push((self.recs.len() as u32, v.clone()));
        }
        self.data.extend_from_slice(a.data);
        self.recs.push(RawAccess {
            tid: a.tid,
            code_len: n as u8,
            code,
            data_len: a.data.len() as u32,
            regs: *a.regs,
            fault_addr: a.fault_addr,
        });
    }

    /// An empty set with room for as many accesses and data bytes as this one holds.
    pub fn empty_like(&self) -> Self {
        AccessCols {
            recs: Vec::with_capacity(self.recs.len()),
            data: Vec::with_capacity(self.data.len()),
            vregs: Vec::new(),
        }
    }
}

/// Per-thread prediction state of the encoder.
#[derive(Default, Clone, Copy)]
struct ThreadState {
    regs: WRegs,
    fault: u64,
}

/// The same for the decoder, with registers as the events carry them.
#[derive(Default, Clone, Copy)]
struct DecodeState {
    regs: Regs,
    fault: u64,
}

/// Per-thread prediction state; consecutive events of one thread (the common
/// case) skip the hash lookup.
struct Threads<S> {
    index: HashMap<Tid, usize>,
    states: Vec<S>,
    last: Option<(Tid, usize)>,
}

impl<S> Default for Threads<S> {
    fn default() -> Self {
        Threads { index: HashMap::new(), states: Vec::new(), last: None }
    }
}

impl<S: Default> Threads<S> {
    fn get(&mut self, tid: Tid) -> &mut S {
        let i = match self.last {
            Some((t, i)) if t == tid => i,
            _ => {
                let next = self.states.len();
                let i = *self.index.entry(tid).or_insert(next);
                if i == next {
                    self.states.push(S::default());
                }
                self.last = Some((tid, i));
                i
            }
        };
        &mut self.states[i]
    }
}

#[inline(always)]
fn put(out: &mut Vec<u8>, v: u64) {
    if v < 0x80 {
        out.push(v as u8);
    } else {
        put_long(out, v);
    }
}

/// [`put`] of a value of two bytes or more (no `memcpy` call for a few bytes).
#[inline(never)]
fn put_long(out: &mut Vec<u8>, mut v: u64) {
    out.reserve(10);
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(d: u64) -> u64 {
    let d = d as i64;
    ((d << 1) ^ (d >> 63)) as u64
}

fn unzigzag(z: u64) -> u64 {
    (z >> 1) ^ (z & 1).wrapping_neg()
}

/// Encodes `events` (any kinds, any threads) into a batch.
#[cfg(test)]
pub fn encode(events: &[Event]) -> Batch {
    let mut mem = MemCols::default();
    let mut acc = AccessCols::default();
    let mut kinds = Vec::with_capacity(events.len());
    let mut rest = Vec::new();
    for e in events {
        kinds.push(kind_id(e));
        if !mem.push(e) && !acc.push_event(e) {
            rest.push(e.clone());
        }
    }
    encode_parts(kinds, &rest, mem, &acc)
}

impl AccessCols {
    /// Appends `e` if it is an Access; returns whether it was.
    #[inline]
    pub fn push_event(&mut self, e: &Event) -> bool {
        match e {
            Event::Access { tid, code, regs, fault_addr, data, vregs } => {
                self.push(&AccessRef { tid: *tid, code, regs, fault_addr: *fault_addr, data, vregs });
                true
            }
            _ => false,
        }
    }
}

/// A batch from its parts: the kind of every event, the Alloc/Free columns
/// already built ([`MemCols`]), the accesses in order ([`AccessCols`]) and
/// every other event in order (`events` holds no Access: the access columns
/// and `others` are independent streams, ordered by `kinds`).
pub fn encode_parts(kinds: Vec<u8>, events: &[Event], mem: MemCols, acc: &AccessCols) -> Batch {
    let mut b = Batch {
        kinds,
        m_head: mem.head,
        m_tid: mem.tid,
        m_ptr: mem.ptr,
        m_size: mem.size,
        m_old: mem.old,
        m_caller: mem.caller,
        ..Batch::default()
    };
    let mut threads: Threads<ThreadState> = Threads::default();
    // rip -> table indices with that rip (almost always one).
    let mut ip_index: HashMap<u64, Vec<u32>> = HashMap::new();
    let mut ip_code_off: Vec<usize> = Vec::new();
    for e in events {
        debug_assert!(!matches!(e, Event::Access { .. }), "accesses go through AccessCols");
        if let Some(w) = wire::event_to(e) {
            b.others.push(w);
        }
    }
    let mut vregs_iter = acc.vregs.iter().peekable();
    let mut data_at = 0usize;
    for (accesses, r) in acc.recs.iter().enumerate() {
        let accesses = accesses as u32;
        let (tid, regs, fault_addr) = (&r.tid, &r.regs, &r.fault_addr);
        let code = &r.code[..usize::from(r.code_len)];
        let data = acc.data.get(data_at..data_at + r.data_len as usize).unwrap_or(&[]);
        data_at += r.data_len as usize;
        let st = threads.get(*tid);
        // Instruction table.
        let cands = ip_index.entry(regs.rip).or_default();
        let found = cands.iter().copied().find(|&i| {
            let i = i as usize;
            let off = ip_code_off[i];
            b.ip_code.get(off..off + b.ip_code_len[i] as usize) == Some(code)
        });
        let ip = match found {
            Some(i) => i,
            None => {
                let i = b.ip_addr.len() as u32;
                b.ip_addr.push(regs.rip);
                b.ip_code_len.push(code.len() as u32);
                ip_code_off.push(b.ip_code.len());
                b.ip_code.extend_from_slice(code);
                cands.push(i);
                i
            }
        };
        put(&mut b.a_tid, u64::from(*tid));
        put(&mut b.a_ip, u64::from(ip));
        put(&mut b.a_fault, zigzag(fault_addr.wrapping_sub(st.fault)));
        st.fault = *fault_addr;
        let now = wire::regs_to(regs);
        let mut pred = st.regs;
        pred[RIP] = regs.rip;
        let mut mask = 0u64;
        for r in 0..NREGS {
            if now[r] != pred[r] {
                mask |= 1 << r;
            }
        }
        put(&mut b.a_mask, mask);
        for r in 0..NREGS {
            if mask & (1 << r) != 0 {
                put(&mut b.a_regs, zigzag(now[r].wrapping_sub(pred[r])));
            }
        }
        st.regs = now;
        put(&mut b.a_data_len, data.len() as u64);
        b.a_data.extend_from_slice(data);
        while let Some((_, v)) = vregs_iter.next_if(|(i, _)| *i == accesses) {
            b.a_vregs.push(WAccessVReg {
                access: accesses,
                kind: wire::vreg_kind_code(v.kind),
                index: v.index,
                bytes: v.bytes.clone(),
            });
        }
    }
    b
}

/// A bounds-checked reader over one LEB128 stream.
struct Stream<'a> {
    bytes: &'a [u8],
    pos: usize,
    name: &'static str,
}

impl<'a> Stream<'a> {
    fn new(bytes: &'a [u8], name: &'static str) -> Self {
        Stream { bytes, pos: 0, name }
    }

    #[inline]
    fn get(&mut self) -> Result<u64, String> {
        let mut v = 0u64;
        for shift in (0..64).step_by(7) {
            let Some(&byte) = self.bytes.get(self.pos) else {
                return Err(format!("column {} ends early", self.name));
            };
            self.pos += 1;
            let bits = u64::from(byte & 0x7f);
            if shift == 63 && bits > 1 {
                return Err(format!("column {}: varint overflows 64 bits", self.name));
            }
            v |= bits << shift;
            if byte & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(format!("column {}: varint longer than 10 bytes", self.name))
    }

    fn take(&mut self, n: u64) -> Result<&'a [u8], String> {
        let end = usize::try_from(n)
            .ok()
            .and_then(|n| self.pos.checked_add(n))
            .filter(|&e| e <= self.bytes.len())
            .ok_or_else(|| format!("column {} ends early", self.name))?;
        let s = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn done(&self) -> Result<(), String> {
        if self.pos == self.bytes.len() {
            Ok(())
        } else {
            Err(format!("column {} has {} trailing bytes", self.name, self.bytes.len() - self.pos))
        }
    }
}

/// Decodes a validated archived batch, handing each event to `f` with its
/// index in the batch, in order, reading the columns in place: an access
/// borrows its instruction and data bytes from the archive and its registers
/// from a local, nothing is allocated per access (except for the rare
/// extended registers). Any inconsistency is an error message (the caller
/// wraps it into `Error::Corrupt` with the chunk number); some checks (e.g.
/// trailing column bytes) can only fail after every event was visited, so on
/// error the caller must discard whatever `f` saw.
pub fn visit(b: &View<'_>, mut f: impl FnMut(usize, EventRef<'_>)) -> Result<(), String> {
    let ip_addr = b.ip_addr;
    let ip_code_len = b.ip_code_len;
    let ip_code = b.ip_code;
    if ip_addr.len() != ip_code_len.len() {
        return Err("instruction table columns differ in length".into());
    }
    let mut ip_code_off = Vec::with_capacity(ip_addr.len());
    let mut off = 0usize;
    for l in ip_code_len {
        ip_code_off.push(off);
        off = off.saturating_add(l.to_native() as usize);
    }
    if off != ip_code.len() {
        return Err("instruction table code lengths do not add up".into());
    }
    let mut tid_s = Stream::new(b.a_tid, "tid");
    let mut ip_s = Stream::new(b.a_ip, "ip");
    let mut fault_s = Stream::new(b.a_fault, "fault_addr");
    let mut mask_s = Stream::new(b.a_mask, "register mask");
    let mut regs_s = Stream::new(b.a_regs, "registers");
    let mut dlen_s = Stream::new(b.a_data_len, "data length");
    let mut data_s = Stream::new(b.a_data, "data");
    let mut vregs = b.a_vregs.iter().peekable();
    let mut others = b.others.iter();
    let mut mem = b.mem.map(MemReader::new);
    let mut threads: Threads<DecodeState> = Threads::default();
    let kinds = b.kinds;
    let mut vr: Vec<VecReg> = Vec::new();
    let mut accesses: u32 = 0;
    for (n, &k) in kinds.iter().enumerate() {
        if let (KIND_ALLOC | KIND_FREE, Some(m)) = (k, mem.as_mut()) {
            f(n, EventRef::Other(m.next(k == KIND_ALLOC).map_err(|e| format!("event {n}: {e}"))?));
            continue;
        }
        if k != KIND_ACCESS {
            let a = others.next().ok_or_else(|| format!("event {n}: kind {k} but no stored event left"))?;
            let w = rkyv::deserialize::<WEvent, rkyv::rancor::Error>(a).map_err(|e| format!("event {n}: {e}"))?;
            if wire_kind_id(&w) != k {
                return Err(format!("event {n}: kind column says {k}, stored event is {}", wire_kind_id(&w)));
            }
            f(n, EventRef::Other(wire::event_from(w).map_err(|e| format!("event {n}: {e}"))?));
            continue;
        }
        let tid = u32::try_from(tid_s.get()?).map_err(|_| format!("event {n}: thread id out of range"))?;
        let ip = usize::try_from(ip_s.get()?).unwrap_or(usize::MAX);
        let (Some(rip), Some(&code_off), Some(code_len)) = (ip_addr.get(ip), ip_code_off.get(ip), ip_code_len.get(ip))
        else {
            return Err(format!("event {n}: instruction index {ip} out of range"));
        };
        let code = ip_code
            .get(code_off..code_off + code_len.to_native() as usize)
            .ok_or_else(|| format!("event {n}: instruction bytes out of range"))?;
        let st = threads.get(tid);
        st.fault = st.fault.wrapping_add(unzigzag(fault_s.get()?));
        let mask = mask_s.get()?;
        if mask >> NREGS != 0 {
            return Err(format!("event {n}: register mask {mask:#x} names unknown registers"));
        }
        // Updated in place and lent to `f` as they are: copying these 160
        // bytes three times per access was a tenth of the analyzer's time.
        let regs = &mut st.regs;
        regs.rip = rip.to_native();
        let mut m = mask;
        while m != 0 {
            let r = m.trailing_zeros() as usize;
            m &= m - 1;
            let slot = reg_slot(regs, r);
            *slot = slot.wrapping_add(unzigzag(regs_s.get()?));
        }
        let fault_addr = st.fault;
        let dlen = dlen_s.get()?;
        let data = data_s.take(dlen)?;
        vr.clear();
        while let Some(v) = vregs.next_if(|v| v.access.to_native() == accesses) {
            vr.push(VecReg { kind: wire::vreg_kind_from(v.kind)?, index: v.index, bytes: v.bytes.as_slice().to_vec() });
        }
        f(n, EventRef::Access(AccessRef { tid, regs: &st.regs, code, fault_addr, data, vregs: &vr }));
        accesses += 1;
    }
    for s in [&tid_s, &ip_s, &fault_s, &mask_s, &regs_s, &dlen_s, &data_s] {
        s.done()?;
    }
    if vregs.next().is_some() {
        return Err("vector registers left over (unsorted or beyond the last access)".into());
    }
    if others.next().is_some() {
        return Err("stored events left over after the kind column".into());
    }
    if let Some(m) = mem {
        m.done()?;
    }
    Ok(())
}

/// An archived batch of either version, as borrowed columns.
pub struct View<'a> {
    pub kinds: &'a [u8],
    pub ip_addr: &'a [rkyv::Archived<u64>],
    pub ip_code_len: &'a [rkyv::Archived<u32>],
    pub ip_code: &'a [u8],
    pub a_tid: &'a [u8],
    pub a_ip: &'a [u8],
    pub a_fault: &'a [u8],
    pub a_mask: &'a [u8],
    pub a_regs: &'a [u8],
    pub a_data_len: &'a [u8],
    pub a_data: &'a [u8],
    pub a_vregs: &'a [ArchivedWAccessVReg],
    pub others: &'a [ArchivedWEvent],
    /// head, tid, ptr, size, old, caller (version 2); None: Alloc/Free are in `others`.
    pub mem: Option<[&'a [u8]; 6]>,
}

macro_rules! view_common {
    ($b:expr, $mem:expr) => {
        View {
            kinds: $b.kinds.as_slice(),
            ip_addr: $b.ip_addr.as_slice(),
            ip_code_len: $b.ip_code_len.as_slice(),
            ip_code: $b.ip_code.as_slice(),
            a_tid: $b.a_tid.as_slice(),
            a_ip: $b.a_ip.as_slice(),
            a_fault: $b.a_fault.as_slice(),
            a_mask: $b.a_mask.as_slice(),
            a_regs: $b.a_regs.as_slice(),
            a_data_len: $b.a_data_len.as_slice(),
            a_data: $b.a_data.as_slice(),
            a_vregs: $b.a_vregs.as_slice(),
            others: $b.others.as_slice(),
            mem: $mem,
        }
    };
}

impl ArchivedBatch {
    pub fn view(&self) -> View<'_> {
        let mem = [
            self.m_head.as_slice(),
            self.m_tid.as_slice(),
            self.m_ptr.as_slice(),
            self.m_size.as_slice(),
            self.m_old.as_slice(),
            self.m_caller.as_slice(),
        ];
        view_common!(self, Some(mem))
    }
}

impl ArchivedBatchV1 {
    pub fn view(&self) -> View<'_> {
        view_common!(self, None)
    }
}

/// Decodes the Alloc/Free columns, mirroring [`MemCols`].
struct MemReader<'a> {
    head: Stream<'a>,
    tid: Stream<'a>,
    ptr: Stream<'a>,
    size: Stream<'a>,
    old: Stream<'a>,
    caller: Stream<'a>,
    prev_tid: u32,
    prev_alloc_ptr: u64,
    prev_alloc_caller: u64,
    prev_free_caller: u64,
}

impl<'a> MemReader<'a> {
    fn new(c: [&'a [u8]; 6]) -> Self {
        MemReader {
            head: Stream::new(c[0], "alloc head"),
            tid: Stream::new(c[1], "alloc tid"),
            ptr: Stream::new(c[2], "alloc ptr"),
            size: Stream::new(c[3], "alloc size"),
            old: Stream::new(c[4], "alloc old_ptr"),
            caller: Stream::new(c[5], "alloc caller"),
            prev_tid: 0,
            prev_alloc_ptr: 0,
            prev_alloc_caller: 0,
            prev_free_caller: 0,
        }
    }

    fn next(&mut self, alloc: bool) -> Result<Event, String> {
        let h = *self.head.take(1)?.first().ok_or("alloc head column ends early")?;
        let domain = wire::domain_from((h >> M_DOMAIN_SHIFT) & 3)?;
        let d = i32::try_from(unzigzag(self.tid.get()?) as i64).map_err(|_| "thread id out of range".to_string())?;
        let tid = self.prev_tid.wrapping_add(d as u32);
        self.prev_tid = tid;
        let ptr = self.prev_alloc_ptr.wrapping_add(unzigzag(self.ptr.get()?));
        if !alloc {
            if h & !(3 << M_DOMAIN_SHIFT) != 0 {
                return Err(format!("free head byte {h:#x} has unknown bits"));
            }
            let caller = self.prev_free_caller.wrapping_add(unzigzag(self.caller.get()?));
            self.prev_free_caller = caller;
            return Ok(Event::Free { tid, ptr, caller, domain });
        }
        let func = wire::alloc_fn_from(h & M_FUNC)?;
        let old_ptr = if h & M_OLD != 0 { ptr.wrapping_add(unzigzag(self.old.get()?)) } else { 0 };
        self.prev_alloc_ptr = ptr;
        let size = self.size.get()?;
        let caller = self.prev_alloc_caller.wrapping_add(unzigzag(self.caller.get()?));
        self.prev_alloc_caller = caller;
        Ok(Event::Alloc { tid, func, ptr, size, old_ptr, caller, domain, zeroed: h & M_ZEROED != 0 })
    }

    fn done(&self) -> Result<(), String> {
        for s in [&self.head, &self.tid, &self.ptr, &self.size, &self.old, &self.caller] {
            s.done()?;
        }
        Ok(())
    }
}

/// Register `i` in the `WRegs` order (gpr 0..16, rip, rflags, fs, gs).
#[inline]
fn reg_slot(r: &mut Regs, i: usize) -> &mut u64 {
    match i {
        0..=15 => &mut r.gpr[i],
        RIP => &mut r.rip,
        17 => &mut r.rflags,
        18 => &mut r.fs_base,
        _ => &mut r.gs_base,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_ids_match_kind_names() {
        let e = Event::InitUnknown { addr: 1, len: 2 };
        assert_eq!(crate::EVENT_KINDS[usize::from(kind_id(&e))], e.kind());
        let e = Event::Exit { pid: 1, status: crate::ExitStatus::Code(0) };
        assert_eq!(crate::EVENT_KINDS[usize::from(kind_id(&e))], e.kind());
        assert_eq!(crate::EVENT_KINDS.len(), 20);
    }

    fn alloc(tid: u32, ptr: u64, size: u64, old_ptr: u64, func: crate::AllocFn) -> Event {
        Event::Alloc {
            tid,
            func,
            ptr,
            size,
            old_ptr,
            caller: 0x5555_0000_1234,
            domain: crate::Domain::Host,
            zeroed: false,
        }
    }

    fn decode_all(raw: &[u8], v1: bool) -> Vec<Event> {
        let view = if v1 {
            rkyv::access::<ArchivedBatchV1, rkyv::rancor::Error>(raw).unwrap().view()
        } else {
            rkyv::access::<ArchivedBatch, rkyv::rancor::Error>(raw).unwrap().view()
        };
        let mut out = vec![];
        visit(&view, |_, e| out.push(e.into_event())).unwrap();
        out
    }

    #[test]
    fn alloc_free_columns_roundtrip_and_a_malloc_free_pair_takes_ten_bytes() {
        use crate::{AllocFn, Domain};
        let mut events = vec![];
        for i in 0..1000u64 {
            let p = 0x5555_5555_a000 + (i * 48) % 4096;
            events.push(alloc(77, p, 16 + i % 1025, 0, AllocFn::Malloc));
            events.push(Event::Free { tid: 77, ptr: p, caller: 0x5555_0000_2000, domain: Domain::Host });
        }
        // Thread changes (both ways), realloc with an old pointer below and
        // above, calloc, foreign domain, a zero pointer and tid.
        events.push(Event::Alloc {
            tid: 5,
            func: AllocFn::Calloc,
            ptr: 0x10,
            size: 0,
            old_ptr: 0,
            caller: 0,
            domain: Domain::Foreign,
            zeroed: true,
        });
        events.push(alloc(u32::MAX, 0x7fff_0000_0000, u64::MAX, 0x1000, AllocFn::Realloc));
        events.push(alloc(0, 0x1000, 8, 0x7fff_ffff_0000, AllocFn::Mremap));
        events.push(Event::Free { tid: 9, ptr: 0, caller: u64::MAX, domain: Domain::Neutral });
        let b = encode(&events);
        let pair_bytes =
            [&b.m_head, &b.m_tid, &b.m_ptr, &b.m_size, &b.m_old, &b.m_caller].iter().map(|c| c.len()).sum::<usize>();
        assert!(pair_bytes <= 1000 * 10 + 100, "{pair_bytes} column bytes");
        assert!(b.others.is_empty());
        let raw = rkyv::to_bytes::<rkyv::rancor::Error>(&b).unwrap();
        assert_eq!(decode_all(&raw, false), events);
    }

    #[test]
    fn version_1_batches_keep_alloc_and_free_in_others() {
        let events = vec![
            alloc(1, 0x1000, 32, 0, crate::AllocFn::Malloc),
            Event::Free { tid: 1, ptr: 0x1000, caller: 7, domain: crate::Domain::Host },
            Event::InitUnknown { addr: 0x1000, len: 32 },
        ];
        let v1 = BatchV1 {
            kinds: events.iter().map(kind_id).collect(),
            others: events.iter().filter_map(wire::event_to).collect(),
            ..BatchV1::default()
        };
        let raw = rkyv::to_bytes::<rkyv::rancor::Error>(&v1).unwrap();
        assert_eq!(decode_all(&raw, true), events);
    }

    #[test]
    fn varint_and_zigzag_roundtrip() {
        for v in [0u64, 1, 127, 128, 300, u64::MAX, u64::MAX - 1, 1 << 63] {
            let mut b = vec![];
            put(&mut b, v);
            assert_eq!(Stream::new(&b, "t").get(), Ok(v));
            assert_eq!(unzigzag(zigzag(v)), v);
        }
        assert_eq!(zigzag(8), 16);
        assert_eq!(zigzag((-8i64) as u64), 15);
    }
}
