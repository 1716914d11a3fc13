//! One decoded instruction: its memory-operand templates, computed once with
//! iced-x86's `InstructionInfoFactory`, and their evaluation against the
//! registers recorded at a fault.

use ffirec_format::{Regs, VecReg, VecRegKind};
use iced_x86::{
    Code, Decoder, DecoderOptions, EncodingKind, Instruction, InstructionInfoFactory, Mnemonic, OpAccess, OpKind,
    Register, UsedMemory,
};

use crate::emulate::{self, Emulation};
use crate::operand::{GprPart, MemOperand, Seg};
use crate::{DecodeError, MemAccess, Rw};

/// The direction flag in `rflags`.
const DF: u64 = 1 << 10;

/// Access kind of a template, before conditions are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Acc {
    Read,
    Write,
    ReadWrite,
    CondRead,
    CondWrite,
    /// A certain read and a conditional write of the same bytes.
    ReadCondWrite,
}

impl Acc {
    fn from_op_access(a: OpAccess) -> Option<Acc> {
        Some(match a {
            OpAccess::Read => Acc::Read,
            OpAccess::Write => Acc::Write,
            OpAccess::ReadWrite => Acc::ReadWrite,
            OpAccess::CondRead => Acc::CondRead,
            OpAccess::CondWrite => Acc::CondWrite,
            OpAccess::ReadCondWrite => Acc::ReadCondWrite,
            _ => return None,
        })
    }

    /// The access once the condition is known to hold (masks, `rep`).
    fn unconditional(self) -> Rw {
        match self {
            Acc::Read | Acc::CondRead => Rw::Read,
            Acc::Write | Acc::CondWrite => Rw::Write,
            Acc::ReadWrite | Acc::ReadCondWrite => Rw::ReadWrite,
        }
    }
}

/// How many elements a string instruction touches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Rep {
    /// No prefix: one element.
    One,
    /// `rep`: `rcx` elements, all certain.
    All,
    /// `repe`/`repne` `cmps`/`scas`: `rcx` elements, only the first certain.
    FirstCertain,
}

/// Where an AVX-512 or AVX2 element mask comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ElemMask {
    /// Opmask register `k<n>` (never k0, which means "no mask").
    K(u8),
    /// AVX2 gather: sign bit of each element of this vector register.
    Vector(VecRegKind, u8),
}

impl ElemMask {
    fn register(self) -> (VecRegKind, u8) {
        match self {
            ElemMask::K(k) => (VecRegKind::K, k),
            ElemMask::Vector(kind, n) => (kind, n),
        }
    }
}

/// How mask bits select the bytes of a masked operand.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MaskMode {
    /// Memory element `i` is touched iff mask bit `i` is set (moves,
    /// element-wise arithmetic, up/down conversions): fault suppression.
    PerElement,
    /// A broadcast of `m` memory elements over `count` destination elements:
    /// memory element `j` is touched iff any mask bit `i` with `i % m == j`
    /// is set (`{1toN}` operands: m = 1; `vbroadcasti32x4`: m = 4).
    Tuple(u8),
    /// `popcount(mask)` elements, packed from the start (compress/expand).
    Contiguous,
    /// Per element as for `PerElement`, but the CPU may fault on masked-off
    /// elements too (`maskmovdqu`): those are reported as uncertain.
    PerElementMayFault,
}

/// One memory operand, ready to evaluate.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Template {
    /// A contiguous operand.
    Plain { mem: MemOperand, size: u64, acc: Acc },
    /// `bt`/`bts`/`btr`/`btc` `[m], reg`: the register's bit offset (signed)
    /// selects the operand-sized word relative to `[m]`.
    BitString { mem: MemOperand, bit: GprPart, bit_width: u8, size: u64, acc: Acc },
    /// An operand under an element mask (AVX-512 opmask; `vmaskmov`/`vpmaskmov`
    /// /`maskmovdqu` mask vector) over `count` elements of `elem` bytes.
    Masked { mem: MemOperand, elem: u64, count: u8, mode: MaskMode, rw: Rw, mask: ElemMask },
    /// A VSIB gather/scatter: one element per index-vector element.
    Vsib { um: UsedMemory, index: (VecRegKind, u8), index_len: usize, elem: u64, count: u8, rw: Rw, mask: ElemMask },
    /// A string operand at `seg:[rsi]` or `[rdi]`.
    Str { seg: Seg, reg: u8, addr32: bool, elem: u64, rep: Rep, rw: Rw },
}

