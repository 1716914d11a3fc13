//! One address shard: replays every op and the accesses to its own pages.
//! This is the hot loop of the analyzer: no allocation per access, one-entry
//! caches for the current allocation and thread.

use std::collections::BTreeMap;

use ffirec_format::Domain;

use super::intervals::{RangeSet, RegionMap};
use super::shadow::{all_set, bit, set_bits, FastMap, Shadow};
use super::{AllocInfo, CopyPlan, CopyRun, Op, NO_ALLOC, NO_CALL};
use crate::decode::{AccessRec, ChunkRecs, PtrLoad, FIRST, PAGE, READ, SYSCALL, WRITE};
use crate::findings::Kind;
use crate::symbols::ModuleMap;

const PROT_WRITE: u32 = 2;
const MAP_GROWSDOWN: u32 = 0x100;
const MAP_STACK: u32 = 0x2_0000;
/// Without a mapping to classify an address, it counts as heap when it lies
/// this close to an allocation.
const NEAR_HEAP: u64 = 64 * 1024;

/// Read-only context shared by all shards.
pub(crate) struct Ctx<'a> {
    pub allocs: &'a [AllocInfo],
    pub modules: &'a ModuleMap,
    /// Reallocations' copied bytes (see [`Op::Copy`]).
    pub copies: &'a [CopyPlan],
}

/// What a footprint range is relative to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum Target {
    Alloc(u32),
    /// Offsets relative to the module's load bias.
    Module(u32),
    /// Absolute addresses (memory the trace cannot attribute).
    Other,
}

/// Bytes one call read and wrote of one target.
#[derive(Debug, Clone, Default)]
pub(crate) struct Touch {
    pub read: RangeSet,
    pub write: RangeSet,
}

/// One problem at one access piece; merged into findings later.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Piece {
    pub kind: Kind,
    pub seq: u64,
    pub call: u32,
    pub ip: u64,
    pub addr: u64,
    pub size: u32,
    /// The allocation concerned (or the nearest one for out-of-bounds).
    pub alloc: u32,
    pub flags: u8,
}

/// Initialisation state of one byte (see [`Shard::byte_state`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ByteInit {
    Init,
    /// Never written, and the allocation's whole life was traced.
    Uninit,
    Unknown,
}

/// Foreign code loaded a pointer into a live host allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LoadExposure {
    pub seq: u64,
    pub call: u32,
    pub ip: u64,
    pub from: u64,
    /// The allocation the pointer was loaded from (NO_ALLOC when none).
    pub from_alloc: u32,
    pub alloc: u32,
    pub offset: u64,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Stats {
    pub accesses: u64,
    pub bytes_read: u64,
    pub bytes_written: u64,
    /// Vectorised over-reads by neutral string routines, not reported.
    pub overreads: u64,
    /// Bytes read whose initialisation state is unknown.
    pub unknown_bytes: u64,
    /// Accesses to memory the trace cannot classify (no mapping, not near an allocation).
    pub unclassified: u64,
}

impl Stats {
    pub fn add(&mut self, o: &Stats) {
        self.accesses += o.accesses;
        self.bytes_read += o.bytes_read;
        self.bytes_written += o.bytes_written;
        self.overreads += o.overreads;
        self.unknown_bytes += o.unknown_bytes;
        self.unclassified += o.unclassified;
    }
}

#[derive(Default)]
pub(crate) struct ShardOut {
    pub pieces: Vec<Piece>,
    pub footprint: FastMap<(u32, Target), Touch>,
    pub exposures: Vec<LoadExposure>,
    pub stats: Stats,
}

