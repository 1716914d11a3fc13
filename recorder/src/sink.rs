//! Events → the trace writer, plus the recorder's own counters.
//!
//! `push` only appends to the writer's in-memory batch; compression and I/O
//! run on the writer's background thread, never on the stop path.

use std::path::Path;

use ffirec_format::{AccessRef, Domain, Event, ExitStatus, Header, Module, Summary, TraceWriter, Written};

use crate::Error;

/// Recorder counters, written to the footer.
#[derive(Debug, Default, Clone, Copy)]
pub struct Counters {
    /// Every ptrace stop the recorder waited for.
    pub ptrace_stops: u64,
    /// Data faults on guarded pages: one per recorded Access, plus the
    /// allocator's own (`allocator_accesses`).
    pub faults: u64,
    /// Faults the foreign thread took inside the C allocator (glibc's own
    /// accesses on the library's behalf: chunk headers of a host pointer it
    /// frees, realloc's copy). Performed, counted, never recorded as Access:
    /// they are not the library's accesses and must never become findings.
    pub allocator_accesses: u64,
    /// Stops spent on data faults (the fault stop itself plus any extra).
    pub fault_stops: u64,
    pub calls: u64,
    pub callbacks: u64,
    pub emulated: u64,
    /// Faults whose instruction bytes came from the decode cache without a
    /// read of the tracee's memory (`fault::CodeTrust`).
    pub code_cached: u64,
    /// Vector loads sent through their slot (`Tracer::vload_slot`), and
    /// those a stop caught still inside the slot (completed by the recorder).
    pub vload_slots: u64,
    pub vload_rewound: u64,
    pub trampolined: u64,
    pub singlestepped: u64,
    /// Protection batches run through the injected stub, and their ranges.
    pub batches: u64,
    pub batch_ranges: u64,
    pub signals: u64,
    pub gaps: u64,
    /// Faults inside a trampoline slot (a range the decoder missed).
    pub widened: u64,
    /// Stops at the alloc shim's flush trap (its ring was full) handled
    /// while no foreign call ran.
    pub flush_traps: u64,
    /// Stops at allocation breakpoints (statically linked programs).
    pub alloc_bp_stops: u64,
    /// Time spent inside foreign calls, nanoseconds (for faults/s).
    pub foreign_ns: u64,
    /// Host-init tracking (`hostinit`): host write faults on tracked pages,
    /// those performed through /proc/PID/mem, instructions re-executed after
    /// a release, pages released (all written) and dead (over budget or
    /// given up), host syscalls that needed tracked pages opened.
    pub hostinit_faults: u64,
    pub hostinit_emulated: u64,
    pub hostinit_reexecuted: u64,
    pub hostinit_released: u64,
    pub hostinit_dead: u64,
    pub hostinit_syscalls: u64,
    /// Bursts of host-init stops whose thread was pinned with the recorder
    /// (`process::Burst`).
    pub hostinit_pins: u64,
    /// Call entries (and returns from callbacks) whose guard set was the
    /// previous one: every input the same, the mappings' names not read.
    pub guard_sets_reused: u64,
}

impl Counters {
    pub fn to_vec(self) -> Vec<(String, u64)> {
        [
            ("ptrace_stops", self.ptrace_stops),
            ("faults", self.faults),
            ("allocator_accesses", self.allocator_accesses),
            ("fault_stops", self.fault_stops),
            ("calls", self.calls),
            ("callbacks", self.callbacks),
            ("emulated", self.emulated),
            ("code_cached", self.code_cached),
            ("vload_slots", self.vload_slots),
            ("vload_rewound", self.vload_rewound),
            ("trampolined", self.trampolined),
            ("singlestepped", self.singlestepped),
            ("batches", self.batches),
            ("batch_ranges", self.batch_ranges),
            ("signals", self.signals),
            ("gaps", self.gaps),
            ("widened", self.widened),
            ("flush_traps", self.flush_traps),
            ("alloc_bp_stops", self.alloc_bp_stops),
            ("foreign_ns", self.foreign_ns),
            ("hostinit_faults", self.hostinit_faults),
            ("hostinit_emulated", self.hostinit_emulated),
            ("hostinit_reexecuted", self.hostinit_reexecuted),
            ("hostinit_released", self.hostinit_released),
            ("hostinit_dead", self.hostinit_dead),
            ("hostinit_syscalls", self.hostinit_syscalls),
            ("hostinit_pins", self.hostinit_pins),
            ("guard_sets_reused", self.guard_sets_reused),
        ]
        .into_iter()
        .map(|(n, v)| (n.to_string(), v))
        .collect()
    }
}

pub struct Sink {
    writer: TraceWriter,
    pub counters: Counters,
    pub accesses: u64,
}

impl Sink {
    pub fn create(path: &Path, header: Header) -> Result<Sink, Error> {
        Ok(Sink { writer: TraceWriter::create(path, header)?, counters: Counters::default(), accesses: 0 })
    }

    #[inline]
    pub fn push(&mut self, event: Event) -> Result<(), Error> {
        if matches!(event, Event::Access { .. }) {
            self.accesses += 1;
        }
        self.writer.push(event)?;
        Ok(())
    }

    /// [`Self::push`] without moving the event: an Alloc or Free is encoded
    /// in place, anything else cloned.
    #[inline]
    pub fn push_ref(&mut self, event: &Event) -> Result<(), Error> {
        if matches!(event, Event::Access { .. }) {
            self.accesses += 1;
        }
        self.writer.push_ref(event)?;
        Ok(())
    }

    /// A run of plain host or foreign `malloc`s and `free`s (see
    /// [`TraceWriter::push_plain_mem`]).
    #[inline]
    pub fn push_plain_mem<T>(
        &mut self,
        domain: Domain,
        recs: &[T],
        get: impl Fn(&T) -> ffirec_format::PlainMem,
    ) -> Result<(), Error> {
        self.writer.push_plain_mem(domain, recs, get)?;
        Ok(())
    }

    /// An Access from borrowed parts, appended without allocating (the
    /// fault path): same event, same trace bytes as `push(Event::Access)`.
    #[inline]
    pub fn push_access(&mut self, access: &AccessRef<'_>) -> Result<(), Error> {
        self.accesses += 1;
        self.writer.push_access(access)?;
        Ok(())
    }

    pub fn add_module(&mut self, module: Module) -> Result<u32, Error> {
        Ok(self.writer.add_module(module)?)
    }

    pub fn finish(self, exit: Option<ExitStatus>) -> Result<Written, Error> {
        let summary = Summary { exit, counters: self.counters.to_vec() };
        Ok(self.writer.finish(summary)?)
    }
}
