//! Decode: an x86-64 instruction plus the registers recorded at its fault →
//! the exact memory ranges it touches.
//!
//! Principal types: [`Decoded`] (one instruction, decoded once and cached by
//! address: its memory-operand templates), [`MemAccess`] (one concrete range),
//! [`DecodeCache`]. Shared by the recorder (which pages must open for the
//! instruction to run) and the analyzer (what was read and written).
//! Hidden: iced-x86's operand model, `rep`/direction-flag/VSIB/opmask expansion.

use ffirec_format::{Regs, VecReg, VecRegKind};

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
    /// False when the access may not happen (condition-dependent: `cmov`
    /// loads' architectural semantics, `repe cmps` past the first element,
    /// masked elements whose mask bit is unknown). Recorders must open such
    /// ranges anyway; analyzers count only certain writes.
    pub certain: bool,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("invalid instruction bytes at {ip:#x}")]
    Invalid { ip: u64 },
    #[error("instruction at {ip:#x} needs register {reg} which was not recorded")]
    MissingRegister { ip: u64, reg: String },
}

/// An instruction decoded once; `accesses` evaluates it against registers.
#[derive(Debug, Clone)]
pub struct Decoded {
    _private: (),
}

impl Decoded {
    /// Decodes the first instruction of `code` as if located at `ip`.
    pub fn new(_ip: u64, _code: &[u8]) -> Result<Decoded, DecodeError> {
        todo!("decode")
    }
    /// Instruction length in bytes.
    pub fn len(&self) -> usize {
        todo!("decode")
    }
    /// The iced-x86 instruction (for relocation and display).
    pub fn instruction(&self) -> &iced_x86::Instruction {
        todo!("decode")
    }
    /// Extended registers the recorder must capture for `accesses` to be exact.
    pub fn needed_vregs(&self) -> &[(VecRegKind, u8)] {
        todo!("decode")
    }
    /// Appends every range the instruction touches, given the registers at
    /// the fault (before it ran). No allocation beyond growing `out`.
    pub fn accesses_into(
        &self,
        _regs: &Regs,
        _vregs: &[VecReg],
        _out: &mut Vec<MemAccess>,
    ) -> Result<(), DecodeError> {
        todo!("decode")
    }
}

/// Decoded instructions by address (code bytes checked on every hit).
#[derive(Debug, Default)]
pub struct DecodeCache {
    _private: (),
}
