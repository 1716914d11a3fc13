//! Pages we inject into the tracee, the batch protection stub, and the guard
//! set (which host memory becomes `PROT_NONE` during a foreign call).
//!
//! Ownership: every protection change goes through [`Tracer::run_batch`];
//! the tracer keeps the original protection of each guarded range
//! ([`GuardRange::prot`]) and of each text mapping (`Loaded::text`) and
//! restores them on the way back to host mode.

use crate::maps::{Mapping, PROT_R, PROT_W, PROT_X};
use crate::process::Stop;
use crate::sys::{self, Pid, RawRegs, RemoteAddr};
use crate::tracer::Tracer;
use crate::Error;

/// Batch stub: `rdi` = table of {addr, len, prot, result} (32 bytes each),
/// `rsi` = count. Calls `pkey_mprotect(addr, len, prot, -1)` for each entry,
/// falling back to `mprotect` on ENOSYS, stores rax in `result`, then `int3`.
/// Followed by `syscall; int3` for one-off remote syscalls.
const STUB: [u8; 77] = [
    0x48, 0x89, 0xfb, // mov rbx, rdi
    0x48, 0x89, 0xf5, // mov rbp, rsi
    0x48, 0x85, 0xed, // 1: test rbp, rbp
    0x74, 0x3e, // jz done
    0xb8, 0x49, 0x01, 0x00, 0x00, // mov eax, 329 (pkey_mprotect)
    0x48, 0x8b, 0x3b, // mov rdi, [rbx]
    0x48, 0x8b, 0x73, 0x08, // mov rsi, [rbx+8]
    0x48, 0x8b, 0x53, 0x10, // mov rdx, [rbx+16]
    0x49, 0xc7, 0xc2, 0xff, 0xff, 0xff, 0xff, // mov r10, -1
    0x0f, 0x05, // syscall
    0x48, 0x83, 0xf8, 0xda, // cmp rax, -ENOSYS
    0x75, 0x12, // jne 2f
    0xb8, 0x0a, 0x00, 0x00, 0x00, // mov eax, 10 (mprotect)
    0x48, 0x8b, 0x3b, // mov rdi, [rbx]
    0x48, 0x8b, 0x73, 0x08, // mov rsi, [rbx+8]
    0x48, 0x8b, 0x53, 0x10, // mov rdx, [rbx+16]
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x18, // 2: mov [rbx+24], rax
    0x48, 0x83, 0xc3, 0x20, // add rbx, 32
    0x48, 0xff, 0xcd, // dec rbp
    0xeb, 0xbd, // jmp 1b
    0xcc, // done: int3
    0x0f, 0x05, // rsys: syscall
    0xcc, // int3
];
const STUB_DONE: u64 = 0x49;
const RSYS: u64 = 0x4a;
const RSYS_DONE: u64 = 0x4d;

pub const CODE_LEN: u64 = 256 << 10;
pub const DATA_LEN: u64 = 256 << 10;
/// Offset in the code area where trampoline slots begin.
pub const SLOTS_OFF: u64 = 0x1000;
/// Data-area scratch for the remote `sigaltstack` query.
const ALTSTACK_OFF: u64 = 0xa000;
/// Batch table: entries of 32 bytes at the start of the data area.
const TABLE_ENTRIES: usize = 1024;

/// Our pages in the tracee (never guarded, never unmapped by us).
#[derive(Debug, Clone, Copy)]
pub struct Injected {
    pub code: u64,
    pub data: u64,
}

impl Injected {
    pub fn contains(&self, addr: u64) -> bool {
        (addr >= self.code && addr < self.code + CODE_LEN) || (addr >= self.data && addr < self.data + DATA_LEN)
    }
}

/// Live blocks of the foreign arena, and those the host holds (returned by a
/// foreign call, passed to a callback, or reallocated by the host): their
/// pages are guarded during foreign calls, so what the library does to
/// memory it handed out stays recorded. The rest of the arena never is.
#[derive(Debug, Default, Clone)]
pub struct ArenaBlocks {
    live: std::collections::BTreeMap<u64, u64>,
    exported: std::collections::BTreeSet<u64>,
}

