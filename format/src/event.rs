//! The logical event model: what the recorder saw, one value per event.
//!
//! These are the types both sides of the file speak. The on-disk encoding of a
//! batch of them (columnar, XOR-delta registers, deduplicated code bytes) is a
//! private concern of `chunk`; readers always get these types back.

use serde::{Deserialize, Serialize};

/// A thread id as the kernel numbers it (globally unique while alive).
pub type Tid = u32;

/// Which side of the FFI boundary a piece of code or memory belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Domain {
    /// The program itself: main executable, interpreter, host libraries.
    Host,
    /// The library under observation (`--lib`).
    Foreign,
    /// The C runtime: takes the mode of whoever calls it.
    Neutral,
}

/// The general-purpose register file of one thread at one stop.
///
/// Field order follows the x86-64 encoding numbers of the registers
/// (rax=0 … r15=15) so code can index `gpr` by register number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Regs {
    /// rax, rcx, rdx, rbx, rsp, rbp, rsi, rdi, r8 … r15.
    pub gpr: [u64; 16],
    pub rip: u64,
    pub rflags: u64,
    pub fs_base: u64,
    pub gs_base: u64,
}

impl Regs {
    pub const RAX: usize = 0;
    pub const RCX: usize = 1;
    pub const RDX: usize = 2;
    pub const RBX: usize = 3;
    pub const RSP: usize = 4;
    pub const RBP: usize = 5;
    pub const RSI: usize = 6;
    pub const RDI: usize = 7;
    pub const R8: usize = 8;
    pub const R9: usize = 9;
    pub const R10: usize = 10;
    pub const R11: usize = 11;

    pub fn rsp(&self) -> u64 {
        self.gpr[Self::RSP]
    }
    /// The System V integer argument registers, in argument order.
    pub fn args(&self) -> [u64; 6] {
        [
            self.gpr[Self::RDI],
            self.gpr[Self::RSI],
            self.gpr[Self::RDX],
            self.gpr[Self::RCX],
            self.gpr[Self::R8],
            self.gpr[Self::R9],
        ]
    }
}

/// Which class of extended register a [`VecReg`] holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VecRegKind {
    Xmm,
    Ymm,
    Zmm,
    /// AVX-512 opmask register k0–k7 (8 bytes).
    K,
}

/// One extended register captured because the instruction needs it to
/// compute its memory operands (VSIB index vector, AVX-512 write mask).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VecReg {
    pub kind: VecRegKind,
    pub index: u8,
    /// Little-endian register contents: 16, 32, 64 or 8 (opmask) bytes.
    pub bytes: Vec<u8>,
}

/// What the host or foreign side asked the allocator for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AllocFn {
    Malloc,
    Calloc,
    Realloc,
    Reallocarray,
    PosixMemalign,
    AlignedAlloc,
    Memalign,
    Valloc,
    Pvalloc,
    Mmap,
    Mremap,
}

/// Why a stretch of execution was not traced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GapReason {
    /// A foreign-mode syscall with pointer arguments we do not model.
    UnknownSyscall,
    /// A foreign call blocked (`detail`: the call); other threads were
    /// released and guards dropped until the syscall it waited in returned
    /// (or, released outside a syscall, until it next ran foreign text).
    Blocked,
    /// The recorder could not keep up or lost track (see `detail`).
    Lost,
    /// A fault the recorder could not attribute to an instruction it can decode.
    Undecodable,
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    Code(i32),
    Signal(i32),
}

impl ExitStatus {
    /// The status a shell would report: the code, or 128+N for signal N.
    pub fn shell_code(self) -> i32 {
        match self {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        }
    }
}

/// What the kernel did with a range of user memory during a syscall.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyscallRange {
    pub addr: u64,
    pub len: u64,
    /// True when the kernel wrote the range (e.g. `read`'s buffer), false when it read it.
    pub write: bool,
}

