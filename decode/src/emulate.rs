//! Simple moves the recorder can perform itself through `/proc/PID/mem`
//! instead of letting the instruction run: one memory operand, no flags, the
//! only other effect is one register and `rip`.

use ffirec_format::{Regs, VecRegKind};
use iced_x86::{EncodingKind, Instruction, Mnemonic, OpKind, Register};

use crate::decoded::{Acc, Template};
use crate::operand::{GprPart, MemOperand};
use crate::DecodeError;

/// How a loaded value narrower than its destination is widened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extend {
    Zero,
    Sign,
}

/// The general-purpose register a load writes.
///
/// `width` is the destination size in bytes: 8 replaces the register, 4
/// writes the low half and zeroes the upper half (as every 32-bit write does),
/// 2 and 1 merge into the low bytes (or bits 8..16 when `high_byte`: ah, ch,
/// dh, bh), leaving the rest unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GprWrite {
    /// Index into [`Regs::gpr`].
    pub reg: u8,
    pub width: u8,
    pub high_byte: bool,
}

/// What a GPR/immediate store writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreSrc {
    /// The low `width` bytes of `gpr[reg]` (bits 8..16 when `high_byte`).
    Gpr { reg: u8, width: u8, high_byte: bool },
    /// An immediate, already sign-extended to the operand size and truncated to it.
    Imm(u64),
}

/// A move the recorder may emulate. After performing it, set `rip` to
/// [`crate::Decoded::next_ip`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Emulation {
    /// `mov`/`movzx`/`movsx`/`movsxd reg, [m]`: read `size` bytes, then [`Emulation::apply_load`].
    Load { dst: GprWrite, extend: Extend, size: u8, mem: MemOperand },
    /// `mov`/`movnti [m], reg|imm`: write the low `size` bytes of [`Emulation::store_value`].
    Store { src: StoreSrc, size: u8, mem: MemOperand },
    /// SSE/AVX/AVX-512 (unmasked) load of `size` bytes into the low bytes of
    /// vector register `reg` (`kind` is the register as the instruction names it).
    /// Bytes `size..16` are zeroed (movd/movq/movss/movsd loads). When
    /// `zero_upper` (VEX/EVEX encodings) every byte above `size` up to the
    /// widest vector register is zeroed too; otherwise (legacy SSE) bytes
    /// 16 and up keep their values.
    VecLoad { reg: u8, kind: VecRegKind, size: u8, zero_upper: bool, mem: MemOperand },
    /// Store of the low `size` bytes of vector register `reg`.
    VecStore { reg: u8, kind: VecRegKind, size: u8, mem: MemOperand },
}

impl Emulation {
    fn mem(&self) -> &MemOperand {
        match self {
            Emulation::Load { mem, .. }
            | Emulation::Store { mem, .. }
            | Emulation::VecLoad { mem, .. }
            | Emulation::VecStore { mem, .. } => mem,
        }
    }

    /// Address of the memory operand for these registers.
    pub fn address(&self, regs: &Regs) -> u64 {
        self.mem().address(regs)
    }

    /// Bytes read or written.
    pub fn size(&self) -> usize {
        match *self {
            Emulation::Load { size, .. }
            | Emulation::Store { size, .. }
            | Emulation::VecLoad { size, .. }
            | Emulation::VecStore { size, .. } => usize::from(size),
        }
    }

    /// For a `Load`: writes the value in `bytes` (little-endian, at least
    /// `size` of them) into the destination register. Does not touch `rip`.
    pub fn apply_load(&self, regs: &mut Regs, bytes: &[u8]) -> Result<(), DecodeError> {
        let Emulation::Load { dst, extend, size, .. } = *self else {
            return Err(DecodeError::Emulation("apply_load on something other than a GPR load"));
        };
        let n = usize::from(size);
        let src = bytes.get(..n).ok_or(DecodeError::Emulation("fewer bytes than the load size"))?;
        let mut buf = [0u8; 8];
        buf.get_mut(..n).ok_or(DecodeError::Emulation("load wider than 8 bytes"))?.copy_from_slice(src);
        let mut v = u64::from_le_bytes(buf);
        if extend == Extend::Sign && n < 8 {
            let shift = 64 - 8 * n as u32;
            v = (((v << shift) as i64) >> shift) as u64;
        }
        let r = regs.gpr.get_mut(usize::from(dst.reg)).ok_or(DecodeError::Emulation("bad register"))?;
        *r = match (dst.width, dst.high_byte) {
            (8, _) => v,
            (4, _) => v & 0xffff_ffff,
            (2, _) => (*r & !0xffff) | (v & 0xffff),
            (1, false) => (*r & !0xff) | (v & 0xff),
            (1, true) => (*r & !0xff00) | ((v & 0xff) << 8),
            _ => return Err(DecodeError::Emulation("bad destination width")),
        };
        Ok(())
    }

