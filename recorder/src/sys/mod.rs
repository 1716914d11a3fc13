//! Raw ptrace and syscall wrappers: the only module that names `libc::ptrace`.
//!
//! Every wrapper returns `Result`; `ESRCH` (the tracee is gone or not
//! stopped) becomes [`Error::TraceeDied`] so a dead tracee never looks like a
//! recorder bug. Tracee addresses are [`RemoteAddr`], never local pointers.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use std::os::unix::io::AsRawFd;

use ffirec_format::Regs;

use crate::Error;

/// An address in the tracee's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct RemoteAddr(pub u64);

impl std::fmt::Display for RemoteAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:#x}", self.0)
    }
}

pub type Pid = i32;

fn sys_err(what: &'static str, pid: Pid) -> Error {
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::ESRCH) {
        Error::TraceeDied { pid }
    } else {
        Error::Sys { what, source: e }
    }
}

/// `PTRACE_SEIZE` with the given options.
pub fn seize(pid: Pid, options: i64) -> Result<(), Error> {
    // SAFETY: PTRACE_SEIZE takes no pointers; data is the option bit mask.
    let r = unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0usize, options as usize) };
    if r < 0 {
        let e = io::Error::last_os_error();
        return Err(match e.raw_os_error() {
            Some(libc::EPERM) => Error::PtraceDenied { advice: ptrace_advice() },
            Some(libc::ESRCH) => Error::TraceeDied { pid },
            _ => Error::Sys { what: "PTRACE_SEIZE", source: e },
        });
    }
    Ok(())
}

/// What to tell the user when ptrace is refused.
pub fn ptrace_advice() -> String {
    let yama = std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").ok();
    match yama.as_deref().map(str::trim) {
        Some("3") => "Yama ptrace_scope is 3 (ptrace disabled until reboot); no process may trace another on this system".into(),
        Some("2") => "Yama ptrace_scope is 2 (admin only); run as root or with CAP_SYS_PTRACE, or set `sysctl kernel.yama.ptrace_scope=1`".into(),
        _ => "the kernel refused PTRACE_SEIZE; in a container, allow ptrace (docker run --cap-add=SYS_PTRACE --security-opt seccomp=unconfined), or run with CAP_SYS_PTRACE".into(),
    }
}

fn ptrace_simple(req: libc::c_uint, what: &'static str, tid: Pid, addr: usize, data: usize) -> Result<i64, Error> {
    // SAFETY: callers pass requests whose addr/data are integers, not pointers
    // into our memory (CONT, SINGLESTEP, INTERRUPT, LISTEN, KILL).
    let r = unsafe { libc::ptrace(req, tid, addr, data) };
    if r < 0 {
        return Err(sys_err(what, tid));
    }
    Ok(r)
}

pub fn cont(tid: Pid, sig: i32) -> Result<(), Error> {
    ptrace_simple(libc::PTRACE_CONT, "PTRACE_CONT", tid, 0, sig as usize).map(drop)
}

pub fn syscall(tid: Pid, sig: i32) -> Result<(), Error> {
    ptrace_simple(libc::PTRACE_SYSCALL, "PTRACE_SYSCALL", tid, 0, sig as usize).map(drop)
}

pub fn singlestep(tid: Pid, sig: i32) -> Result<(), Error> {
    ptrace_simple(libc::PTRACE_SINGLESTEP, "PTRACE_SINGLESTEP", tid, 0, sig as usize).map(drop)
}

pub fn interrupt(tid: Pid) -> Result<(), Error> {
    ptrace_simple(libc::PTRACE_INTERRUPT, "PTRACE_INTERRUPT", tid, 0, 0).map(drop)
}

const PTRACE_GETSIGMASK: libc::c_uint = 0x420a;
const PTRACE_SETSIGMASK: libc::c_uint = 0x420b;

