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

use crate::sys::{self, Pid, RawRegs, RemoteAddr};
use crate::tracer::Tracer;
use crate::Error;

/// Where a thread is with respect to syscall stops (they alternate).
#[derive(Debug, Default, Clone)]
pub enum SysState {
    #[default]
    Idle,
    /// Pages were opened while the syscall was skipped; it re-executes at `rip - 2`.
    Prepared { rip: u64, nr: u64, open: Vec<(u64, u64, u32)>, ranges: Vec<Touch>, known: bool },
    /// Between syscall entry and exit.
    InSyscall { nr: u64, args: [u64; 6], open: Vec<(u64, u64, u32)>, ranges: Vec<Touch>, known: bool },
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

/// When a range of a modelled syscall was really touched, judged at exit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum When {
    /// Touched whatever the outcome (the kernel reads its inputs first).
    Always,
    /// Written only when the call succeeded (`ret >= 0`).
    OnSuccess,
    /// Transfer buffers: cut to the first `ret` bytes, counted across all
    /// `UpToRet` ranges in order.
    UpToRet,
    /// Arrays the kernel fills with `ret` records of this size (`epoll_wait`).
    Records(u64),
    /// Written only when the call was interrupted (`nanosleep`'s `rem`).
    OnInterrupt,
}

/// One range a syscall may touch, and when it counts as touched.
#[derive(Debug, Clone, Copy)]
pub struct Touch {
    pub range: SyscallRange,
    pub when: When,
}

const STAT_SIZE: u64 = 144;
const STATX_SIZE: u64 = 256;
const TIMESPEC_SIZE: u64 = 16;
const MSGHDR_SIZE: u64 = 56;
/// The kernel's `struct termios` (asm-generic: 4 flags, c_line, 19 c_cc),
/// what `TCGETS` copies; glibc's 60-byte struct is filled from it in user space.
const KTERMIOS_SIZE: u64 = 36;
const PATH_MAX: usize = 4096;
const STATFS_SIZE: u64 = 120;
const UTSNAME_SIZE: u64 = 390;
const SYSINFO_SIZE: u64 = 112;
/// The kernel's `struct sigaction` with an 8-byte mask (handler, flags, restorer, mask).
const KSIGACTION_SIZE: u64 = 32;
const EPOLL_EVENT_SIZE: u64 = 12;