    /// For a `Store`: the value to write (its low `size` bytes, little-endian).
    pub fn store_value(&self, regs: &Regs) -> Option<u64> {
        let Emulation::Store { src, size, .. } = *self else { return None };
        let v = match src {
            StoreSrc::Imm(v) => v,
            StoreSrc::Gpr { reg, high_byte, .. } => regs.gpr.get(usize::from(reg))? >> if high_byte { 8 } else { 0 },
        };
        Some(if size >= 8 { v } else { v & ((1u64 << (8 * u32::from(size))) - 1) })
    }
}

fn gpr_write(reg: Register) -> Option<GprWrite> {
    let p = GprPart::from_register(reg)?;
    if p.is_none() {
        return None;
    }
    Some(GprWrite { reg: p.idx, width: reg.size() as u8, high_byte: p.shift == 8 })
}

fn vec_reg(reg: Register) -> Option<(u8, VecRegKind)> {
    let kind = if reg.is_xmm() {
        VecRegKind::Xmm
    } else if reg.is_ymm() {
        VecRegKind::Ymm
    } else if reg.is_zmm() {
        VecRegKind::Zmm
    } else {
        return None;
    };
    Some((u8::try_from(reg.number()).ok()?, kind))
}

fn is_vec_move(m: Mnemonic) -> bool {
    use Mnemonic::*;
    matches!(
        m,
        Movdqu
            | Movdqa
            | Movups
            | Movaps
            | Movupd
            | Movapd
            | Movq
            | Movd
            | Movss
            | Movsd
            | Movntdq
            | Movntps
            | Movntpd
            | Movntdqa
            | Lddqu
            | Vmovdqu
            | Vmovdqa
            | Vmovups
            | Vmovaps
            | Vmovupd
            | Vmovapd
            | Vmovq
            | Vmovd
            | Vmovss
            | Vmovsd
            | Vmovntdq
            | Vmovntps
            | Vmovntpd
            | Vmovntdqa
            | Vlddqu
            | Vmovdqu8
            | Vmovdqu16
            | Vmovdqu32
            | Vmovdqu64
            | Vmovdqa32
            | Vmovdqa64
    )
}

/// The emulation for `instr`, if it is one of the simple moves.
pub(crate) fn detect(instr: &Instruction, templates: &[Template]) -> Option<Emulation> {
    let [Template::Plain { mem, size, acc }] = templates else { return None };
    let (mem, size, acc) = (*mem, u8::try_from(*size).ok()?, *acc);
    if instr.op_count() != 2 || instr.op_mask() != Register::None || instr.has_lock_prefix() {
        return None;
    }
    let (k0, k1) = (instr.op0_kind(), instr.op1_kind());
    let m = instr.mnemonic();
    match m {
        Mnemonic::Mov | Mnemonic::Movzx | Mnemonic::Movsx | Mnemonic::Movsxd
            if k0 == OpKind::Register && k1 == OpKind::Memory =>
        {
            if acc != Acc::Read || size > 8 {
                return None;
            }
            let dst = gpr_write(instr.op0_register())?;
            let extend = if matches!(m, Mnemonic::Movsx | Mnemonic::Movsxd) { Extend::Sign } else { Extend::Zero };
            Some(Emulation::Load { dst, extend, size, mem })
        }
        Mnemonic::Mov | Mnemonic::Movnti if k0 == OpKind::Memory => {
            if acc != Acc::Write || size > 8 {
                return None;
            }
            let src = match k1 {
                OpKind::Register => {
                    let w = gpr_write(instr.op1_register())?;
                    StoreSrc::Gpr { reg: w.reg, width: w.width, high_byte: w.high_byte }
                }
                OpKind::Immediate8
                | OpKind::Immediate16
                | OpKind::Immediate32
                | OpKind::Immediate64
                | OpKind::Immediate32to64 => {
                    let v = instr.immediate(1);
                    StoreSrc::Imm(if size >= 8 { v } else { v & ((1u64 << (8 * u32::from(size))) - 1) })
                }
                _ => return None,
            };
            Some(Emulation::Store { src, size, mem })
        }
        _ if is_vec_move(m) && !instr.is_string_instruction() => {
            let zero_upper = instr.encoding() != EncodingKind::Legacy;
            if k0 == OpKind::Register && k1 == OpKind::Memory && acc == Acc::Read {
                let (reg, kind) = vec_reg(instr.op0_register())?;
                Some(Emulation::VecLoad { reg, kind, size, zero_upper, mem })
            } else if k0 == OpKind::Memory && k1 == OpKind::Register && acc == Acc::Write {
                let (reg, kind) = vec_reg(instr.op1_register())?;
                Some(Emulation::VecStore { reg, kind, size, mem })
            } else {
                None
            }
        }
        _ => None,
    }
}
