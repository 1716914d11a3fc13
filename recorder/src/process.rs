//! Spawning the tracee, the kinds of stop it reports, and its other threads
//! and processes: held while one thread's foreign call runs, released at
//! return (or when the call blocks); forked children are followed (see
//! `procs`), or with `--no-follow` handed back their real protections and
//! detached.
//!
//! The child is forked by hand so it can stop itself before `execve` and be
//! `PTRACE_SEIZE`d (which, unlike `PTRACE_TRACEME`, allows
//! `PTRACE_INTERRUPT`). Everything the child touches after `fork` is prepared
//! before it: it only calls `raise`, `execve`, `write` and `_exit`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ffirec_format::{Event, GapReason};

use crate::domain::FrameKind;
use crate::sys::{self, Mem, Pid, RemoteAddr, WaitStatus};
use crate::syscalls::{SysState, Touch};
use crate::tracer::{Tracer, BLOCKED_AFTER};
use crate::Error;

/// How long a foreign call may sit in one syscall (a `read` or `poll` that
/// only a held thread may end) before we assume it waits for a held thread.
/// Futex waits are released at once (see `syscalls`).
pub(crate) const BLOCKED_IN_SYSCALL_AFTER: Duration = Duration::from_millis(200);

/// The syscall a released foreign call waits in: its touches are recorded
/// when it returns, and guarding resumes there.
#[derive(Debug, Clone)]
pub(crate) struct Waiting {
    pub nr: u64,
    pub args: [u64; 6],
    pub ranges: Vec<Touch>,
    pub known: bool,
}

/// A ptrace stop or death, as ptrace(2) names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The thread exited with a code (for the leader: the process did).
    Exited { tid: Pid, code: i32 },
    /// The thread was killed by a signal.
    Killed { tid: Pid, signal: i32 },
    /// Signal-delivery-stop: `signal` is about to be delivered.
    Signal { tid: Pid, signal: i32 },
    /// Group-stop (SIGSTOP and friends) under `PTRACE_SEIZE`.
    Group { tid: Pid, signal: i32 },
    /// `PTRACE_EVENT_STOP` that is not a group-stop: our `PTRACE_INTERRUPT`,
    /// or a new thread's first stop.
    Interrupt { tid: Pid },
    /// `PTRACE_EVENT_*` stops (clone, fork, vfork, exec, exit).
    Event { tid: Pid, event: i32 },
    /// Syscall-enter/exit-stop (`PTRACE_O_TRACESYSGOOD`).
    Syscall { tid: Pid },
}

impl Stop {
    pub fn tid(&self) -> Pid {
        match *self {
            Stop::Exited { tid, .. }
            | Stop::Killed { tid, .. }
            | Stop::Signal { tid, .. }
            | Stop::Group { tid, .. }
            | Stop::Interrupt { tid }
            | Stop::Event { tid, .. }
            | Stop::Syscall { tid } => tid,
        }
    }

    pub fn from_wait(w: WaitStatus) -> Stop {
        match w {
            WaitStatus::Exited(tid, code) => Stop::Exited { tid, code },
            WaitStatus::Signaled(tid, signal) => Stop::Killed { tid, signal },
            WaitStatus::Stopped(tid, sig, 0) if sig == libc::SIGTRAP | 0x80 => Stop::Syscall { tid },
            WaitStatus::Stopped(tid, signal, 0) => Stop::Signal { tid, signal },
            WaitStatus::Stopped(tid, signal, libc::PTRACE_EVENT_STOP) => match signal {
                libc::SIGSTOP | libc::SIGTSTP | libc::SIGTTIN | libc::SIGTTOU => Stop::Group { tid, signal },
                _ => Stop::Interrupt { tid },
            },
            WaitStatus::Stopped(tid, _, event) => Stop::Event { tid, event },
        }
    }
}