/// One recorded event. Event numbers are implicit: the position in the trace.
///
/// Versioning rule: variants and fields are only ever *added* (at the end);
/// an addition bumps the format version, and readers keep decoding every older
/// version they list as supported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Event {
    /// A foreign-mode thread touched a guarded page.
    Access {
        tid: Tid,
        /// Instruction bytes at `regs.rip` (1–15 bytes).
        code: Vec<u8>,
        /// Registers at the fault, before the instruction ran.
        regs: Regs,
        /// `si_addr` of the fault.
        fault_addr: u64,
        /// The bytes the instruction was about to read (reads of ≤ 64 bytes), for provenance.
        data: Vec<u8>,
        /// Extended registers needed to compute the operands (VSIB, opmask).
        vregs: Vec<VecReg>,
    },
    /// A host thread entered foreign code.
    Call {
        tid: Tid,
        /// Per-trace call number, from 0, in order of entry.
        call: u64,
        target: u64,
        /// Index into the module table of the module containing `target`.
        module: u32,
        /// Index into that module's symbol table, when a symbol covers `target`.
        symbol: Option<u32>,
        args: [u64; 6],
        rsp: u64,
        return_addr: u64,
    },
    /// The foreign call `call` returned to the host.
    Return {
        tid: Tid,
        call: u64,
        rax: u64,
        rdx: u64,
    },
    /// Foreign code called into host code (a callback) during `call`.
    Callback {
        tid: Tid,
        call: u64,
        target: u64,
        args: [u64; 6],
        rsp: u64,
        return_addr: u64,
    },
    /// The callback made during `call` returned into foreign code.
    CallbackReturn {
        tid: Tid,
        call: u64,
        rax: u64,
    },
    Alloc {
        tid: Tid,
        func: AllocFn,
        ptr: u64,
        size: u64,
        /// For `realloc`/`mremap`: the old pointer (0 when none).
        old_ptr: u64,
        caller: u64,
        domain: Domain,
        /// The allocator guarantees the bytes are zero (calloc, fresh anonymous mmap).
        zeroed: bool,
    },
    Free {
        tid: Tid,
        ptr: u64,
        caller: u64,
        domain: Domain,
    },
    Map {
        tid: Tid,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        domain: Domain,
    },
    Unmap {
        tid: Tid,
        addr: u64,
        len: u64,
    },
    Protect {
        tid: Tid,
        addr: u64,
        len: u64,
        prot: u32,
    },
    SyscallAccess {
        tid: Tid,
        nr: u64,
        args: [u64; 6],
        ret: i64,
        ranges: Vec<SyscallRange>,
    },
    /// A signal that was the program's own (not one of our guard faults).
    Signal {
        tid: Tid,
        signo: i32,
        code: i32,
        /// `si_addr` for fault signals, 0 otherwise.
        addr: u64,
        regs: Regs,
        /// Instruction bytes at `regs.rip`, when readable.
        code_bytes: Vec<u8>,
        /// The signal killed the process (no handler, default action).
        fatal: bool,
    },
    Gap {
        tid: Tid,
        reason: GapReason,
        detail: u64,
    },
    ThreadStart {
        tid: Tid,
        pid: u32,
        parent: Tid,
    },
    ThreadExit {
        tid: Tid,
        code: i32,
    },
    Fork {
        tid: Tid,
        parent_pid: u32,
        child_pid: u32,
    },
    Exec {
        tid: Tid,
        pid: u32,
        path: String,
    },
    Exit {
        pid: u32,
        status: ExitStatus,
    },
    /// Host code (untraced) wrote `[addr, addr+len)`; learned from a host-mode
    /// write fault on a page that still held never-written bytes.
    HostWrite {
        tid: Tid,
        addr: u64,
        len: u64,
    },
    /// The recorder stopped tracking initialisation of `[addr, addr+len)`
    /// (fault budget spent): its bytes' state is unknown from here on.
    InitUnknown {
        addr: u64,
        len: u64,
    },
}