/// Aligned so shards replayed side by side on different cores share no
/// cache line (each writes its caches and counters on every access).
#[repr(align(128))]
pub(crate) struct Shard {
    idx: usize,
    live: BTreeMap<u64, u32>,
    freed: BTreeMap<u64, u32>,
    regions: RegionMap,
    cur_call: FastMap<u32, u32>,
    last_tid: Option<(u32, u32)>,
    last_alloc: Option<(u64, u64, u32)>,
    epoch: u32,
    gap_epoch: u32,
    escaped: FastMap<u32, ()>,
    seen_alloc: bool,
    shadow: Shadow,
    exposed: FastMap<(u32, u32), ()>,
    pending: Option<((u32, Target), Touch)>,
    /// Where [`Shard::run`] stopped in the current batch.
    cursor: Cursor,
    pub out: ShardOut,
}

/// A position in a batch: chunk, next access and pointer load of this
/// shard in it, next op.
#[derive(Debug, Clone, Copy, Default)]
struct Cursor {
    chunk: usize,
    ai: usize,
    pi: usize,
    oi: usize,
}

impl Shard {
    pub fn new(idx: usize) -> Self {
        Shard {
            idx,
            live: BTreeMap::new(),
            freed: BTreeMap::new(),
            regions: RegionMap::default(),
            cur_call: FastMap::default(),
            last_tid: None,
            last_alloc: None,
            epoch: 0,
            gap_epoch: 0,
            escaped: FastMap::default(),
            seen_alloc: false,
            shadow: Shadow::default(),
            exposed: FastMap::default(),
            pending: None,
            cursor: Cursor::default(),
            out: ShardOut::default(),
        }
    }

    /// Replays one batch — `ops` and this shard's records of `chunks`,
    /// merged in event order — up to (not including) event `until`; the
    /// next call goes on from there. `u64::MAX` finishes the batch.
    pub fn run(&mut self, ops: &[(u64, Op)], chunks: &[ChunkRecs], ctx: &Ctx, until: u64) {
        self.replay(ops, chunks, ctx, until);
        if until == u64::MAX {
            self.flush_pending();
            self.cursor = Cursor::default();
        }
    }

    fn replay(&mut self, ops: &[(u64, Op)], chunks: &[ChunkRecs], ctx: &Ctx, until: u64) {
        let Cursor { mut chunk, mut ai, mut pi, mut oi } = self.cursor;
        while let Some(ch) = chunks.get(chunk) {
            let accs = &ch.accesses[self.idx];
            let ptrs = &ch.ptr_loads[self.idx];
            while let Some(a) = accs.get(ai) {
                while let Some(p) = ptrs.get(pi).filter(|p| p.seq < a.seq) {
                    if p.seq >= until {
                        // Ops before `until` still apply (a copy reads their result).
                        oi = self.ops_until(ops, oi, until, ctx);
                        self.cursor = Cursor { chunk, ai, pi, oi };
                        return;
                    }
                    oi = self.ops_until(ops, oi, p.seq, ctx);
                    self.ptr_load(p, ctx);
                    pi += 1;
                }
                if a.seq >= until {
                    oi = self.ops_until(ops, oi, until, ctx);
                    self.cursor = Cursor { chunk, ai, pi, oi };
                    return;
                }
                oi = self.ops_until(ops, oi, a.seq, ctx);
                self.access(a, ctx);
                ai += 1;
            }
            while let Some(p) = ptrs.get(pi) {
                if p.seq >= until {
                    oi = self.ops_until(ops, oi, until, ctx);
                    self.cursor = Cursor { chunk, ai, pi, oi };
                    return;
                }
                oi = self.ops_until(ops, oi, p.seq, ctx);
                self.ptr_load(p, ctx);
                pi += 1;
            }
            (chunk, ai, pi) = (chunk + 1, 0, 0);
        }
        oi = self.ops_until(ops, oi, until, ctx);
        self.cursor = Cursor { chunk, ai, pi, oi };
    }

    #[inline]
    fn ops_until(&mut self, ops: &[(u64, Op)], mut oi: usize, seq: u64, ctx: &Ctx) -> usize {
        while oi < ops.len() && ops[oi].0 < seq {
            self.apply(ops[oi].1, ctx);
            oi += 1;
        }
        oi
    }

    fn owns(&self, addr: u64) -> bool {
        crate::decode::shard_of(addr) == self.idx
    }

