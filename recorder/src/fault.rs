//! The fault path: a foreign-mode thread touched a guarded page.
//!
//! One stop per fault where possible: decode (cached by address), compute
//! every range, record the Access, then either perform the access ourselves
//! through `/proc/PID/mem` (simple moves: no unprotected window, no second
//! stop), or fall back to unprotect → single-step → re-protect, which
//! always works.

use ffirec_decode::{Emulation, MemAccess, Rw};
use ffirec_format::{AccessRef, Regs, VecReg, VecRegKind};

use crate::process::Stop;
use crate::sys::{self, Pid, RawRegs, RemoteAddr};
use crate::tracer::Tracer;
use crate::Error;

/// Reads of up to this many bytes are recorded with their data.
const DATA_MAX: u64 = 64;

/// XSAVE layout (standard format, as PTRACE_GETREGSET returns it).
#[derive(Debug, Clone, Copy)]
pub struct XsaveLayout {
    avx: usize,
    opmask: usize,
    zmm_hi256: usize,
    hi16_zmm: usize,
}

impl XsaveLayout {
    pub fn detect() -> XsaveLayout {
        let off = |i: u32, default: usize| -> usize {
            // CPUID leaf 0xD sub-leaf i: size (eax) and offset (ebx) of state component i.
            let r = core::arch::x86_64::__cpuid_count(0xd, i);
            if r.eax == 0 {
                default
            } else {
                r.ebx as usize
            }
        };
        XsaveLayout { avx: off(2, 576), opmask: off(5, 1088), zmm_hi256: off(6, 1152), hi16_zmm: off(7, 1664) }
    }

    /// Byte pieces (offset in the XSAVE area, length, XSTATE_BV bit) that
    /// make up register `index` of `kind`, low bytes first (no allocation:
    /// the vector-store fault path calls this).
    fn pieces(&self, kind: VecRegKind, index: usize) -> Pieces {
        let i = index;
        match kind {
            VecRegKind::K => Pieces::of(&[(self.opmask + 8 * i, 8, 5)]),
            _ if i >= 16 => {
                let len = match kind {
                    VecRegKind::Xmm => 16,
                    VecRegKind::Ymm => 32,
                    _ => 64,
                };
                Pieces::of(&[(self.hi16_zmm + 64 * (i - 16), len, 7)])
            }
            VecRegKind::Xmm => Pieces::of(&[(160 + 16 * i, 16, 1)]),
            VecRegKind::Ymm => Pieces::of(&[(160 + 16 * i, 16, 1), (self.avx + 16 * i, 16, 2)]),
            VecRegKind::Zmm => {
                Pieces::of(&[(160 + 16 * i, 16, 1), (self.avx + 16 * i, 16, 2), (self.zmm_hi256 + 32 * i, 32, 6)])
            }
        }
    }

    /// Bytes of the XSAVE area that hold register `index` of `kind` and the
    /// header before it: a shorter `PTRACE_GETREGSET` suffices to read it
    /// (1.55 us instead of 2.3 us for the whole area, measured here).
    fn extent(&self, kind: VecRegKind, index: usize) -> usize {
        self.pieces(kind, index).iter().map(|&(off, len, _)| off + len).max().unwrap_or(0).max(520)
    }

    /// Register contents (components in their init state read as zero).
    pub fn get(&self, xsave: &[u8], kind: VecRegKind, index: usize) -> Vec<u8> {
        let mut out = [0u8; 64];
        let n = self.get_into(xsave, kind, index, &mut out);
        out[..n].to_vec()
    }

    /// [`Self::get`] into `out`; returns the register's size in bytes.
    pub fn get_into(&self, xsave: &[u8], kind: VecRegKind, index: usize, out: &mut [u8; 64]) -> usize {
        let bv = xsave.get(512..520).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0);
        let mut pos = 0;
        for &(off, len, bit) in self.pieces(kind, index).iter() {
            let Some(dst) = out.get_mut(pos..pos + len) else { break };
            match xsave.get(off..off + len) {
                Some(b) if bv & (1 << bit) != 0 => dst.copy_from_slice(b),
                _ => dst.fill(0),
            }
            pos += len;
        }
        pos
    }

    /// Writes `bytes` (low bytes first) into register `index` of `kind`,
    /// zeroing the rest of that register view; with `zero_upper` also every
    /// wider view above it (VEX/EVEX semantics).
    fn set(&self, xsave: &mut [u8], kind: VecRegKind, index: usize, bytes: &[u8], zero_upper: bool) -> bool {
        let mut bv = xsave.get(512..520).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0);
        let widest = if zero_upper { VecRegKind::Zmm } else { kind };
        let mut pos = 0;
        for &(off, len, bit) in self.pieces(widest, index).iter() {
            let Some(dst) = xsave.get_mut(off..off + len) else { return false };
            let in_view = self.pieces(kind, index).iter().any(|p| p.0 == off) || (index >= 16);
            for (j, d) in dst.iter_mut().enumerate() {
                let k = pos + j;
                if k < bytes.len() {
                    *d = bytes[k];
                } else if in_view || zero_upper {
                    *d = 0;
                }
            }
            pos += len;
            bv |= 1 << bit;
        }
        if let Some(b) = xsave.get_mut(512..520) {
            b.copy_from_slice(&bv.to_le_bytes());
        }
        true
    }
}

/// Up to three (offset, length, XSTATE_BV bit) pieces of one register.
#[derive(Debug, Clone, Copy)]
struct Pieces {
    p: [(usize, usize, u32); 3],
    n: usize,
}

impl Pieces {
    fn of(v: &[(usize, usize, u32)]) -> Pieces {
        let mut p = [(0, 0, 0); 3];
        let n = v.len().min(3);
        p[..n].copy_from_slice(&v[..n]);
        Pieces { p, n }
    }
    fn iter(&self) -> std::slice::Iter<'_, (usize, usize, u32)> {
        self.p[..self.n].iter()
    }
}

/// `FFIREC_NO_VLOAD_SLOT=1` performs vector loads through the register sets
/// instead of a slot (the tests check that both agree byte for byte).
fn no_vload_slot() -> bool {
    static NO_SLOT: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NO_SLOT.get_or_init(|| std::env::var_os("FFIREC_NO_VLOAD_SLOT").is_some_and(|v| v == "1"))
}