/// A stopped thread's blocked-signal mask (bit N-1: signal N).
pub fn getsigmask(tid: Pid) -> Result<u64, Error> {
    let mut mask: u64 = 0;
    // SAFETY: the kernel writes one 8-byte sigset (addr = its size) to the pointer.
    let r = unsafe { libc::ptrace(PTRACE_GETSIGMASK, tid, 8usize, &mut mask as *mut u64) };
    if r < 0 {
        return Err(sys_err("PTRACE_GETSIGMASK", tid));
    }
    Ok(mask)
}

/// Sets a stopped thread's blocked-signal mask.
pub fn setsigmask(tid: Pid, mask: u64) -> Result<(), Error> {
    // SAFETY: the kernel reads one 8-byte sigset (addr = its size) from the pointer.
    let r = unsafe { libc::ptrace(PTRACE_SETSIGMASK, tid, 8usize, &mask as *const u64) };
    if r < 0 {
        return Err(sys_err("PTRACE_SETSIGMASK", tid));
    }
    Ok(())
}

pub fn listen(tid: Pid) -> Result<(), Error> {
    ptrace_simple(libc::PTRACE_LISTEN, "PTRACE_LISTEN", tid, 0, 0).map(drop)
}

pub fn detach(tid: Pid, sig: i32) -> Result<(), Error> {
    ptrace_simple(libc::PTRACE_DETACH, "PTRACE_DETACH", tid, 0, sig as usize).map(drop)
}

/// The thread-group id of `tid` (from /proc), when it still exists.
pub fn tgid_of(tid: Pid) -> Option<Pid> {
    let s = std::fs::read_to_string(format!("/proc/{tid}/status")).ok()?;
    s.lines().find_map(|l| l.strip_prefix("Tgid:")).and_then(|v| v.trim().parse().ok())
}

pub fn geteventmsg(tid: Pid) -> Result<u64, Error> {
    let mut msg: libc::c_ulong = 0;
    // SAFETY: the kernel writes one c_ulong to the pointer we pass.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETEVENTMSG, tid, 0usize, &mut msg as *mut libc::c_ulong) };
    if r < 0 {
        return Err(sys_err("PTRACE_GETEVENTMSG", tid));
    }
    Ok(msg)
}

/// `struct procmap_query` (linux/fs.h, Linux 6.11+).
#[repr(C)]
#[derive(Debug, Default)]
struct ProcmapQuery {
    size: u64,
    query_flags: u64,
    query_addr: u64,
    vma_start: u64,
    vma_end: u64,
    vma_flags: u64,
    vma_page_size: u64,
    vma_offset: u64,
    inode: u64,
    dev_major: u32,
    dev_minor: u32,
    vma_name_size: u32,
    build_id_size: u32,
    vma_name_addr: u64,
    build_id_addr: u64,
}

const _: () = assert!(std::mem::size_of::<ProcmapQuery>() == 104);

/// `_IOWR('f', 17, struct procmap_query)`.
const PROCMAP_QUERY: libc::c_ulong = 0xc000_0000 | (104 << 16) | (0x66 << 8) | 17;
const PROCMAP_QUERY_COVERING_OR_NEXT_VMA: u64 = 0x10;
pub const PROCMAP_QUERY_VMA_READABLE: u64 = 0x1;
pub const PROCMAP_QUERY_VMA_WRITABLE: u64 = 0x2;
pub const PROCMAP_QUERY_VMA_EXECUTABLE: u64 = 0x4;
pub const PROCMAP_QUERY_VMA_SHARED: u64 = 0x8;

/// One mapping as `PROCMAP_QUERY` reports it.
#[derive(Debug, Clone, Copy)]
pub struct VmaInfo {
    pub start: u64,
    pub end: u64,
    /// `PROCMAP_QUERY_VMA_*` bits.
    pub flags: u64,
    pub offset: u64,
    pub inode: u64,
}

/// The raw kernel register block.
pub type RawRegs = libc::user_regs_struct;

