//! Host, foreign and neutral code; each thread's stack of domain frames; and
//! the boundary crossings that push and pop them (call entry, return,
//! callback, longjmp), each switching the process's protections in one batch.
//!
//! Boundaries are found by execute permission: in host mode foreign text is
//! not executable, in foreign mode host text is not; returns that would land
//! in neutral code get a breakpoint on the return address instead.

use std::time::Instant;

use ffirec_format::{Domain, Event};

use crate::maps::PROT_X;
use crate::process::Stop;
use crate::sys::{self, Pid, RawRegs, RemoteAddr};
use crate::tracer::{Thread, Tracer};
use crate::Error;

/// The C runtime: runs in whichever mode its caller is in.
pub const BUILTIN_NEUTRAL: &[&str] = &[
    "ld-linux*",
    "ld-*.so*",
    "libc.so*",
    "libc-*.so",
    "libm.so*",
    "libm-*.so",
    "libmvec.so*",
    "libpthread.so*",
    "libpthread-*.so",
    "libdl.so*",
    "libdl-*.so",
    "librt.so*",
    "librt-*.so",
    "libgcc_s.so*",
    "libstdc++.so*",
    "linux-vdso.so*",
    "[vdso]",
    "libffirec_alloc*",
];

/// `--lib` / `--neutral` patterns and which of them ever matched.
#[derive(Debug, Clone)]
pub struct Policy {
    pub foreign: Vec<String>,
    pub neutral: Vec<String>,
    pub foreign_matched: Vec<bool>,
}