/// An instruction decoded once; `accesses_into` evaluates it against registers.
#[derive(Debug, Clone)]
pub struct Decoded {
    instr: Instruction,
    code: [u8; 15],
    templates: Box<[Template]>,
    vregs: Box<[(VecRegKind, u8)]>,
    emulation: Option<Emulation>,
    branch: Option<IndirectBranch>,
}

/// `call [m]` / `jmp [m]` (64-bit near, through memory): what a recorder
/// needs to emulate the branch when `[m]` is guarded. Read the 8-byte target
/// at [`IndirectBranch::target_addr`]; for a call, write
/// [`IndirectBranch::return_addr`] at `rsp - 8` and set `rsp -= 8`; set `rip`
/// to the target. The operand is evaluated with the registers before the
/// instruction (`call [rsp+8]` uses the old rsp, as the CPU does).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IndirectBranch {
    pub mem: MemOperand,
    pub call: bool,
    /// Address of the next instruction (the pushed return address for a call).
    pub return_addr: u64,
}

impl IndirectBranch {
    /// Where the 8-byte branch target is stored.
    pub fn target_addr(&self, regs: &Regs) -> u64 {
        self.mem.address(regs)
    }
}

impl Decoded {
    /// Decodes the first instruction of `code` as if located at `ip`
    /// (64-bit mode).
    pub fn new(ip: u64, code: &[u8]) -> Result<Decoded, DecodeError> {
        let code_slice = code.get(..code.len().min(15)).unwrap_or(code);
        let mut decoder = Decoder::with_ip(64, code_slice, ip, DecoderOptions::NONE);
        let instr = decoder.decode();
        if instr.is_invalid() {
            return Err(DecodeError::Invalid { ip });
        }
        let mut bytes = [0u8; 15];
        let n = instr.len();
        if let (Some(dst), Some(src)) = (bytes.get_mut(..n), code.get(..n)) {
            dst.copy_from_slice(src);
        }
        let mut factory = InstructionInfoFactory::new();
        let templates = build_templates(&instr, &mut factory).map_err(|what| DecodeError::Unsupported { ip, what })?;
        let mut vregs: Vec<(VecRegKind, u8)> = Vec::new();
        for t in &templates {
            let mut need = |v: (VecRegKind, u8)| {
                if !vregs.contains(&v) {
                    vregs.push(v);
                }
            };
            match *t {
                Template::Masked { mask, .. } => need(mask.register()),
                Template::Vsib { index, mask, .. } => {
                    need(index);
                    need(mask.register());
                }
                _ => {}
            }
        }
        let emulation = emulate::detect(&instr, &templates);
        let branch = match (instr.code(), templates.first()) {
            (Code::Call_rm64 | Code::Jmp_rm64, Some(&Template::Plain { mem, size: 8, acc: Acc::Read }))
                if instr.op0_kind() == OpKind::Memory =>
            {
                Some(IndirectBranch { mem, call: instr.code() == Code::Call_rm64, return_addr: instr.next_ip() })
            }
            _ => None,
        };
        Ok(Decoded {
            instr,
            code: bytes,
            templates: templates.into_boxed_slice(),
            vregs: vregs.into_boxed_slice(),
            emulation,
            branch,
        })
    }

    /// Instruction length in bytes.
    pub fn len(&self) -> usize {
        self.instr.len()
    }

    /// Always false: a decoded instruction is 1–15 bytes long.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// The instruction's bytes.
    pub fn code(&self) -> &[u8] {
        self.code.get(..self.len()).unwrap_or(&self.code)
    }

    /// Address of the instruction.
    pub fn ip(&self) -> u64 {
        self.instr.ip()
    }

    /// Address of the next instruction (`ip + len`).
    pub fn next_ip(&self) -> u64 {
        self.instr.next_ip()
    }

    /// The iced-x86 instruction (for relocation and display).
    pub fn instruction(&self) -> &Instruction {
        &self.instr
    }

    /// Extended registers the recorder must capture for `accesses_into` to be
    /// exact: VSIB index vectors, AVX2 gather mask vectors, AVX-512 opmasks.
    pub fn needed_vregs(&self) -> &[(VecRegKind, u8)] {
        &self.vregs
    }

    /// True when the instruction touches memory at all (given suitable registers).
    pub fn has_memory_operands(&self) -> bool {
        !self.templates.is_empty()
    }