pub fn getregs(tid: Pid) -> Result<RawRegs, Error> {
    // SAFETY: user_regs_struct is plain integers; all-zero is a valid value.
    let mut regs: RawRegs = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel fills exactly one user_regs_struct.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETREGS, tid, 0usize, &mut regs as *mut RawRegs) };
    if r < 0 {
        return Err(sys_err("PTRACE_GETREGS", tid));
    }
    Ok(regs)
}

pub fn setregs(tid: Pid, regs: &RawRegs) -> Result<(), Error> {
    // SAFETY: the kernel reads exactly one user_regs_struct.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETREGS, tid, 0usize, regs as *const RawRegs) };
    if r < 0 {
        return Err(sys_err("PTRACE_SETREGS", tid));
    }
    Ok(())
}

/// `PTRACE_POKEUSER` of one 8-byte register at byte `offset` of the kernel
/// register block (`std::mem::offset_of!(RawRegs, field)`).
pub fn poke_reg(tid: Pid, offset: usize, value: u64) -> Result<(), Error> {
    ptrace_simple(libc::PTRACE_POKEUSER, "PTRACE_POKEUSER", tid, offset, value as usize).map(drop)
}

/// Sets `new` on a stopped thread whose registers are `old`: one
/// `PTRACE_POKEUSER` per changed register when only `rip` and at most one
/// general register changed (the fault path: an emulated load or store),
/// `PTRACE_SETREGS` otherwise. Measured here on a stopped tracee: SETREGS
/// 1.3–2.0 us, one POKEUSER 0.4–0.7 us.
pub fn set_changed(tid: Pid, old: &RawRegs, new: &RawRegs) -> Result<(), Error> {
    let same_rest = old.eflags == new.eflags
        && old.cs == new.cs
        && old.ss == new.ss
        && old.ds == new.ds
        && old.es == new.es
        && old.fs == new.fs
        && old.gs == new.gs
        && old.fs_base == new.fs_base
        && old.gs_base == new.gs_base
        && old.orig_rax == new.orig_rax;
    let mut changed: [(usize, u64); 2] = [(0, 0); 2];
    let mut n = 0;
    let mut push = |off: usize, v: u64| {
        if n < changed.len() {
            changed[n] = (off, v);
        }
        n += 1;
    };
    if old.rip != new.rip {
        push(std::mem::offset_of!(RawRegs, rip), new.rip);
    }
    for i in 0..16 {
        let (a, b) = (gpr(old, i), gpr(new, i));
        if a != b {
            push(gpr_offset(i), b);
        }
    }
    if !same_rest || n > changed.len() {
        return setregs(tid, new);
    }
    for &(off, v) in &changed[..n] {
        poke_reg(tid, off, v)?;
    }
    Ok(())
}

fn gpr(r: &RawRegs, n: usize) -> u64 {
    let mut c = *r;
    *gpr_mut(&mut c, n)
}

/// Byte offset of general register `n` (rax, rcx, rdx, rbx, rsp, rbp, rsi,
/// rdi, r8 … r15) in the kernel register block.
fn gpr_offset(n: usize) -> usize {
    use std::mem::offset_of;
    match n {
        0 => offset_of!(RawRegs, rax),
        1 => offset_of!(RawRegs, rcx),
        2 => offset_of!(RawRegs, rdx),
        3 => offset_of!(RawRegs, rbx),
        4 => offset_of!(RawRegs, rsp),
        5 => offset_of!(RawRegs, rbp),
        6 => offset_of!(RawRegs, rsi),
        7 => offset_of!(RawRegs, rdi),
        8 => offset_of!(RawRegs, r8),
        9 => offset_of!(RawRegs, r9),
        10 => offset_of!(RawRegs, r10),
        11 => offset_of!(RawRegs, r11),
        12 => offset_of!(RawRegs, r12),
        13 => offset_of!(RawRegs, r13),
        14 => offset_of!(RawRegs, r14),
        _ => offset_of!(RawRegs, r15),
    }
}

/// The parts of `siginfo_t` we use.
#[derive(Debug, Clone, Copy)]
pub struct SigInfo {
    pub code: i32,
    /// `si_addr` (meaningful for SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGTRAP).
    pub addr: u64,
}