    fn apply(&mut self, op: Op, ctx: &Ctx) {
        match op {
            Op::SetCall { tid, call, resume } => {
                self.cur_call.insert(tid, call);
                self.last_tid = None;
                if resume {
                    self.epoch += 1;
                }
            }
            Op::Resume => self.epoch += 1,
            Op::Alloc { id } => {
                let Some(a) = ctx.allocs.get(id as usize) else { return };
                self.seen_alloc = true;
                self.last_alloc = None;
                // A new block ends the "freed" state of whatever it reuses.
                let (base, end) = (a.base, a.end().max(a.base.saturating_add(1)));
                let reused: Vec<u64> = self
                    .freed
                    .range(..end)
                    .rev()
                    .take_while(|(&b, &fid)| b >= base || ctx.allocs.get(fid as usize).is_some_and(|f| f.end() > base))
                    .map(|(&b, _)| b)
                    .collect();
                for b in reused {
                    self.freed.remove(&b);
                }
                self.live.insert(a.base, id);
                let idx = self.idx;
                self.shadow.reset(a.base, a.end(), a.zeroed, |addr| crate::decode::shard_of(addr) == idx);
            }
            Op::Free { id } => {
                let Some(a) = ctx.allocs.get(id as usize) else { return };
                self.last_alloc = None;
                if self.live.get(&a.base) == Some(&id) {
                    self.live.remove(&a.base);
                }
                self.freed.insert(a.base, id);
            }
            Op::Copy { idx } => self.copy_in(idx, ctx),
            Op::Init { addr, len } => self.mark(addr, len, true, ctx),
            Op::Unknown { addr, len } => self.mark(addr, len, false, ctx),
            Op::Map { addr, len, prot, flags, host } => {
                self.regions.map(addr, addr.saturating_add(len), prot, flags, host)
            }
            Op::Protect { addr, len, prot } => self.regions.protect(addr, addr.saturating_add(len), prot),
            Op::Unmap { addr, len } => self.regions.remove(addr, addr.saturating_add(len)),
            Op::Gap => self.gap_epoch += 1,
            Op::Escape { id } => {
                self.escaped.insert(id, ());
            }
        }
    }

    /// Marks owned bytes initialised (`init`) or unknown. Only bytes inside
    /// live allocations have a state, so only those are marked.
    fn mark(&mut self, addr: u64, len: u64, init: bool, ctx: &Ctx) {
        let end = addr.saturating_add(len);
        let mut parts: Vec<(u64, u64)> = Vec::new();
        if let Some((_, &id)) = self.live.range(..addr).next_back() {
            if let Some(a) = ctx.allocs.get(id as usize) {
                parts.push((addr, end.min(a.end())));
            }
        }
        for (_, &id) in self.live.range(addr..end) {
            if let Some(a) = ctx.allocs.get(id as usize) {
                parts.push((a.base, end.min(a.end())));
            }
        }
        for (s, e) in parts {
            // Nonsense sizes (beyond 64 GiB) in a damaged trace are ignored.
            if e <= s || (e - s) / PAGE > 1 << 24 {
                continue;
            }
            let mut cur = s;
            while cur < e {
                let page = cur / PAGE;
                let pe = e.min((page + 1).saturating_mul(PAGE));
                if self.owns(cur) {
                    let p = self.shadow.page(page, &self.live, ctx.allocs);
                    let (bs, be) = ((cur - page * PAGE) as usize, (pe - page * PAGE) as usize);
                    if init {
                        set_bits(&mut p.init, bs, be, true);
                        set_bits(&mut p.unknown, bs, be, false);
                    } else {
                        set_bits(&mut p.unknown, bs, be, true);
                    }
                }
                cur = pe;
            }
        }
    }

