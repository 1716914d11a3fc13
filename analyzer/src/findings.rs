//! What is wrong, and how access pieces from all shards become findings:
//! pieces with the same kind, call, instruction and allocation whose byte
//! ranges touch are one finding (a loop reading 16 uninitialised bytes one at
//! a time is one finding of 16 bytes, seen 16 times).

use serde::{Deserialize, Serialize};

use crate::state::Piece;
use crate::symbols::Location;

/// Kinds of finding. The JSON names are stable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// Read of bytes nobody initialised.
    Uninit,
    /// Access outside every live allocation, in heap memory.
    OutOfBounds,
    /// Access to a freed allocation.
    UseAfterFree,
    /// Write to host memory mapped without write permission.
    ReadOnlyWrite,
    /// Foreign code loaded a pointer into a host allocation it was not given.
    ExposedPointer,
    /// A foreign allocation never freed.
    ForeignLeak,
    /// The program died of (or received) a fault signal.
    Crash,
}

impl Kind {
    pub const ALL: [Kind; 7] = [
        Kind::Uninit,
        Kind::OutOfBounds,
        Kind::UseAfterFree,
        Kind::ReadOnlyWrite,
        Kind::ExposedPointer,
        Kind::ForeignLeak,
        Kind::Crash,
    ];

    /// The stable name (as in JSON and suppressions).
    pub fn name(self) -> &'static str {
        match self {
            Kind::Uninit => "uninit",
            Kind::OutOfBounds => "out_of_bounds",
            Kind::UseAfterFree => "use_after_free",
            Kind::ReadOnlyWrite => "read_only_write",
            Kind::ExposedPointer => "exposed_pointer",
            Kind::ForeignLeak => "foreign_leak",
            Kind::Crash => "crash",
        }
    }

    pub fn from_name(s: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Valgrind-style headline.
    pub fn title(self) -> &'static str {
        match self {
            Kind::Uninit => "Read of uninitialised bytes",
            Kind::OutOfBounds => "Out-of-bounds access",
            Kind::UseAfterFree => "Use after free",
            Kind::ReadOnlyWrite => "Write to read-only host memory",
            Kind::ExposedPointer => "Host pointer exposed to the library",
            Kind::ForeignLeak => "Foreign allocation never freed",
            Kind::Crash => "Program crashed",
        }
    }
}

/// How sure the analyzer is. Only `exact` findings are reported.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every event that could change the answer was traced.
    Exact,
}

/// The foreign call a finding happened in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CallRef {
    /// The recorder's call number.
    pub call: u64,
    pub symbol: String,
    /// Where the host called it from (the return address).
    pub call_site: Location,
}

/// The allocation a finding concerns.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AllocRef {
    /// `alloc#N`: index into the report's `allocations`.
    pub id: u32,
    pub base: String,
    pub size: u64,
    /// Where the access lies relative to the block.
    pub relation: Relation,
    /// `inside`/`freed`: offset of the first byte from the base.
    /// `after`: bytes between the end of the block and the access.
    /// `before`: bytes between the end of the access and the base.
    pub distance: u64,
    /// Human label: `alloc#3 (malloc 64 at main+0x2a)`.
    pub label: String,
    /// Where it was allocated (the allocation call's return address).
    pub site: Location,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    Inside,
    After,
    Before,
    Freed,
}

/// One finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub kind: Kind,
    pub verdict: Verdict,
    /// First byte concerned, `0x…`.
    pub addr: String,
    /// Bytes concerned (a contiguous range).
    pub size: u64,
    pub read: bool,
    pub write: bool,
    /// The instruction (or, for leaks, the allocation site).
    pub at: Location,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub syscall: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub call: Option<CallRef>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub allocation: Option<AllocRef>,
    /// Accesses merged into this finding.
    pub count: u64,
    /// Event number of the first of them.
    pub first_event: u64,
    /// Kind-specific one-line explanation.
    pub detail: String,
    /// The process it happened in; only when the trace has more than one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

/// Pieces merged: one entry per finding, before symbolisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Merged {
    pub kind: Kind,
    pub call: u32,
    pub ip: u64,
    pub addr: u64,
    pub end: u64,
    pub alloc: u32,
    pub flags: u8,
    pub count: u64,
    pub first_seq: u64,
}

const RW: u8 = crate::decode::READ | crate::decode::WRITE | crate::decode::SYSCALL;

/// Merges pieces from all shards; the result is sorted by first event, so it
/// is the same whatever the shard and thread layout.
pub(crate) fn merge(mut pieces: Vec<Piece>) -> Vec<Merged> {
    pieces.sort_unstable_by_key(|p| (p.kind, p.call, p.ip, p.alloc, p.flags & RW, p.addr, p.seq));
    let mut out: Vec<Merged> = Vec::new();
    for p in pieces {
        let end = p.addr + u64::from(p.size);
        let first = u64::from(p.flags & crate::decode::FIRST != 0);
        if let Some(m) = out.last_mut() {
            if m.kind == p.kind
                && m.call == p.call
                && m.ip == p.ip
                && m.alloc == p.alloc
                && m.flags & RW == p.flags & RW
                && p.addr <= m.end
            {
                m.end = m.end.max(end);
                m.count += first;
                m.first_seq = m.first_seq.min(p.seq);
                continue;
            }
        }
        out.push(Merged {
            kind: p.kind,
            call: p.call,
            ip: p.ip,
            addr: p.addr,
            end,
            alloc: p.alloc,
            flags: p.flags,
            count: first.max(1),
            first_seq: p.seq,
        });
    }
    out.sort_by_key(|m| (m.first_seq, m.kind, m.addr, m.ip));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode::{FIRST, READ};

    fn piece(seq: u64, addr: u64, size: u32) -> Piece {
        Piece { kind: Kind::Uninit, seq, call: 0, ip: 0x10, addr, size, alloc: 1, flags: READ | FIRST }
    }

    #[test]
    fn byte_loop_merges_into_one_finding() {
        let pieces: Vec<Piece> = (0..16).rev().map(|i| piece(100 + i, 0x1010 + i, 1)).collect();
        let m = merge(pieces);
        assert_eq!(m.len(), 1);
        assert_eq!((m[0].addr, m[0].end, m[0].count, m[0].first_seq), (0x1010, 0x1020, 16, 100));
    }

    #[test]
    fn disjoint_ranges_stay_apart() {
        let m = merge(vec![piece(2, 0x2000, 4), piece(1, 0x1000, 4)]);
        assert_eq!(m.iter().map(|m| (m.addr, m.end)).collect::<Vec<_>>(), vec![(0x1000, 0x1004), (0x2000, 0x2004)]);
    }
}