/// Finds `program` as `execvp` would, so "not found" and "not executable"
/// are reported before anything is forked.
pub fn resolve(program: &str) -> Result<PathBuf, Error> {
    let check = |p: &Path| -> Result<PathBuf, Error> {
        let meta = std::fs::metadata(p).map_err(|_| Error::NotFound { program: program.to_string() })?;
        if meta.is_dir() {
            return Err(Error::NotExecutable { path: p.display().to_string(), reason: "is a directory".into() });
        }
        if meta.permissions().mode() & 0o111 == 0 {
            return Err(Error::NotExecutable { path: p.display().to_string(), reason: "permission denied".into() });
        }
        Ok(p.to_path_buf())
    };
    if program.contains('/') {
        return check(Path::new(program));
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    let mut denied = None;
    for dir in std::env::split_paths(&path) {
        let cand = dir.join(program);
        match check(&cand) {
            Ok(p) => return Ok(p),
            Err(e @ Error::NotExecutable { .. }) => denied = denied.or(Some(e)),
            Err(_) => {}
        }
    }
    Err(denied.unwrap_or(Error::NotFound { program: program.to_string() }))
}

fn cstring(bytes: Vec<u8>) -> Result<CString, Error> {
    CString::new(bytes).map_err(|_| Error::BadArgument("argument or environment contains a NUL byte".into()))
}

/// Forks, stops the child before `execve`, seizes it with `options` and runs
/// it to its `PTRACE_EVENT_EXEC` stop. Returns the pid, stopped there.
pub fn spawn(exe: &Path, argv: &[OsString], env: &[(OsString, OsString)], options: i64) -> Result<Pid, Error> {
    let path = cstring(exe.as_os_str().as_bytes().to_vec())?;
    let argv_c: Vec<CString> = argv.iter().map(|a| cstring(a.clone().into_vec())).collect::<Result<_, _>>()?;
    let env_c: Vec<CString> = env
        .iter()
        .map(|(k, v)| {
            let mut b = k.clone().into_vec();
            b.push(b'=');
            b.extend_from_slice(v.as_bytes());
            cstring(b)
        })
        .collect::<Result<_, _>>()?;
    let mut argv_p: Vec<*const libc::c_char> = argv_c.iter().map(|c| c.as_ptr()).collect();
    argv_p.push(std::ptr::null());
    let mut env_p: Vec<*const libc::c_char> = env_c.iter().map(|c| c.as_ptr()).collect();
    env_p.push(std::ptr::null());

    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two fds into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(Error::Sys { what: "pipe2", source: std::io::Error::last_os_error() });
    }
    // SAFETY: the child only calls async-signal-safe functions (raise,
    // execve, write, _exit) on data prepared above.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(Error::Sys { what: "fork", source: std::io::Error::last_os_error() });
    }
    if pid == 0 {
        // SAFETY: child side of fork; see above. Never returns.
        unsafe {
            libc::close(fds[0]);
            libc::raise(libc::SIGSTOP);
            libc::execve(path.as_ptr(), argv_p.as_ptr(), env_p.as_ptr());
            let err = *libc::__errno_location();
            let b = err.to_ne_bytes();
            libc::write(fds[1], b.as_ptr().cast(), b.len());
            libc::_exit(127);
        }
    }
    // SAFETY: closing our copy of the write end.
    unsafe { libc::close(fds[1]) };
    let read_fd = fds[0];
    let result = seize_child(pid, options);
    let mut errno = [0u8; 4];
    // SAFETY: reads at most 4 bytes into `errno`; the write end is closed in
    // the child by exec (CLOEXEC) or after its error report.
    let n = unsafe { libc::read(read_fd, errno.as_mut_ptr().cast(), 4) };
    // SAFETY: closing our own fd.
    unsafe { libc::close(read_fd) };
    if n == 4 {
        let e = i32::from_ne_bytes(errno);
        let source = std::io::Error::from_raw_os_error(e);
        return Err(match e {
            libc::ENOENT => Error::NotFound { program: exe.display().to_string() },
            libc::EACCES | libc::ENOEXEC | libc::EISDIR => {
                Error::NotExecutable { path: exe.display().to_string(), reason: source.to_string() }
            }
            _ => Error::Sys { what: "execve", source },
        });
    }
    result.map(|()| pid)
}

fn seize_child(pid: Pid, options: i64) -> Result<(), Error> {
    let mut status = 0;
    // SAFETY: waitpid writes one int.
    let r = unsafe { libc::waitpid(pid, &mut status, libc::WUNTRACED) };
    if r < 0 || !libc::WIFSTOPPED(status) {
        return Err(Error::Protocol(format!("child {pid} did not stop before exec")));
    }
    if let Err(e) = sys::seize(pid, options) {
        let _ = sys::kill(pid, libc::SIGKILL);
        return Err(e);
    }
    sys::kill(pid, libc::SIGCONT)?;
    loop {
        let Some(w) = sys::wait(pid, false)? else { continue };
        match Stop::from_wait(w) {
            Stop::Event { event: libc::PTRACE_EVENT_EXEC, .. } => return Ok(()),
            Stop::Exited { .. } | Stop::Killed { .. } => return Ok(()),
            Stop::Signal { tid, signal } if signal != libc::SIGSTOP && signal != libc::SIGCONT => {
                sys::cont(tid, signal)?
            }
            s => sys::cont(s.tid(), 0)?,
        }
    }
}