impl ArenaBlocks {
    /// Follows an allocation event (`arena`: the unguarded arena's range).
    pub fn on_event(&mut self, arena: (u64, u64), e: &ffirec_format::Event) {
        use ffirec_format::{Domain, Event};
        match *e {
            Event::Alloc { ptr, size, old_ptr, domain, .. } => {
                let was_exported = old_ptr != 0 && self.exported.remove(&old_ptr);
                if old_ptr != 0 {
                    self.live.remove(&old_ptr);
                }
                if ptr >= arena.0 && ptr < arena.1 && size > 0 {
                    self.live.insert(ptr, size);
                    if was_exported || domain == Domain::Host {
                        self.exported.insert(ptr);
                    }
                }
            }
            Event::Free { ptr, .. } => {
                self.live.remove(&ptr);
                self.exported.remove(&ptr);
            }
            _ => {}
        }
    }

    /// `value` reached host code (a return value or callback argument): if
    /// it is the start of a live arena block, the host now holds that block.
    pub fn export(&mut self, value: u64) {
        if self.live.contains_key(&value) {
            self.exported.insert(value);
        }
    }

    /// Page-rounded, merged ranges of the blocks the host holds.
    fn pages(&self, page: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &p in &self.exported {
            let Some(&n) = self.live.get(&p) else { continue };
            let (a, b) = (p & !(page - 1), (p.saturating_add(n) + page - 1) & !(page - 1));
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        out
    }
}

/// A host range made `PROT_NONE`, with the protection to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRange {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
}

impl Tracer {
    /// The guard covering `addr`, if it is on a guarded page.
    #[inline]
    pub fn guard_of(&self, addr: u64) -> Option<&GuardRange> {
        let i = self.guards.partition_point(|g| g.end <= addr);
        self.guards.get(i).filter(|g| g.start <= addr)
    }

    /// Lets thread `tid` run from `regs` until the `int3` at `trap_rip - 1`.
    /// Signals that arrive meanwhile are re-sent afterwards. Returns the
    /// registers at the trap; the caller restores its own.
    pub fn run_until_trap(&mut self, tid: Pid, regs: &RawRegs, trap_rip: u64) -> Result<RawRegs, Error> {
        let mut regs = *regs;
        // No syscall-restart fix-ups may apply to the injected code.
        regs.orig_rax = u64::MAX;
        sys::setregs(tid, &regs)?;
        sys::cont(tid, 0)?;
        let mut deferred = Vec::new();
        let result = loop {
            match self.wait_thread(tid)? {
                Stop::Signal { signal: libc::SIGTRAP, .. } => {
                    let r = sys::getregs(tid)?;
                    if r.rip == trap_rip {
                        break Ok(r);
                    }
                    break Err(Error::Protocol(format!(
                        "injected code trapped at {:#x}, expected {trap_rip:#x}",
                        r.rip
                    )));
                }
                Stop::Signal { signal: libc::SIGSEGV, .. } => {
                    let r = sys::getregs(tid)?;
                    break Err(Error::Protocol(format!("injected code faulted at {:#x}", r.rip)));
                }
                Stop::Signal { signal, .. } => {
                    deferred.push(signal);
                    sys::cont(tid, 0)?;
                }
                Stop::Exited { .. } | Stop::Killed { .. } => break Err(Error::TraceeDied { pid: tid }),
                _ => sys::cont(tid, 0)?,
            }
        };
        for s in deferred {
            let _ = sys::tgkill(self.pid, tid, s);
        }
        result
    }

    /// Maps our code and data pages with one-off remote `mmap`s run from the
    /// entry point (its bytes and the registers are restored afterwards).
    pub fn inject_pages(&mut self, tid: Pid, regs: &RawRegs) -> Result<(), Error> {
        let at = regs.rip;
        let mut saved = [0u8; 3];
        self.mem.read(RemoteAddr(at), &mut saved)?;
        self.mem.write(RemoteAddr(at), &STUB[RSYS as usize..RSYS_DONE as usize])?;
        let syscall = |t: &mut Tracer, nr: i64, args: [u64; 6]| -> Result<u64, Error> {
            let mut r = *regs;
            r.rax = nr as u64;
            r.rdi = args[0];
            r.rsi = args[1];
            r.rdx = args[2];
            r.r10 = args[3];
            r.r8 = args[4];
            r.r9 = args[5];
            r.rip = at;
            let out = t.run_until_trap(tid, &r, at + 3)?;
            if (out.rax as i64) < 0 && (out.rax as i64) > -4096 {
                return Err(Error::Protocol(format!("remote syscall {nr} failed: errno {}", -(out.rax as i64))));
            }
            Ok(out.rax)
        };
        // One mapping, code first, so the data area is in rip-relative reach
        // of every trampoline slot.
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let base = syscall(self, libc::SYS_mmap, [0, CODE_LEN + DATA_LEN, rw, flags, u64::MAX, 0]);
        let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let prot = match base {
            Ok(b) => syscall(self, libc::SYS_mprotect, [b, CODE_LEN, rx, 0, 0, 0]),
            Err(_) => Ok(0),
        };
        self.mem.write(RemoteAddr(at), &saved)?;
        let base = base?;
        prot?;
        let (code, data) = (base, base + CODE_LEN);
        self.mem.write(RemoteAddr(code), &STUB)?;
        self.inject = Some(Injected { code, data });
        // pkey_mprotect(…, -1) keeps a seccomp filter on mprotect out of our
        // way; older kernels lack it, and trampolines cannot branch on ENOSYS.
        let probe = self.remote_syscall(tid, regs, libc::SYS_pkey_mprotect, [data, self.page, rw, u64::MAX, 0, 0])?;
        self.protect_nr = if probe == 0 { libc::SYS_pkey_mprotect as u32 } else { libc::SYS_mprotect as u32 };
        Ok(())
    }

