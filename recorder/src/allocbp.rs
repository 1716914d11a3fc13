//! Allocation tracking by breakpoints, for processes the `LD_PRELOAD` shim
//! cannot reach: statically linked programs (no dynamic loader, so no
//! preload). Every loaded object of such a process that defines the C
//! allocator (`malloc`, `calloc`, `realloc`, `reallocarray`, `free`,
//! `posix_memalign`, `memalign`/`aligned_alloc`, `valloc`, `pvalloc`) in its
//! symbol table gets an `int3` on each entry point: the static executable
//! itself, and a `libc.so` that a static `dlopen` brings in with a library.
//!
//! An entry stop reads the arguments and the return address and plants a
//! return-address breakpoint (shared, counted, like the foreign-call return
//! breakpoints of `domain`); the return stop reads the result and records the
//! same `Alloc`/`Free` events the shim would, with the domain of the calling
//! thread's mode. `free` is recorded at its entry, before the memory can be
//! reused. An allocator function called while the same thread is already
//! inside one (glibc's `realloc(NULL, n)` calls `malloc`) is its
//! implementation, not recorded. The entry's first instruction is emulated
//! when it is a `push` (glibc's `malloc`, `calloc`, `realloc`), otherwise
//! single-stepped: 2 stops per call, 3 for those that are stepped.
//!
//! Cost: each call is two or three ptrace stops (the bench measures it next
//! to the shim). Limit: in a multi-threaded static program, a block `realloc`
//! released can be handed to another thread before the `realloc` returns; its
//! `Alloc` is then recorded before the `realloc`'s.

use std::collections::HashMap;

use ffirec_format::{AllocFn, Domain, Event};

use crate::process::Stop;
use crate::sys::{self, Pid, RawRegs, RemoteAddr};
use crate::tracer::{Thread, Tracer};
use crate::Error;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Func {
    Alloc(AllocFn),
    Free,
}

/// Symbol names, in order of preference when several name one address
/// (glibc's `aligned_alloc` is its `memalign`).
const SYMBOLS: [(&str, Func); 10] = [
    ("malloc", Func::Alloc(AllocFn::Malloc)),
    ("calloc", Func::Alloc(AllocFn::Calloc)),
    ("realloc", Func::Alloc(AllocFn::Realloc)),
    ("reallocarray", Func::Alloc(AllocFn::Reallocarray)),
    ("free", Func::Free),
    ("posix_memalign", Func::Alloc(AllocFn::PosixMemalign)),
    ("memalign", Func::Alloc(AllocFn::Memalign)),
    ("aligned_alloc", Func::Alloc(AllocFn::AlignedAlloc)),
    ("valloc", Func::Alloc(AllocFn::Valloc)),
    ("pvalloc", Func::Alloc(AllocFn::Pvalloc)),
];

#[derive(Debug, Clone, Copy)]
struct Pending {
    func: AllocFn,
    args: [u64; 3],
    ret: u64,
    /// `rsp` at entry (pointing at the return address).
    rsp: u64,
}

/// The breakpoints of one process (per process, like `ret_bps`).
#[derive(Debug, Clone, Default)]
pub(crate) struct AllocBps {
    /// Entry address → function and the byte the `int3` replaced.
    entries: HashMap<u64, (Func, u8)>,
    /// Return-address breakpoints → (original byte, pending calls using it).
    rets: HashMap<u64, (u8, u32)>,
    /// Per thread: its allocator call in progress, if any.
    pending: HashMap<Pid, Pending>,
}

impl AllocBps {
    /// True when `addr` holds one of our `int3`s.
    pub(crate) fn owns(&self, addr: u64) -> bool {
        self.entries.contains_key(&addr) || self.rets.contains_key(&addr)
    }

    /// A forked child's copy: the same breakpoints (its memory is a copy),
    /// none of the parent threads' calls in progress.
    pub(crate) fn forked(&self) -> AllocBps {
        AllocBps { entries: self.entries.clone(), rets: self.rets.clone(), pending: HashMap::new() }
    }