/// `FFIREC_NO_EMULATE=1` sends every access through a trampoline instead of
/// emulating it (the tests check that both paths agree byte for byte).
fn no_emulate() -> bool {
    static NO_EMULATE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *NO_EMULATE.get_or_init(|| std::env::var_os("FFIREC_NO_EMULATE").is_some_and(|v| v == "1"))
}

/// When the fault path may skip reading the instruction bytes at `rip`.
///
/// A decoded instruction is stamped with the current epoch after its bytes
/// were read and found to lie in a private, non-writable, file-backed
/// executable mapping (a loaded object's text: nothing but a syscall —
/// `mprotect`, `mremap`, a write through `/proc/self/mem` — can change such
/// bytes). The stamp is trusted only along an unbroken chain of emulated
/// faults of one thread: each resumed under `PTRACE_SYSCALL` (so any syscall
/// stops it) while every other thread of the process was stopped. Any other
/// stop breaks the chain (call entry and exit, callbacks, syscalls, signals,
/// trampolines, which resume with `PTRACE_CONT`, other threads' stops, other
/// processes), and the first fault after a break advances the epoch: every
/// stamp is void, every instruction is read and checked again. Anonymous or
/// writable code (a JIT) is never stamped: read on every fault.
#[derive(Debug, Default)]
pub struct CodeTrust {
    /// The thread whose last fault ended the chain's latest link.
    thread: Option<Pid>,
    /// Set by [`CodeTrust::at_stop`]: the current stop continues the chain.
    at_stop: bool,
    epoch: u64,
    /// The last mapping found stable: (start, end, epoch).
    vma: Option<(u64, u64, u64)>,
    name: Vec<u8>,
}

impl CodeTrust {
    /// Called for every stop before it is handled.
    #[inline]
    pub fn at_stop(&mut self, stop: &Stop) {
        let kept = self.thread.take();
        self.at_stop = matches!(*stop, Stop::Signal { tid, signal: libc::SIGSEGV } if kept == Some(tid));
    }

    /// Start of a fault: whether stamps of the current epoch hold. When they
    /// do not, a new epoch begins.
    #[inline]
    fn begin_fault(&mut self) -> bool {
        let trusted = std::mem::take(&mut self.at_stop);
        if !trusted {
            self.epoch += 1;
        }
        trusted
    }

    /// Whether the code at `ip` lies in a mapping whose bytes only a syscall
    /// can change. `None` from the kernel (no `PROCMAP_QUERY` before Linux
    /// 6.11): never, so every fault reads its code.
    fn stable(&mut self, mem: &sys::Mem, ip: u64) -> bool {
        if let Some((s, e, ep)) = self.vma {
            if ep == self.epoch && s <= ip && ip < e {
                return true;
            }
        }
        let Ok(Some(v)) = mem.query_vma(ip, 0, &mut self.name) else { return false };
        let ok = v.start <= ip
            && ip < v.end
            && v.flags & sys::PROCMAP_QUERY_VMA_EXECUTABLE != 0
            && v.flags & (sys::PROCMAP_QUERY_VMA_WRITABLE | sys::PROCMAP_QUERY_VMA_SHARED) == 0
            && v.inode != 0
            // A memfd may be written through a second, shared mapping.
            && !self.name.starts_with(b"/memfd:");
        if ok {
            self.vma = Some((v.start, v.end, self.epoch));
        }
        ok
    }
}

fn page_down(x: u64, page: u64) -> u64 {
    x & !(page - 1)
}

impl Tracer {
    /// SIGSEGV from a foreign-mode thread on a guarded page.
    pub fn on_fault(&mut self, tid: Pid, raw: RawRegs, fault_addr: u64) -> Result<(), Error> {
        if self.saved_affinity.is_none() {
            self.pin(tid);
        }
        self.sink.counters.faults += 1;
        self.sink.counters.fault_stops += 1;
        let trusted = self.code_trust.begin_fault();
        let epoch = self.code_trust.epoch;
        let mut code = [0u8; 16];
        let hit = trusted && self.decode.get_stamped(raw.rip, epoch).is_some();
        let n = if hit {
            self.sink.counters.code_cached += 1;
            0
        } else {
            self.mem.read_partial(RemoteAddr(raw.rip), &mut code)
        };
        let regs = sys::to_regs(&raw);
        self.ranges.clear();
        let mut vregs: Vec<VecReg> = Vec::new();
        let mut emulation: Option<Emulation> = None;
        let mut instr: Option<iced_x86::Instruction> = None;
        let mut next_ip = 0;
        let mut len = n.min(15);
        let decoded = if hit {
            self.decode.get_stamped(raw.rip, epoch).ok_or(())
        } else {
            self.decode.get_or_decode(raw.rip, &code[..n]).map_err(drop)
        };
        let decoded_ok = decoded.is_ok();
        if let Ok(d) = decoded {
            {
                len = d.len();
                if hit {
                    code[..len].copy_from_slice(d.code());
                }
                next_ip = d.next_ip();
                emulation = d.emulation().copied();
                instr = Some(*d.instruction());
                if !d.needed_vregs().is_empty() {
                    let need: Vec<(VecRegKind, u8)> = d.needed_vregs().to_vec();
                    let got = sys::get_xstate(tid, &mut self.xsave)?;
                    let layout = self.xsave_layout;
                    for (kind, index) in need {
                        let bytes = layout.get(&self.xsave[..got], kind, usize::from(index));
                        vregs.push(VecReg { kind, index, bytes });
                    }
                }
                if d.accesses_into(&regs, &vregs, &mut self.ranges).is_err() {
                    self.ranges.clear();
                }
            }
        }
        if decoded_ok && !hit && self.code_trust.stable(&self.mem, raw.rip) {
            self.decode.stamp(raw.rip, epoch);
        }
        // The shim names the foreign thread while it runs inside malloc/free/
        // realloc: such a fault is the allocator's (see `Counters::allocator_accesses`).
        // The bytes a single-range load reads, kept for the emulation below
        // (one `/proc/PID/mem` read per fault, not two).
        let mut loaded = [0u8; DATA_MAX as usize];
        let mut loaded_at: Option<(u64, usize)> = None;
        if self.alloc.as_ref().is_some_and(|a| a.in_allocator(tid as u32)) {
            self.sink.counters.allocator_accesses += 1;
        } else {
            let got = self.read_data(&self.ranges, &mut loaded);
            if let [r] = self.ranges.as_slice() {
                if r.rw == Rw::Read && got > 0 {
                    loaded_at = Some((r.addr, got));
                }
            }
            self.sink.push_access(&AccessRef {
                tid: tid as u32,
                code: &code[..len],
                regs: &regs,
                fault_addr,
                data: &loaded[..got],
                vregs: &vregs,
            })?;
        }
        if let Some(emu) = emulation.filter(|_| !no_emulate()) {
            let pre = loaded_at.map(|(a, n)| (a, &loaded[..n]));
            if let (Emulation::VecLoad { .. }, Some(i)) = (emu, instr.as_ref()) {
                if self.vload_slot(tid, raw, &regs, &emu, i, &code[..len], pre)? {
                    self.sink.counters.emulated += 1;
                    self.keep_code_trust(tid);
                    return Ok(());
                }
            }
            if self.emulate(tid, raw, regs, &emu, next_ip, pre)? {
                self.sink.counters.emulated += 1;
                self.keep_code_trust(tid);
                return Ok(());
            }
        }
        if let Some(i) = instr {
            if self.emulate_branch(tid, raw, &i)? {
                self.sink.counters.emulated += 1;
                self.keep_code_trust(tid);
                return Ok(());
            }
            if self.trampoline(tid, raw, fault_addr, &i, &code[..len])? {
                self.sink.counters.trampolined += 1;
                return Ok(());
            }
        }
        self.step_fallback(tid, raw, fault_addr)
    }