    /// A simple single-operand move the recorder may perform itself.
    pub fn emulation(&self) -> Option<&Emulation> {
        self.emulation.as_ref()
    }

    /// `call [m]` / `jmp [m]`: the branch the recorder emulates when the
    /// target's slot is in guarded memory.
    pub fn indirect_branch(&self) -> Option<&IndirectBranch> {
        self.branch.as_ref()
    }

    /// Appends every range the instruction touches, given the registers at
    /// the fault (before it ran). No allocation beyond growing `out`; `out` is
    /// not cleared. Ranges come in operand order (iced-x86's `used_memory`
    /// order: explicit operands first, then implicit stack slots).
    ///
    /// By family:
    /// - ordinary operands: `seg:[base + index*scale + disp]` (RIP-relative
    ///   resolved against the next instruction; fs/gs add `fs_base`/`gs_base`;
    ///   `0x67` wraps at 4 GiB), the operand's memory size, read/write/rw as
    ///   iced-x86 says. A read-with-conditional-write gives a certain read
    ///   plus an uncertain write of the same bytes.
    /// - stack: `push`/`pop`/`call`/`ret`/`enter`/`leave`/`pushf` slots are
    ///   reported like any other operand (rsp-relative); `push [m]` = read
    ///   `[m]` + write `[rsp-8]`; `pop [m]` = write `[m]` (evaluated with rsp
    ///   after the pop) + read `[rsp]`; `call [m]`/`jmp [m]` read the target.
    /// - strings (`movs`/`stos`/`lods`/`cmps`/`scas`/`ins`/`outs`): one element
    ///   without a prefix; with `rep`/`repe`/`repne` `rcx` elements (none when
    ///   0), one merged range per operand, ascending from rsi/rdi (DF=0) or
    ///   ending with the element at rsi/rdi (DF=1). For `repe`/`repne`
    ///   `cmps`/`scas` only the first element is certain; the rest is a
    ///   separate `certain=false` range.
    /// - `cmpxchg`/`cmpxchg8b`/`cmpxchg16b`: ReadWrite, certain (the CPU
    ///   always writes the destination, the old value when the compare fails);
    ///   `xchg`, `xadd`, `lock` arithmetic: ReadWrite.
    /// - `bt`/`bts`/`btr`/`btc [m], reg`: the word selected by the signed bit offset.
    /// - AVX-512 with an opmask (needs the k register, else `MissingRegister`):
    ///   only elements whose mask bit is set, adjacent ones merged, certain
    ///   (the CPU suppresses faults on masked-off elements); `{1toN}` and tuple
    ///   broadcasts (`vbroadcasti32x4`): memory element `j` iff a mask bit
    ///   `i ≡ j (mod elements)` is set; compress/expand: `popcount(k)`
    ///   consecutive elements; families without fault suppression (permutes,
    ///   shuffles, inserts/extracts, packs, `vpconflict`, `vpmaddwd`,
    ///   shift-by-xmm-count): the whole operand, no k register needed.
    ///   `k0` = no mask. tests/hardware.txt checks these on the CPU.
    /// - `vmaskmov*`/`vpmaskmov*`: elements whose mask-vector sign bit is set
    ///   (needs that vector register); `maskmovdqu`: the same, plus the
    ///   masked-off bytes as uncertain writes (the CPU may fault on them).
    /// - VSIB gathers/scatters: one element per index element whose mask is set
    ///   (AVX2: sign bit of the mask vector's element; AVX-512: k bit), at
    ///   `base + sext(index[i])*scale + disp`; contiguous elements merged.
    /// - no access: prefetches (incl. gather/scatter prefetches), `lea`,
    ///   multi-byte `nop`, and `clflush`/`clflushopt`/`clwb`/`cldemote` (they
    ///   neither read nor change the bytes, though `clflush` can fault on a
    ///   PROT_NONE page: a recorder sees a fault with no ranges).
    /// - `xsave*`/`xrstor*`: the XSAVE area size of the machine running this
    ///   code (CPUID 0xD), since the trace does not carry the recording CPU's.
    pub fn accesses_into(&self, regs: &Regs, vregs: &[VecReg], out: &mut Vec<MemAccess>) -> Result<(), DecodeError> {
        for t in self.templates.iter() {
            match *t {
                Template::Plain { mem, size, acc } => push_acc(out, mem.address(regs), size, acc),
                Template::BitString { mem, bit, bit_width, size, acc } => {
                    let shift = 64 - u32::from(bit_width);
                    let bits = ((bit.value(regs) << shift) as i64) >> shift;
                    let words = bits >> (size * 8).trailing_zeros();
                    let addr = mem.address(regs).wrapping_add((words as u64).wrapping_mul(size));
                    push_acc(out, addr, size, acc);
                }
                Template::Masked { mem, elem, count, mode, rw, mask } => {
                    let live = mask_bits(self.ip(), vregs, mask, elem, count)?;
                    let addr = mem.address(regs);
                    match mode {
                        MaskMode::PerElement => push_runs(out, addr, elem, live, rw, true),
                        MaskMode::PerElementMayFault => {
                            push_runs(out, addr, elem, live, rw, true);
                            let all = if count >= 64 { u64::MAX } else { (1u64 << count) - 1 };
                            push_runs(out, addr, elem, all & !live, rw, false);
                        }
                        MaskMode::Tuple(m) => {
                            let m = u32::from(m.max(1));
                            let mut mem_live = 0u64;
                            let mut bits = live;
                            while bits != 0 {
                                mem_live |= 1 << (bits.trailing_zeros() % m);
                                bits &= bits - 1;
                            }
                            push_runs(out, addr, elem, mem_live, rw, true);
                        }
                        MaskMode::Contiguous if live != 0 => {
                            out.push(MemAccess { addr, size: u64::from(live.count_ones()) * elem, rw, certain: true });
                        }
                        MaskMode::Contiguous => {}
                    }
                }
                Template::Vsib { um, index, index_len, elem, count, rw, mask } => {
                    self.vsib_into(regs, vregs, out, &um, index, index_len, elem, count, rw, mask)?;
                }
                Template::Str { seg, reg, addr32, elem, rep, rw } => {
                    let mut ptr = regs.gpr.get(usize::from(reg)).copied().unwrap_or(0);
                    let mut n = match rep {
                        Rep::One => 1,
                        Rep::All | Rep::FirstCertain => regs.gpr[Regs::RCX],
                    };
                    if addr32 {
                        ptr &= 0xffff_ffff;
                        n &= 0xffff_ffff;
                    }
                    if n == 0 {
                        continue;
                    }
                    let p = ptr.wrapping_add(seg.base(regs));
                    let down = regs.rflags & DF != 0;
                    // All n elements as one range: [p, p+n*e) or, going down, ending at p+e.
                    let total = n.saturating_mul(elem);
                    let lo = if down { p.wrapping_sub(total - elem) } else { p };
                    if rep == Rep::FirstCertain && n > 1 {
                        out.push(MemAccess { addr: p, size: elem, rw, certain: true });
                        let rest_lo = if down { lo } else { p.wrapping_add(elem) };
                        out.push(MemAccess { addr: rest_lo, size: total - elem, rw, certain: false });
                    } else {
                        out.push(MemAccess { addr: lo, size: total, rw, certain: true });
                    }
                }
            }
        }
        Ok(())
    }