    /// One remote syscall through the injected `syscall; int3`.
    pub fn remote_syscall(&mut self, tid: Pid, regs: &RawRegs, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
        let inj = self.inject.ok_or_else(|| Error::Protocol("no injected pages".into()))?;
        let mut r = *regs;
        r.rax = nr as u64;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.rip = inj.code + RSYS;
        let out = self.run_until_trap(tid, &r, inj.code + RSYS_DONE)?;
        Ok(out.rax as i64)
    }

    /// Runs `pkey_mprotect` over every (addr, len, prot) in `thread`, one
    /// stop per 1024 ranges. Leaves the thread's registers clobbered: the
    /// caller sets the registers it wants before resuming.
    pub fn run_batch(&mut self, tid: Pid, regs: &RawRegs, entries: &[(u64, u64, u32)]) -> Result<(), Error> {
        let Some(inj) = self.inject else { return Ok(()) };
        for chunk in entries.chunks(TABLE_ENTRIES) {
            let mut table = Vec::with_capacity(chunk.len() * 32);
            for &(addr, len, prot) in chunk {
                table.extend_from_slice(&addr.to_le_bytes());
                table.extend_from_slice(&len.to_le_bytes());
                table.extend_from_slice(&u64::from(prot).to_le_bytes());
                table.extend_from_slice(&u64::MAX.to_le_bytes());
            }
            self.mem.write(RemoteAddr(inj.data), &table)?;
            let mut r = *regs;
            r.rip = inj.code;
            r.rdi = inj.data;
            r.rsi = chunk.len() as u64;
            self.run_until_trap(tid, &r, inj.code + STUB_DONE + 1)?;
            self.sink.counters.batches += 1;
            self.sink.counters.batch_ranges += chunk.len() as u64;
            self.mem.read(RemoteAddr(inj.data), &mut table)?;
            for (i, e) in table.chunks_exact(32).enumerate() {
                let res = i64::from_le_bytes(e[24..32].try_into().unwrap_or([0; 8]));
                // ENOMEM: the range was unmapped meanwhile; nothing to protect.
                if res != 0 && res != -(libc::ENOMEM as i64) && !self.warned_batch {
                    self.warned_batch = true;
                    let (a, l, p) = chunk[i];
                    eprintln!("ffirec: warning: mprotect({a:#x}, {l:#x}, {p}) in the tracee failed: errno {}", -res);
                }
            }
        }
        Ok(())
    }

