//! Decode: an x86-64 instruction plus the registers recorded at its fault →
//! the exact memory ranges it touches.
//!
//! Principal types: [`Decoded`] (one instruction, decoded once and cached by
//! address: its memory-operand templates), [`MemAccess`] (one concrete range),
//! [`DecodeCache`], and [`Emulation`] (simple moves the recorder may perform
//! itself). Shared by the recorder (which pages must open for the instruction
//! to run) and the analyzer (what was read and written).
//! Hidden: iced-x86's operand model, `rep`/direction-flag/VSIB/opmask expansion.
//!
//! What each instruction family gives is documented on [`Decoded::accesses_into`].
//!
//! Typical use (analyzer and recorder alike):
//!
//! ```
//! use ffirec_decode::{DecodeCache, Rw};
//! use ffirec_format::Regs;
//!
//! let mut cache = DecodeCache::new();
//! let mut ranges = Vec::new();
//! let regs = Regs { gpr: [0x1000; 16], ..Regs::default() };
//! // mov eax, [rdi+rcx*4+8]
//! let d = cache.get_or_decode(0x40_1000, &[0x8b, 0x44, 0x8f, 0x08])?;
//! // Capture d.needed_vregs() at the fault; none here.
//! d.accesses_into(&regs, &[], &mut ranges)?;
//! assert_eq!((ranges[0].addr, ranges[0].size, ranges[0].rw), (0x1000 + 0x4000 + 8, 4, Rw::Read));
//! # Ok::<(), ffirec_decode::DecodeError>(())
//! ```
//!
//! The AVX-512 fault-suppression rules, operand sizes and the emulation
//! semantics are checked against the CPU by `tests/hardware.rs` and
//! `tests/emulation_hw.rs` (cases assembled by GNU as, see the generators).

mod cache;
mod decoded;
mod emulate;
mod operand;

pub use cache::DecodeCache;
pub use decoded::{Decoded, IndirectBranch};
pub use emulate::{Emulation, Extend, GprWrite, StoreSrc};
pub use operand::{MemOperand, Seg};

/// Read, write or both.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Rw {
    Read,
    Write,
    ReadWrite,
}

/// One concrete memory range an instruction touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemAccess {
    pub addr: u64,
    pub size: u64,
    pub rw: Rw,
    /// False when the access may not happen (condition-dependent: `repe cmps`
    /// past the first element, the write half of a conditional write such as
    /// `vmaskmov`/`maskmovdqu`). Recorders must open such ranges anyway;
    /// analyzers count only certain writes.
    pub certain: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid instruction bytes at {ip:#x}")]
    Invalid { ip: u64 },
    #[error("instruction at {ip:#x} needs register {reg} which was not recorded")]
    MissingRegister { ip: u64, reg: String },
    #[error("instruction at {ip:#x}: unsupported memory operand ({what})")]
    Unsupported { ip: u64, what: &'static str },
    #[error("emulation: {0}")]
    Emulation(&'static str),
}