    /// Convenience: `accesses_into` into a fresh vector.
    pub fn accesses(&self, regs: &Regs, vregs: &[VecReg]) -> Result<Vec<MemAccess>, DecodeError> {
        let mut out = Vec::new();
        self.accesses_into(regs, vregs, &mut out)?;
        Ok(out)
    }

    #[allow(clippy::too_many_arguments)]
    fn vsib_into(
        &self,
        regs: &Regs,
        vregs: &[VecReg],
        out: &mut Vec<MemAccess>,
        um: &UsedMemory,
        index: (VecRegKind, u8),
        index_len: usize,
        elem: u64,
        count: u8,
        rw: Rw,
        mask: ElemMask,
    ) -> Result<(), DecodeError> {
        let ip = self.ip();
        let index_bytes = find_vreg(vregs, index.0, index.1, index_len).ok_or_else(|| missing(ip, index.0, index.1))?;
        let live = mask_bits(ip, vregs, mask, elem, count)?;
        let start = out.len();
        for i in 0..usize::from(count) {
            if live & (1 << i) == 0 {
                continue;
            }
            let addr = um.virtual_address(i, |reg, elem_index, elem_size| {
                if reg.is_vector_register() {
                    let off = elem_index * elem_size;
                    let b = index_bytes.get(off..off + elem_size)?;
                    let mut v = [0u8; 8];
                    v.get_mut(..elem_size)?.copy_from_slice(b);
                    Some(u64::from_le_bytes(v))
                } else if reg.is_segment_register() {
                    Some(Seg::from_register(reg).base(regs))
                } else {
                    Some(GprPart::from_register(reg)?.value(regs))
                }
            });
            let Some(addr) = addr else {
                return Err(missing(ip, index.0, index.1));
            };
            // Merge with the previous element when contiguous (e.g. a stride-1 gather).
            if out.len() > start {
                if let Some(last) = out.last_mut() {
                    if last.addr.wrapping_add(last.size) == addr {
                        last.size += elem;
                        continue;
                    }
                }
            }
            out.push(MemAccess { addr, size: elem, rw, certain: true });
        }
        Ok(())
    }
}