    /// The guard set, from a fresh read of the maps: the heap, anonymous
    /// private writable mappings and writable segments (and bss tails) of
    /// host modules — minus every thread's stack and TLS, neutral and foreign
    /// data, our own pages and vvar/vdso.
    pub fn compute_guards(&mut self, owner: Pid, owner_regs: &RawRegs) -> Result<Vec<GuardRange>, Error> {
        let maps = crate::maps::read(self.pid)?;
        // The owner's alternate signal stack: a signal delivered on it
        // during the call must find it writable (it may sit in the heap, so
        // only its own pages are carved out, below).
        let alt = self.altstack_of(owner, owner_regs)?;
        let on_alt = alt.is_some_and(|(sp, n)| owner_regs.rsp >= sp && owner_regs.rsp <= sp + n);
        let mut keep: Vec<u64> = vec![owner_regs.fs_base];
        if !on_alt {
            keep.push(owner_regs.rsp);
        }
        let others: Vec<Pid> = self.threads.keys().copied().filter(|&t| t != owner).collect();
        for t in others {
            if let Ok(r) = sys::getregs(t) {
                keep.push(r.rsp);
                keep.push(r.fs_base);
            } else if let Some((sp, fs)) = self.threads.get(&t).and_then(|th| th.exit_regs) {
                // Running past its exit stop: its stack and TCB must stay writable.
                keep.push(sp);
                keep.push(fs);
            }
        }
        let mut out: Vec<GuardRange> = Vec::new();
        self.none_at_entry = maps.iter().filter(|m| m.prot == 0).map(|m| (m.start, m.end)).collect();
        for m in &maps {
            if !self.guardable(m, &keep) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == m.start && last.prot == m.prot => last.end = m.end,
                _ => out.push(GuardRange { start: m.start, end: m.end, prot: m.prot }),
            }
        }
        // Carved out page-exactly (they may share a mapping with guarded
        // memory): the owner's alternate signal stack, and the foreign arena
        // (the library's own allocations: guarding them costs a fault per
        // access of its internal state and answers nobody's question).
        let page = self.page;
        let mut carve: Vec<(u64, u64)> = Vec::with_capacity(2);
        if let Some((sp, size)) = alt {
            carve.push((sp & !(page - 1), (sp + size + page - 1) & !(page - 1)));
        }
        // Only where the shim's arena mapping is: a process whose arena
        // could not be mapped may have program memory in that range.
        let arena = self.arena.filter(|&(a, _)| maps.iter().any(|m| m.start == a && !m.is_file() && !m.shared));
        if let Some(arena) = arena {
            carve.push(arena);
        }
        // The host-init page table is the shim's, read in foreign mode too.
        carve.push((crate::hostinit::TABLE, crate::alloc::HOSTINIT_TABLE.end));
        for (a, b) in carve {
            out = carve_out(out, a, b);
        }
        // Pages write-protected for host-init tracking are read-only in the
        // maps (so skipped above) but host memory: guarded, opened read-write.
        for (a, b) in self.hostinit_guards(&maps) {
            let i = out.partition_point(|g| g.start < a);
            out.insert(i, GuardRange { start: a, end: b, prot: PROT_R | PROT_W });
        }
        if arena.is_some() {
            // Arena blocks the host holds are guarded after all (the arena is
            // one private read-write mapping).
            for (a, b) in self.arena_blocks.pages(page) {
                let i = out.partition_point(|g| g.start < a);
                out.insert(i, GuardRange { start: a, end: b, prot: PROT_R | PROT_W });
            }
        }
        Ok(out)
    }

    /// The thread's `sigaltstack` (its base address), asked once per thread
    /// with a remote `sigaltstack(NULL, &old)` and cached.
    fn altstack_of(&mut self, tid: Pid, regs: &RawRegs) -> Result<Option<(u64, u64)>, Error> {
        if let Some(t) = self.threads.get(&tid) {
            if let Some(cached) = t.altstack {
                return Ok(cached);
            }
        }
        let Some(inj) = self.inject else { return Ok(None) };
        let out = inj.data + ALTSTACK_OFF;
        let r = self.remote_syscall(tid, regs, libc::SYS_sigaltstack, [0, out, 0, 0, 0, 0])?;
        let mut ss = [0u8; 24];
        let found = if r == 0 && self.mem.read(RemoteAddr(out), &mut ss).is_ok() {
            let sp = u64::from_le_bytes(ss[0..8].try_into().unwrap_or([0; 8]));
            let flags = i32::from_le_bytes(ss[8..12].try_into().unwrap_or([0; 4]));
            let size = u64::from_le_bytes(ss[16..24].try_into().unwrap_or([0; 8]));
            (flags & libc::SS_DISABLE == 0 && sp != 0).then_some((sp, size))
        } else {
            None
        };
        // The registers the remote syscall clobbered are restored by the caller.
        sys::setregs(tid, regs)?;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.altstack = Some(found);
        }
        Ok(found)
    }

    /// A foreign-mode fault outside the guard set on a PROT_NONE anonymous
    /// mapping that did not exist as such at entry: guarded memory that
    /// moved (realloc → mremap keeps PROT_NONE). Adopt it as guarded, with
    /// read-write restored at return.
    pub fn adopt_moved(&mut self, addr: u64) -> Result<bool, Error> {
        let maps = crate::maps::read(self.pid)?;
        let Some(m) = maps.iter().find(|m| m.contains(addr)) else { return Ok(false) };
        let in_arena = self.arena.is_some_and(|(a, b)| m.start < b && a < m.end);
        if m.prot != 0 || m.shared || !m.path.is_empty() || in_arena || self.none_at_entry.contains(&(m.start, m.end)) {
            return Ok(false);
        }
        let g = GuardRange { start: m.start, end: m.end, prot: PROT_R | PROT_W };
        let i = self.guards.partition_point(|x| x.start < g.start);
        self.guards.insert(i, g);
        Ok(true)
    }

    fn guardable(&self, m: &Mapping, keep: &[u64]) -> bool {
        // Executable anonymous memory is code (libffi/ctypes closures, JIT
        // stubs): guarding it would fault on every instruction fetch there.
        if m.prot & PROT_W == 0 || m.prot & PROT_X != 0 || m.shared {
            return false;
        }
        if self.inject.is_some_and(|i| i.contains(m.start)) {
            return false;
        }
        if keep.iter().any(|&a| m.contains(a)) {
            return false;
        }
        if m.path == "[heap]" {
            return true;
        }
        if m.path.starts_with('[') {
            // [stack], [vvar], [vdso], [vsyscall], named anonymous memory we do not know.
            return false;
        }
        // A module's own writable pages, or the anonymous bss tail of one.
        for l in &self.modules {
            let owns = if m.is_file() {
                l.module.path == m.path
            } else {
                l.loads.iter().any(|s| s.prot & PROT_W != 0 && m.start < s.end && s.start < m.end)
            };
            if owns {
                return l.module.domain == ffirec_format::Domain::Host;
            }
        }
        true
    }
}