/// Threads: holding the others during a foreign call, releasing them,
/// blocked calls, forked children, CPU pinning.
impl Tracer {
    /// PTRACE_INTERRUPTs every running thread but `tid` and waits until each
    /// has stopped. Stops that are not the interrupt are kept as pending.
    pub(crate) fn hold_others(&mut self, tid: Pid) -> Result<(), Error> {
        let others: Vec<Pid> =
            self.threads.iter().filter(|(&t, th)| t != tid && th.running && !th.exiting).map(|(&t, _)| t).collect();
        let mut waiting = Vec::new();
        for t in others {
            match sys::interrupt(t) {
                Ok(()) => waiting.push(t),
                Err(Error::TraceeDied { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        for t in waiting {
            let stop = match self.wait_thread(t) {
                Ok(s) => s,
                Err(Error::NoTracees) => continue,
                Err(e) => return Err(e),
            };
            self.handle(stop)?;
        }
        Ok(())
    }

    /// Resumes every held thread, processing the stops they reported while
    /// held. Stops early if one of them starts a foreign call of its own.
    pub fn release_others(&mut self) -> Result<(), Error> {
        let held: Vec<Pid> = self.threads.iter().filter(|(_, th)| !th.running).map(|(&t, _)| t).collect();
        for t in held {
            if self.owner.is_some() {
                break;
            }
            let Some(th) = self.threads.get_mut(&t) else { continue };
            if th.running {
                continue;
            }
            match th.pending.take() {
                Some(stop) => match self.handle(stop) {
                    Ok(()) | Err(Error::TraceeDied { .. }) => {}
                    Err(e) => return Err(e),
                },
                None => match self.resume(t, 0) {
                    Ok(()) => {}
                    Err(Error::TraceeDied { .. }) => {
                        if self.debug {
                            eprintln!("ffirec: debug: resume {t}: ESRCH");
                        }
                    }
                    Err(e) => return Err(e),
                },
            }
        }
        Ok(())
    }

    /// A forked child is not followed: give it back its real protections
    /// (it inherited ours) and detach. A vfork child shares our memory, so
    /// it is only detached.
    pub(crate) fn release_child(&mut self, child: Pid, vfork: bool, stop: Stop) -> Result<(), Error> {
        if !vfork && self.inject.is_some() {
            let regs = sys::getregs(child)?;
            let mut batch: Vec<(u64, u64, u32)> =
                self.guards.iter().map(|g| (g.start, g.end - g.start, g.prot)).collect();
            for l in &self.modules {
                batch.extend(l.text.iter().map(|t| (t.start, t.end - t.start, t.prot)));
            }
            // The child is not traced: its host-init pages are writable again.
            batch.extend(self.hostinit_child_batch());
            let child_mem = Mem::open(child)?;
            // Our breakpoints were copied too; an untraced int3 would kill it.
            if let Some(a) = self.rbrk_bp {
                child_mem.write(RemoteAddr(a), &[0xc3])?;
            }
            if let Some((a, b)) = self.entry_bp {
                child_mem.write(RemoteAddr(a), &[b])?;
            }
            for (&a, &(b, _)) in &self.ret_bps {
                child_mem.write(RemoteAddr(a), &[b])?;
            }
            let parent_mem = std::mem::replace(&mut self.mem, child_mem);
            let r = self.run_batch(child, &regs, &batch);
            self.mem = parent_mem;
            // The child's pid may come back as another process's.
            self.guard_cache.clear();
            r?;
            sys::setregs(child, &regs)?;
        }
        let sig = match stop {
            Stop::Signal { signal, .. } if signal != libc::SIGSTOP => signal,
            _ => 0,
        };
        sys::detach(child, sig)
    }

    /// Pins the recorder and `tid` to one CPU (one thread at a time: with
    /// several processes in foreign calls, only the first is pinned), a CPU
    /// the thread's own affinity allows (the recorder moves there if it must:
    /// the thread never runs where it asked not to). The recorder stays
    /// pinned after the call (its own affinity is nobody's business;
    /// [`Self::unpin_tracer`] lets it go when calls stop), so the next call's
    /// entry stop wakes it on the CPU the thread runs on.
    pub(crate) fn pin(&mut self, tid: Pid) {
        if !self.opts.pin_cpu || self.saved_affinity.is_some() {
            return;
        }
        let Some(theirs) = sys::get_affinity(tid) else { return };
        let cpu = match self.tracer_pin {
            Some((cpu, _)) if sys::allows(&theirs, cpu) => cpu,
            _ => {
                let here = sys::current_cpu();
                let Some(cpu) = Some(here).filter(|&c| sys::allows(&theirs, c)).or_else(|| sys::first_cpu(&theirs))
                else {
                    return;
                };
                let mine = match self.tracer_pin.take() {
                    Some((_, mine)) => Some(mine),
                    None => sys::get_affinity(0),
                };
                let Some(mine) = mine else { return };
                if sys::pin(0, cpu).is_none() {
                    sys::set_affinity(0, &mine);
                    return;
                }
                self.tracer_pin = Some((cpu, mine));
                cpu
            }
        };
        // The thread may run on that one CPU only (taskset, a one-CPU
        // machine or cpuset): its affinity is left alone (nothing to restore).
        let untouched = sys::only_cpu(&theirs) == Some(cpu);
        if untouched || sys::set_one_cpu(tid, cpu) {
            self.saved_affinity = Some(theirs);
            self.pinned_tid = Some(tid);
            self.pin_untouched = untouched;
        }
    }

    /// Gives `tid` its own affinity back, from here (the thread is stopped),
    /// and lets the recorder go too.
    pub(crate) fn unpin(&mut self, tid: Pid) {
        if self.pinned_tid != Some(tid) || self.burst.keeps() {
            return;
        }
        self.burst.pinned = false;
        self.pinned_tid = None;
        if let Some(theirs) = self.saved_affinity.take().filter(|_| !self.pin_untouched) {
            sys::set_affinity(tid, &theirs);
        }
        self.unpin_tracer();
    }

    /// `tid` is about to run host code through a go stub ([`crate::guard::GoBatch`]):
    /// the stub gives the thread its own affinity back itself, so it wakes
    /// on the recorder's CPU (no wake-up of another, possibly halted CPU)
    /// and runs no host instruction pinned. The recorder stays pinned.
    pub(crate) fn unpin_by_stub(&mut self, tid: Pid) -> Option<libc::cpu_set_t> {
        if self.pinned_tid != Some(tid) || self.burst.keeps() {
            return None;
        }
        self.burst.pinned = false;
        self.pinned_tid = None;
        self.saved_affinity.take().filter(|_| !self.pin_untouched)
    }

    /// The recorder's own affinity back (no thread is pinned any more).
    pub(crate) fn unpin_tracer(&mut self) {
        if self.pinned_tid.is_some() {
            return;
        }
        if let Some((_, mine)) = self.tracer_pin.take() {
            sys::set_affinity(0, &mine);
        }
    }

    /// The pinned thread left without an unpin (exec, exit): forget it.
    pub(crate) fn forget_pin(&mut self, tid: Pid) {
        if self.pinned_tid == Some(tid) {
            self.pinned_tid = None;
            self.saved_affinity = None;
            self.burst.pinned = false;
        }
    }

    /// A host-init stop of `tid` (see [`Burst`]): the second of a burst pins
    /// the thread with the recorder, unless a foreign call's pin is in
    /// charge or another burst's is not over yet.
    pub(crate) fn burst_stop(&mut self, tid: Pid) {
        // Threads of the tracked process only: theirs are the syscalls
        // host-init sees (a vfork child's write faults are host-init stops
        // too, its syscalls run unseen).
        if !self.opts.pin_cpu || self.burst.window.is_zero() || !self.hi_here() {
            return;
        }
        let now = Instant::now();
        let prev = self.burst.last.replace((tid, now));
        if self.pinned_tid == Some(tid) {
            if self.burst.pinned {
                self.burst.pinned_last = Some(now);
            }
            return;
        }
        if self.owner.is_some() {
            return;
        }
        let Some((t, at)) = prev else { return };
        if t != tid || now.duration_since(at) > self.burst.window {
            return;
        }
        // One pinned thread at a time: a quiet burst's makes way.
        if self.pinned_tid.is_some() && !(self.burst.quiet() && self.burst_unpin()) {
            return;
        }
        self.pin(tid);
        if self.pinned_tid == Some(tid) {
            self.burst.pinned = true;
            self.burst.pinned_last = Some(now);
            self.sink.counters.hostinit_pins += 1;
        }
    }

    /// Ends a burst's pin: the thread gets its own affinity back and leaves
    /// the recorder's CPU at once (the ring is drained beside it again). Only
    /// while it is between syscalls (every one of them stops at its entry
    /// with host-init) or inside one that cannot see or pass on its mask (a
    /// `read` it blocks in: the new mask applies when it wakes), never inside
    /// one that can: a `clone`/`fork` in progress would hand the pin to the
    /// child unseen, a `sched_setaffinity` would be undone. False when it
    /// cannot be done now.
    pub(crate) fn burst_unpin(&mut self) -> bool {
        let Some(tid) = self.pinned_tid.filter(|_| self.burst.pinned) else { return false };
        // A thread inside a foreign call (a burst pin it started the call
        // with serves the call now) keeps it until the call returns.
        let idle = |t: &crate::tracer::Thread| {
            t.go.is_none()
                && t.frames.is_empty()
                && match t.sys {
                    SysState::Idle => true,
                    SysState::InSyscall { nr, .. } | SysState::Prepared { nr, .. } => {
                        !MASK_SYSCALLS.contains(&(nr as i64))
                    }
                }
        };
        let between = match self.threads.get(&tid) {
            Some(t) => idle(t),
            None => match self.tgids.get(&tid).and_then(|g| self.procs.get(g)) {
                Some(p) => p.threads.get(&tid).is_none_or(idle),
                None => true,
            },
        };
        if !between {
            return false;
        }
        self.pinned_tid = None;
        self.burst.pinned = false;
        match self.saved_affinity.take() {
            Some(theirs) if !self.pin_untouched => match self.tracer_pin {
                Some((cpu, _)) => sys::set_affinity_away(tid, &theirs, cpu),
                None => sys::set_affinity(tid, &theirs),
            },
            // Its own affinity is our CPU: the recorder leaves instead.
            _ => self.unpin_tracer(),
        }
        true
    }

    /// [`Self::check_blocked`] for every process with a foreign call in progress.
    pub(crate) fn check_blocked_all(&mut self) -> Result<(), Error> {
        let busy: Vec<Pid> = std::iter::once((self.pid, self.owner))
            .chain(self.procs.values().map(|p| (p.pid, p.owner)))
            .filter(|(_, o)| o.is_some())
            .map(|(p, _)| p)
            .collect();
        for p in busy {
            self.activate(p);
            match self.check_blocked() {
                Ok(()) | Err(Error::TraceeDied { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Called on every timer tick: a foreign call sitting in the kernel while
    /// others are held may be waiting for one of them. Never deadlock.
    pub(crate) fn check_blocked(&mut self) -> Result<(), Error> {
        let Some(owner) = self.owner else { return Ok(()) };
        let others_held = self.others_held(owner);
        let in_syscall = match self.threads.get(&owner).map(|t| &t.sys) {
            Some(SysState::InSyscall { nr, .. }) => Some(*nr),
            _ => None,
        };
        let after = if in_syscall.is_some() { BLOCKED_IN_SYSCALL_AFTER } else { BLOCKED_AFTER };
        if !others_held || self.last_owner_stop.elapsed() < after {
            return Ok(());
        }
        sys::interrupt(owner)?;
        // The interrupt is satisfied by whichever stop comes first; under
        // PTRACE_SYSCALL that is the blocked syscall's exit (-ERESTARTSYS).
        let mut reenter = false;
        let mut waiting = None;
        match self.wait_thread(owner)? {
            Stop::Interrupt { .. } => {}
            Stop::Syscall { .. } => {
                let t = self.threads.entry(owner).or_default();
                waiting = Some(match std::mem::take(&mut t.sys) {
                    // The exit stop: the kernel restarts the syscall when resumed.
                    SysState::InSyscall { nr, args, ranges, known, .. } => Waiting { nr, args, ranges, known },
                    // At an entry stop the syscall has not run: make it run again later.
                    SysState::Prepared { nr, ranges, known, .. } => {
                        reenter = true;
                        Waiting { nr, args: [0; 6], ranges, known }
                    }
                    SysState::Idle => {
                        reenter = true;
                        Waiting { nr: u64::MAX, args: [0; 6], ranges: Vec::new(), known: false }
                    }
                });
            }
            // It made progress after all.
            stop => return self.handle(stop),
        }
        let regs = sys::getregs(owner)?;
        let why = match in_syscall {
            Some(nr) => format!(
                "blocked in syscall {nr} ({}) for more than {:.1} s",
                crate::syscalls::name_of(nr),
                after.as_secs_f64()
            ),
            None => format!("blocked for more than {:.1} s", after.as_secs_f64()),
        };
        self.release_blocked(owner, regs, reenter, waiting, &why)
    }

    /// The owner, stopped in foreign mode, waits for another thread (or may):
    /// restores every protection, releases the held threads and records a
    /// `Blocked` gap. With `waiting` (stopped at a syscall) guarding resumes
    /// at that syscall's exit ([`Self::rearm_after_wait`]), so the gap covers
    /// only the wait; otherwise when the thread next runs foreign text.
    /// `reenter`: stopped at a syscall entry, the syscall runs again.
    pub(crate) fn release_blocked(
        &mut self,
        owner: Pid,
        mut regs: sys::RawRegs,
        reenter: bool,
        waiting: Option<Waiting>,
        why: &str,
    ) -> Result<(), Error> {
        let call = self.threads.get(&owner).and_then(|t| t.frames.last()).map(|f| f.call).unwrap_or(0);
        if !self.warned_blocked {
            self.warned_blocked = true;
            let sym = self.call_name(owner);
            let until = if waiting.is_some() { "the wait returns" } else { "it runs library code again" };
            eprintln!(
                "ffirec: warning: foreign call #{call} ({sym}) on thread {owner} {why} while other threads were held; releasing them and dropping the guards until {until} (recorded as a gap; further waits are not reported here)"
            );
        }
        // In a callback the protections are the host's already: nothing to
        // run, and a syscall-entry stop just goes on into the syscall.
        if self.foreign_mode || !self.guards.is_empty() {
            let mut batch: Vec<(u64, u64, u32)> =
                self.guards.iter().map(|g| (g.start, g.end - g.start, g.prot)).collect();
            batch.extend(self.text_batch(false));
            // Tracked host-init pages go back to read-only: the released
            // threads must not write them unrecorded.
            let open = match self.threads.get(&owner).map(|t| &t.sys) {
                Some(
                    crate::syscalls::SysState::InSyscall { open, .. }
                    | crate::syscalls::SysState::Prepared { open, .. },
                ) => open.clone(),
                _ => Vec::new(),
            };
            batch.extend(self.hostinit_release_batch(&open)?);
            self.run_batch(owner, &regs, &batch)?;
            if reenter {
                regs.rip -= 2;
                regs.rax = regs.orig_rax;
            }
            sys::setregs(owner, &regs)?;
        }
        self.guards.clear();
        self.foreign_mode = false;
        self.set_foreign_tid(0);
        if let Some(since) = self.foreign_since.take() {
            self.sink.counters.foreign_ns += since.elapsed().as_nanos() as u64;
        }
        if let Some(t) = self.threads.get_mut(&owner) {
            for f in &mut t.frames {
                f.suspended = true;
            }
            t.sys = Default::default();
            t.rearm = waiting;
        }
        self.sink.counters.gaps += 1;
        self.sink.push(Event::Gap { tid: owner as u32, reason: GapReason::Blocked, detail: call })?;
        self.unpin(owner);
        self.owner = None;
        // The owner is stopped: resume it first, then the others.
        self.resume(owner, 0)?;
        if self.debug {
            let st: Vec<(Pid, bool, bool)> =
                self.threads.iter().map(|(&t, th)| (t, th.running, th.pending.is_some())).collect();
            eprintln!("ffirec: debug: released {owner}; threads (tid, running, pending): {st:?}");
        }
        self.release_others()
    }

    /// The syscall a released call waited in has returned (its exit stop;
    /// no other call is in progress): record what the kernel touched, hold
    /// the other threads again and re-apply the guards; the rest of the call
    /// is recorded as usual. A thread that left the call meanwhile (longjmp
    /// out of a signal handler) is only resumed.
    pub(crate) fn rearm_after_wait(&mut self, tid: Pid, w: Waiting) -> Result<(), Error> {
        let regs = sys::getregs(tid)?;
        if w.known && w.nr == regs.orig_rax && !w.ranges.is_empty() {
            let ret = regs.rax as i64;
            let ranges = crate::syscalls::actual(&w.ranges, ret);
            if !ranges.is_empty() {
                self.sink.push(Event::SyscallAccess { tid: tid as u32, nr: w.nr, args: w.args, ret, ranges })?;
            }
        }
        let top = self.threads.get(&tid).and_then(|t| t.frames.last().copied());
        let Some(f) = top.filter(|f| f.suspended && regs.rsp < f.entry_rsp) else { return self.resume(tid, 0) };
        if let Some(t) = self.threads.get_mut(&tid) {
            for fr in &mut t.frames {
                fr.suspended = false;
            }
        }
        if f.kind == FrameKind::Foreign {
            return self.switch_to_foreign(tid, regs);
        }
        // In a callback: host protections stay; the call is ours again.
        self.owner = Some(tid);
        self.hold_others(tid)?;
        self.last_owner_stop = std::time::Instant::now();
        self.resume(tid, 0)
    }

    /// Some thread other than `tid` lives on (held, or new and not stopped
    /// yet; exiting threads run on regardless).
    pub(crate) fn others_live(&self, tid: Pid) -> bool {
        self.threads.iter().any(|(&t, th)| t != tid && !th.exiting)
    }

    /// Some thread other than `tid` is held (stopped by us).
    pub(crate) fn others_held(&self, tid: Pid) -> bool {
        self.threads.iter().any(|(&t, th)| t != tid && !th.running)
    }

    pub(crate) fn call_name(&self, tid: Pid) -> String {
        let frames = self.threads.get(&tid).map(|t| t.frames.as_slice()).unwrap_or(&[]);
        let Some(f) = frames.iter().rev().find(|f| f.kind == FrameKind::Foreign) else { return "?".into() };
        self.module_text(f.target)
            .and_then(|l| l.module.symbolize(f.target))
            .map(|(s, _)| s.name.clone())
            .unwrap_or_else(|| format!("{:#x}", f.target))
    }
}

/// Syscalls that read, set or hand on a thread's CPU mask: a burst's pin
/// never ends while its thread is inside one.
const MASK_SYSCALLS: &[i64] = &[
    libc::SYS_clone,
    libc::SYS_clone3,
    libc::SYS_fork,
    libc::SYS_vfork,
    libc::SYS_execve,
    libc::SYS_execveat,
    libc::SYS_sched_getaffinity,
    libc::SYS_sched_setaffinity,
];

/// Co-pinning for bursts of host-init stops (write faults on tracked pages,
/// the host syscalls host-init stops at): a host thread runs unpinned, so
/// each of those stops waits for the other (maybe halted) CPU to wake, twice
/// (~80-120 µs on a 2-vCPU VM, ~8 µs when the thread and the recorder share
/// a CPU). While such stops come often, the stopping thread is pinned with
/// the recorder ([`Tracer::pin`], hidden from the program like a call's
/// pin); once none came for `window`, it gets its own affinity back, so the
/// allocation ring is drained in parallel with the program again.
#[derive(Debug)]
pub(crate) struct Burst {
    /// The pin (`pinned_tid`) is a burst's, not a foreign call's.
    pub pinned: bool,
    /// The last host-init stop: its thread and time.
    last: Option<(Pid, Instant)>,
    /// The last host-init stop of the pinned thread.
    pinned_last: Option<Instant>,
    /// Two stops of one thread this close start a burst; this long without
    /// one ends it (FFIREC_HOSTINIT_PIN_MS; 0 turns burst pinning off).
    window: Duration,
}

impl Default for Burst {
    fn default() -> Burst {
        let ms = std::env::var("FFIREC_HOSTINIT_PIN_MS").ok().and_then(|v| v.parse::<u64>().ok());
        Burst { pinned: false, last: None, pinned_last: None, window: Duration::from_millis(ms.unwrap_or(2)) }
    }
}

impl Burst {
    /// The burst's pinned thread has had no host-init stop for `window`.
    pub(crate) fn quiet(&self) -> bool {
        self.pinned && self.pinned_last.is_none_or(|t| t.elapsed() > self.window)
    }

    /// The pin is a burst's that is not over: a foreign call's return
    /// leaves it in place.
    pub(crate) fn keeps(&self) -> bool {
        self.pinned && !self.quiet()
    }
}