fn push_acc(out: &mut Vec<MemAccess>, addr: u64, size: u64, acc: Acc) {
    let (rw, certain) = match acc {
        Acc::Read => (Rw::Read, true),
        Acc::Write => (Rw::Write, true),
        Acc::ReadWrite => (Rw::ReadWrite, true),
        Acc::CondRead => (Rw::Read, false),
        Acc::CondWrite => (Rw::Write, false),
        Acc::ReadCondWrite => {
            out.push(MemAccess { addr, size, rw: Rw::Read, certain: true });
            (Rw::Write, false)
        }
    };
    out.push(MemAccess { addr, size, rw, certain });
}

/// One access per run of consecutive set bits of `live`.
fn push_runs(out: &mut Vec<MemAccess>, base: u64, elem: u64, mut live: u64, rw: Rw, certain: bool) {
    while live != 0 {
        let first = u64::from(live.trailing_zeros());
        let run = u64::from((live >> first).trailing_ones());
        out.push(MemAccess { addr: base.wrapping_add(first * elem), size: run * elem, rw, certain });
        live = if first + run >= 64 { 0 } else { live & !(((1u64 << run) - 1) << first) };
    }
}

fn missing(ip: u64, kind: VecRegKind, n: u8) -> DecodeError {
    let name = match kind {
        VecRegKind::Xmm => "xmm",
        VecRegKind::Ymm => "ymm",
        VecRegKind::Zmm => "zmm",
        VecRegKind::K => "k",
    };
    DecodeError::MissingRegister { ip, reg: format!("{name}{n}") }
}

/// Bit `i` set iff element `i` (of `count` elements of `elem` bytes) is live.
fn mask_bits(ip: u64, vregs: &[VecReg], mask: ElemMask, elem: u64, count: u8) -> Result<u64, DecodeError> {
    let (kind, n) = mask.register();
    match mask {
        ElemMask::K(_) => {
            let bytes = find_vreg(vregs, kind, n, 1).ok_or_else(|| missing(ip, kind, n))?;
            let mut v = [0u8; 8];
            for (d, s) in v.iter_mut().zip(bytes) {
                *d = *s;
            }
            let m = u64::from_le_bytes(v);
            Ok(if count >= 64 { m } else { m & ((1u64 << count) - 1) })
        }
        ElemMask::Vector(..) => {
            let e = elem as usize;
            let bytes = find_vreg(vregs, kind, n, e * usize::from(count)).ok_or_else(|| missing(ip, kind, n))?;
            Ok((0..usize::from(count)).fold(0u64, |m, i| match bytes.get(i * e + e - 1) {
                Some(b) if b & 0x80 != 0 => m | (1 << i),
                _ => m,
            }))
        }
    }
}

/// The bytes of a recorded register, accepting a wider vector register of the
/// same number (zmm2 holds ymm2 and xmm2 in its low bytes).
fn find_vreg(vregs: &[VecReg], kind: VecRegKind, n: u8, min_len: usize) -> Option<&[u8]> {
    let ok_kind = |k: VecRegKind| match kind {
        VecRegKind::K => k == VecRegKind::K,
        _ => k != VecRegKind::K,
    };
    vregs
        .iter()
        .filter(|v| v.index == n && ok_kind(v.kind) && v.bytes.len() >= min_len)
        .min_by_key(|v| (v.kind != kind, v.bytes.len()))
        .map(|v| v.bytes.as_slice())
}

fn vec_reg(reg: Register) -> Option<(VecRegKind, u8)> {
    let kind = if reg.is_xmm() {
        VecRegKind::Xmm
    } else if reg.is_ymm() {
        VecRegKind::Ymm
    } else if reg.is_zmm() {
        VecRegKind::Zmm
    } else if reg.is_k() {
        VecRegKind::K
    } else {
        return None;
    };
    Some((kind, u8::try_from(reg.number()).ok()?))
}