    /// After an emulated fault (the thread resumed at its next instruction):
    /// the code-trust chain goes on when nothing but this thread can run
    /// until its next stop and any syscall of it stops (see [`CodeTrust`]).
    fn keep_code_trust(&mut self, tid: Pid) {
        let syscalls_stop = self.owner == Some(tid) && self.foreign_mode;
        if syscalls_stop && !self.threads.iter().any(|(&t, th)| t != tid && th.running) {
            self.code_trust.thread = Some(tid);
        }
    }

    /// The bytes the instruction is about to read, when they are few, into
    /// `out`; returns how many (0: none, too many, or not all readable).
    fn read_data(&self, ranges: &[MemAccess], out: &mut [u8; DATA_MAX as usize]) -> usize {
        let total: u64 = ranges.iter().filter(|r| r.rw != Rw::Write).map(|r| r.size).sum();
        if total == 0 || total > DATA_MAX {
            return 0;
        }
        let mut pos = 0;
        for r in ranges.iter().filter(|r| r.rw != Rw::Write) {
            let end = pos + r.size as usize;
            let got = self.mem.read_partial(RemoteAddr(r.addr), &mut out[pos..end]);
            if got < r.size as usize {
                return 0;
            }
            pos = end;
        }
        pos
    }

    /// Fills `buf` with the bytes at `addr`: those the fault's read already
    /// fetched (`pre`) when they are these, else read through `/proc/PID/mem`.
    /// False when they cannot all be read.
    fn load_into(&self, addr: u64, pre: Option<(u64, &[u8])>, buf: &mut [u8]) -> bool {
        match pre {
            Some((a, b)) if a == addr && b.len() == buf.len() => {
                buf.copy_from_slice(b);
                true
            }
            _ => self.mem.read_partial(RemoteAddr(addr), buf) == buf.len(),
        }
    }

    /// Performs a simple move through `/proc/PID/mem` and skips the
    /// instruction: one SETREGS, no window. Returns false to fall back.
    /// `pre`: bytes already read at an address (the Access event's data).
    pub(crate) fn emulate(
        &mut self,
        tid: Pid,
        mut raw: RawRegs,
        mut regs: Regs,
        emu: &Emulation,
        next_ip: u64,
        pre: Option<(u64, &[u8])>,
    ) -> Result<bool, Error> {
        let orig = raw;
        let addr = emu.address(&regs);
        let size = emu.size();
        let mut buf = [0u8; 64];
        if size > buf.len() || next_ip == 0 {
            return Ok(false);
        }
        match *emu {
            Emulation::Load { .. } => {
                if !self.load_into(addr, pre, &mut buf[..size]) {
                    return Ok(false);
                }
                if emu.apply_load(&mut regs, &buf[..size]).is_err() {
                    return Ok(false);
                }
                for (i, v) in regs.gpr.iter().enumerate() {
                    *sys::gpr_mut(&mut raw, i) = *v;
                }
            }
            Emulation::Store { .. } => {
                let Some(v) = emu.store_value(&regs) else { return Ok(false) };
                if self.mem.write(RemoteAddr(addr), &v.to_le_bytes()[..size]).is_err() {
                    return Ok(false);
                }
            }
            // Legacy SSE loads into xmm0-15 leave the upper halves alone, and
            // stores of xmm0-15 need nothing else: the FXSAVE area suffices
            // (measured here: 2.7 us for get+set against 6.4 us for XSAVE).
            Emulation::VecLoad { .. } => {
                if !self.vload_regsets(tid, emu, pre, &regs)? {
                    return Ok(false);
                }
            }
            Emulation::VecStore { reg, kind: VecRegKind::Xmm, .. } if reg < 16 && size <= 16 => {
                let mut fx = [0u8; sys::FXSAVE_LEN];
                sys::get_fpregs(tid, &mut fx)?;
                let at = sys::FXSAVE_XMM0 + 16 * usize::from(reg);
                let Some(b) = fx.get(at..at + size) else { return Ok(false) };
                if self.mem.write(RemoteAddr(addr), b).is_err() {
                    return Ok(false);
                }
            }
            Emulation::VecStore { reg, kind, .. } => {
                let want = self.xsave_layout.extent(kind, usize::from(reg)).min(self.xsave.len());
                let got = sys::get_xstate(tid, &mut self.xsave[..want])?;
                let mut bytes = [0u8; 64];
                let n = self.xsave_layout.get_into(&self.xsave[..got], kind, usize::from(reg), &mut bytes);
                let Some(b) = bytes[..n].get(..size) else { return Ok(false) };
                if self.mem.write(RemoteAddr(addr), b).is_err() {
                    return Ok(false);
                }
            }
        }
        raw.rip = next_ip;
        sys::set_changed(tid, &orig, &raw)?;
        self.resume(tid, 0)?;
        Ok(true)
    }

