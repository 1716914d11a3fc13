//! Syscalls made in foreign mode whose buffers lie on guarded pages.
//!
//! The kernel does not fault on `PROT_NONE` user memory, it fails the call
//! with `EFAULT` — which would change the program's behaviour. In foreign
//! mode the owner thread is resumed with `PTRACE_SYSCALL`; at syscall entry
//! the pointer arguments are checked against the guard set, the pages they
//! touch are opened (the syscall is skipped while the protection stub runs,
//! then re-executed), and closed again at syscall exit. Known syscalls get a
//! `SyscallAccess` event with what the kernel read and wrote; for the others
//! the pages are opened all the same and a `Gap` says the ranges are unknown.
//!
//! Limitation: a thread sent through a trampoline slot is resumed with
//! `PTRACE_CONT` (the slot's own `pkey_mprotect` calls must not stop), so a
//! syscall it makes before its next ptrace stop is not intercepted.

use ffirec_format::{Event, GapReason, SyscallRange};

use crate::sys::{self, Pid, RemoteAddr};
use crate::tracer::Tracer;
use crate::Error;

/// Where a thread is with respect to syscall stops (they alternate).
#[derive(Debug, Default, Clone)]
pub enum SysState {
    #[default]
    Idle,
    /// Pages were opened while the syscall was skipped; it re-executes at `rip - 2`.
    Prepared { rip: u64, nr: u64, open: Vec<(u64, u64, u32)>, ranges: Vec<SyscallRange>, known: bool },
    /// Between syscall entry and exit.
    InSyscall { nr: u64, args: [u64; 6], open: Vec<(u64, u64, u32)>, ranges: Vec<SyscallRange>, known: bool },
}

/// Syscalls whose arguments the kernel never dereferences (their register
/// values may be stale pointers: opening pages for them would only add noise).
const NO_USER_MEMORY: &[i64] = &[
    libc::SYS_close,
    libc::SYS_lseek,
    libc::SYS_mmap,
    libc::SYS_mprotect,
    libc::SYS_munmap,
    libc::SYS_brk,
    libc::SYS_rt_sigreturn,
    libc::SYS_sched_yield,
    libc::SYS_mremap,
    libc::SYS_madvise,
    libc::SYS_dup,
    libc::SYS_dup2,
    libc::SYS_getpid,
    libc::SYS_exit,
    libc::SYS_kill,
    libc::SYS_fcntl,
    libc::SYS_getuid,
    libc::SYS_getgid,
    libc::SYS_geteuid,
    libc::SYS_getegid,
    libc::SYS_gettid,
    libc::SYS_tkill,
    libc::SYS_exit_group,
    libc::SYS_tgkill,
    libc::SYS_pkey_mprotect,
];

/// Memory a syscall's arguments name: (ranges, whether the syscall is modelled).
fn ranges_of(t: &Tracer, nr: u64, a: [u64; 6]) -> (Vec<SyscallRange>, bool) {
    let r = |addr: u64, len: u64, write: bool| SyscallRange { addr, len, write };
    let iov = |base: u64, cnt: u64, write: bool| -> Vec<SyscallRange> {
        let cnt = cnt.min(1024) as usize;
        let mut buf = vec![0u8; cnt * 16];
        if t.mem.read_partial(RemoteAddr(base), &mut buf) != buf.len() {
            return Vec::new();
        }
        buf.chunks_exact(16)
            .map(|c| {
                let b = u64::from_le_bytes(c[..8].try_into().unwrap_or([0; 8]));
                let l = u64::from_le_bytes(c[8..].try_into().unwrap_or([0; 8]));
                r(b, l, write)
            })
            .collect()
    };
    match nr as i64 {
        libc::SYS_read | libc::SYS_pread64 => (vec![r(a[1], a[2], true)], true),
        libc::SYS_write | libc::SYS_pwrite64 => (vec![r(a[1], a[2], false)], true),
        libc::SYS_readv | libc::SYS_preadv | libc::SYS_preadv2 => (iov(a[1], a[2], true), true),
        libc::SYS_writev | libc::SYS_pwritev | libc::SYS_pwritev2 => (iov(a[1], a[2], false), true),
        libc::SYS_getrandom => (vec![r(a[0], a[1], true)], true),
        libc::SYS_recvfrom => (vec![r(a[1], a[2], true)], true),
        libc::SYS_sendto => (vec![r(a[1], a[2], false)], true),
        libc::SYS_fstat => (vec![r(a[1], std::mem::size_of::<libc::stat>() as u64, true)], true),
        _ => (Vec::new(), false),
    }
}

impl Tracer {
    /// Resumes a thread: `PTRACE_SYSCALL` for the owner of a foreign call
    /// (its syscalls may touch guarded pages), `PTRACE_CONT` otherwise.
    pub fn resume_tracee(&mut self, tid: Pid, sig: i32) -> Result<(), Error> {
        if self.foreign_mode && self.owner == Some(tid) {
            sys::syscall(tid, sig)
        } else {
            sys::cont(tid, sig)
        }
    }