/// Instructions whose memory operand is not an access of the program's data.
fn is_no_access(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Prefetch
            | Mnemonic::Prefetchw
            | Mnemonic::Prefetchwt1
            | Mnemonic::Prefetchnta
            | Mnemonic::Prefetcht0
            | Mnemonic::Prefetcht1
            | Mnemonic::Prefetcht2
            | Mnemonic::Prefetchit0
            | Mnemonic::Prefetchit1
            | Mnemonic::Vgatherpf0dpd
            | Mnemonic::Vgatherpf0dps
            | Mnemonic::Vgatherpf0qpd
            | Mnemonic::Vgatherpf0qps
            | Mnemonic::Vgatherpf1dpd
            | Mnemonic::Vgatherpf1dps
            | Mnemonic::Vgatherpf1qpd
            | Mnemonic::Vgatherpf1qps
            | Mnemonic::Vscatterpf0dpd
            | Mnemonic::Vscatterpf0dps
            | Mnemonic::Vscatterpf0qpd
            | Mnemonic::Vscatterpf0qps
            | Mnemonic::Vscatterpf1dpd
            | Mnemonic::Vscatterpf1dps
            | Mnemonic::Vscatterpf1qpd
            | Mnemonic::Vscatterpf1qps
            // Cache-line maintenance: neither reads nor changes the bytes.
            | Mnemonic::Clflush
            | Mnemonic::Clflushopt
            | Mnemonic::Clwb
            | Mnemonic::Cldemote
    )
}

fn is_xsave_family(m: Mnemonic) -> bool {
    matches!(
        m,
        Mnemonic::Xsave
            | Mnemonic::Xsave64
            | Mnemonic::Xsavec
            | Mnemonic::Xsavec64
            | Mnemonic::Xsaveopt
            | Mnemonic::Xsaveopt64
            | Mnemonic::Xsaves
            | Mnemonic::Xsaves64
            | Mnemonic::Xrstor
            | Mnemonic::Xrstor64
            | Mnemonic::Xrstors
            | Mnemonic::Xrstors64
    )
}

/// Size of the XSAVE area for the features enabled on this machine (CPUID
/// leaf 0xD, EBX); the recording machine's size is not in the trace.
fn xsave_area_size() -> u64 {
    static SIZE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *SIZE.get_or_init(|| {
        #[cfg(target_arch = "x86_64")]
        {
            // Leaf 0xD sub-leaf 0 is defined whenever XSAVE is (zeros otherwise).
            let r = std::arch::x86_64::__cpuid_count(0xd, 0);
            if r.ebx != 0 {
                return u64::from(r.ebx);
            }
        }
        4096
    })
}

/// AVX-512 instruction families (mnemonic prefixes) whose masked memory
/// operand is touched in full whatever the mask (exception classes without
/// fault suppression: permutes, shuffles, inserts/extracts, packs, conflict
/// detection). See tests/hardware.txt for the ones checked on a CPU.
const NO_SUPPRESSION_PREFIX: &[&str] =
    &["Vperm", "Vshuf", "Valign", "Vpunpck", "Vunpck", "Vinsert", "Vextract", "Vpconflict", "Vpack"];

/// The same, by exact mnemonic (`vpshufb` but not `vpshufbitqmb`).
const NO_SUPPRESSION_EXACT: &[&str] = &[
    "Vpshufb",
    "Vpshufd",
    "Vpshufhw",
    "Vpshuflw",
    "Vpalignr",
    "Vpmaddwd",
    "Vpmaddubsw",
    "Vpmultishiftqb",
    "Vdbpsadbw",
    "Vmovddup",
    "Vmovshdup",
    "Vmovsldup",
];

/// Shifts whose third operand is an xmm/m128 count: the count is read whole.
const SHIFT_BY_COUNT: &[&str] =
    &["Vpsllw", "Vpslld", "Vpsllq", "Vpsrlw", "Vpsrld", "Vpsrlq", "Vpsraw", "Vpsrad", "Vpsraq"];

fn no_fault_suppression(name: &str, instr: &Instruction) -> bool {
    NO_SUPPRESSION_PREFIX.iter().any(|p| name.starts_with(p))
        || NO_SUPPRESSION_EXACT.contains(&name)
        || (SHIFT_BY_COUNT.contains(&name) && instr.op_count() == 3 && instr.op_kind(2) == OpKind::Memory)
}