    /// The byte our `int3` at `addr` replaced, if we planted one there.
    pub(crate) fn saved_byte(&self, addr: u64) -> Option<u8> {
        self.entries.get(&addr).map(|e| e.1).or_else(|| self.rets.get(&addr).map(|r| r.0))
    }
}

impl Tracer {
    /// Plants entry breakpoints on the allocator functions of module `index`
    /// (a process tracked by breakpoints only).
    pub(crate) fn plant_alloc_bps(&mut self, index: usize) -> Result<(), Error> {
        let Some(l) = self.modules.get(index) else { return Ok(()) };
        let base = l.module.base;
        let Ok(data) = std::fs::read(&l.module.path) else { return Ok(()) };
        let names: Vec<&str> = SYMBOLS.iter().map(|s| s.0).collect();
        // Sorted by name preference, so an alias gets the preferred function.
        let mut found = crate::modules::find_symbols(&data, &names);
        found.sort_unstable();
        let mut want: Vec<(u64, Func)> = Vec::new();
        for (i, addr) in found {
            let at = base.wrapping_add(addr);
            if !want.iter().any(|w| w.0 == at) {
                want.push((at, SYMBOLS[i].1));
            }
        }
        for (at, func) in want {
            let Some(bps) = self.allocbp.as_mut() else { return Ok(()) };
            if bps.entries.contains_key(&at) {
                continue;
            }
            let orig = match self.ret_bps.get(&at) {
                Some(&(b, _)) => b,
                None => {
                    let mut b = [0u8; 1];
                    self.mem.read(RemoteAddr(at), &mut b)?;
                    b[0]
                }
            };
            self.mem.write(RemoteAddr(at), &[0xcc])?;
            bps.entries.insert(at, (func, orig));
        }
        Ok(())
    }

