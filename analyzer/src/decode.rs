//! Stage 1: one chunk at a time, independently of every other chunk —
//! decompress, decode every `Access` with iced-x86 (through `ffirec-decode`)
//! and turn it into compact [`AccessRec`]s, bucketed by the address shard
//! that will replay them. Everything that is not an access is passed on as
//! a control event for the sequential timeline pass.

use ffirec_decode::{Decoded, MemAccess, Rw};
use ffirec_format::{AccessRef, Event, EventRef, Trace};

use crate::Error;

/// Number of address shards. Fixed (never derived from the thread count) so
/// the result is identical whatever `--threads` says.
pub(crate) const SHARDS: usize = 8;
pub(crate) const PAGE: u64 = 4096;

/// Pages are dealt round-robin to shards: balanced for any address layout.
#[inline]
pub(crate) fn shard_of(addr: u64) -> usize {
    ((addr / PAGE) % SHARDS as u64) as usize
}

/// Record flags.
pub(crate) const READ: u8 = 1;
pub(crate) const WRITE: u8 = 2;
/// First piece of an access (an access split at page boundaries counts once).
pub(crate) const FIRST: u8 = 4;
/// Made by the kernel during a syscall (`ip` holds the syscall number).
pub(crate) const SYSCALL: u8 = 8;

/// One access, clipped to one page. 32 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AccessRec {
    pub seq: u64,
    pub ip: u64,
    pub addr: u64,
    pub tid: u32,
    pub size: u16,
    pub flags: u8,
}

/// A pointer-sized value the foreign code loaded (from the recorded data bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PtrLoad {
    pub seq: u64,
    pub ip: u64,
    /// Where the value was loaded from.
    pub from: u64,
    pub value: u64,
    pub tid: u32,
}

/// Everything stage 1 produced for one chunk.
pub(crate) struct ChunkRecs {
    /// Per shard, in event order.
    pub accesses: Vec<Vec<AccessRec>>,
    /// Per shard of the *value*, in event order.
    pub ptr_loads: Vec<Vec<PtrLoad>>,
    /// Non-access events with their numbers, in order.
    pub control: Vec<(u64, Event)>,
    pub access_events: u64,
    pub decode_errors: Vec<DecodeFailure>,
}

impl ChunkRecs {
    pub(crate) fn empty() -> Self {
        ChunkRecs {
            accesses: vec![Vec::new(); SHARDS],
            ptr_loads: vec![Vec::new(); SHARDS],
            control: Vec::new(),
            access_events: 0,
            decode_errors: Vec::new(),
        }
    }

    /// Tags every address with the space (process) of the thread that used
    /// it, as of the event (see `state::space`); shards are unchanged by it.
    pub(crate) fn tag_spaces(&mut self, spaces: &crate::state::space::Spaces) {
        use crate::state::space::tag;
        for a in self.accesses.iter_mut().flatten() {
            a.addr = tag(spaces.at(a.tid, a.seq), a.addr);
        }
        for p in self.ptr_loads.iter_mut().flatten() {
            let s = spaces.at(p.tid, p.seq);
            p.from = tag(s, p.from);
            p.value = tag(s, p.value);
        }
    }