pub fn getsiginfo(tid: Pid) -> Result<SigInfo, Error> {
    // SAFETY: siginfo_t is plain data; all-zero is valid.
    let mut si: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel fills one siginfo_t.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETSIGINFO, tid, 0usize, &mut si as *mut libc::siginfo_t) };
    if r < 0 {
        return Err(sys_err("PTRACE_GETSIGINFO", tid));
    }
    // SAFETY: si_addr reads the union's first pointer field, valid for every
    // signal (it is just 8 bytes of the union).
    let addr = unsafe { si.si_addr() } as u64;
    Ok(SigInfo { code: si.si_code, addr })
}

/// The XSAVE area (`NT_X86_XSTATE`), for vector registers.
pub fn get_xstate(tid: Pid, buf: &mut [u8]) -> Result<usize, Error> {
    let mut iov = libc::iovec { iov_base: buf.as_mut_ptr().cast(), iov_len: buf.len() };
    // SAFETY: the iovec describes `buf`, which outlives the call; the kernel
    // writes at most iov_len bytes and updates iov_len.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec) };
    if r < 0 {
        return Err(sys_err("PTRACE_GETREGSET", tid));
    }
    Ok(iov.iov_len)
}

pub fn set_xstate(tid: Pid, buf: &[u8]) -> Result<(), Error> {
    let mut iov = libc::iovec { iov_base: buf.as_ptr() as *mut libc::c_void, iov_len: buf.len() };
    // SAFETY: the kernel only reads iov_len bytes from `buf`.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETREGSET, tid, NT_X86_XSTATE, &mut iov as *mut libc::iovec) };
    if r < 0 {
        return Err(sys_err("PTRACE_SETREGSET", tid));
    }
    Ok(())
}

/// Size of the legacy FXSAVE area (`PTRACE_GETFPREGS`): x87, MXCSR, xmm0-15.
pub const FXSAVE_LEN: usize = 512;
/// Offset of xmm0 in the FXSAVE area (xmm N at `FXSAVE_XMM0 + 16 * N`).
pub const FXSAVE_XMM0: usize = 160;

/// The FXSAVE area: a fraction of the XSAVE area's size (512 bytes), so
/// cheaper to fetch and set when only xmm0-15 matter.
pub fn get_fpregs(tid: Pid, buf: &mut [u8; FXSAVE_LEN]) -> Result<(), Error> {
    // SAFETY: the kernel writes one user_fpregs_struct (512 bytes) into `buf`.
    let r = unsafe { libc::ptrace(libc::PTRACE_GETFPREGS, tid, 0usize, buf.as_mut_ptr()) };
    if r < 0 {
        return Err(sys_err("PTRACE_GETFPREGS", tid));
    }
    Ok(())
}

/// Sets the FXSAVE area; the upper halves of the ymm/zmm registers keep their values.
pub fn set_fpregs(tid: Pid, buf: &[u8; FXSAVE_LEN]) -> Result<(), Error> {
    // SAFETY: the kernel reads one user_fpregs_struct (512 bytes) from `buf`.
    let r = unsafe { libc::ptrace(libc::PTRACE_SETFPREGS, tid, 0usize, buf.as_ptr()) };
    if r < 0 {
        return Err(sys_err("PTRACE_SETFPREGS", tid));
    }
    Ok(())
}

const NT_X86_XSTATE: usize = 0x202;

/// One result of `waitpid`.
#[derive(Debug, Clone, Copy)]
pub enum WaitStatus {
    Exited(Pid, i32),
    Signaled(Pid, i32),
    /// Stopped: (tid, signal, ptrace event number).
    Stopped(Pid, i32, i32),
}