/// `guards` minus `[a, b)`.
fn carve_out(guards: Vec<GuardRange>, a: u64, b: u64) -> Vec<GuardRange> {
    let mut cut = Vec::with_capacity(guards.len() + 1);
    for g in guards {
        if g.end <= a || b <= g.start {
            cut.push(g);
            continue;
        }
        if g.start < a {
            cut.push(GuardRange { start: g.start, end: a, prot: g.prot });
        }
        if b < g.end {
            cut.push(GuardRange { start: b, end: g.end, prot: g.prot });
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use ffirec_format::{AllocFn, Domain, Event};

    #[test]
    fn arena_blocks_the_host_holds() {
        let arena = (0x6f00_0000_0000, 0x6f00_4000_0000);
        let alloc = |ptr, size, old_ptr, domain| Event::Alloc {
            tid: 1,
            func: AllocFn::Malloc,
            ptr,
            size,
            old_ptr,
            caller: 0,
            domain,
            zeroed: false,
        };
        let mut b = ArenaBlocks::default();
        b.on_event(arena, &alloc(0x6f00_0000_0010, 16, 0, Domain::Foreign));
        b.on_event(arena, &alloc(0x6f00_0000_1ff0, 0x20, 0, Domain::Foreign));
        b.on_event(arena, &alloc(0x6f00_0000_5010, 16, 0, Domain::Foreign));
        b.on_event(arena, &alloc(0x5555_0000_0010, 16, 0, Domain::Foreign));
        assert_eq!(b.pages(4096), vec![]);
        b.export(0x6f00_0000_0010);
        b.export(0x6f00_0000_1ff0);
        b.export(0x6f00_0000_0011); // not a block start
        b.export(0x5555_0000_0010); // not in the arena
        assert_eq!(b.pages(4096), vec![(0x6f00_0000_0000, 0x6f00_0000_3000)]);
        // A host realloc keeps it held; a free drops it; the host's own arena realloc exports.
        b.on_event(arena, &alloc(0x6f00_0000_8010, 64, 0x6f00_0000_0010, Domain::Host));
        b.on_event(arena, &Event::Free { tid: 1, ptr: 0x6f00_0000_1ff0, caller: 0, domain: Domain::Host });
        assert_eq!(b.pages(4096), vec![(0x6f00_0000_8000, 0x6f00_0000_9000)]);
    }

    #[test]
    fn carve_out_splits_and_drops() {
        let g = |start, end| GuardRange { start, end, prot: 3 };
        let guards = vec![g(0x1000, 0x3000), g(0x4000, 0x8000), g(0x9000, 0xa000)];
        assert_eq!(
            carve_out(guards.clone(), 0x5000, 0x6000),
            vec![g(0x1000, 0x3000), g(0x4000, 0x5000), g(0x6000, 0x8000), g(0x9000, 0xa000)]
        );
        assert_eq!(carve_out(guards.clone(), 0x2000, 0x9800), vec![g(0x1000, 0x2000), g(0x9800, 0xa000)]);
        assert_eq!(carve_out(guards.clone(), 0x3000, 0x4000), guards);
        assert_eq!(carve_out(guards, 0, u64::MAX), vec![]);
    }
}