fn word(b: &[u8], off: usize) -> u64 {
    b.get(off..off + 8).and_then(|x| x.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

/// Memory a syscall's arguments name: (ranges, whether the syscall is modelled).
pub(crate) fn ranges_of(t: &Tracer, nr: u64, a: [u64; 6]) -> (Vec<Touch>, bool) {
    let r = |addr: u64, len: u64, write: bool, when: When| Touch { range: SyscallRange { addr, len, write }, when };
    let iov = |base: u64, cnt: u64, write: bool| -> Vec<Touch> {
        let cnt = cnt.min(1024) as usize;
        let mut buf = vec![0u8; cnt * 16];
        if base == 0 || t.mem.read_partial(RemoteAddr(base), &mut buf) != buf.len() {
            return Vec::new();
        }
        let mut out = vec![r(base, buf.len() as u64, false, When::Always)];
        out.extend(buf.chunks_exact(16).map(|c| r(word(c, 0), word(c, 8), write, When::UpToRet)));
        out
    };
    // A NUL-terminated string argument: read through its terminator.
    let path = |addr: u64| -> Vec<Touch> {
        if addr == 0 {
            return Vec::new();
        }
        let mut done = 0usize;
        let mut chunk = [0u8; 256];
        while done < PATH_MAX {
            let n = t.mem.read_partial(RemoteAddr(addr + done as u64), &mut chunk);
            if let Some(i) = chunk[..n].iter().position(|&c| c == 0) {
                return vec![r(addr, (done + i + 1) as u64, false, When::Always)];
            }
            if n < chunk.len() {
                break;
            }
            done += n;
        }
        // Unreadable or longer than PATH_MAX: the kernel reads at most PATH_MAX.
        vec![r(addr, (done.max(1)) as u64, false, When::Always)]
    };
    let opt = |addr: u64, len: u64, write: bool, when: When| -> Vec<Touch> {
        if addr == 0 {
            Vec::new()
        } else {
            vec![r(addr, len, write, when)]
        }
    };
    // execve's argv/envp: the pointer array through its NULL, and every string.
    let strings = |base: u64| -> Vec<Touch> {
        let mut out = Vec::new();
        if base == 0 {
            return out;
        }
        let mut n = 0u64;
        while n < 65536 {
            let mut w = [0u8; 8];
            if t.mem.read_partial(RemoteAddr(base + 8 * n), &mut w) != 8 {
                break;
            }
            let p = u64::from_le_bytes(w);
            n += 1;
            if p == 0 {
                break;
            }
            out.extend(path(p));
        }
        out.push(r(base, 8 * n.max(1), false, When::Always));
        out
    };
    let v = match nr as i64 {
        libc::SYS_execve => [path(a[0]), strings(a[1]), strings(a[2])].concat(),
        libc::SYS_execveat => [path(a[1]), strings(a[2]), strings(a[3])].concat(),
        libc::SYS_read | libc::SYS_pread64 => vec![r(a[1], a[2], true, When::UpToRet)],
        libc::SYS_write | libc::SYS_pwrite64 => vec![r(a[1], a[2], false, When::UpToRet)],
        libc::SYS_readv | libc::SYS_preadv | libc::SYS_preadv2 => iov(a[1], a[2], true),
        libc::SYS_writev | libc::SYS_pwritev | libc::SYS_pwritev2 => iov(a[1], a[2], false),
        libc::SYS_getrandom => vec![r(a[0], a[1], true, When::UpToRet)],
        libc::SYS_recvfrom => {
            let mut v = vec![r(a[1], a[2], true, When::UpToRet)];
            if a[4] != 0 && a[5] != 0 {
                let mut l = [0u8; 4];
                let len = if t.mem.read_partial(RemoteAddr(a[5]), &mut l) == 4 { u32::from_le_bytes(l) } else { 0 };
                v.push(r(a[5], 4, false, When::Always));
                v.push(r(a[4], u64::from(len), true, When::OnSuccess));
                v.push(r(a[5], 4, true, When::OnSuccess));
            }
            v
        }
        libc::SYS_sendto => {
            let mut v = vec![r(a[1], a[2], false, When::UpToRet)];
            v.extend(opt(a[4], a[5] & 0xffff_ffff, false, When::Always));
            v
        }
        libc::SYS_recvmsg | libc::SYS_sendmsg => {
            let recv = nr as i64 == libc::SYS_recvmsg;
            let mut h = [0u8; MSGHDR_SIZE as usize];
            if a[1] == 0 || t.mem.read_partial(RemoteAddr(a[1]), &mut h) != h.len() {
                return (Vec::new(), true);
            }
            let (name, namelen) = (word(&h, 0), word(&h, 8) & 0xffff_ffff);
            let (iovp, iovlen) = (word(&h, 16), word(&h, 24));
            let (ctl, ctllen) = (word(&h, 32), word(&h, 40));
            let mut v = vec![r(a[1], MSGHDR_SIZE, false, When::Always)];
            v.extend(iov(iovp, iovlen, recv));
            if recv {
                // Upper bounds: the kernel stores the actual lengths back into the header.
                v.extend(opt(name, namelen, true, When::OnSuccess));
                v.extend(opt(ctl, ctllen, true, When::OnSuccess));
                v.push(r(a[1] + 8, 4, true, When::OnSuccess));
                v.push(r(a[1] + 40, 12, true, When::OnSuccess));
            } else {
                v.extend(opt(name, namelen, false, When::Always));
                v.extend(opt(ctl, ctllen, false, When::Always));
            }
            v
        }
        libc::SYS_fstat => vec![r(a[1], STAT_SIZE, true, When::OnSuccess)],
        libc::SYS_stat | libc::SYS_lstat => {
            let mut v = path(a[0]);
            v.push(r(a[1], STAT_SIZE, true, When::OnSuccess));
            v
        }
        libc::SYS_newfstatat => {
            let mut v = path(a[1]);
            v.push(r(a[2], STAT_SIZE, true, When::OnSuccess));
            v
        }
        libc::SYS_statx => {
            let mut v = path(a[1]);
            v.push(r(a[4], STATX_SIZE, true, When::OnSuccess));
            v
        }
        libc::SYS_getcwd => vec![r(a[0], a[1], true, When::UpToRet)],
        libc::SYS_open
        | libc::SYS_creat
        | libc::SYS_access
        | libc::SYS_unlink
        | libc::SYS_mkdir
        | libc::SYS_rmdir
        | libc::SYS_chdir => path(a[0]),
        libc::SYS_openat | libc::SYS_faccessat | libc::SYS_faccessat2 | libc::SYS_unlinkat | libc::SYS_mkdirat => {
            path(a[1])
        }
        libc::SYS_readlink => {
            let mut v = path(a[0]);
            v.push(r(a[1], a[2], true, When::UpToRet));
            v
        }
        libc::SYS_clock_gettime | libc::SYS_clock_getres => opt(a[1], TIMESPEC_SIZE, true, When::OnSuccess),
        libc::SYS_gettimeofday => opt(a[0], TIMESPEC_SIZE, true, When::OnSuccess),
        libc::SYS_nanosleep => {
            let mut v = vec![r(a[0], TIMESPEC_SIZE, false, When::Always)];
            v.extend(opt(a[1], TIMESPEC_SIZE, true, When::OnInterrupt));
            v
        }
        libc::SYS_clock_nanosleep => {
            let mut v = vec![r(a[2], TIMESPEC_SIZE, false, When::Always)];
            if a[1] & libc::TIMER_ABSTIME as u64 == 0 {
                v.extend(opt(a[3], TIMESPEC_SIZE, true, When::OnInterrupt));
            }
            v
        }
        libc::SYS_futex => futex(a),
        libc::SYS_openat2 => {
            let mut v = path(a[1]);
            v.push(r(a[2], a[3], false, When::Always));
            v
        }
        libc::SYS_readlinkat => {
            let mut v = path(a[1]);
            v.push(r(a[2], a[3], true, When::UpToRet));
            v
        }
        libc::SYS_statfs => {
            let mut v = path(a[0]);
            v.push(r(a[1], STATFS_SIZE, true, When::OnSuccess));
            v
        }
        libc::SYS_fstatfs => vec![r(a[1], STATFS_SIZE, true, When::OnSuccess)],
        libc::SYS_uname => vec![r(a[0], UTSNAME_SIZE, true, When::OnSuccess)],
        libc::SYS_sysinfo => vec![r(a[0], SYSINFO_SIZE, true, When::OnSuccess)],
        libc::SYS_pipe | libc::SYS_pipe2 => vec![r(a[0], 8, true, When::OnSuccess)],
        libc::SYS_socketpair => vec![r(a[3], 8, true, When::OnSuccess)],
        libc::SYS_getdents64 => vec![r(a[1], a[2], true, When::UpToRet)],
        libc::SYS_poll | libc::SYS_ppoll => {
            let n = a[1].min(1 << 16);
            let mut v = vec![r(a[0], n * 8, false, When::Always)];
            // Only each entry's `revents` is stored back.
            v.extend((0..n).map(|i| r(a[0] + i * 8 + 6, 2, true, When::OnSuccess)));
            if nr as i64 == libc::SYS_ppoll {
                v.extend(opt(a[2], TIMESPEC_SIZE, false, When::Always));
                v.extend(opt(a[3], a[4], false, When::Always));
            }
            v
        }
        libc::SYS_rt_sigprocmask => {
            let mut v = opt(a[1], a[3], false, When::Always);
            v.extend(opt(a[2], a[3], true, When::OnSuccess));
            v
        }
        libc::SYS_rt_sigaction => {
            let size = KSIGACTION_SIZE - 8 + a[3];
            let mut v = opt(a[1], size, false, When::Always);
            v.extend(opt(a[2], size, true, When::OnSuccess));
            v
        }
        libc::SYS_connect | libc::SYS_bind => vec![r(a[1], a[2] & 0xffff_ffff, false, When::Always)],
        libc::SYS_setsockopt => opt(a[3], a[4] & 0xffff_ffff, false, When::Always),
        libc::SYS_getsockname | libc::SYS_getpeername | libc::SYS_accept | libc::SYS_accept4 | libc::SYS_getsockopt => {
            // (buffer, length pointer): the buffer is written up to the length given.
            let (buf, lenp) = if nr as i64 == libc::SYS_getsockopt { (a[3], a[4]) } else { (a[1], a[2]) };
            if lenp == 0 {
                Vec::new()
            } else {
                let mut l = [0u8; 4];
                let len = if t.mem.read_partial(RemoteAddr(lenp), &mut l) == 4 { u32::from_le_bytes(l) } else { 0 };
                let mut v = vec![r(lenp, 4, false, When::Always)];
                v.extend(opt(buf, u64::from(len), true, When::OnSuccess));
                v.push(r(lenp, 4, true, When::OnSuccess));
                v
            }
        }
        libc::SYS_epoll_ctl => opt(a[3], EPOLL_EVENT_SIZE, false, When::Always),
        libc::SYS_epoll_wait | libc::SYS_epoll_pwait => {
            let mut v = vec![r(a[1], (a[2] & 0xffff_ffff) * EPOLL_EVENT_SIZE, true, When::Records(EPOLL_EVENT_SIZE))];
            if nr as i64 == libc::SYS_epoll_pwait {
                v.extend(opt(a[4], a[5], false, When::Always));
            }
            v
        }
        libc::SYS_ioctl => match a[1] & 0xffff_ffff {
            0x5401 => vec![r(a[2], KTERMIOS_SIZE, true, When::OnSuccess)], // TCGETS
            0x5402..=0x5404 => vec![r(a[2], KTERMIOS_SIZE, false, When::Always)], // TCSETS/W/F
            0x540f => vec![r(a[2], 4, true, When::OnSuccess)],             // TIOCGPGRP
            0x5410 => vec![r(a[2], 4, false, When::Always)],               // TIOCSPGRP
            0x5413 => vec![r(a[2], 8, true, When::OnSuccess)],             // TIOCGWINSZ
            0x5414 => vec![r(a[2], 8, false, When::Always)],               // TIOCSWINSZ
            0x541b => vec![r(a[2], 4, true, When::OnSuccess)],             // FIONREAD
            0x5421 | 0x5452 => vec![r(a[2], 4, false, When::Always)],      // FIONBIO, FIOASYNC
            _ => return (Vec::new(), false),
        },
        _ => return (Vec::new(), false),
    };
    (v, true)
}

/// A futex wait (`FUTEX_WAIT`, `WAIT_BITSET`, `LOCK_PI`, `LOCK_PI2`,
/// `WAIT_REQUEUE_PI`) or `futex_waitv`: ended by another thread's wake (or
/// its timeout), never by the waiter.
fn waits_for_a_thread(nr: u64, a: [u64; 6]) -> bool {
    const SYS_FUTEX_WAITV: u64 = 449;
    match nr as i64 {
        libc::SYS_futex => matches!(a[1] & 0x7f, 0 | 6 | 9 | 11 | 13),
        _ => nr == SYS_FUTEX_WAITV,
    }
}

/// `futex(uaddr, op, val, timeout|val2, uaddr2, val3)`.
fn futex(a: [u64; 6]) -> Vec<Touch> {
    let r = |addr: u64, len: u64, write: bool, when: When| Touch { range: SyscallRange { addr, len, write }, when };
    let cmd = a[1] & 0x7f;
    let mut v = vec![r(a[0], 4, false, When::Always)];
    // FUTEX_LOCK_PI, UNLOCK_PI, TRYLOCK_PI, LOCK_PI2 store the owner's tid.
    if matches!(cmd, 6 | 7 | 8 | 13) {
        v.push(r(a[0], 4, true, When::OnSuccess));
    }
    // WAIT, LOCK_PI, WAIT_BITSET, WAIT_REQUEUE_PI, LOCK_PI2: a[3] is a timespec.
    if matches!(cmd, 0 | 6 | 9 | 11 | 13) && a[3] != 0 {
        v.push(r(a[3], TIMESPEC_SIZE, false, When::Always));
    }
    // REQUEUE, CMP_REQUEUE, WAKE_OP, WAIT_REQUEUE_PI, CMP_REQUEUE_PI: a second futex word.
    if matches!(cmd, 3 | 4 | 5 | 11 | 12) {
        v.push(r(a[4], 4, false, When::Always));
        if cmd == 5 {
            v.push(r(a[4], 4, true, When::OnSuccess));
        }
    }
    v
}

/// Conventional short names for warnings.
pub(crate) fn name_of(nr: u64) -> &'static str {
    match nr as i64 {
        libc::SYS_futex => "futex",
        libc::SYS_ioctl => "ioctl",
        libc::SYS_poll => "poll",
        libc::SYS_ppoll => "ppoll",
        libc::SYS_select => "select",
        libc::SYS_pselect6 => "pselect6",
        libc::SYS_epoll_wait => "epoll_wait",
        libc::SYS_epoll_ctl => "epoll_ctl",
        libc::SYS_rt_sigaction => "rt_sigaction",
        libc::SYS_rt_sigprocmask => "rt_sigprocmask",
        libc::SYS_prctl => "prctl",
        libc::SYS_uname => "uname",
        libc::SYS_sysinfo => "sysinfo",
        libc::SYS_getdents64 => "getdents64",
        libc::SYS_socket => "socket",
        libc::SYS_connect => "connect",
        libc::SYS_bind => "bind",
        libc::SYS_accept4 => "accept4",
        libc::SYS_clone => "clone",
        libc::SYS_clone3 => "clone3",
        libc::SYS_wait4 => "wait4",
        libc::SYS_execve => "execve",
        _ => "?",
    }
}

impl Tracer {
    /// Resumes a thread: `PTRACE_SYSCALL` for the owner of a foreign call
    /// (its syscalls may touch guarded pages; in a callback while other
    /// threads exist, a futex wait releases the held ones) and for a released owner waiting in a
    /// syscall (guarding resumes at its exit), `PTRACE_CONT` otherwise.
    pub fn resume_tracee(&mut self, tid: Pid, sig: i32) -> Result<(), Error> {
        let waiting = self.threads.get(&tid).is_some_and(|t| t.rearm.is_some());
        let owner = self.owner == Some(tid) && (self.foreign_mode || self.others_live(tid));
        if owner || waiting || self.hostinit.wants_syscalls(self.pid) {
            sys::syscall(tid, sig)
        } else {
            sys::cont(tid, sig)
        }
    }

    pub fn on_syscall_stop(&mut self, tid: Pid) -> Result<(), Error> {
        let state = self.threads.get_mut(&tid).map(|t| std::mem::take(&mut t.sys)).unwrap_or_default();
        if let SysState::InSyscall { open, .. } = &state {
            // The exit of the syscall a released foreign call waited in.
            if open.is_empty() {
                if let Some(w) = self.threads.get_mut(&tid).and_then(|t| t.rearm.take()) {
                    return self.rearm_after_wait(tid, w);
                }
            }
        }
        match state {
            SysState::InSyscall { nr, args, open, ranges, known } if self.hostinit.enabled && !self.foreign_mode => {
                self.hostinit_syscall_exit(tid, nr, args, open, ranges, known)
            }
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
                self.hide_pin(tid, nr, args, regs.rax as i64)?;
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
                if self.hostinit.enabled && !self.foreign_mode {
                    // Host mode: the opened tracked pages leave tracking.
                    self.hostinit_abandon(&open)?;
                    return self.on_syscall_entry(tid);
                }
                let close: Vec<(u64, u64, u32)> = open.iter().map(|&(a, l, _)| (a, l, 0)).collect();
                self.run_batch(tid, &regs, &close)?;
                sys::setregs(tid, &regs)?;
                self.on_syscall_entry(tid)
            }
            SysState::Idle => self.on_syscall_entry(tid),
        }
    }

    /// The exit of a syscall about the thread pinned to our CPU
    /// (`process::pin`), made by it or by another thread: asking its
    /// affinity, the caller gets the thread's own mask, not our pin; setting
    /// it, the new mask becomes the thread's own (given back when the pin
    /// ends) and the thread stays pinned meanwhile — unless the new mask
    /// excludes our CPU: then the pin ends there (it never runs where it
    /// asked not to, `sched_getcpu` included).
    pub(crate) fn hide_pin(&mut self, tid: Pid, nr: u64, args: [u64; 6], ret: i64) -> Result<(), Error> {
        let Some(pinned) = self.pinned_tid else { return Ok(()) };
        let target = if args[0] as i32 == 0 { tid } else { args[0] as i32 };
        if target != pinned {
            return Ok(());
        }
        match nr as i64 {
            libc::SYS_sched_getaffinity if ret > 0 => {
                let Some(mask) = self.saved_affinity else { return Ok(()) };
                // SAFETY: cpu_set_t is a plain bit array; we view its bytes.
                let bytes = unsafe {
                    std::slice::from_raw_parts(
                        (&mask as *const libc::cpu_set_t).cast::<u8>(),
                        std::mem::size_of::<libc::cpu_set_t>(),
                    )
                };
                let n = (ret as usize).min(bytes.len());
                self.mem.write(RemoteAddr(args[2]), &bytes[..n])
            }
            libc::SYS_sched_setaffinity if ret == 0 => {
                let Some((cpu, _)) = self.tracer_pin else { return Ok(()) };
                let Some(theirs) = sys::get_affinity(pinned) else { return Ok(()) };
                if !sys::allows(&theirs, cpu) {
                    self.forget_pin(pinned);
                    return Ok(());
                }
                self.saved_affinity = Some(theirs);
                self.pin_untouched = sys::only_cpu(&theirs) == Some(cpu);
                if !self.pin_untouched && !sys::set_one_cpu(pinned, cpu) {
                    // Not pinned any more: its affinity is its own.
                    self.forget_pin(pinned);
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }

    pub(crate) fn set_sys(&mut self, tid: Pid, s: SysState) {
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
        if regs.rax != -(libc::ENOSYS as i64) as u64 {
            // The exit of a syscall whose entry we did not see (a thread
            // sent through a trampoline slot runs on with `PTRACE_CONT`).
            return self.resume(tid, 0);
        }
        if self.owner == Some(tid) && waits_for_a_thread(nr, args) && self.others_live(tid) {
            // Only another thread can end this wait, and every other thread
            // is held (in foreign mode or in a callback, e.g. libgomp's
            // barrier), or new and about to be: release them now rather
            // than after a timeout.
            let (ranges, known) = if foreign { ranges_of(self, nr, args) } else { (Vec::new(), false) };
            let w = crate::process::Waiting { nr, args, ranges, known };
            return self.release_blocked(tid, regs, true, Some(w), "waits on a futex");
        }
        if !foreign && self.hostinit.enabled {
            return self.hostinit_syscall_entry(tid, regs, nr, args);
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
            let r = r.range;
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
                    "ffirec: warning: foreign code made syscall {nr} ({}) with a pointer into guarded memory; its pages were opened for the call and what the kernel did there is not recorded",
                    name_of(nr)
                );
            }
        }
        self.reissue_with(
            tid,
            &regs,
            &open,
            SysState::Prepared { rip: regs.rip, nr, open: open.clone(), ranges, known },
        )
    }

    /// At a syscall-entry stop: run `batch` (the injected stub runs with
    /// orig_rax = -1, so the kernel skips this syscall), then make the
    /// thread re-execute the syscall at `rip - 2` with the pages open.
    pub(crate) fn reissue_with(
        &mut self,
        tid: Pid,
        regs: &RawRegs,
        batch: &[(u64, u64, u32)],
        state: SysState,
    ) -> Result<(), Error> {
        self.run_batch(tid, regs, batch)?;
        let mut again = *regs;
        again.rip -= 2;
        again.rax = regs.orig_rax;
        sys::setregs(tid, &again)?;
        self.set_sys(tid, state);
        self.resume(tid, 0)
    }
}

/// What the kernel actually did, given the return value: transfer buffers
/// are cut to the bytes returned, outputs only on success, inputs always
/// (unless the call failed with `EFAULT`: then nothing is known).
pub(crate) fn actual(touches: &[Touch], ret: i64) -> Vec<SyscallRange> {
    if ret == -i64::from(libc::EFAULT) {
        return Vec::new();
    }
    // EINTR, ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK.
    let interrupted = matches!(ret, -4 | -512 | -513 | -514 | -516);
    let mut left = ret.max(0) as u64;
    touches
        .iter()
        .filter_map(|t| {
            let r = t.range;
            let len = match t.when {
                When::Always => r.len,
                When::OnSuccess => {
                    if ret >= 0 {
                        r.len
                    } else {
                        0
                    }
                }
                When::OnInterrupt => {
                    if interrupted {
                        r.len
                    } else {
                        0
                    }
                }
                When::Records(size) => {
                    if ret >= 0 {
                        r.len.min((ret as u64).saturating_mul(size))
                    } else {
                        0
                    }
                }
                When::UpToRet => {
                    let len = if ret >= 0 { r.len.min(left) } else { 0 };
                    left -= len;
                    len
                }
            };
            (len > 0 && r.addr != 0).then_some(SyscallRange { addr: r.addr, len, write: r.write })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(addr: u64, len: u64, write: bool, when: When) -> Touch {
        Touch { range: SyscallRange { addr, len, write }, when }
    }

    #[test]
    fn actual_cuts_transfers_and_keeps_inputs() {
        let v =
            [t(0x100, 56, false, When::Always), t(0x200, 10, true, When::UpToRet), t(0x300, 10, true, When::UpToRet)];
        let got: Vec<(u64, u64, bool)> = actual(&v, 13).iter().map(|r| (r.addr, r.len, r.write)).collect();
        assert_eq!(got, vec![(0x100, 56, false), (0x200, 10, true), (0x300, 3, true)]);
        let got: Vec<(u64, u64, bool)> = actual(&v, -2).iter().map(|r| (r.addr, r.len, r.write)).collect();
        assert_eq!(got, vec![(0x100, 56, false)]);
        assert!(actual(&v, -14).is_empty());
    }

    #[test]
    fn actual_outputs_on_success_and_interrupt() {
        let v = [
            t(0x100, 16, false, When::Always),
            t(0x200, 16, true, When::OnInterrupt),
            t(0x300, 144, true, When::OnSuccess),
        ];
        let got: Vec<(u64, u64, bool)> = actual(&v, -4).iter().map(|r| (r.addr, r.len, r.write)).collect();
        assert_eq!(got, vec![(0x100, 16, false), (0x200, 16, true)]);
        let got: Vec<(u64, u64, bool)> = actual(&v, 0).iter().map(|r| (r.addr, r.len, r.write)).collect();
        assert_eq!(got, vec![(0x100, 16, false), (0x300, 144, true)]);
    }

    #[test]
    fn futex_wake_op_touches_both_words() {
        let v = futex([0x1000, 5 | 128, 1, 1, 0x2000, 0]);
        let got: Vec<(u64, u64, bool)> = v.iter().map(|t| (t.range.addr, t.range.len, t.range.write)).collect();
        assert_eq!(got, vec![(0x1000, 4, false), (0x2000, 4, false), (0x2000, 4, true)]);
        let v = futex([0x1000, 128, 0, 0x3000, 0, 0]);
        let got: Vec<(u64, u64, bool)> = v.iter().map(|t| (t.range.addr, t.range.len, t.range.write)).collect();
        assert_eq!(got, vec![(0x1000, 4, false), (0x3000, 16, false)]);
    }
}