    pub fn on_syscall_stop(&mut self, tid: Pid) -> Result<(), Error> {
        let state = self.threads.get_mut(&tid).map(|t| std::mem::take(&mut t.sys)).unwrap_or_default();
        match state {
            SysState::InSyscall { nr, args, open, ranges, known } => {
                let regs = sys::getregs(tid)?;
                if !open.is_empty() {
                    let close: Vec<(u64, u64, u32)> = open.iter().map(|&(a, l, _)| (a, l, 0)).collect();
                    if self.foreign_mode {
                        self.run_batch(tid, &regs, &close)?;
                        sys::setregs(tid, &regs)?;
                    }
                    let ret = regs.rax as i64;
                    if known {
                        let ranges = actual(&ranges, ret);
                        self.sink.push(Event::SyscallAccess { tid: tid as u32, nr, args, ret, ranges })?;
                    }
                }
                self.resume(tid, 0)
            }
            SysState::Prepared { rip, nr, open, ranges, known } => {
                let regs = sys::getregs(tid)?;
                if regs.rip == rip && regs.orig_rax == nr {
                    let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
                    self.set_sys(tid, SysState::InSyscall { nr, args, open, ranges, known });
                    return self.resume(tid, 0);
                }
                // Not the syscall we prepared (a signal handler ran first?): close and start over.
                let close: Vec<(u64, u64, u32)> = open.iter().map(|&(a, l, _)| (a, l, 0)).collect();
                self.run_batch(tid, &regs, &close)?;
                sys::setregs(tid, &regs)?;
                self.on_syscall_entry(tid)
            }
            SysState::Idle => self.on_syscall_entry(tid),
        }
    }

    fn set_sys(&mut self, tid: Pid, s: SysState) {
        if let Some(t) = self.threads.get_mut(&tid) {
            t.sys = s;
        }
    }

    fn on_syscall_entry(&mut self, tid: Pid) -> Result<(), Error> {
        let regs = sys::getregs(tid)?;
        let nr = regs.orig_rax;
        let args = [regs.rdi, regs.rsi, regs.rdx, regs.r10, regs.r8, regs.r9];
        let foreign = self.foreign_mode && self.owner == Some(tid);
        if self.inject.is_some_and(|i| i.contains(regs.rip)) {
            // Our own trampoline's protection call: let the slot run unobserved.
            sys::cont(tid, 0)?;
            if let Some(t) = self.threads.get_mut(&tid) {
                t.running = true;
            }
            return Ok(());
        }
        if !foreign {
            self.set_sys(tid, SysState::InSyscall { nr, args, open: Vec::new(), ranges: Vec::new(), known: true });
            return self.resume(tid, 0);
        }
        let (ranges, known) = ranges_of(self, nr, args);
        let mut open: Vec<(u64, u64, u32)> = Vec::new();
        let page = self.page;
        let add = |s: u64, e: u64, open: &mut Vec<(u64, u64, u32)>, guards: &[crate::guard::GuardRange]| {
            for g in guards {
                let (a, b) = ((s & !(page - 1)).max(g.start), (((e + page - 1) & !(page - 1)).min(g.end)));
                if a < b && !open.iter().any(|&(x, l, _)| x <= a && b <= x + l) {
                    open.push((a, b - a, g.prot));
                }
            }
        };
        for r in &ranges {
            if r.len > 0 {
                add(r.addr, r.addr.saturating_add(r.len), &mut open, &self.guards);
            }
        }
        let mut unknown = false;
        if !known && !NO_USER_MEMORY.contains(&(nr as i64)) {
            // Any argument pointing into guarded memory: open its whole range.
            for &a in &args {
                if let Some(g) = self.guard_of(a).copied() {
                    unknown = true;
                    add(g.start, g.end, &mut open, &self.guards);
                }
            }
        }
        if open.is_empty() {
            self.set_sys(tid, SysState::InSyscall { nr, args, open, ranges, known });
            return self.resume(tid, 0);
        }
        if unknown {
            self.sink.counters.gaps += 1;
            self.sink.push(Event::Gap { tid: tid as u32, reason: GapReason::UnknownSyscall, detail: nr })?;
            if self.warned_syscalls.insert(nr) {
                eprintln!(
                    "ffirec: warning: foreign code made syscall {nr} with a pointer into guarded memory; its pages were opened for the call and what the kernel did there is not recorded"
                );
            }
        }
        // The stub runs with orig_rax = -1, so the kernel skips this syscall;
        // then the thread re-executes it with the pages open.
        self.run_batch(tid, &regs, &open)?;
        let mut again = regs;
        again.rip -= 2;
        again.rax = regs.orig_rax;
        sys::setregs(tid, &again)?;
        self.set_sys(tid, SysState::Prepared { rip: regs.rip, nr, open, ranges, known });
        self.resume(tid, 0)
    }
}

/// What the kernel actually did, given the return value: reads into
/// buffers are cut to the bytes returned, nothing on failure.
fn actual(ranges: &[SyscallRange], ret: i64) -> Vec<SyscallRange> {
    if ret < 0 {
        return Vec::new();
    }
    let mut left = ret as u64;
    ranges
        .iter()
        .filter_map(|r| {
            let len = r.len.min(left);
            left -= len;
            (len > 0).then_some(SyscallRange { addr: r.addr, len, write: r.write })
        })
        .collect()
}
