//! The fault path: a foreign-mode thread touched a guarded page.
//!
//! One stop per fault where possible: decode (cached by address), compute
//! every range, record the Access, then either perform the access ourselves
//! through `/proc/PID/mem` (simple moves: no unprotected window, no second
//! stop), or fall back to unprotect → single-step → re-protect, which
//! always works.

use ffirec_decode::{Emulation, MemAccess, Rw};
use ffirec_format::{Event, Regs, VecReg, VecRegKind};

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
    /// make up register `index` of `kind`, low bytes first.
    fn pieces(&self, kind: VecRegKind, index: usize) -> Vec<(usize, usize, u32)> {
        let i = index;
        match kind {
            VecRegKind::K => vec![(self.opmask + 8 * i, 8, 5)],
            _ if i >= 16 => {
                let len = match kind {
                    VecRegKind::Xmm => 16,
                    VecRegKind::Ymm => 32,
                    _ => 64,
                };
                vec![(self.hi16_zmm + 64 * (i - 16), len, 7)]
            }
            VecRegKind::Xmm => vec![(160 + 16 * i, 16, 1)],
            VecRegKind::Ymm => vec![(160 + 16 * i, 16, 1), (self.avx + 16 * i, 16, 2)],
            VecRegKind::Zmm => vec![(160 + 16 * i, 16, 1), (self.avx + 16 * i, 16, 2), (self.zmm_hi256 + 32 * i, 32, 6)],
        }
    }

    /// Register contents (components in their init state read as zero).
    pub fn get(&self, xsave: &[u8], kind: VecRegKind, index: usize) -> Vec<u8> {
        let bv = xsave.get(512..520).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0);
        let mut out = Vec::with_capacity(64);
        for (off, len, bit) in self.pieces(kind, index) {
            match xsave.get(off..off + len) {
                Some(b) if bv & (1 << bit) != 0 => out.extend_from_slice(b),
                _ => out.extend(std::iter::repeat_n(0u8, len)),
            }
        }
        out
    }

    /// Writes `bytes` (low bytes first) into register `index` of `kind`,
    /// zeroing the rest of that register view; with `zero_upper` also every
    /// wider view above it (VEX/EVEX semantics).
    fn set(&self, xsave: &mut [u8], kind: VecRegKind, index: usize, bytes: &[u8], zero_upper: bool) -> bool {
        let mut bv = xsave.get(512..520).map(|b| u64::from_le_bytes(b.try_into().unwrap_or([0; 8]))).unwrap_or(0);
        let widest = if zero_upper { VecRegKind::Zmm } else { kind };
        let mut pos = 0;
        for (off, len, bit) in self.pieces(widest, index) {
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

fn page_down(x: u64, page: u64) -> u64 {
    x & !(page - 1)
}

impl Tracer {
    /// SIGSEGV from a foreign-mode thread on a guarded page.
    pub fn on_fault(&mut self, tid: Pid, raw: RawRegs, fault_addr: u64) -> Result<(), Error> {
        self.sink.counters.faults += 1;
        self.sink.counters.fault_stops += 1;
        let mut code = [0u8; 16];
        let n = self.mem.read_partial(RemoteAddr(raw.rip), &mut code);
        let regs = sys::to_regs(&raw);
        self.ranges.clear();
        let mut vregs: Vec<VecReg> = Vec::new();
        let mut emulation: Option<Emulation> = None;
        let mut next_ip = 0;
        let mut len = n.min(15);
        match self.decode.get_or_decode(raw.rip, &code[..n]) {
            Ok(d) => {
                len = d.len();
                next_ip = d.next_ip();
                emulation = d.emulation().copied();
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
            Err(_) => {}
        }
        let data = self.read_data(&self.ranges);
        self.sink.push(Event::Access {
            tid: tid as u32,
            code: code[..len].to_vec(),
            regs,
            fault_addr,
            data,
            vregs,
        })?;
        if let Some(emu) = emulation {
            if self.emulate(tid, raw, regs, &emu, next_ip)? {
                self.sink.counters.emulated += 1;
                return Ok(());
            }
        }
        self.step_fallback(tid, raw, fault_addr)
    }

    /// The bytes the instruction is about to read, when they are few.
    fn read_data(&self, ranges: &[MemAccess]) -> Vec<u8> {
        let total: u64 = ranges.iter().filter(|r| r.rw != Rw::Write).map(|r| r.size).sum();
        if total == 0 || total > DATA_MAX {
            return Vec::new();
        }
        let mut out = vec![0u8; total as usize];
        let mut pos = 0;
        for r in ranges.iter().filter(|r| r.rw != Rw::Write) {
            let end = pos + r.size as usize;
            let got = self.mem.read_partial(RemoteAddr(r.addr), &mut out[pos..end]);
            if got < r.size as usize {
                return Vec::new();
            }
            pos = end;
        }
        out
    }

    /// Performs a simple move through `/proc/PID/mem` and skips the
    /// instruction: one SETREGS, no window. Returns false to fall back.
    fn emulate(&mut self, tid: Pid, mut raw: RawRegs, mut regs: Regs, emu: &Emulation, next_ip: u64) -> Result<bool, Error> {
        let addr = emu.address(&regs);
        let size = emu.size();
        let mut buf = [0u8; 64];
        if size > buf.len() || next_ip == 0 {
            return Ok(false);
        }
        match *emu {
            Emulation::Load { .. } => {
                if self.mem.read_partial(RemoteAddr(addr), &mut buf[..size]) != size {
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
            Emulation::VecLoad { reg, kind, zero_upper, .. } => {
                if self.mem.read_partial(RemoteAddr(addr), &mut buf[..size]) != size {
                    return Ok(false);
                }
                let got = sys::get_xstate(tid, &mut self.xsave)?;
                let layout = self.xsave_layout;
                if !layout.set(&mut self.xsave[..got], kind, usize::from(reg), &buf[..size], zero_upper) {
                    return Ok(false);
                }
                sys::set_xstate(tid, &self.xsave[..got])?;
            }
            Emulation::VecStore { reg, kind, .. } => {
                let got = sys::get_xstate(tid, &mut self.xsave)?;
                let bytes = self.xsave_layout.get(&self.xsave[..got], kind, usize::from(reg));
                let Some(b) = bytes.get(..size) else { return Ok(false) };
                if self.mem.write(RemoteAddr(addr), b).is_err() {
                    return Ok(false);
                }
            }
        }
        raw.rip = next_ip;
        sys::setregs(tid, &raw)?;
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
