//! Everything in a trace that is not an event: header, module table, footer.

use serde::{Deserialize, Serialize};

use crate::event::{Domain, ExitStatus};

/// Written once at the start of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    /// `CARGO_PKG_VERSION` of the recorder that wrote the file.
    pub recorder_version: String,
    /// Random, identifies this recording (diff refuses to compare a trace with itself by accident).
    pub uuid: [u8; 16],
    /// The traced command line, program first.
    pub command: Vec<String>,
    /// Wall-clock start, nanoseconds since the Unix epoch.
    pub start_time_ns: u64,
    pub page_size: u64,
    pub policy: Policy,
}

/// Which code the recorder treated as foreign and neutral.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Policy {
    /// `--lib` patterns as given (empty: everything but the C runtime).
    pub foreign: Vec<String>,
    /// Neutral patterns, built-in ones first, then `--neutral`.
    pub neutral: Vec<String>,
    /// The recorder tracked host writes to never-written bytes (HostWrite
    /// events), so host allocations' initialisation state is exact.
    pub track_host_init: bool,
    /// Allocations made in foreign mode were guarded too (`--guard-foreign`).
    pub guard_foreign: bool,
}

/// A loaded object (executable, shared library, vdso) in one process.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Module {
    pub pid: u32,
    pub path: String,
    /// GNU build-id note contents (empty when the object has none).
    pub build_id: Vec<u8>,
    /// Load bias: runtime address = `base` + ELF virtual address.
    pub base: u64,
    pub segments: Vec<Segment>,
    pub domain: Domain,
    /// Symbols with addresses relative to `base` (ELF virtual addresses), sorted by address.
    pub symbols: Vec<Symbol>,
}

/// A mapped range of a module at runtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Segment {
    /// Absolute start address at runtime.
    pub start: u64,
    pub len: u64,
    /// `PROT_*` bits as originally mapped.
    pub prot: u32,
    pub file_offset: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Symbol {
    pub name: String,
    /// ELF virtual address (add the module's `base` for the runtime address).
    pub addr: u64,
    pub size: u64,
}

impl Module {
    /// The symbol covering runtime address `addr`, with the offset into it.
    pub fn symbolize(&self, addr: u64) -> Option<(&Symbol, u64)> {
        let rel = addr.checked_sub(self.base)?;
        let i = self.symbols.partition_point(|s| s.addr <= rel);
        let s = self.symbols.get(i.checked_sub(1)?)?;
        let off = rel - s.addr;
        (off < s.size.max(1)).then_some((s, off))
    }

    /// True when `addr` lies in one of the module's mapped segments.
    pub fn contains(&self, addr: u64) -> bool {
        self.segments.iter().any(|s| addr >= s.start && addr - s.start < s.len)
    }
}

/// Written when the recording ends normally.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Summary {
    /// Exit status of the first traced process, when it exited.
    pub exit: Option<ExitStatus>,
    /// Named counters: `events.<kind>` are filled by the writer; the recorder
    /// adds its own (`ptrace_stops`, `faults`, `fault_stops`, `calls`, ...).
    pub counters: Vec<(String, u64)>,
}

impl Summary {
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.counters.iter().find(|(n, _)| n == name).map(|&(_, v)| v)
    }
}