/// Shell-style glob: `*` any run, `?` one character.
pub fn glob(pat: &str, s: &str) -> bool {
    let (p, s) = (pat.as_bytes(), s.as_bytes());
    let (mut pi, mut si) = (0, 0);
    let (mut star, mut mark) = (None, 0);
    while si < s.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some(pi);
            mark = si;
            pi += 1;
        } else if let Some(st) = star {
            pi = st + 1;
            mark += 1;
            si = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// A pattern matches a path (when it has a `/`), else the file name or
/// soname; a bare name like `libz` also matches `libz.so*`.
pub fn matches(pat: &str, path: &str, soname: Option<&str>) -> bool {
    if pat.contains('/') {
        return glob(pat, path);
    }
    let file = path.rsplit('/').next().unwrap_or(path);
    if glob(pat, file) || soname.is_some_and(|so| glob(pat, so)) {
        return true;
    }
    let bare = !pat.contains(['*', '?']) && !pat.contains(".so");
    bare && (file.starts_with(&format!("{pat}.so")) || soname.is_some_and(|so| so.starts_with(&format!("{pat}.so"))))
}

impl Policy {
    pub fn new(foreign: Vec<String>, extra_neutral: Vec<String>) -> Policy {
        let mut neutral: Vec<String> = BUILTIN_NEUTRAL.iter().map(|s| s.to_string()).collect();
        neutral.extend(extra_neutral);
        let foreign_matched = vec![false; foreign.len()];
        Policy { foreign, neutral, foreign_matched }
    }

    /// Domain of an object. The main executable is always host; an explicit
    /// `--lib` wins over the built-in neutral list.
    pub fn classify(&mut self, path: &str, soname: Option<&str>, is_main: bool) -> Domain {
        if is_main {
            return Domain::Host;
        }
        let mut foreign = false;
        for (i, p) in self.foreign.iter().enumerate() {
            if matches(p, path, soname) {
                self.foreign_matched[i] = true;
                foreign = true;
            }
        }
        if foreign {
            return Domain::Foreign;
        }
        if self.neutral.iter().any(|p| matches(p, path, soname)) {
            return Domain::Neutral;
        }
        if self.foreign.is_empty() {
            Domain::Foreign
        } else {
            Domain::Host
        }
    }

    pub fn unmatched(&self) -> impl Iterator<Item = &str> {
        self.foreign.iter().zip(&self.foreign_matched).filter(|(_, m)| !**m).map(|(p, _)| p.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FrameKind {
    /// Host (or neutral on its behalf) called into foreign code.
    Foreign,
    /// Foreign code called back into host code.
    Callback,
}

/// One boundary crossing still in progress on a thread.
#[derive(Debug, Clone, Copy)]
pub struct Frame {
    pub kind: FrameKind,
    /// The foreign call this frame belongs to.
    pub call: u64,
    /// `rsp` at the crossing (pointing at the return address).
    pub entry_rsp: u64,
    pub return_addr: u64,
    /// Where the crossing went (the called function).
    pub target: u64,
    /// Guards were dropped because the call blocked (see `Gap`); re-armed
    /// when the thread next enters foreign text.
    pub suspended: bool,
}

/// Boundary crossings: entry, return, callback, longjmp, and the mode
/// switches they cause (one protection batch each).
impl Tracer {
    /// Exec fault on foreign text while host-mode protections are in force:
    /// a call entry, a callback returning, or a blocked call re-arming.
    pub(crate) fn on_foreign_text(&mut self, tid: Pid, regs: RawRegs) -> Result<(), Error> {
        self.drain_allocs()?;
        let rsp = regs.rsp;
        let top = self.threads.get(&tid).and_then(|t| t.frames.last().copied());
        if let Some(f) = top {
            if f.kind == FrameKind::Foreign && f.suspended {
                if rsp < f.entry_rsp {
                    // Still inside the blocked call: re-arm without a new Call.
                    if let Some(t) = self.threads.get_mut(&tid) {
                        for fr in &mut t.frames {
                            fr.suspended = false;
                        }
                    }
                    return self.switch_to_foreign(tid, regs);
                }
                while self.pop_frame(tid)?.is_some() {}
            } else if f.kind == FrameKind::Callback && rsp > f.entry_rsp {
                let is_ret = regs.rip == f.return_addr && rsp == f.entry_rsp + 8;
                let frames = self.threads.get(&tid).map(|t| t.frames.as_slice()).unwrap_or(&[]);
                let parent = frames.len().checked_sub(2).and_then(|i| frames.get(i)).copied();
                if is_ret || parent.is_some_and(|p| rsp < p.entry_rsp) {
                    // The callback returned (or unwound) into the foreign call that made it.
                    self.pop_frame(tid)?;
                    self.sink.push(Event::CallbackReturn { tid: tid as u32, call: f.call, rax: regs.rax })?;
                    return self.switch_to_foreign(tid, regs);
                }
                // A longjmp out of the callback unwound the foreign call too:
                // close those frames; this is a new call.
                self.pop_unwound(tid, rsp, regs.rax)?;
            }
        }
        let return_addr = self.mem.read_u64(RemoteAddr(rsp)).unwrap_or(0);
        let (module, symbol) = match self.module_text(regs.rip) {
            Some(l) => (l.index, l.symbol_index(regs.rip)),
            None => (u32::MAX, None),
        };
        let call = self.next_call;
        self.next_call += 1;
        self.sink.counters.calls += 1;
        let r = sys::to_regs(&regs);
        self.sink.push(Event::Call {
            tid: tid as u32,
            call,
            target: regs.rip,
            module,
            symbol,
            args: r.args(),
            rsp,
            return_addr,
        })?;
        self.push_frame(
            tid,
            Frame { kind: FrameKind::Foreign, call, entry_rsp: rsp, return_addr, target: regs.rip, suspended: false },
        )?;
        self.switch_to_foreign(tid, regs)
    }

    /// Pushes a frame; when its return would not fault (the return address
    /// is in neutral code), plants a breakpoint there.
    pub(crate) fn push_frame(&mut self, tid: Pid, f: Frame) -> Result<(), Error> {
        let faults = self.module_text(f.return_addr).is_some_and(|l| match f.kind {
            FrameKind::Foreign => l.module.domain == Domain::Host,
            FrameKind::Callback => l.module.domain == Domain::Foreign,
        });
        if !faults && f.return_addr != 0 {
            if let Some(e) = self.ret_bps.get_mut(&f.return_addr) {
                e.1 += 1;
            } else {
                let mut b = [0u8; 1];
                self.mem.read(RemoteAddr(f.return_addr), &mut b)?;
                // An allocation breakpoint may already sit there (`allocbp`).
                let orig = self.allocbp.as_ref().and_then(|a| a.saved_byte(f.return_addr)).unwrap_or(b[0]);
                self.mem.write(RemoteAddr(f.return_addr), &[0xcc])?;
                self.ret_bps.insert(f.return_addr, (orig, 1));
            }
        }
        self.threads.entry(tid).or_default().frames.push(f);
        Ok(())
    }

    pub(crate) fn pop_frame(&mut self, tid: Pid) -> Result<Option<Frame>, Error> {
        let Some(f) = self.threads.get_mut(&tid).and_then(|t| t.frames.pop()) else { return Ok(None) };
        if let Some(e) = self.ret_bps.get_mut(&f.return_addr) {
            e.1 -= 1;
            if e.1 == 0 {
                let orig = e.0;
                self.ret_bps.remove(&f.return_addr);
                if !self.allocbp.as_ref().is_some_and(|a| a.owns(f.return_addr)) {
                    self.mem.write(RemoteAddr(f.return_addr), &[orig])?;
                }
            }
        }
        Ok(Some(f))
    }

    /// A return-address breakpoint fired: a return through neutral code (or
    /// an unrelated pass over the same address, which we step over).
    pub(crate) fn on_return_bp(&mut self, tid: Pid, mut regs: RawRegs) -> Result<(), Error> {
        let at = regs.rip - 1;
        regs.rip = at;
        let top = self.threads.get(&tid).and_then(|t| t.frames.last().copied());
        if let Some(f) = top {
            if f.return_addr == at && regs.rsp >= f.entry_rsp + 8 {
                self.drain_allocs()?;
                self.pop_frame(tid)?;
                match f.kind {
                    FrameKind::Foreign => {
                        self.push_return(tid, f.call, regs.rax, regs.rdx)?;
                        if self.threads.get(&tid).is_some_and(Thread::in_foreign) {
                            sys::setregs(tid, &regs)?;
                            return self.resume(tid, 0);
                        }
                        return self.switch_to_host(tid, regs);
                    }
                    FrameKind::Callback => {
                        self.sink.push(Event::CallbackReturn { tid: tid as u32, call: f.call, rax: regs.rax })?;
                        return self.switch_to_foreign(tid, regs);
                    }
                }
            }
        }
        // Not the frame's return: step over the breakpoint.
        let Some(&(orig, _)) = self.ret_bps.get(&at) else { return self.resume(tid, 0) };
        self.mem.write(RemoteAddr(at), &[orig])?;
        sys::setregs(tid, &regs)?;
        sys::singlestep(tid, 0)?;
        let mut deferred = Vec::new();
        loop {
            match self.wait_thread(tid)? {
                Stop::Signal { signal: libc::SIGTRAP, .. } => break,
                Stop::Signal { signal, .. } => {
                    deferred.push(signal);
                    break;
                }
                Stop::Exited { .. } | Stop::Killed { .. } => return Err(Error::TraceeDied { pid: tid }),
                _ => sys::singlestep(tid, 0)?,
            }
        }
        if self.ret_bps.contains_key(&at) {
            self.mem.write(RemoteAddr(at), &[0xcc])?;
        }
        let sig = deferred.first().copied().unwrap_or(0);
        self.resume(tid, sig)
    }

    /// Pops frames that a longjmp (or a callback unwinding) skipped.
    pub(crate) fn pop_unwound(&mut self, tid: Pid, rsp: u64, rax: u64) -> Result<(), Error> {
        loop {
            let Some(f) = self.threads.get(&tid).and_then(|t| t.frames.last().copied()) else { return Ok(()) };
            if f.entry_rsp > rsp {
                return Ok(());
            }
            self.pop_frame(tid)?;
            match f.kind {
                FrameKind::Foreign => self.push_return(tid, f.call, rax, 0)?,
                FrameKind::Callback => self.sink.push(Event::CallbackReturn { tid: tid as u32, call: f.call, rax })?,
            }
        }
    }

    /// Exec fault on host text in foreign mode: return, longjmp or callback.
    pub(crate) fn on_host_text(&mut self, tid: Pid, regs: RawRegs) -> Result<(), Error> {
        self.drain_allocs()?;
        let rsp = regs.rsp;
        let Some(f) = self.threads.get(&tid).and_then(|t| t.frames.last().copied()) else {
            return self.program_signal(tid, libc::SIGSEGV);
        };
        if (regs.rip == f.return_addr && rsp == f.entry_rsp + 8) || rsp > f.entry_rsp {
            let is_ret = regs.rip == f.return_addr && rsp == f.entry_rsp + 8;
            self.pop_frame(tid)?;
            self.push_return(tid, f.call, regs.rax, regs.rdx)?;
            if !is_ret {
                self.pop_unwound(tid, rsp, regs.rax)?;
            }
            let still_foreign = self.threads.get(&tid).is_some_and(Thread::in_foreign);
            if still_foreign {
                // Unwound into an outer foreign frame running host code: a callback.
                return self.enter_callback(tid, regs);
            }
            return self.switch_to_host(tid, regs);
        }
        self.enter_callback(tid, regs)
    }

    pub(crate) fn enter_callback(&mut self, tid: Pid, regs: RawRegs) -> Result<(), Error> {
        let call = self.threads.get(&tid).and_then(|t| t.frames.last()).map(|f| f.call).unwrap_or(0);
        let return_addr = self.mem.read_u64(RemoteAddr(regs.rsp)).unwrap_or(0);
        let r = sys::to_regs(&regs);
        for a in r.args() {
            self.arena_blocks.export(a);
        }
        self.hostinit_on_escape(&r.args())?;
        self.sink.counters.callbacks += 1;
        self.sink.push(Event::Callback {
            tid: tid as u32,
            call,
            target: regs.rip,
            args: r.args(),
            rsp: regs.rsp,
            return_addr,
        })?;
        self.push_frame(
            tid,
            Frame {
                kind: FrameKind::Callback,
                call,
                entry_rsp: regs.rsp,
                return_addr,
                target: regs.rip,
                suspended: false,
            },
        )?;
        self.switch_to_host(tid, regs)
    }

    /// Holds every other thread, guards host memory, flips text permissions.
    pub(crate) fn switch_to_foreign(&mut self, tid: Pid, regs: RawRegs) -> Result<(), Error> {
        if self.owner != Some(tid) {
            self.owner = Some(tid);
            self.hold_others(tid)?;
        }
        // Pinned at entry, not at the first fault: on an idle machine a
        // ptrace round trip across CPUs costs ~100 µs (the other CPU
        // sleeps), so even a call that never faults pays more unpinned
        // (calls bench, idle VM: 552 µs per call unpinned, 77 µs pinned).
        // Back from a host callback (which ran unpinned) too. Another
        // thread's burst pin (`process::Burst`) makes way if it can.
        if self.burst.pinned && self.pinned_tid != Some(tid) {
            self.burst_unpin();
        }
        self.pin(tid);
        self.last_owner_stop = Instant::now();
        // A call released while blocked (in a callback too) is guarded again.
        if let Some(t) = self.threads.get_mut(&tid) {
            for f in &mut t.frames {
                f.suspended = false;
            }
        }
        self.hostinit_flush()?;
        self.mark_texts(tid, &regs)?;
        let guards = self.compute_guards(tid, &regs)?;
        let mut batch: Vec<(u64, u64, u32)> = guards.iter().map(|g| (g.start, g.end - g.start, 0)).collect();
        batch.extend(self.text_batch(true));
        self.guards = guards;
        self.foreign_mode = true;
        self.set_foreign_tid(tid);
        self.run_batch(tid, &regs, &batch)?;
        self.foreign_resumed(tid);
        if self.foreign_since.is_none() {
            self.foreign_since = Some(Instant::now());
        }
        sys::setregs(tid, &regs)?;
        self.resume(tid, 0)
    }

    /// Restores real protections; releases the other threads when no call
    /// is in progress any more on `tid`.
    pub(crate) fn switch_to_host(&mut self, tid: Pid, regs: RawRegs) -> Result<(), Error> {
        let mut batch: Vec<(u64, u64, u32)> = self.guards.iter().map(|g| (g.start, g.end - g.start, g.prot)).collect();
        batch.extend(self.text_batch(false));
        if !self.moved.is_empty() {
            // Guarded pages that moved (mremap) are PROT_NONE at their new place.
            let moved = std::mem::take(&mut self.moved);
            for m in crate::maps::read(self.pid)? {
                if m.prot == 0 && !m.shared && moved.iter().any(|&(p, n)| p < m.end && m.start < p + n.max(1)) {
                    batch.push((m.start, m.end - m.start, crate::maps::PROT_R | crate::maps::PROT_W));
                }
            }
        }
        // Tracked host-init pages were guarded read-write: read-only again.
        batch.extend(self.hostinit_unguard_batch());
        let done = self.threads.get(&tid).is_none_or(|t| t.frames.is_empty());
        // Any other thread (held, or new and not stopped yet) would be let
        // run when the call is over: the batch must be done before that.
        let live = self.threads.iter().any(|(&t, th)| t != tid && !th.exiting);
        let others = done && live;
        // Into a callback with other threads held: its syscalls must stop (a
        // futex wait there releases them, see `syscalls`), and a thread
        // sent through the stop-free batch runs on with PTRACE_CONT.
        let callback_held = !done && live;
        if !others && !callback_held {
            // Nothing else may run before the batch is done: the thread runs
            // it on its way back, with no stop.
            self.guards.clear();
            self.foreign_mode = false;
            self.set_foreign_tid(0);
            if let Some(since) = self.foreign_since.take() {
                self.sink.counters.foreign_ns += since.elapsed().as_nanos() as u64;
            }
            // The host code runs with the thread's own affinity: the stub
            // restores it (callbacks too: they are host code).
            let affinity = self.unpin_by_stub(tid);
            if done {
                self.owner = None;
            }
            return self.run_batch_go(tid, &regs, &batch, affinity.as_ref());
        }
        self.run_batch(tid, &regs, &batch)?;
        self.guards.clear();
        self.foreign_mode = false;
        self.set_foreign_tid(0);
        if let Some(since) = self.foreign_since.take() {
            self.sink.counters.foreign_ns += since.elapsed().as_nanos() as u64;
        }
        sys::setregs(tid, &regs)?;
        if done {
            self.unpin(tid);
            self.owner = None;
            self.resume(tid, 0)?;
            self.release_others()
        } else {
            self.resume(tid, 0)
        }
    }

    /// Text permissions for a mode: in foreign mode host text loses EXEC, in
    /// host mode foreign text does. Neutral text never changes.
    pub fn text_batch(&self, foreign: bool) -> Vec<(u64, u64, u32)> {
        let mut v = Vec::new();
        for l in &self.modules {
            let strip = match l.module.domain {
                Domain::Foreign => !foreign,
                Domain::Host => foreign,
                Domain::Neutral => continue,
            };
            for t in &l.text {
                v.push((t.start, t.end - t.start, if strip { t.prot & !PROT_X } else { t.prot }));
            }
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs() {
        assert!(glob("ld-linux*", "ld-linux-x86-64.so.2"));
        assert!(glob("lib?.so", "libz.so"));
        assert!(!glob("libc.so*", "libcrypto.so.3"));
        assert!(glob("*", ""));
        assert!(glob("a*b*c", "axxbyyc"));
        assert!(!glob("a*b*c", "axxbyy"));
    }

    #[test]
    fn patterns() {
        assert!(matches("libz.so.1", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", Some("libz.so.1")));
        assert!(matches("libz", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", Some("libz.so.1")));
        assert!(matches("/usr/lib/*/libz.so*", "/usr/lib/x86_64-linux-gnu/libz.so.1.2.13", None));
        assert!(!matches("libz", "/usr/lib/libzstd.so.1", Some("libzstd.so.1")));
    }

    #[test]
    fn classification() {
        let mut p = Policy::new(vec![], vec![]);
        assert_eq!(p.classify("/lib/x86_64-linux-gnu/libc.so.6", Some("libc.so.6"), false), Domain::Neutral);
        assert_eq!(p.classify("/tmp/libfoo.so", None, false), Domain::Foreign);
        assert_eq!(p.classify("/tmp/prog", None, true), Domain::Host);
        let mut p = Policy::new(vec!["libfoo.so".into(), "libnever*".into()], vec![]);
        assert_eq!(p.classify("/tmp/libfoo.so", Some("libfoo.so"), false), Domain::Foreign);
        assert_eq!(p.classify("/tmp/libbar.so", None, false), Domain::Host);
        assert_eq!(p.unmatched().collect::<Vec<_>>(), vec!["libnever*"]);
    }
}