/// `waitpid(pid, __WALL)`; `Ok(None)` when interrupted by a signal (EINTR)
/// or, with `nohang`, when nothing is ready.
pub fn wait(pid: Pid, nohang: bool) -> Result<Option<WaitStatus>, Error> {
    let mut status = 0;
    let flags = libc::__WALL | if nohang { libc::WNOHANG } else { 0 };
    // SAFETY: waitpid writes one int through the pointer.
    let r = unsafe { libc::waitpid(pid, &mut status, flags) };
    if r < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EINTR) {
            return Ok(None);
        }
        if e.raw_os_error() == Some(libc::ECHILD) {
            return Err(Error::NoTracees);
        }
        return Err(Error::Sys { what: "waitpid", source: e });
    }
    if r == 0 {
        return Ok(None);
    }
    Ok(Some(if libc::WIFEXITED(status) {
        WaitStatus::Exited(r, libc::WEXITSTATUS(status))
    } else if libc::WIFSIGNALED(status) {
        WaitStatus::Signaled(r, libc::WTERMSIG(status))
    } else {
        WaitStatus::Stopped(r, libc::WSTOPSIG(status), (status >> 16) & 0xff)
    }))
}

/// Blocks SIGCHLD in the calling thread (and in threads it creates later),
/// so [`wait_sigchld`] can sleep until a tracee stops. A blocked SIGCHLD is
/// queued, never lost; `waitpid` does not need it.
pub fn block_sigchld() {
    // SAFETY: sigset_t is plain data filled by sigemptyset/sigaddset, and
    // pthread_sigmask only reads it.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Sleeps until a SIGCHLD is pending (a tracee stopped or died), another
/// signal arrives, or `timeout` passes. Needs [`block_sigchld`] first.
pub fn wait_sigchld(timeout: std::time::Duration) {
    let ts = libc::timespec { tv_sec: timeout.as_secs() as libc::time_t, tv_nsec: timeout.subsec_nanos() as _ };
    // SAFETY: as in `block_sigchld`; sigtimedwait reads the set and the
    // timeout and writes nothing when the info pointer is null. Its result
    // (the signal, EAGAIN on timeout, EINTR) needs no handling: the caller
    // polls waitpid next either way.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGCHLD);
        libc::sigtimedwait(&set, std::ptr::null_mut(), &ts);
    }
}

/// The tracee's memory through `/proc/PID/mem`, which reads and writes
/// `PROT_NONE` private pages and read-only code alike.
pub struct Mem {
    file: File,
    pid: Pid,
    /// `/proc/PID/maps`, kept open for `PROCMAP_QUERY` (opened with the
    /// memory, so it always describes the same address space).
    maps: Option<File>,
}

impl Mem {
    /// The process whose memory this is.
    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn open(pid: Pid) -> Result<Mem, Error> {
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(format!("/proc/{pid}/mem"))
            .map_err(|source| Error::Sys { what: "open /proc/PID/mem", source })?;
        let maps = File::open(format!("/proc/{pid}/maps")).ok();
        Ok(Mem { file, pid, maps })
    }

    /// The first mapping at or above `addr` whose protection includes every
    /// bit of `need` (`PROCMAP_QUERY_VMA_*`), with its name in `name`
    /// (cleared when it has none). `Ok(None)`: no such mapping; `Err`: the
    /// kernel lacks `PROCMAP_QUERY` (before Linux 6.11) or the process is gone.
    pub fn query_vma(&self, addr: u64, need: u64, name: &mut Vec<u8>) -> Result<Option<VmaInfo>, Error> {
        self.query(addr, need, Some(name))
    }

    /// [`Self::query_vma`] without the name: the kernel formats none (no
    /// path lookup for file mappings: cheaper).
    pub fn query_vma_bare(&self, addr: u64, need: u64) -> Result<Option<VmaInfo>, Error> {
        self.query(addr, need, None)
    }