    /// The state of bytes `[s, e)` (within one page this shard owns) of live
    /// allocation `id` now, as a read would judge it (see [`Shard::byte_state`]).
    pub(crate) fn copy_out(&self, id: u32, al: &AllocInfo, s: u64, e: u64) -> CopyRun {
        let off = s - al.base;
        let exact = self.exact_now(id, al);
        let page = s / PAGE;
        let judge = |a: u64, init: bool, unknown: bool| {
            if init {
                ByteInit::Init
            } else if !exact || unknown || a - al.base < al.unknown_prefix {
                ByteInit::Unknown
            } else {
                ByteInit::Uninit
            }
        };
        match self.shadow.get(page) {
            Some(p) => {
                let bytes: Vec<ByteInit> = (s..e)
                    .map(|a| {
                        let i = (a - page * PAGE) as usize;
                        judge(a, bit(&p.init, i), bit(&p.unknown, i))
                    })
                    .collect();
                match bytes.first() {
                    Some(&b0) if bytes.iter().all(|&b| b == b0) => CopyRun::Same { off, len: e - s, state: b0 },
                    _ => CopyRun::Bytes { off, bytes },
                }
            }
            // An untouched page holds the allocation's birth state.
            None if al.zeroed => CopyRun::Same { off, len: e - s, state: ByteInit::Init },
            None if !exact || e - al.base <= al.unknown_prefix => {
                CopyRun::Same { off, len: e - s, state: ByteInit::Unknown }
            }
            None if off >= al.unknown_prefix => CopyRun::Same { off, len: e - s, state: ByteInit::Uninit },
            None => CopyRun::Bytes { off, bytes: (s..e).map(|a| judge(a, false, false)).collect() },
        }
    }

    /// Gives the new block of a reallocation the copied bytes' states (on
    /// this shard's pages); the rest keeps its birth state.
    fn copy_in(&mut self, idx: u32, ctx: &Ctx) {
        let Some(plan) = ctx.copies.get(idx as usize) else { return };
        let (Some(runs), Some(to)) = (plan.data.as_ref(), ctx.allocs.get(plan.to as usize)) else { return };
        let birth = if to.zeroed { ByteInit::Init } else { ByteInit::Uninit };
        for run in runs {
            let (off, len) = match run {
                CopyRun::Same { state, .. } if *state == birth => continue,
                CopyRun::Same { off, len, .. } => (*off, *len),
                CopyRun::Bytes { off, bytes } => (*off, bytes.len() as u64),
            };
            let (s, e) = (to.base.saturating_add(off), to.base.saturating_add(off).saturating_add(len).min(to.end()));
            let mut cur = s;
            while cur < e {
                let page = cur / PAGE;
                let pe = e.min((page + 1).saturating_mul(PAGE));
                if self.owns(cur) {
                    let p = self.shadow.page(page, &self.live, ctx.allocs);
                    let base = page * PAGE;
                    match run {
                        CopyRun::Same { state, .. } => {
                            let (bs, be) = ((cur - base) as usize, (pe - base) as usize);
                            set_bits(&mut p.init, bs, be, *state == ByteInit::Init);
                            set_bits(&mut p.unknown, bs, be, *state == ByteInit::Unknown);
                        }
                        CopyRun::Bytes { bytes, .. } => {
                            for a in cur..pe {
                                let (i, st) = ((a - base) as usize, bytes[(a - s) as usize]);
                                set_bits(&mut p.init, i, i + 1, st == ByteInit::Init);
                                set_bits(&mut p.unknown, i, i + 1, st == ByteInit::Unknown);
                            }
                        }
                    }
                }
                cur = pe;
            }
        }
    }

    /// Are `al`'s never-written bytes exactly known to be uninitialised now?
    /// Only when every write to them since birth was traced: no untraced
    /// stretch (gap) since, and either the allocation is exact (foreign and
    /// never handed to host code, or host writes were tracked) or no host
    /// code ran since it was born.
    pub(crate) fn exact_now(&self, id: u32, al: &AllocInfo) -> bool {
        al.birth_gap == self.gap_epoch
            && ((al.exact && !self.escaped.contains_key(&id)) || al.birth_epoch == self.epoch)
    }