/// Kind names, stable and lower-case, as used in JSON and the counters.
pub const EVENT_KINDS: &[&str] = &[
    "access",
    "call",
    "return",
    "callback",
    "callback_return",
    "alloc",
    "free",
    "map",
    "unmap",
    "protect",
    "syscall_access",
    "signal",
    "gap",
    "thread_start",
    "thread_exit",
    "fork",
    "exec",
    "exit",
    "host_write",
    "init_unknown",
];

impl Event {
    /// Stable lower-case kind name (one of [`EVENT_KINDS`]).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Access { .. } => "access",
            Event::Call { .. } => "call",
            Event::Return { .. } => "return",
            Event::Callback { .. } => "callback",
            Event::CallbackReturn { .. } => "callback_return",
            Event::Alloc { .. } => "alloc",
            Event::Free { .. } => "free",
            Event::Map { .. } => "map",
            Event::Unmap { .. } => "unmap",
            Event::Protect { .. } => "protect",
            Event::SyscallAccess { .. } => "syscall_access",
            Event::Signal { .. } => "signal",
            Event::Gap { .. } => "gap",
            Event::ThreadStart { .. } => "thread_start",
            Event::ThreadExit { .. } => "thread_exit",
            Event::Fork { .. } => "fork",
            Event::Exec { .. } => "exec",
            Event::Exit { .. } => "exit",
            Event::HostWrite { .. } => "host_write",
            Event::InitUnknown { .. } => "init_unknown",
        }
    }

    /// The thread the event belongs to (`Exit` has none: it names a process).
    pub fn tid(&self) -> Option<Tid> {
        match *self {
            Event::Access { tid, .. }
            | Event::Call { tid, .. }
            | Event::Return { tid, .. }
            | Event::Callback { tid, .. }
            | Event::CallbackReturn { tid, .. }
            | Event::Alloc { tid, .. }
            | Event::Free { tid, .. }
            | Event::Map { tid, .. }
            | Event::Unmap { tid, .. }
            | Event::Protect { tid, .. }
            | Event::SyscallAccess { tid, .. }
            | Event::Signal { tid, .. }
            | Event::Gap { tid, .. }
            | Event::ThreadStart { tid, .. }
            | Event::ThreadExit { tid, .. }
            | Event::Fork { tid, .. }
            | Event::Exec { tid, .. }
            | Event::HostWrite { tid, .. } => Some(tid),
            Event::Exit { .. } | Event::InitUnknown { .. } => None,
        }
    }
}

/// An [`Event::Access`] borrowed from a chunk being read
/// ([`crate::Trace::visit_chunk`]): the same fields, without owning them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccessRef<'a> {
    pub tid: Tid,
    /// Instruction bytes at `regs.rip` (1–15 bytes).
    pub code: &'a [u8],
    /// Registers at the fault, before the instruction ran.
    pub regs: &'a Regs,
    /// `si_addr` of the fault.
    pub fault_addr: u64,
    /// The bytes the instruction was about to read.
    pub data: &'a [u8],
    /// Extended registers needed to compute the operands (usually none).
    pub vregs: &'a [VecReg],
}

impl AccessRef<'_> {
    /// The owned [`Event::Access`].
    pub fn to_event(&self) -> Event {
        Event::Access {
            tid: self.tid,
            code: self.code.to_vec(),
            regs: *self.regs,
            fault_addr: self.fault_addr,
            data: self.data.to_vec(),
            vregs: self.vregs.to_vec(),
        }
    }
}

/// One event handed out by [`crate::Trace::visit_chunk`]: accesses (the bulk
/// of a trace) borrowed, every other kind owned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventRef<'a> {
    Access(AccessRef<'a>),
    /// Any kind but [`Event::Access`].
    Other(Event),
}

impl EventRef<'_> {
    /// The owned event.
    pub fn into_event(self) -> Event {
        match self {
            EventRef::Access(a) => a.to_event(),
            EventRef::Other(e) => e,
        }
    }
}