    fn query(&self, addr: u64, need: u64, mut name: Option<&mut Vec<u8>>) -> Result<Option<VmaInfo>, Error> {
        let Some(maps) = &self.maps else { return Err(Error::Protocol("no /proc/PID/maps".into())) };
        let (name_size, name_addr) = match name.as_deref_mut() {
            Some(n) => {
                n.clear();
                n.resize(4096, 0);
                (n.len() as u32, n.as_mut_ptr() as u64)
            }
            None => (0, 0),
        };
        let mut q = ProcmapQuery {
            size: std::mem::size_of::<ProcmapQuery>() as u64,
            query_flags: need | PROCMAP_QUERY_COVERING_OR_NEXT_VMA,
            query_addr: addr,
            vma_name_size: name_size,
            vma_name_addr: name_addr,
            ..ProcmapQuery::default()
        };
        // SAFETY: PROCMAP_QUERY reads and writes one `ProcmapQuery` and writes
        // at most `vma_name_size` bytes to `vma_name_addr` (our `name` buffer).
        let r = unsafe { libc::ioctl(maps.as_raw_fd(), PROCMAP_QUERY, &mut q as *mut ProcmapQuery) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if let Some(n) = name {
                n.clear();
            }
            return match e.raw_os_error() {
                Some(libc::ENOENT) => Ok(None),
                _ => Err(Error::Sys { what: "PROCMAP_QUERY", source: e }),
            };
        }
        if let Some(n) = name {
            n.truncate((q.vma_name_size as usize).saturating_sub(1));
        }
        Ok(Some(VmaInfo {
            start: q.vma_start,
            end: q.vma_end,
            flags: q.vma_flags,
            offset: q.vma_offset,
            inode: q.inode,
        }))
    }

    /// Reads as much of `buf` as is mapped; returns the byte count.
    pub fn read_partial(&self, addr: RemoteAddr, buf: &mut [u8]) -> usize {
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], addr.0 + done as u64) {
                Ok(0) | Err(_) => break,
                Ok(n) => done += n,
            }
        }
        done
    }

    pub fn read(&self, addr: RemoteAddr, buf: &mut [u8]) -> Result<(), Error> {
        if self.read_partial(addr, buf) == buf.len() {
            Ok(())
        } else {
            Err(Error::Memory { pid: self.pid, addr: addr.0, len: buf.len() })
        }
    }

    pub fn read_u64(&self, addr: RemoteAddr) -> Result<u64, Error> {
        let mut b = [0u8; 8];
        self.read(addr, &mut b)?;
        Ok(u64::from_le_bytes(b))
    }

    pub fn write(&self, addr: RemoteAddr, buf: &[u8]) -> Result<(), Error> {
        let mut done = 0;
        while done < buf.len() {
            match self.file.write_at(&buf[done..], addr.0 + done as u64) {
                Ok(0) | Err(_) => return Err(Error::Memory { pid: self.pid, addr: addr.0, len: buf.len() }),
                Ok(n) => done += n,
            }
        }
        Ok(())
    }
}

/// Kernel register block → the trace's register file.
pub fn to_regs(r: &RawRegs) -> Regs {
    Regs {
        gpr: [
            r.rax, r.rcx, r.rdx, r.rbx, r.rsp, r.rbp, r.rsi, r.rdi, r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14,
            r.r15,
        ],
        rip: r.rip,
        rflags: r.eflags,
        fs_base: r.fs_base,
        gs_base: r.gs_base,
    }
}

/// Register `n` (x86-64 encoding number) of the kernel block.
pub fn gpr_mut(r: &mut RawRegs, n: usize) -> &mut u64 {
    match n {
        0 => &mut r.rax,
        1 => &mut r.rcx,
        2 => &mut r.rdx,
        3 => &mut r.rbx,
        4 => &mut r.rsp,
        5 => &mut r.rbp,
        6 => &mut r.rsi,
        7 => &mut r.rdi,
        8 => &mut r.r8,
        9 => &mut r.r9,
        10 => &mut r.r10,
        11 => &mut r.r11,
        12 => &mut r.r12,
        13 => &mut r.r13,
        14 => &mut r.r14,
        _ => &mut r.r15,
    }
}

pub fn kill(pid: Pid, sig: i32) -> Result<(), Error> {
    // SAFETY: kill takes integers only.
    if unsafe { libc::kill(pid, sig) } < 0 {
        return Err(sys_err("kill", pid));
    }
    Ok(())
}