    /// Empties every list, keeping the memory.
    pub(crate) fn clear(&mut self) {
        self.accesses.iter_mut().for_each(Vec::clear);
        self.ptr_loads.iter_mut().for_each(Vec::clear);
        self.control.clear();
        self.access_events = 0;
        self.decode_errors.clear();
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct DecodeFailure {
    pub seq: u64,
    pub ip: u64,
    pub reason: String,
}

/// Per-worker decode cache: the same few instructions fault again and
/// again. Direct-mapped by address (a collision just decodes again), code
/// bytes checked on every hit.
pub(crate) struct Decoder {
    slots: Vec<Option<Cached>>,
    scratch: Vec<MemAccess>,
}

struct Cached {
    ip: u64,
    code: [u8; 16],
    len: u8,
    decoded: Decoded,
}

const SLOTS: usize = 4096;

impl Default for Decoder {
    fn default() -> Self {
        Decoder { slots: (0..SLOTS).map(|_| None).collect(), scratch: Vec::new() }
    }
}

impl Decoder {
    pub(crate) fn decoded(&mut self, ip: u64, code: &[u8]) -> Result<&Decoded, ffirec_decode::DecodeError> {
        let slot = ((ip ^ (ip >> 12)) as usize) % SLOTS;
        let hit = self.slots[slot].as_ref().is_some_and(|c| {
            let n = usize::from(c.len);
            c.ip == ip && code.len() >= n && code[..n] == c.code[..n]
        });
        if !hit {
            let decoded = Decoded::new(ip, code)?;
            let n = decoded.len().min(16).min(code.len());
            let mut buf = [0u8; 16];
            buf[..n].copy_from_slice(&code[..n]);
            self.slots[slot] = Some(Cached { ip, code: buf, len: n as u8, decoded });
        }
        match &self.slots[slot] {
            Some(c) => Ok(&c.decoded),
            None => Err(ffirec_decode::DecodeError::Invalid { ip }),
        }
    }

    /// Reads chunk `index` of `trace` and turns it into records, visiting
    /// the events in place (no owned `Event` per access).
    /// `out` is an emptied record set to fill (recycled: no fresh memory per chunk).
    pub(crate) fn chunk(&mut self, trace: &Trace, index: usize, mut out: ChunkRecs) -> Result<ChunkRecs, Error> {
        let events = trace.chunks().get(index).map_or(0, |c| c.events as usize);
        prepare(&mut out, events);
        trace.visit_chunk(index, |seq, ev| match ev {
            EventRef::Access(a) => self.access(&mut out, seq, &a),
            EventRef::Other(e) => other(&mut out, seq, e),
        })?;
        Ok(out)
    }

    /// Turns events numbered from `first` into records.
    pub(crate) fn records(&mut self, first: u64, events: &[Event]) -> ChunkRecs {
        self.records_into(first, events, ChunkRecs::empty())
    }

    /// As [`Decoder::records`], filling the emptied `out`.
    pub(crate) fn records_into(&mut self, first: u64, events: &[Event], mut out: ChunkRecs) -> ChunkRecs {
        prepare(&mut out, events.len());
        for (seq, ev) in (first..).zip(events.iter()) {
            match ev {
                &Event::Access { tid, ref code, ref regs, fault_addr, ref data, ref vregs } => {
                    let a = AccessRef { tid, code, regs, fault_addr, data, vregs };
                    self.access(&mut out, seq, &a);
                }
                other_ev => other(&mut out, seq, other_ev.clone()),
            }
        }
        out
    }

    /// Decodes one access into records.
    fn access(&mut self, out: &mut ChunkRecs, seq: u64, a: &AccessRef<'_>) {
        out.access_events += 1;
        let mut scratch = std::mem::take(&mut self.scratch);
        scratch.clear();
        let rip = a.regs.rip;
        let res = self.decoded(rip, a.code).and_then(|d| d.accesses_into(a.regs, a.vregs, &mut scratch));
        match res {
            Ok(()) => push_accesses(out, seq, a.tid, rip, &scratch, a.data),
            Err(e) => out.decode_errors.push(DecodeFailure { seq, ip: rip, reason: e.to_string() }),
        }
        self.scratch = scratch;
    }
}

/// Empties `out` and makes room for a chunk of `events` events.
fn prepare(out: &mut ChunkRecs, events: usize) {
    out.clear();
    // `events` may come from an untrusted chunk header: capped.
    let events = events.min(1 << 20);
    let per_shard = events / SHARDS + events / (4 * SHARDS) + 16;
    for v in &mut out.accesses {
        v.reserve(per_shard);
    }
}

/// A non-access event: passed on as a control event (syscall ranges also
/// become access records).
fn other(out: &mut ChunkRecs, seq: u64, ev: Event) {
    if let Event::SyscallAccess { tid, nr, ref ranges, .. } = ev {
        for r in ranges {
            let flags = SYSCALL | if r.write { WRITE } else { READ };
            split(&mut out.accesses, seq, tid, nr, r.addr, r.len, flags);
        }
    }
    out.control.push((seq, ev));
}

fn push_accesses(out: &mut ChunkRecs, seq: u64, tid: u32, ip: u64, accs: &[MemAccess], data: &[u8]) {
    // `data` holds the bytes of the instruction's reads, in operand order.
    let mut data_off = 0usize;
    for a in accs {
        let flags = match a.rw {
            Rw::Read => READ,
            Rw::Write => WRITE,
            Rw::ReadWrite => READ | WRITE,
        };
        let is_read = flags & READ != 0;
        if is_read {
            let n = usize::try_from(a.size).unwrap_or(usize::MAX);
            if let Some(bytes) = data.get(data_off..data_off.saturating_add(n)) {
                pointer_values(&mut out.ptr_loads, seq, tid, ip, a.addr, bytes);
            }
            data_off = data_off.saturating_add(n);
        }
        // Accesses that may not happen count only when certain.
        if !a.certain {
            continue;
        }
        split(&mut out.accesses, seq, tid, ip, a.addr, a.size, flags);
    }
}

/// Pointer-sized values in the bytes read at `addr`: the whole value of an
/// 8-byte load, or every 8-aligned slot of a wider one.
fn pointer_values(out: &mut [Vec<PtrLoad>], seq: u64, tid: u32, ip: u64, addr: u64, bytes: &[u8]) {
    let mut push = |from: u64, b: &[u8]| {
        let mut v = [0u8; 8];
        v.copy_from_slice(b);
        let value = u64::from_le_bytes(v);
        if plausible_pointer(value) {
            out[shard_of(value)].push(PtrLoad { seq, ip, from, value, tid });
        }
    };
    if bytes.len() == 8 {
        push(addr, bytes);
        return;
    }
    if bytes.len() < 8 {
        return;
    }
    let mut off = ((8 - addr % 8) % 8) as usize;
    while off + 8 <= bytes.len() {
        push(addr.wrapping_add(off as u64), &bytes[off..off + 8]);
        off += 8;
    }
}

/// User-space canonical and above the never-mapped first 64 KiB.
fn plausible_pointer(v: u64) -> bool {
    (0x1_0000..0x0000_8000_0000_0000).contains(&v)
}

/// Clips `[addr, addr+len)` at page boundaries into the owning shards.
fn split(out: &mut [Vec<AccessRec>], seq: u64, tid: u32, ip: u64, addr: u64, len: u64, flags: u8) {
    let end = addr.saturating_add(len);
    let mut cur = addr;
    let mut first = FIRST;
    while cur < end {
        let page_end = (cur / PAGE + 1).saturating_mul(PAGE);
        let piece_end = end.min(page_end);
        out[shard_of(cur)].push(AccessRec {
            seq,
            ip,
            addr: cur,
            tid,
            size: (piece_end - cur) as u16,
            flags: flags | first,
        });
        first = 0;
        if piece_end <= cur {
            break;
        }
        cur = piece_end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn split_clips_at_pages_and_marks_first_piece() {
        let mut out = vec![Vec::new(); SHARDS];
        split(&mut out, 7, 1, 0x10, 0x1ff8, 16, READ);
        assert_eq!(out[1], vec![AccessRec { seq: 7, ip: 0x10, addr: 0x1ff8, tid: 1, size: 8, flags: READ | FIRST }]);
        assert_eq!(out[2], vec![AccessRec { seq: 7, ip: 0x10, addr: 0x2000, tid: 1, size: 8, flags: READ }]);
    }

    #[test]
    fn pointer_values_of_wide_loads_use_aligned_slots() {
        let mut out = vec![Vec::new(); SHARDS];
        let mut bytes = vec![0u8; 16];
        bytes[8..16].copy_from_slice(&0x5555_0000_1000u64.to_le_bytes());
        pointer_values(&mut out, 1, 2, 3, 0x7000, &bytes);
        let all: Vec<_> = out.into_iter().flatten().collect();
        assert_eq!(all, vec![PtrLoad { seq: 1, ip: 3, from: 0x7008, value: 0x5555_0000_1000, tid: 2 }]);
    }
}