    #[inline]
    fn call_of(&mut self, tid: u32) -> u32 {
        if let Some((t, c)) = self.last_tid {
            if t == tid {
                return c;
            }
        }
        let c = self.cur_call.get(&tid).copied().unwrap_or(NO_CALL);
        self.last_tid = Some((tid, c));
        c
    }

    #[inline]
    fn find_live(&mut self, addr: u64, ctx: &Ctx) -> Option<(u64, u64, u32)> {
        if let Some((b, e, id)) = self.last_alloc {
            if addr >= b && addr < e {
                return Some((b, e, id));
            }
        }
        let (_, &id) = self.live.range(..=addr).next_back()?;
        let a = ctx.allocs.get(id as usize)?;
        if a.contains(addr) {
            self.last_alloc = Some((a.base, a.end(), id));
            Some((a.base, a.end(), id))
        } else {
            None
        }
    }

    /// Records `[s, e)` in the footprint. Runs of accesses to the same
    /// (call, target) accumulate in `pending` without a map lookup.
    fn touch(&mut self, call: u32, target: Target, s: u64, e: u64, flags: u8) {
        if !matches!(&self.pending, Some((k, _)) if *k == (call, target)) {
            self.flush_pending();
            let t = self.out.footprint.remove(&(call, target)).unwrap_or_default();
            self.pending = Some(((call, target), t));
        }
        let Some((_, t)) = self.pending.as_mut() else { return };
        if flags & READ != 0 {
            t.read.insert(s, e);
        }
        if flags & WRITE != 0 {
            t.write.insert(s, e);
        }
    }

    fn flush_pending(&mut self) {
        if let Some((k, t)) = self.pending.take() {
            self.out.footprint.insert(k, t);
        }
    }

    fn piece(&mut self, kind: Kind, a: &AccessRec, call: u32, s: u64, e: u64, alloc: u32) {
        self.out.pieces.push(Piece {
            kind,
            seq: a.seq,
            call,
            ip: a.ip,
            addr: s,
            size: (e - s) as u32,
            alloc,
            flags: a.flags,
        });
    }

    /// A vector load by a C-runtime string routine (strlen, memchr, ...):
    /// reading a whole aligned block past a terminator is how they work.
    fn vector_overread(&self, a: &AccessRec, ctx: &Ctx) -> bool {
        a.flags & (WRITE | SYSCALL) == 0
            && matches!(a.size, 16 | 32 | 64)
            && ctx.modules.find(a.ip).is_some_and(|s| s.domain == Domain::Neutral)
            && self.overlaps_live(a.addr, a.addr.saturating_add(u64::from(a.size)), ctx)
    }

    fn overlaps_live(&self, s: u64, e: u64, ctx: &Ctx) -> bool {
        if self.live.range(s..e).next().is_some() {
            return true;
        }
        self.live.range(..s).next_back().and_then(|(_, &id)| ctx.allocs.get(id as usize)).is_some_and(|a| a.end() > s)
    }