pub fn tgkill(tgid: Pid, tid: Pid, sig: i32) -> Result<(), Error> {
    // SAFETY: tgkill takes integers only.
    if unsafe { libc::syscall(libc::SYS_tgkill, tgid, tid, sig) } < 0 {
        return Err(sys_err("tgkill", tid));
    }
    Ok(())
}

pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as u64
    } else {
        4096
    }
}

/// Pins thread `tid` (0 = the caller) to `cpu`; returns the previous mask.
pub fn pin(tid: Pid, cpu: usize) -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array; zeroed is empty.
    let mut old: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes.
    if unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut old) } < 0 {
        return None;
    }
    // SAFETY: as above.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET only sets a bit in the local set (bounds-checked by libc).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the kernel reads one cpu_set_t.
    if unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) } < 0 {
        return None;
    }
    Some(old)
}

/// Restricts thread `tid` to `cpu`; false if the kernel refused.
pub fn set_one_cpu(tid: Pid, cpu: usize) -> bool {
    // SAFETY: cpu_set_t is a plain bit array; zeroed is empty.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: CPU_SET only sets a bit in the local set (bounds-checked by libc).
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: the kernel reads one cpu_set_t.
    unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0 }
}

/// Thread `tid`'s CPU affinity (0 = the caller).
pub fn get_affinity(tid: Pid) -> Option<libc::cpu_set_t> {
    // SAFETY: cpu_set_t is a plain bit array; zeroed is empty.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: the kernel writes at most size_of::<cpu_set_t>() bytes.
    let r = unsafe { libc::sched_getaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), &mut set) };
    (r == 0).then_some(set)
}

/// The CPU of a mask that allows exactly one.
pub fn only_cpu(set: &libc::cpu_set_t) -> Option<usize> {
    // SAFETY: CPU_COUNT and CPU_ISSET only read the local set.
    unsafe {
        if libc::CPU_COUNT(set) != 1 {
            return None;
        }
        (0..libc::CPU_SETSIZE as usize).find(|&c| libc::CPU_ISSET(c, set))
    }
}

/// `set` allows `cpu`.
pub fn allows(set: &libc::cpu_set_t, cpu: usize) -> bool {
    // SAFETY: CPU_ISSET only reads the local set (bounds-checked by libc).
    cpu < libc::CPU_SETSIZE as usize && unsafe { libc::CPU_ISSET(cpu, set) }
}

/// The lowest CPU `set` allows.
pub fn first_cpu(set: &libc::cpu_set_t) -> Option<usize> {
    (0..libc::CPU_SETSIZE as usize).find(|&c| allows(set, c))
}

/// Gives thread `tid` affinity `set` and moves it off `cpu` now, if `set`
/// allows another CPU (through `set` without `cpu` first: the kernel
/// migrates a thread whose mask excludes its CPU at once, while a mask that
/// still allows it leaves the thread queued there).
pub fn set_affinity_away(tid: Pid, set: &libc::cpu_set_t, cpu: usize) {
    let mut other = *set;
    // SAFETY: CPU_CLR and CPU_COUNT only touch the local set.
    let some_other = unsafe {
        if cpu < libc::CPU_SETSIZE as usize {
            libc::CPU_CLR(cpu, &mut other);
        }
        libc::CPU_COUNT(&other) > 0
    };
    if some_other {
        set_affinity(tid, &other);
    }
    set_affinity(tid, set);
}

pub fn set_affinity(tid: Pid, set: &libc::cpu_set_t) {
    // SAFETY: the kernel reads one cpu_set_t; failure is harmless (affinity is a hint).
    unsafe { libc::sched_setaffinity(tid, std::mem::size_of::<libc::cpu_set_t>(), set) };
}

/// The CPU the caller runs on now.
pub fn current_cpu() -> usize {
    // SAFETY: no arguments.
    let c = unsafe { libc::sched_getcpu() };
    if c < 0 {
        0
    } else {
        c as usize
    }
}