    /// A vector load performed through the register sets (FXSAVE for
    /// legacy SSE loads into xmm0-15, XSAVE otherwise). False: not possible.
    fn vload_regsets(
        &mut self,
        tid: Pid,
        emu: &Emulation,
        pre: Option<(u64, &[u8])>,
        regs: &Regs,
    ) -> Result<bool, Error> {
        let Emulation::VecLoad { reg, kind, zero_upper, .. } = *emu else { return Ok(false) };
        let (addr, size) = (emu.address(regs), emu.size());
        let mut data = [0u8; DATA_MAX as usize];
        let Some(buf) = data.get_mut(..size) else { return Ok(false) };
        if !self.load_into(addr, pre, buf) {
            return Ok(false);
        }
        // Legacy SSE loads into xmm0-15 leave the upper halves alone: the
        // FXSAVE area suffices (measured here: 2.7 us for get+set against
        // 6.4 us for XSAVE).
        if kind == VecRegKind::Xmm && !zero_upper && reg < 16 {
            let mut fx = [0u8; sys::FXSAVE_LEN];
            sys::get_fpregs(tid, &mut fx)?;
            let at = sys::FXSAVE_XMM0 + 16 * usize::from(reg);
            let Some(x) = fx.get_mut(at..at + 16) else { return Ok(false) };
            x.fill(0);
            x[..size.min(16)].copy_from_slice(&buf[..size.min(16)]);
            sys::set_fpregs(tid, &fx)?;
            return Ok(true);
        }
        let got = sys::get_xstate(tid, &mut self.xsave)?;
        let layout = self.xsave_layout;
        if !layout.set(&mut self.xsave[..got], kind, usize::from(reg), buf, zero_upper) {
            return Ok(false);
        }
        sys::set_xstate(tid, &self.xsave[..got])?;
        Ok(true)
    }

    /// `call [m]` / `jmp [m]` through guarded memory: read the target,
    /// push the return address for `call`, set rip. One stop.
    fn emulate_branch(&mut self, tid: Pid, mut raw: RawRegs, instr: &iced_x86::Instruction) -> Result<bool, Error> {
        let orig = raw;
        use iced_x86::{Mnemonic, OpKind};
        let m = instr.mnemonic();
        if !matches!(m, Mnemonic::Call | Mnemonic::Jmp)
            || instr.op0_kind() != OpKind::Memory
            || instr.memory_size().size() != 8
        {
            return Ok(false);
        }
        let Some(src) = self.ranges.iter().find(|r| r.rw == Rw::Read && r.size == 8).copied() else { return Ok(false) };
        let mut b = [0u8; 8];
        if self.mem.read_partial(RemoteAddr(src.addr), &mut b) != 8 {
            return Ok(false);
        }
        let target = u64::from_le_bytes(b);
        if m == Mnemonic::Call {
            let sp = raw.rsp.wrapping_sub(8);
            if self.mem.write(RemoteAddr(sp), &instr.next_ip().to_le_bytes()).is_err() {
                return Ok(false);
            }
            raw.rsp = sp;
        }
        raw.rip = target;
        sys::set_changed(tid, &orig, &raw)?;
        self.resume(tid, 0)?;
        Ok(true)
    }

    /// Guarded pages an instruction needs open: its ranges plus the fault page.
    fn pages_for(&self, fault_addr: u64) -> Vec<(u64, u64, u32)> {
        let page = self.page;
        let mut want: Vec<(u64, u64)> = self
            .ranges
            .iter()
            .filter(|r| r.size > 0)
            .map(|r| (page_down(r.addr, page), page_down(r.addr.saturating_add(r.size - 1), page) + page))
            .collect();
        want.push((page_down(fault_addr, page), page_down(fault_addr, page) + page));
        let mut out: Vec<(u64, u64, u32)> = Vec::new();
        for (s, e) in want {
            for g in &self.guards {
                let (a, b) = (s.max(g.start), e.min(g.end));
                if a < b && !out.iter().any(|&(x, l, _)| x <= a && b <= x + l) {
                    out.push((a, b - a, g.prot));
                }
            }
        }
        out
    }

    /// Unprotect → single-step → re-protect. Widens when the step faults on
    /// another guarded page (a range the decoder did not predict).
    fn step_fallback(&mut self, tid: Pid, raw: RawRegs, fault_addr: u64) -> Result<(), Error> {
        self.sink.counters.singlestepped += 1;
        let mut open = self.pages_for(fault_addr);
        self.run_batch(tid, &raw, &open)?;
        self.sink.counters.fault_stops += 1;
        let mut cur = raw;
        let mut deferred = Vec::new();
        let after = loop {
            sys::setregs(tid, &cur)?;
            sys::singlestep(tid, 0)?;
            self.sink.counters.fault_stops += 1;
            match self.wait_thread(tid)? {
                Stop::Signal { signal: libc::SIGTRAP, .. } => break sys::getregs(tid)?,
                Stop::Signal { signal: libc::SIGSEGV, .. } => {
                    let si = sys::getsiginfo(tid)?;
                    cur = sys::getregs(tid)?;
                    let Some(g) = self.guard_of(si.addr).copied() else {
                        // Not ours after all: the program's fault. Re-protect and deliver.
                        let close: Vec<(u64, u64, u32)> = open.iter().map(|&(a, l, _)| (a, l, 0)).collect();
                        self.run_batch(tid, &cur, &close)?;
                        sys::setregs(tid, &cur)?;
                        return self.program_signal(tid, libc::SIGSEGV);
                    };
                    if open.len() > 4096 {
                        return Err(Error::Protocol(format!("instruction at {:#x} keeps faulting", cur.rip)));
                    }
                    let p = page_down(si.addr, self.page);
                    let more = vec![(p, self.page, g.prot)];
                    self.sink.counters.widened += 1;
                    self.run_batch(tid, &cur, &more)?;
                    self.sink.counters.fault_stops += 1;
                    open.extend(more);
                }
                Stop::Signal { signal, .. } => {
                    // Arrived between the stops; delivered after we are done.
                    deferred.push(signal);
                    cur = sys::getregs(tid)?;
                }
                Stop::Exited { .. } | Stop::Killed { .. } => return Err(Error::TraceeDied { pid: tid }),
                _ => cur = sys::getregs(tid)?,
            }
        };
        let close: Vec<(u64, u64, u32)> = open.iter().map(|&(a, l, _)| (a, l, 0)).collect();
        self.run_batch(tid, &after, &close)?;
        self.sink.counters.fault_stops += 1;
        sys::setregs(tid, &after)?;
        for s in deferred {
            let _ = sys::tgkill(self.pid, tid, s);
        }
        self.resume(tid, 0)
    }
}