    fn access(&mut self, a: &AccessRec, ctx: &Ctx) {
        let call = self.call_of(a.tid);
        if a.flags & FIRST != 0 && a.flags & SYSCALL == 0 {
            self.out.stats.accesses += 1;
        }
        let size = u64::from(a.size);
        if a.flags & READ != 0 {
            self.out.stats.bytes_read += size;
        }
        if a.flags & WRITE != 0 {
            self.out.stats.bytes_written += size;
        }
        let end = a.addr.saturating_add(size);
        let mut cur = a.addr;
        while cur < end {
            match self.find_live(cur, ctx) {
                Some((base, aend, id)) => {
                    let e = end.min(aend);
                    self.in_alloc(a, call, id, base, cur, e, ctx);
                    cur = e;
                }
                None => {
                    let next = self.live.range(cur + 1..end).next().map_or(end, |(&b, _)| b);
                    cur = self.outside(a, call, cur, next, ctx);
                }
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn in_alloc(&mut self, a: &AccessRec, call: u32, id: u32, base: u64, s: u64, e: u64, ctx: &Ctx) {
        self.touch(call, Target::Alloc(id), s - base, e - base, a.flags);
        let page = s / PAGE;
        let (ps, pe) = ((s - page * PAGE) as usize, (e - page * PAGE) as usize);
        let Some(al) = ctx.allocs.get(id as usize) else { return };
        if a.flags & READ != 0 {
            let clean = all_set(&self.shadow.page(page, &self.live, ctx.allocs).init, ps, pe);
            if !clean {
                if self.vector_overread(a, ctx) {
                    self.out.stats.overreads += 1;
                } else {
                    let exact_now = self.exact_now(id, al);
                    let p = self.shadow.page(page, &self.live, ctx.allocs);
                    let mut runs: [(usize, usize); 4] = [(0, 0); 4];
                    let mut nruns = 0;
                    let mut overflow: Vec<(usize, usize)> = Vec::new();
                    let mut unknown = 0u64;
                    let mut run_start: Option<usize> = None;
                    for i in ps..=pe {
                        let is_uninit = i < pe && !bit(&p.init, i) && {
                            let off = page * PAGE + i as u64 - al.base;
                            let unk = !exact_now || bit(&p.unknown, i) || off < al.unknown_prefix;
                            if unk {
                                unknown += 1;
                            }
                            !unk
                        };
                        match (is_uninit, run_start) {
                            (true, None) => run_start = Some(i),
                            (false, Some(st)) => {
                                if nruns < runs.len() {
                                    runs[nruns] = (st, i);
                                    nruns += 1;
                                } else {
                                    overflow.push((st, i));
                                }
                                run_start = None;
                            }
                            _ => {}
                        }
                    }
                    self.out.stats.unknown_bytes += unknown;
                    let pb = page * PAGE;
                    for &(rs, re) in runs[..nruns].iter().chain(overflow.iter()) {
                        self.piece(Kind::Uninit, a, call, pb + rs as u64, pb + re as u64, id);
                    }
                }
            }
        }
        if a.flags & WRITE != 0 {
            let p = self.shadow.page(page, &self.live, ctx.allocs);
            set_bits(&mut p.init, ps, pe, true);
            set_bits(&mut p.unknown, ps, pe, false);
        }
    }

    /// Handles the part of `[s, e)` outside every live allocation that can be
    /// classified as one thing; returns where it stopped.
    fn outside(&mut self, a: &AccessRec, call: u32, s: u64, e: u64, ctx: &Ctx) -> u64 {
        // Freed block?
        if let Some((_, &fid)) = self.freed.range(..=s).next_back() {
            if let Some(f) = ctx.allocs.get(fid as usize).filter(|f| f.contains(s)) {
                let fe = e.min(f.end());
                self.touch(call, Target::Alloc(fid), s - f.base, fe - f.base, a.flags);
                self.piece(Kind::UseAfterFree, a, call, s, fe, fid);
                return fe;
            }
        }
        let write = a.flags & WRITE != 0;
        if let Some(seg) = ctx.modules.find(s) {
            let se = e.min(seg.end);
            self.touch(call, Target::Module(seg.module), s.wrapping_sub(seg.bias), se.wrapping_sub(seg.bias), a.flags);
            // The protection now: an mprotect seen in the trace (RELRO, say)
            // overrides the segment's as mapped.
            let prot = self.regions.get(s).map_or(seg.prot, |(_, r)| r.prot);
            if write && prot & PROT_WRITE == 0 && seg.domain == Domain::Host {
                self.piece(Kind::ReadOnlyWrite, a, call, s, se, NO_ALLOC);
            }
            return se;
        }
        let region = self.regions.get(s);
        if let Some((_, r)) = region {
            let re = e.min(r.end);
            if write && r.prot & PROT_WRITE == 0 && r.host {
                self.touch(call, Target::Other, s, re, a.flags);
                self.piece(Kind::ReadOnlyWrite, a, call, s, re, NO_ALLOC);
                return re;
            }
            if r.flags & (MAP_GROWSDOWN | MAP_STACK) != 0 || !r.host {
                self.touch(call, Target::Other, s, re, a.flags);
                return re;
            }
        }
        let nearest = self.nearest(s, e, ctx);
        let heap = self.seen_alloc && (region.is_some() || nearest.is_some_and(|(_, dist)| dist < NEAR_HEAP));
        // Heap bytes past an allocation's end count against that allocation
        // (offsets beyond its size), so footprints stay relative.
        match nearest.and_then(|(id, _)| ctx.allocs.get(id as usize).map(|n| (id, n.base))) {
            Some((id, base)) if heap && s >= base => self.touch(call, Target::Alloc(id), s - base, e - base, a.flags),
            _ => self.touch(call, Target::Other, s, e, a.flags),
        }
        if !heap {
            self.out.stats.unclassified += u64::from(a.flags & FIRST != 0);
            return e;
        }
        if self.vector_overread(a, ctx) {
            self.out.stats.overreads += 1;
            return e;
        }
        self.piece(Kind::OutOfBounds, a, call, s, e, nearest.map_or(NO_ALLOC, |(id, _)| id));
        e
    }

    /// The live allocation closest to `[s, e)` (which overlaps none) and the distance.
    fn nearest(&self, s: u64, e: u64, ctx: &Ctx) -> Option<(u32, u64)> {
        let before = self
            .live
            .range(..=s)
            .next_back()
            .and_then(|(_, &id)| ctx.allocs.get(id as usize).map(|a| (id, s.saturating_sub(a.end()))));
        let after = self
            .live
            .range(s..)
            .next()
            .and_then(|(_, &id)| ctx.allocs.get(id as usize).map(|a| (id, a.base.saturating_sub(e))));
        match (before, after) {
            (Some(b), Some(a)) => Some(if a.1 < b.1 { a } else { b }),
            (b, a) => b.or(a),
        }
    }

    /// What a read of byte `addr` would find now, judged exactly as
    /// `in_alloc` judges it: the live allocation holding it and whether the
    /// byte is initialised, never written, or of unknown state. `None`
    /// outside every live allocation. Meaningful only on the shard owning
    /// `addr` (used by `ffirec show --at`).
    pub(crate) fn byte_state(&mut self, addr: u64, ctx: &Ctx) -> Option<(u32, ByteInit)> {
        let (base, _, id) = self.find_live(addr, ctx)?;
        let al = ctx.allocs.get(id as usize)?;
        let page = addr / PAGE;
        let i = (addr - page * PAGE) as usize;
        let exact_now = self.exact_now(id, al);
        let p = self.shadow.page(page, &self.live, ctx.allocs);
        let state = if bit(&p.init, i) {
            ByteInit::Init
        } else if !exact_now || bit(&p.unknown, i) || addr - base < al.unknown_prefix {
            ByteInit::Unknown
        } else {
            ByteInit::Uninit
        };
        Some((id, state))
    }

    fn ptr_load(&mut self, p: &PtrLoad, ctx: &Ctx) {
        let Some((_, &id)) = self.live.range(..=p.value).next_back() else { return };
        let Some(al) = ctx.allocs.get(id as usize) else { return };
        if !al.contains(p.value) || al.domain != Domain::Host {
            return;
        }
        let call = self.call_of(p.tid);
        if call == NO_CALL || self.exposed.insert((call, id), ()).is_some() {
            return;
        }
        let from_alloc = self
            .live
            .range(..=p.from)
            .next_back()
            .filter(|(_, &fid)| ctx.allocs.get(fid as usize).is_some_and(|f| f.contains(p.from)))
            .map_or(NO_ALLOC, |(_, &fid)| fid);
        self.out.exposures.push(LoadExposure {
            seq: p.seq,
            call,
            ip: p.ip,
            from: p.from,
            from_alloc,
            alloc: id,
            offset: p.value - al.base,
        });
    }
}