    /// A SIGTRAP at `regs.rip`: ours if it follows one of our `int3`s.
    /// Returns false when it is not (the caller goes on).
    pub(crate) fn on_alloc_bp(&mut self, tid: Pid, regs: RawRegs) -> Result<bool, Error> {
        let Some(bps) = self.allocbp.as_ref() else { return Ok(false) };
        let at = regs.rip.wrapping_sub(1);
        if let Some(&(func, orig)) = bps.entries.get(&at) {
            self.on_alloc_entry(tid, regs, at, func, orig)?;
            return Ok(true);
        }
        if let Some(&(orig, _)) = bps.rets.get(&at) {
            let ours = bps.pending.get(&tid).is_some_and(|p| p.ret == at && regs.rsp == p.rsp.wrapping_add(8));
            if ours {
                self.on_alloc_return(tid, regs, at)?;
            } else {
                // Another pass over the same return address: step over it.
                self.step_over_bp(tid, regs, at, orig)?;
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn alloc_domain(&self, tid: Pid) -> Domain {
        if self.threads.get(&tid).is_some_and(Thread::in_foreign) {
            Domain::Foreign
        } else {
            Domain::Host
        }
    }

    fn on_alloc_entry(&mut self, tid: Pid, regs: RawRegs, at: u64, func: Func, orig: u8) -> Result<(), Error> {
        self.drain_allocs()?;
        let nested = self.allocbp.as_ref().is_some_and(|b| b.pending.contains_key(&tid));
        if !nested {
            let ret = self.mem.read_u64(RemoteAddr(regs.rsp))?;
            match func {
                Func::Free => {
                    if regs.rdi != 0 {
                        let domain = self.alloc_domain(tid);
                        self.sink.push(Event::Free { tid: tid as u32, ptr: regs.rdi, caller: ret, domain })?;
                    }
                }
                Func::Alloc(func) => {
                    let p = Pending { func, args: [regs.rdi, regs.rsi, regs.rdx], ret, rsp: regs.rsp };
                    self.plant_ret_bp(ret)?;
                    if let Some(b) = self.allocbp.as_mut() {
                        b.pending.insert(tid, p);
                    }
                }
            }
        }
        self.sink.counters.alloc_bp_stops += 1;
        self.step_over_entry(tid, regs, at, orig)
    }

    fn plant_ret_bp(&mut self, ret: u64) -> Result<(), Error> {
        let existing = self.allocbp.as_ref().is_some_and(|b| b.rets.contains_key(&ret));
        if existing {
            if let Some(e) = self.allocbp.as_mut().and_then(|b| b.rets.get_mut(&ret)) {
                e.1 += 1;
            }
            return Ok(());
        }
        // A foreign-call return breakpoint may already sit there.
        let orig = match self.ret_bps.get(&ret) {
            Some(&(b, _)) => b,
            None => {
                let mut b = [0u8; 1];
                self.mem.read(RemoteAddr(ret), &mut b)?;
                b[0]
            }
        };
        self.mem.write(RemoteAddr(ret), &[0xcc])?;
        if let Some(b) = self.allocbp.as_mut() {
            b.rets.insert(ret, (orig, 1));
        }
        Ok(())
    }

    fn on_alloc_return(&mut self, tid: Pid, mut regs: RawRegs, at: u64) -> Result<(), Error> {
        self.drain_allocs()?;
        self.sink.counters.alloc_bp_stops += 1;
        let Some(p) = self.allocbp.as_mut().and_then(|b| b.pending.remove(&tid)) else {
            return self.resume(tid, 0);
        };
        let domain = self.alloc_domain(tid);
        let rax = regs.rax;
        let alloc = |ptr: u64, size: u64, old_ptr: u64, zeroed: bool| Event::Alloc {
            tid: tid as u32,
            func: p.func,
            ptr,
            size,
            old_ptr,
            caller: p.ret,
            domain,
            zeroed,
        };
        let [a0, a1, a2] = p.args;
        let event = match p.func {
            AllocFn::Malloc | AllocFn::Valloc => (rax != 0).then(|| alloc(rax, a0, 0, false)),
            AllocFn::Pvalloc => {
                let page = self.page;
                let size = if a0 == 0 { page } else { a0.saturating_add(page - 1) & !(page - 1) };
                (rax != 0).then(|| alloc(rax, size, 0, false))
            }
            AllocFn::Calloc => a0.checked_mul(a1).filter(|_| rax != 0).map(|n| alloc(rax, n, 0, true)),
            AllocFn::Memalign | AllocFn::AlignedAlloc => (rax != 0).then(|| alloc(rax, a1, 0, false)),
            AllocFn::PosixMemalign => match rax {
                0 => Some(alloc(self.mem.read_u64(RemoteAddr(a0))?, a2, 0, false)),
                _ => None,
            },
            AllocFn::Realloc | AllocFn::Reallocarray => {
                let size = if p.func == AllocFn::Realloc { Some(a1) } else { a1.checked_mul(a2) };
                match (rax, size) {
                    (0, Some(0)) if a0 != 0 => {
                        Some(Event::Free { tid: tid as u32, ptr: a0, caller: p.ret, domain })
                        // realloc(p, 0) freed p
                    }
                    (0, _) | (_, None) => None,
                    (q, Some(n)) => Some(alloc(q, n, a0, false)),
                }
            }
            AllocFn::Mmap | AllocFn::Mremap => None,
        };
        if let Some(e) = event {
            let unknown = crate::tracer::unguarded_foreign_block(self.foreign_mode, &self.guards, &e);
            // Host-init: no shim, so no tracked page here: host bytes unknown.
            let mut hi = Vec::new();
            self.hostinit.on_alloc_event(self.pid, self.arena, &e, 0, &mut hi);
            self.sink.push(e)?;
            for u in unknown.into_iter().chain(hi) {
                self.sink.push(u)?;
            }
        }
        // Release the return breakpoint; re-execute the original instruction.
        let (orig, last) = match self.allocbp.as_mut().and_then(|b| b.rets.get_mut(&at)) {
            Some(e) => {
                e.1 = e.1.saturating_sub(1);
                (e.0, e.1 == 0)
            }
            None => return self.resume(tid, 0),
        };
        if last {
            if let Some(b) = self.allocbp.as_mut() {
                b.rets.remove(&at);
            }
            if !self.ret_bps.contains_key(&at) {
                self.mem.write(RemoteAddr(at), &[orig])?;
                regs.rip = at;
                sys::setregs(tid, &regs)?;
                return self.resume(tid, 0);
            }
        }
        self.step_over_bp(tid, regs, at, orig)
    }

    /// Continues a thread stopped on the entry `int3` at `at`, running the
    /// instruction it replaced: a `push` of a register (glibc's malloc,
    /// calloc, realloc) or a 64-bit `test` of two registers (its free) is
    /// done here, anything else single-stepped.
    fn step_over_entry(&mut self, tid: Pid, mut regs: RawRegs, at: u64, orig: u8) -> Result<(), Error> {
        let mut next = [0u8; 2];
        self.mem.read(RemoteAddr(at + 1), &mut next)?;
        if (0x48..=0x4f).contains(&orig) && next[0] == 0x85 && next[1] >> 6 == 3 {
            // test r/m64, r64 (REX.W 85 /r, register form): flags only.
            let reg = usize::from((next[1] >> 3) & 7) + if orig & 4 != 0 { 8 } else { 0 };
            let rm = usize::from(next[1] & 7) + if orig & 1 != 0 { 8 } else { 0 };
            let v = *sys::gpr_mut(&mut regs, reg) & *sys::gpr_mut(&mut regs, rm);
            const CF: u64 = 0x1;
            const PF: u64 = 0x4;
            const ZF: u64 = 0x40;
            const SF: u64 = 0x80;
            const OF: u64 = 0x800;
            let mut fl = regs.eflags & !(CF | PF | ZF | SF | OF);
            if v == 0 {
                fl |= ZF;
            }
            if v >> 63 != 0 {
                fl |= SF;
            }
            if (v as u8).count_ones().is_multiple_of(2) {
                fl |= PF;
            }
            regs.eflags = fl;
            regs.rip = at + 3;
            sys::setregs(tid, &regs)?;
            return self.resume(tid, 0);
        }
        let reg = match (orig, next[0]) {
            (0x50..=0x57, _) => Some((usize::from(orig - 0x50), 1)),
            (0x41, 0x50..=0x57) => Some((usize::from(next[0] - 0x50) + 8, 2)),
            _ => None,
        };
        if let Some((r, len)) = reg {
            let value = *sys::gpr_mut(&mut regs, r);
            regs.rsp = regs.rsp.wrapping_sub(8);
            self.mem.write(RemoteAddr(regs.rsp), &value.to_le_bytes())?;
            regs.rip = at + len;
            sys::setregs(tid, &regs)?;
            return self.resume(tid, 0);
        }
        self.step_over_bp(tid, regs, at, orig)
    }

    /// Restores the byte under our `int3` at `at`, single-steps the thread
    /// over it, and puts the `int3` back. A signal that arrives meanwhile is
    /// delivered on the resume.
    fn step_over_bp(&mut self, tid: Pid, mut regs: RawRegs, at: u64, orig: u8) -> Result<(), Error> {
        self.mem.write(RemoteAddr(at), &[orig])?;
        regs.rip = at;
        sys::setregs(tid, &regs)?;
        sys::singlestep(tid, 0)?;
        let mut sig = 0;
        loop {
            match self.wait_thread(tid)? {
                Stop::Signal { signal: libc::SIGTRAP, .. } => break,
                Stop::Signal { signal, .. } => {
                    sig = signal;
                    break;
                }
                Stop::Exited { .. } | Stop::Killed { .. } => return Err(Error::TraceeDied { pid: tid }),
                _ => sys::singlestep(tid, 0)?,
            }
        }
        if self.allocbp.as_ref().is_some_and(|b| b.owns(at)) || self.ret_bps.contains_key(&at) {
            self.mem.write(RemoteAddr(at), &[0xcc])?;
        }
        self.resume(tid, sig)
    }
}