/// Trampoline slots already written into the injected code area.
#[derive(Debug, Default, Clone)]
pub struct Trampolines {
    /// (ip, ranges to open) → slot address and the instruction bytes it
    /// relocated (code rewritten at the same ip gets a new slot).
    slots: std::collections::HashMap<(u64, usize), (u64, [u8; 15])>,
    /// Slot extents, for mapping a fault inside one back to its instruction:
    /// (start, end, original ip).
    extents: Vec<(u64, u64, u64)>,
    /// Next free byte in the code area.
    next: u64,
    /// The ranges the last trampoline run opened.
    open: Vec<(u64, u64, u32)>,
    /// Code area exhausted or out of reach: stop trying.
    full: bool,
    /// Vector-load slots: ip → slot start and end, the instruction bytes.
    vload: std::collections::HashMap<u64, (u64, u64, [u8; 15])>,
    /// The vector load a thread was sent to run in its slot, until its next stop.
    pub vload_pending: Option<VloadPending>,
}

/// A vector load sent through its slot (see `Tracer::vload_slot`): what is
/// needed to complete it without the slot when the thread stops inside.
#[derive(Debug, Clone, Copy)]
pub struct VloadPending {
    pub tid: Pid,
    slot: u64,
    end: u64,
    next_ip: u64,
    emu: Emulation,
    data: [u8; DATA_MAX as usize],
}

/// Most ranges a slot opens; more go through the single-step fallback.
const TRAMP_MAX_RANGES: usize = 32;
/// Data-area offsets: the per-fault range table and two register save areas.
const TRAMP_TAB: u64 = 0x8000;
const TRAMP_SAVE: u64 = 0x9000;
const TRAMP_SAVE2: u64 = 0x9080;
/// Data-area offset of the vector-load scratch (64-byte aligned; the batch
/// table ends at 0x8000, the go stub's results at 0xbf00).
const VLOAD_SCRATCH: u64 = 0xc000;
/// Registers the slot's syscalls clobber: rax, rcx, rdx, rsi, rdi, r10, r11.
const CLOBBERED: [u8; 7] = [0, 1, 2, 6, 7, 10, 11];

/// A tiny x86-64 emitter for the slot's fixed instruction forms.
struct Asm {
    base: u64,
    buf: Vec<u8>,
}

impl Asm {
    fn pc(&self) -> u64 {
        self.base + self.buf.len() as u64
    }
    /// `mov [rip+disp32], r64` (store) or `mov r64, [rip+disp32]` (load).
    fn mov_rip(&mut self, store: bool, reg: u8, target: u64) -> Option<()> {
        let next = self.pc() + 7;
        let disp = i32::try_from(target as i64 - next as i64).ok()?;
        self.buf.push(0x48 | if reg >= 8 { 0x04 } else { 0 });
        self.buf.push(if store { 0x89 } else { 0x8b });
        self.buf.push(0x05 | ((reg & 7) << 3));
        self.buf.extend_from_slice(&disp.to_le_bytes());
        Some(())
    }
    fn mov_eax(&mut self, v: u32) {
        self.buf.push(0xb8);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn mov_edx(&mut self, v: u32) {
        self.buf.push(0xba);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn mov_r10_minus1(&mut self) {
        self.buf.extend_from_slice(&[0x49, 0xc7, 0xc2, 0xff, 0xff, 0xff, 0xff]);
    }
    fn syscall(&mut self) {
        self.buf.extend_from_slice(&[0x0f, 0x05]);
    }
    /// `jmp [rip+0]; dq target`.
    fn jmp_abs(&mut self, target: u64) {
        self.buf.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]);
        self.buf.extend_from_slice(&target.to_le_bytes());
    }
    /// Protection calls over table entries 0..k; `open` uses each entry's
    /// prot, otherwise PROT_NONE. No flag-modifying instruction: `syscall`
    /// itself preserves rflags (via r11, which we saved).
    fn protect(&mut self, nr: u32, tab: u64, k: usize, open: bool) -> Option<()> {
        for i in 0..k as u64 {
            let e = tab + i * 24;
            self.mov_eax(nr);
            self.mov_rip(false, 7, e)?;
            self.mov_rip(false, 6, e + 8)?;
            if open {
                self.mov_rip(false, 2, e + 16)?;
            } else {
                self.mov_edx(0);
            }
            self.mov_r10_minus1();
            self.syscall();
        }
        Some(())
    }
    fn save(&mut self, area: u64) -> Option<()> {
        for (i, &r) in CLOBBERED.iter().enumerate() {
            self.mov_rip(true, r, area + 8 * i as u64)?;
        }
        Some(())
    }
    fn restore(&mut self, area: u64) -> Option<()> {
        for (i, &r) in CLOBBERED.iter().enumerate() {
            self.mov_rip(false, r, area + 8 * i as u64)?;
        }
        Some(())
    }
}

/// Slot code: save, open k ranges, restore, the relocated instruction,
/// save, close, restore, jump back. Returns the bytes and the offset of the
/// relocated instruction.
fn build_slot(slot: u64, data: u64, nr: u32, k: usize, instr: &iced_x86::Instruction) -> Option<Vec<u8>> {
    let mut a = Asm { base: slot, buf: Vec::with_capacity(256) };
    a.save(data + TRAMP_SAVE)?;
    a.protect(nr, data + TRAMP_TAB, k, true)?;
    a.restore(data + TRAMP_SAVE)?;
    let block = iced_x86::InstructionBlock::new(std::slice::from_ref(instr), a.pc());
    let enc = iced_x86::BlockEncoder::encode(64, block, iced_x86::BlockEncoderOptions::NONE).ok()?;
    a.buf.extend_from_slice(&enc.code_buffer);
    a.save(data + TRAMP_SAVE2)?;
    a.protect(nr, data + TRAMP_TAB, k, false)?;
    a.restore(data + TRAMP_SAVE2)?;
    a.jmp_abs(instr.next_ip());
    Some(a.buf)
}