/// A POSIX timer that sends SIGALRM to the thread that created it (the one
/// in `waitpid`: a process-directed signal could land on the trace writer's
/// thread and never interrupt the wait). Deleted on drop.
#[derive(Debug)]
pub struct AlarmTimer(libc::timer_t);

impl AlarmTimer {
    /// `None` when the kernel refuses a timer (the caller then runs without one).
    pub fn new() -> Option<AlarmTimer> {
        // SAFETY: sigevent is plain data; zeroed is a valid start.
        let mut sev: libc::sigevent = unsafe { std::mem::zeroed() };
        sev.sigev_notify = libc::SIGEV_THREAD_ID;
        sev.sigev_signo = libc::SIGALRM;
        // SAFETY: gettid has no preconditions.
        sev.sigev_notify_thread_id = unsafe { libc::syscall(libc::SYS_gettid) } as i32;
        // SAFETY: timer_t is a pointer-sized handle the kernel fills.
        let mut id: libc::timer_t = unsafe { std::mem::zeroed() };
        // SAFETY: timer_create reads `sev` and writes `id`.
        if unsafe { libc::timer_create(libc::CLOCK_MONOTONIC, &mut sev, &mut id) } < 0 {
            return None;
        }
        Some(AlarmTimer(id))
    }

    /// Fire every `period` from now on; `None` disarms the timer.
    pub fn set(&self, period: Option<std::time::Duration>) {
        let ts = period.map_or(libc::timespec { tv_sec: 0, tv_nsec: 0 }, |p| libc::timespec {
            tv_sec: p.as_secs() as i64,
            tv_nsec: i64::from(p.subsec_nanos()),
        });
        let spec = libc::itimerspec { it_interval: ts, it_value: ts };
        // SAFETY: `self.0` is our timer; timer_settime reads `spec`.
        unsafe { libc::timer_settime(self.0, 0, &spec, std::ptr::null_mut()) };
    }
}

impl Drop for AlarmTimer {
    fn drop(&mut self) {
        // SAFETY: deleting the timer we created.
        unsafe { libc::timer_delete(self.0) };
    }
}

#[cfg(test)]
mod set_changed_tests {
    use super::*;

    #[test]
    #[allow(clippy::unwrap_used)]
    fn set_changed_pokes_or_sets_exactly_the_new_registers() {
        // SAFETY: the child calls only async-signal-safe functions.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0);
        if pid == 0 {
            // SAFETY: child side: be traced, stop, then wait to be killed.
            unsafe {
                libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize);
                libc::raise(libc::SIGSTOP);
                loop {
                    libc::pause();
                }
            }
        }
        let mut status = 0;
        // SAFETY: waitpid writes one int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let old = getregs(pid).unwrap();
        // rip and one general register: two POKEUSERs.
        let mut new = old;
        new.rip = old.rip.wrapping_add(3);
        new.r13 = 0x1122_3344_5566_7788;
        set_changed(pid, &old, &new).unwrap();
        let got = getregs(pid).unwrap();
        assert_eq!((got.rip, got.r13, got.rax, got.rsp, got.eflags), (new.rip, new.r13, old.rax, old.rsp, old.eflags));
        // Three registers: SETREGS.
        let mut third = got;
        third.rip = got.rip.wrapping_add(1);
        third.rax = 7;
        third.rsi = 9;
        set_changed(pid, &got, &third).unwrap();
        let back = getregs(pid).unwrap();
        assert_eq!((back.rip, back.rax, back.rsi, back.r13), (third.rip, 7, 9, new.r13));
        // Nothing changed: nothing written.
        set_changed(pid, &back, &back).unwrap();
        assert_eq!(getregs(pid).unwrap().rip, back.rip);
        // SAFETY: our own child.
        unsafe {
            libc::kill(pid, libc::SIGKILL);
            libc::waitpid(pid, &mut status, 0);
        }
    }
}
