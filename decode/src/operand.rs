//! Memory-operand address expressions, precomputed from iced-x86's model into
//! register numbers and masks so evaluating one costs a few adds.

use ffirec_format::Regs;
use iced_x86::{CodeSize, Register, UsedMemory};

/// Segment whose base is added to an address (only FS and GS have bases in
/// 64-bit mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Seg {
    None,
    Fs,
    Gs,
}

impl Seg {
    pub(crate) fn from_register(reg: Register) -> Seg {
        match reg {
            Register::FS => Seg::Fs,
            Register::GS => Seg::Gs,
            _ => Seg::None,
        }
    }

    #[inline]
    pub(crate) fn base(self, regs: &Regs) -> u64 {
        match self {
            Seg::None => 0,
            Seg::Fs => regs.fs_base,
            Seg::Gs => regs.gs_base,
        }
    }
}

/// A general-purpose register as a part of a 64-bit one: `(gpr[idx] >> shift) & mask`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct GprPart {
    /// Index into [`Regs::gpr`] (0..16).
    pub idx: u8,
    pub shift: u8,
    pub mask: u64,
}

impl GprPart {
    /// No register: a zero mask makes the value 0 without a branch.
    pub const NONE: GprPart = GprPart { idx: 0, shift: 0, mask: 0 };

    /// `None` when `reg` is not a general-purpose register.
    pub fn from_register(reg: Register) -> Option<GprPart> {
        if reg == Register::None {
            return Some(GprPart::NONE);
        }
        if !reg.is_gpr() {
            return None;
        }
        let idx = (reg.full_register() as u32).wrapping_sub(Register::RAX as u32);
        let idx = u8::try_from(idx).ok().filter(|&i| i < 16)?;
        let high = matches!(reg, Register::AH | Register::CH | Register::DH | Register::BH);
        let mask = match reg.size() {
            1 => 0xff,
            2 => 0xffff,
            4 => 0xffff_ffff,
            _ => u64::MAX,
        };
        Some(GprPart { idx, shift: if high { 8 } else { 0 }, mask })
    }

    #[inline]
    pub fn value(self, regs: &Regs) -> u64 {
        (regs.gpr[usize::from(self.idx & 15)] >> self.shift) & self.mask
    }

    pub fn is_none(self) -> bool {
        self.mask == 0
    }
}

/// `seg:[base + index*scale + disp]`, RIP-relative operands already folded
/// into `disp` (iced-x86 resolves them against the instruction's address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MemOperand {
    pub(crate) seg: Seg,
    pub(crate) base: GprPart,
    pub(crate) index: GprPart,
    pub(crate) scale_shift: u8,
    pub(crate) disp: u64,
    /// 32-bit address size (`0x67` prefix): the offset wraps at 4 GiB.
    pub(crate) addr32: bool,
}

impl MemOperand {
    /// `None` when the operand uses a register that is not a GPR (VSIB index).
    pub(crate) fn from_used(um: &UsedMemory) -> Option<MemOperand> {
        let base = GprPart::from_register(um.base())?;
        let index = GprPart::from_register(um.index())?;
        let scale_shift = match um.scale() {
            2 => 1,
            4 => 2,
            8 => 3,
            _ => 0,
        };
        Some(MemOperand {
            seg: Seg::from_register(um.segment()),
            base,
            index,
            scale_shift,
            disp: um.displacement(),
            addr32: um.address_size() == CodeSize::Code32,
        })
    }

    /// The linear address for these register values.
    #[inline]
    pub fn address(&self, regs: &Regs) -> u64 {
        let mut a =
            self.disp.wrapping_add(self.base.value(regs)).wrapping_add(self.index.value(regs) << self.scale_shift);
        if self.addr32 {
            a &= 0xffff_ffff;
        }
        a.wrapping_add(self.seg.base(regs))
    }

    /// The segment whose base the address includes.
    pub fn segment(&self) -> Seg {
        self.seg
    }
}