/// Vector-load slot code: the instruction with its memory operand replaced
/// by `[rip → scratch]`, then a jump to `next_ip`. Nothing else runs: the
/// CPU performs the load (zeroing, merging, alignment checks) exactly as it
/// would have.
fn build_vload_slot(slot: u64, scratch: u64, instr: &iced_x86::Instruction) -> Option<Vec<u8>> {
    use iced_x86::Register;
    let mut i = *instr;
    i.set_memory_base(Register::RIP);
    i.set_memory_index(Register::None);
    i.set_memory_index_scale(1);
    i.set_memory_displacement64(scratch);
    i.set_memory_displ_size(8);
    i.set_segment_prefix(Register::None);
    let mut a = Asm { base: slot, buf: Vec::with_capacity(32) };
    let block = iced_x86::InstructionBlock::new(std::slice::from_ref(&i), a.pc());
    let enc = iced_x86::BlockEncoder::encode(64, block, iced_x86::BlockEncoderOptions::NONE).ok()?;
    a.buf.extend_from_slice(&enc.code_buffer);
    a.jmp_abs(instr.next_ip());
    Some(a.buf)
}

impl Tracer {
    /// A vector load (`movdqu`/`vmovdqu`/`movss`/... xmm, ymm or zmm ←
    /// memory) runs in the tracee: the bytes read through `/proc/PID/mem`
    /// go to a scratch area of our data page, and the thread continues at a
    /// slot holding the same instruction reading the scratch, then jumping
    /// back. One pwrite instead of fetching and setting the FP/XSAVE
    /// register sets (on AVX-512 machines a full XSAVE area both ways).
    /// False when there is no slot (the caller emulates through the
    /// register sets). `FFIREC_NO_VLOAD_SLOT=1` disables it.
    #[allow(clippy::too_many_arguments)]
    fn vload_slot(
        &mut self,
        tid: Pid,
        mut raw: RawRegs,
        regs: &Regs,
        emu: &Emulation,
        instr: &iced_x86::Instruction,
        code: &[u8],
        pre: Option<(u64, &[u8])>,
    ) -> Result<bool, Error> {
        let Some(inj) = self.inject else { return Ok(false) };
        if self.tramp.full || no_vload_slot() || instr.next_ip() == 0 {
            return Ok(false);
        }
        let (addr, size) = (emu.address(regs), emu.size());
        let mut data = [0u8; DATA_MAX as usize];
        let Some(buf) = data.get_mut(..size) else { return Ok(false) };
        if !self.load_into(addr, pre, buf) {
            return Ok(false);
        }
        let mut bytes = [0u8; 15];
        let Some(b) = bytes.get_mut(..code.len()) else { return Ok(false) };
        b.copy_from_slice(code);
        let (slot, end) = match self.tramp.vload.get(&raw.rip) {
            Some(&(s, e, b)) if b == bytes => (s, e),
            _ => {
                if self.tramp.next == 0 {
                    self.tramp.next = inj.code + crate::guard::SLOTS_OFF;
                }
                let at = self.tramp.next;
                let Some(slot_code) = build_vload_slot(at, inj.data + VLOAD_SCRATCH, instr) else {
                    return Ok(false);
                };
                if at + slot_code.len() as u64 > inj.code + crate::guard::CODE_LEN {
                    self.tramp.full = true;
                    return Ok(false);
                }
                self.mem.write(RemoteAddr(at), &slot_code)?;
                self.tramp.next = (at + slot_code.len() as u64 + 15) & !15;
                let end = at + slot_code.len() as u64;
                self.tramp.vload.insert(raw.rip, (at, end, bytes));
                (at, end)
            }
        };
        self.mem.write(RemoteAddr(inj.data + VLOAD_SCRATCH), &data[..size])?;
        let orig = raw;
        raw.rip = slot;
        sys::set_changed(tid, &orig, &raw)?;
        self.resume(tid, 0)?;
        self.sink.counters.vload_slots += 1;
        self.tramp.vload_pending = Some(VloadPending { tid, slot, end, next_ip: instr.next_ip(), emu: *emu, data });
        Ok(true)
    }

    /// A stop of a thread sent through a vector-load slot. At its next fault
    /// or syscall it has left the slot (nothing there faults or traps). At
    /// any other stop (a signal arrived, an interrupt) it may still be
    /// inside: then the load is completed here — through the register sets
    /// if it has not run yet — and the thread moved to the next instruction,
    /// so a handler never runs with `rip` in the slot or returns into it
    /// after the scratch was reused. `raw`: the thread's registers, updated.
    pub(crate) fn vload_rewind(&mut self, tid: Pid, raw: &mut RawRegs) -> Result<(), Error> {
        let Some(p) = self.tramp.vload_pending.take_if(|p| p.tid == tid) else { return Ok(()) };
        if raw.rip < p.slot || raw.rip >= p.end {
            return Ok(());
        }
        self.sink.counters.vload_rewound += 1;
        if raw.rip == p.slot {
            // Not run yet: perform it through the register sets instead.
            let regs = sys::to_regs(raw);
            let pre = Some((p.emu.address(&regs), &p.data[..p.emu.size()]));
            if !self.vload_regsets(tid, &p.emu, pre, &regs)? {
                return Err(Error::Protocol(format!("cannot complete the vector load at {:#x}", p.next_ip)));
            }
        }
        raw.rip = p.next_ip;
        sys::setregs(tid, raw)
    }

    /// Any stop but a fault: a thread may still be inside its vector-load slot.
    pub(crate) fn vload_at_stop(&mut self, stop: &Stop) -> Result<(), Error> {
        let tid = stop.tid();
        match *stop {
            Stop::Signal { signal: libc::SIGSEGV, .. } => Ok(()), // checked in `on_signal`
            Stop::Signal { .. } | Stop::Interrupt { .. } | Stop::Group { .. } => {
                if self.tramp.vload_pending.is_some_and(|p| p.tid == tid) {
                    let mut raw = sys::getregs(tid)?;
                    self.vload_rewind(tid, &mut raw)?;
                }
                Ok(())
            }
            _ => {
                self.tramp.vload_pending.take_if(|p| p.tid == tid);
                Ok(())
            }
        }
    }