/// Broadcasts of a memory scalar or tuple: memory element `j` feeds every
/// destination element `i` with `i % m == j` (checked on hardware).
const TUPLE_BROADCAST: &[&str] = &["Vbroadcast", "Vpbroadcast"];

/// Compress stores / expand loads: `popcount(mask)` consecutive elements.
const COMPRESS: &[&str] = &["Vcompress", "Vpcompress", "Vexpand", "Vpexpand"];

/// Widest vector register among the operands (bytes), or `fallback`.
fn vector_length(instr: &Instruction, fallback: u64) -> u64 {
    (0..instr.op_count())
        .filter(|&i| instr.op_kind(i) == OpKind::Register)
        .map(|i| instr.op_register(i))
        .filter(|r| r.is_vector_register())
        .map(|r| r.size() as u64)
        .max()
        .unwrap_or(fallback)
}

fn build_templates(instr: &Instruction, factory: &mut InstructionInfoFactory) -> Result<Vec<Template>, &'static str> {
    let mnemonic = instr.mnemonic();
    let mut out = Vec::new();
    if is_no_access(mnemonic) {
        return Ok(out);
    }
    let info = factory.info(instr);

    if instr.is_string_instruction() {
        let rep = if !(instr.has_rep_prefix() || instr.has_repne_prefix()) {
            Rep::One
        } else if matches!(
            mnemonic,
            Mnemonic::Cmpsb
                | Mnemonic::Cmpsw
                | Mnemonic::Cmpsd
                | Mnemonic::Cmpsq
                | Mnemonic::Scasb
                | Mnemonic::Scasw
                | Mnemonic::Scasd
                | Mnemonic::Scasq
        ) {
            Rep::FirstCertain
        } else {
            Rep::All
        };
        let elem = instr.memory_size().size() as u64;
        for i in 0..instr.op_count() {
            let (seg, reg, addr32) = match instr.op_kind(i) {
                OpKind::MemorySegRSI => (Seg::from_register(instr.memory_segment()), Regs::RSI, false),
                OpKind::MemorySegESI => (Seg::from_register(instr.memory_segment()), Regs::RSI, true),
                OpKind::MemoryESRDI => (Seg::None, Regs::RDI, false),
                OpKind::MemoryESEDI => (Seg::None, Regs::RDI, true),
                OpKind::MemorySegSI | OpKind::MemorySegDI | OpKind::MemoryESDI => {
                    return Err("16-bit string addressing")
                }
                _ => continue,
            };
            let Some(acc) = Acc::from_op_access(info.op_access(i)) else { continue };
            out.push(Template::Str { seg, reg: reg as u8, addr32, elem, rep, rw: acc.unconditional() });
        }
        return Ok(out);
    }

    let masked = instr.op_mask() != Register::None;
    for um in info.used_memory() {
        let Some(mut acc) = Acc::from_op_access(um.access()) else { continue };
        if um.index().is_vector_register() {
            out.push(vsib_template(instr, um, acc)?);
            continue;
        }
        let mem = MemOperand::from_used(um).ok_or("memory operand with a non-GPR register")?;
        let msize = um.memory_size();
        let mut size = msize.size() as u64;
        if masked && instr.encoding() == EncodingKind::EVEX {
            let elem = (msize.element_size() as u64).max(1);
            let k = vec_reg(instr.op_mask()).map(|(_, n)| n).ok_or("bad opmask")?;
            let name = format!("{mnemonic:?}");
            let (mode, count) = if msize.is_broadcast() {
                (MaskMode::Tuple(1), vector_length(instr, size) / elem)
            } else if no_fault_suppression(&name, instr) {
                // Memory elements do not map to destination elements: the
                // whole operand is read whatever the mask.
                let acc = match acc.unconditional() {
                    Rw::Read => Acc::Read,
                    Rw::Write => Acc::Write,
                    Rw::ReadWrite => Acc::ReadWrite,
                };
                out.push(Template::Plain { mem, size, acc });
                continue;
            } else if TUPLE_BROADCAST.iter().any(|p| name.starts_with(p)) {
                let m = (msize.element_count() as u64).clamp(1, 64);
                (MaskMode::Tuple(m as u8), vector_length(instr, size) / elem)
            } else if COMPRESS.iter().any(|p| name.starts_with(p)) {
                (MaskMode::Contiguous, vector_length(instr, size) / elem)
            } else {
                (MaskMode::PerElement, msize.element_count() as u64)
            };
            out.push(Template::Masked {
                mem,
                elem,
                count: count.min(64) as u8,
                mode,
                rw: acc.unconditional(),
                mask: ElemMask::K(k),
            });
            continue;
        }
        if is_xsave_family(mnemonic) && size == 0 {
            size = xsave_area_size();
        }
        match mnemonic {
            // Architecturally the destination always receives a write cycle
            // (the old value is written back when the comparison fails).
            Mnemonic::Cmpxchg | Mnemonic::Cmpxchg8b | Mnemonic::Cmpxchg16b => acc = Acc::ReadWrite,
            // Element-masked by the sign bits of a vector register.
            Mnemonic::Maskmovdqu
            | Mnemonic::Vmaskmovdqu
            | Mnemonic::Vmaskmovps
            | Mnemonic::Vmaskmovpd
            | Mnemonic::Vpmaskmovd
            | Mnemonic::Vpmaskmovq => {
                let elem = match mnemonic {
                    Mnemonic::Vmaskmovps | Mnemonic::Vpmaskmovd => 4,
                    Mnemonic::Vmaskmovpd | Mnemonic::Vpmaskmovq => 8,
                    _ => 1,
                };
                // maskmovdqu rdi, data, mask; vmaskmov reg, mask, [m] / [m], mask, reg.
                let mask_op = if elem == 1 { 2 } else { 1 };
                let (kind, n) = vec_reg(instr.op_register(mask_op)).ok_or("bad mask register")?;
                let count = (size / elem).min(64) as u8;
                // maskmovdqu may fault on masked-off bytes (seen on hardware);
                // vmaskmov* suppresses faults on masked-off elements.
                let mode = if elem == 1 { MaskMode::PerElementMayFault } else { MaskMode::PerElement };
                out.push(Template::Masked {
                    mem,
                    elem,
                    count,
                    mode,
                    rw: acc.unconditional(),
                    mask: ElemMask::Vector(kind, n),
                });
                continue;
            }
            // MMX byte mask (not recorded): the whole range, uncertain.
            Mnemonic::Maskmovq => acc = Acc::CondWrite,
            _ => {}
        }
        if size == 0 {
            return Err("memory operand of unknown size");
        }
        let is_bt = matches!(mnemonic, Mnemonic::Bt | Mnemonic::Bts | Mnemonic::Btr | Mnemonic::Btc);
        if is_bt && instr.op_kind(0) == OpKind::Memory && instr.op_kind(1) == OpKind::Register {
            let r = instr.op1_register();
            let bit = GprPart::from_register(r).ok_or("bt with a non-GPR bit offset")?;
            out.push(Template::BitString { mem, bit, bit_width: (r.size() * 8) as u8, size, acc });
            continue;
        }
        out.push(Template::Plain { mem, size, acc });
    }
    Ok(out)
}

