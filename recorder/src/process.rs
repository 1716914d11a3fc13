//! Spawning the tracee and the kinds of stop it reports.
//!
//! The child is forked by hand so it can stop itself before `execve` and be
//! `PTRACE_SEIZE`d (which, unlike `PTRACE_TRACEME`, allows
//! `PTRACE_INTERRUPT`). Everything the child touches after `fork` is prepared
//! before it: it only calls `raise`, `execve`, `write` and `_exit`.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::sys::{self, Pid, WaitStatus};
use crate::Error;

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