    /// Sends the thread through a trampoline slot: one pwrite of the range
    /// table, one SETREGS, no further stop. False when the instruction
    /// cannot be hosted (branches, too many ranges, out of reach).
    fn trampoline(
        &mut self,
        tid: Pid,
        mut raw: RawRegs,
        fault_addr: u64,
        instr: &iced_x86::Instruction,
        code: &[u8],
    ) -> Result<bool, Error> {
        let Some(inj) = self.inject else { return Ok(false) };
        let mut bytes = [0u8; 15];
        let Some(b) = bytes.get_mut(..code.len()) else { return Ok(false) };
        b.copy_from_slice(code);
        if self.tramp.full || instr.flow_control() != iced_x86::FlowControl::Next {
            return Ok(false);
        }
        let open = self.pages_for(fault_addr);
        let k = open.len();
        if k == 0 || k > TRAMP_MAX_RANGES {
            return Ok(false);
        }
        let slot = match self.tramp.slots.get(&(raw.rip, k)) {
            Some(&(s, b)) if b == bytes => s,
            _ => {
                if self.tramp.next == 0 {
                    self.tramp.next = inj.code + crate::guard::SLOTS_OFF;
                }
                let at = self.tramp.next;
                let Some(code) = build_slot(at, inj.data, self.protect_nr, k, instr) else {
                    return Ok(false);
                };
                if at + code.len() as u64 > inj.code + crate::guard::CODE_LEN {
                    self.tramp.full = true;
                    return Ok(false);
                }
                self.mem.write(RemoteAddr(at), &code)?;
                self.tramp.next = (at + code.len() as u64 + 15) & !15;
                self.tramp.slots.insert((raw.rip, k), (at, bytes));
                self.tramp.extents.push((at, at + code.len() as u64, raw.rip));
                at
            }
        };
        let mut table = [0u8; TRAMP_MAX_RANGES * 24];
        for (i, &(addr, len, prot)) in open.iter().enumerate() {
            table[i * 24..i * 24 + 8].copy_from_slice(&addr.to_le_bytes());
            table[i * 24 + 8..i * 24 + 16].copy_from_slice(&len.to_le_bytes());
            table[i * 24 + 16..i * 24 + 24].copy_from_slice(&u64::from(prot).to_le_bytes());
        }
        self.mem.write(RemoteAddr(inj.data + TRAMP_TAB), &table[..k * 24])?;
        self.tramp.open = open;
        raw.rip = slot;
        sys::setregs(tid, &raw)?;
        // PTRACE_CONT, not PTRACE_SYSCALL: the slot's own protection calls
        // must not stop. (Foreign syscalls until the next stop are not
        // intercepted: see `syscalls`.)
        sys::cont(tid, 0)?;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.running = true;
        }
        Ok(true)
    }

    /// The original instruction address when `rip` lies in a slot.
    pub fn slot_origin(&self, rip: u64) -> Option<u64> {
        self.tramp.extents.iter().find(|&&(s, e, _)| rip >= s && rip < e).map(|&(_, _, ip)| ip)
    }

    /// A fault inside a trampoline slot: the decoder missed a range (or the
    /// fault is the program's own). Close what the slot opened, put the
    /// thread back on the original instruction and take the fallback.
    pub fn on_slot_fault(&mut self, tid: Pid, mut raw: RawRegs, orig_ip: u64, signal: i32) -> Result<(), Error> {
        let si = sys::getsiginfo(tid)?;
        let close: Vec<(u64, u64, u32)> = self.tramp.open.iter().map(|&(a, l, _)| (a, l, 0)).collect();
        self.run_batch(tid, &raw, &close)?;
        // Registers were restored before the relocated instruction ran, so
        // only rip differs from the state at the original instruction.
        raw.rip = orig_ip;
        sys::setregs(tid, &raw)?;
        if signal == libc::SIGSEGV && self.guard_of(si.addr).is_some() {
            self.sink.counters.widened += 1;
            self.sink.counters.fault_stops += 1;
            self.ranges.clear();
            return self.step_fallback(tid, raw, si.addr);
        }
        self.program_signal(tid, signal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind};

    fn decode_all(code: &[u8], ip: u64) -> Vec<iced_x86::Instruction> {
        let mut d = Decoder::with_ip(64, code, ip, DecoderOptions::NONE);
        let mut out = Vec::new();
        while d.can_decode() {
            let i = d.decode();
            let jmp_abs = i.mnemonic() == Mnemonic::Jmp && i.op0_kind() == OpKind::Memory;
            out.push(i);
            if jmp_abs {
                break; // followed by the 8-byte target, not code
            }
        }
        out
    }

    #[test]
    fn slot_relocates_rip_relative_and_touches_no_flags() {
        // add qword ptr [rip+0x100], 1 at `ip`: 48 83 05 00 01 00 00 01
        let ip = 0x7f00_0000_1000u64;
        let code = [0x48, 0x83, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01];
        let instr = Decoder::with_ip(64, &code, ip, DecoderOptions::NONE).decode();
        let target = instr.memory_displacement64();
        let (slot, data) = (0x7f00_1000_0000u64, 0x7f00_1004_0000u64);
        let k = 2;
        let bytes = build_slot(slot, data, 329, k, &instr).expect("slot");
        let ins = decode_all(&bytes, slot);
        let syscalls = ins.iter().filter(|i| i.mnemonic() == Mnemonic::Syscall).count();
        assert_eq!(syscalls, 2 * k);
        // Exactly one instruction writes flags: the relocated `add`. (`syscall`
        // masks rflags in the kernel, and sysret restores them from r11.)
        let flag_writers: Vec<_> =
            ins.iter().filter(|i| i.mnemonic() != Mnemonic::Syscall && i.rflags_modified() != 0).collect();
        assert_eq!(flag_writers.len(), 1);
        let add = flag_writers[0];
        assert_eq!(add.mnemonic(), Mnemonic::Add);
        assert!(add.is_ip_rel_memory_operand());
        assert_eq!(add.ip_rel_memory_address(), target, "RIP-relative operand must still reach the original data");
        // Nothing but the relocated instruction touches memory outside our data area.
        for i in &ins {
            if i.op_count() > 0
                && (0..i.op_count()).any(|n| i.op_kind(n) == OpKind::Memory)
                && i.mnemonic() != Mnemonic::Jmp
            {
                let a = i.ip_rel_memory_address();
                assert!(*i == *add || (a >= data && a < data + 0x10000), "{i:?} touches {a:#x}");
            }
        }
        // Ends with jmp [rip+0] and the address of the next original instruction.
        let last = ins.last().expect("instructions");
        assert_eq!(last.mnemonic(), Mnemonic::Jmp);
        let tail = &bytes[bytes.len() - 8..];
        assert_eq!(u64::from_le_bytes(tail.try_into().unwrap()), ip + code.len() as u64);
        // The registers the syscalls clobber are saved before and restored after.
        let stores = ins.iter().filter(|i| i.mnemonic() == Mnemonic::Mov && i.op0_kind() == OpKind::Memory).count();
        let loads_of_saves = ins
            .iter()
            .filter(|i| {
                i.mnemonic() == Mnemonic::Mov
                    && i.op1_kind() == OpKind::Memory
                    && i.ip_rel_memory_address() >= data + TRAMP_SAVE
            })
            .count();
        assert_eq!(stores, 2 * CLOBBERED.len());
        assert_eq!(loads_of_saves, 2 * CLOBBERED.len());
    }

    #[test]
    fn slot_refuses_out_of_reach_rip_relative() {
        // More than 2 GiB away and not expressible as a 32-bit absolute address.
        let ip = 0x5555_0000_1000u64;
        let code = [0x48, 0x83, 0x05, 0x00, 0x01, 0x00, 0x00, 0x01];
        let instr = Decoder::with_ip(64, &code, ip, DecoderOptions::NONE).decode();
        assert!(build_slot(0x7f00_1000_0000, 0x7f00_1004_0000, 329, 1, &instr).is_none());
    }

    #[test]
    fn vload_slot_reads_the_scratch_then_jumps_back() {
        let ip = 0x7f00_0000_1000u64;
        let (slot, scratch) = (0x7f00_1000_8000u64, 0x7f00_1004_c000u64);
        // vmovdqu ymm3, [rsi+rax*8+0x10]; movdqu xmm9, fs:[rdi]; vmovdqu64 zmm17, [rdx]; movss xmm2, [rcx]
        let cases: [&[u8]; 4] = [
            &[0xc5, 0xfe, 0x6f, 0x5c, 0xc6, 0x10],
            &[0x64, 0xf3, 0x44, 0x0f, 0x6f, 0x0f],
            &[0x62, 0xe1, 0xfe, 0x48, 0x6f, 0x0a],
            &[0xf3, 0x0f, 0x10, 0x11],
        ];
        for code in cases {
            let instr = Decoder::with_ip(64, code, ip, DecoderOptions::NONE).decode();
            assert!(!instr.is_invalid(), "{code:x?}");
            let bytes = build_vload_slot(slot, scratch, &instr).expect("slot");
            let ins = decode_all(&bytes, slot);
            assert_eq!(ins.len(), 2, "{code:x?}: the load and the jump back");
            let load = ins[0];
            assert_eq!(load.code(), instr.code(), "{code:x?}: same instruction form");
            assert_eq!(load.op0_register(), instr.op0_register());
            assert!(load.is_ip_rel_memory_operand());
            assert_eq!(load.ip_rel_memory_address(), scratch);
            assert_eq!(load.segment_prefix(), iced_x86::Register::None);
            assert_eq!(load.memory_size(), instr.memory_size());
            assert_eq!(ins[1].mnemonic(), Mnemonic::Jmp);
            let tail = &bytes[bytes.len() - 8..];
            assert_eq!(u64::from_le_bytes(tail.try_into().unwrap()), ip + code.len() as u64);
        }
    }

    #[test]
    fn xsave_views_and_zero_upper() {
        let l = XsaveLayout { avx: 576, opmask: 1088, zmm_hi256: 1152, hi16_zmm: 1664 };
        let mut x = vec![0xaau8; 2688];
        x[512..520].copy_from_slice(&0u64.to_le_bytes()); // every component in init state
        assert_eq!(l.get(&x, VecRegKind::Ymm, 3), vec![0u8; 32], "init state reads as zero");
        // A prefix of the area holds a register and the header (XSTATE_BV at 512).
        assert_eq!(l.extent(VecRegKind::Xmm, 15), 520);
        assert_eq!(l.extent(VecRegKind::Ymm, 3), 576 + 16 * 3 + 16);
        assert_eq!(l.extent(VecRegKind::Zmm, 1), 1152 + 32 * 2);
        assert_eq!(l.extent(VecRegKind::Ymm, 17), 1664 + 64 + 32);
        let mut y = x.clone();
        assert!(l.set(&mut y, VecRegKind::Ymm, 3, &[6u8; 32], true));
        assert_eq!(l.get(&y[..l.extent(VecRegKind::Ymm, 3)], VecRegKind::Ymm, 3), vec![6u8; 32]);
        let v: Vec<u8> = (0..64).collect();
        assert!(l.set(&mut x, VecRegKind::Zmm, 3, &v, true));
        assert_eq!(l.get(&x, VecRegKind::Zmm, 3), v);
        assert_eq!(l.get(&x, VecRegKind::Xmm, 3), v[..16].to_vec());
        // VEX 16-byte load into xmm3: the upper bytes of ymm3/zmm3 become zero.
        assert!(l.set(&mut x, VecRegKind::Xmm, 3, &[7u8; 16], true));
        let z = l.get(&x, VecRegKind::Zmm, 3);
        assert_eq!(&z[..16], &[7u8; 16]);
        assert!(z[16..].iter().all(|&b| b == 0));
        // Legacy SSE load (movdqu): upper bytes keep their values.
        assert!(l.set(&mut x, VecRegKind::Zmm, 4, &v, true));
        assert!(l.set(&mut x, VecRegKind::Xmm, 4, &[9u8; 16], false));
        let z = l.get(&x, VecRegKind::Zmm, 4);
        assert_eq!(&z[..16], &[9u8; 16]);
        assert_eq!(&z[16..], &v[16..]);
        // movq load (8 bytes): bytes 8..16 zeroed, upper kept (legacy).
        assert!(l.set(&mut x, VecRegKind::Xmm, 4, &[1u8; 8], false));
        let z = l.get(&x, VecRegKind::Zmm, 4);
        assert_eq!(&z[..8], &[1u8; 8]);
        assert_eq!(&z[8..16], &[0u8; 8]);
        assert_eq!(&z[16..], &v[16..]);
        // zmm16+ live in the Hi16_ZMM component.
        assert!(l.set(&mut x, VecRegKind::Ymm, 17, &[5u8; 32], true));
        let z = l.get(&x, VecRegKind::Zmm, 17);
        assert_eq!(&z[..32], &[5u8; 32]);
        assert!(z[32..].iter().all(|&b| b == 0));
        // Opmask registers.
        assert!(l.set(&mut x, VecRegKind::K, 2, &0x1234u64.to_le_bytes(), false));
        assert_eq!(l.get(&x, VecRegKind::K, 2), 0x1234u64.to_le_bytes().to_vec());
    }
}