fn vsib_template(instr: &Instruction, um: &UsedMemory, acc: Acc) -> Result<Template, &'static str> {
    let index_reg = um.index();
    let index = vec_reg(index_reg).ok_or("bad VSIB index")?;
    let vsib = um.vsib_size() as usize;
    let elem = um.memory_size().size() as u64;
    if vsib == 0 || elem == 0 {
        return Err("bad VSIB operand");
    }
    let index_len = index_reg.size();
    // The data register: the first vector register operand (gathers: the
    // destination; scatters: the source).
    let data = (0..instr.op_count())
        .filter(|&i| instr.op_kind(i) == OpKind::Register)
        .map(|i| instr.op_register(i))
        .find(|r| r.is_vector_register())
        .ok_or("VSIB without a data register")?;
    let count = (index_len / vsib).min(data.size() / elem as usize);
    let mask = if instr.op_mask() != Register::None {
        ElemMask::K(vec_reg(instr.op_mask()).ok_or("bad opmask")?.1)
    } else if instr.encoding() == EncodingKind::VEX && instr.op_count() == 3 && instr.op_kind(2) == OpKind::Register {
        let (kind, n) = vec_reg(instr.op2_register()).ok_or("bad gather mask")?;
        ElemMask::Vector(kind, n)
    } else {
        return Err("VSIB operand without a mask");
    };
    Ok(Template::Vsib { um: *um, index, index_len, elem, count: count.min(64) as u8, rw: acc.unconditional(), mask })
}
