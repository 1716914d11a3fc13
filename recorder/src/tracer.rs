//! The recorder's state and its wait loop: every stop is dispatched from here
//! to the boundary crossings (`domain`), thread holding (`process`), the
//! guard machinery (`guard`), the fault path (`fault`) or syscall handling
//! (`syscalls`). Also here: program image setup (entry breakpoint, module
//! scan, the ld.so `r_brk` breakpoint for dlopen) and the program's own signals.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use ffirec_decode::{DecodeCache, MemAccess};
use ffirec_format::{AllocFn, Domain, Event, ExitStatus, Header, Policy as FmtPolicy};

use crate::domain::{Frame, FrameKind, Policy};
use crate::guard::{GuardRange, Injected};
use crate::maps::PROT_X;
use crate::modules::{self, Loaded};
use crate::process::{self, Stop};
use crate::sink::Sink;
use crate::sys::{self, Mem, Pid, RawRegs, RemoteAddr};
use crate::{Error, Options, Outcome};

pub(crate) const SEGV_ACCERR: i32 = 2;

/// How long a foreign call may sit in the kernel, with other threads held,
/// before we assume it waits for one of them.
pub(crate) const BLOCKED_AFTER: Duration = Duration::from_millis(1500);

/// Records drained between two `WNOHANG` polls while the program runs.
const DRAIN_BATCH: usize = 4096;
/// Backlog below which the recorder lets records accumulate (1 MiB of
/// slots, 1/32 of the default ring) rather than drain right behind the
/// producer. The program waits for this much at its next stop: a quarter of
/// the ring cost the alloc bench ~6 ms of its 1 M pairs at the foreign call,
/// 8 K slots made the loop slower (lines read while still being written).
const DRAIN_BEHIND: u64 = crate::alloc::DEFAULT_CAPACITY as u64 / 32;
/// The longest and shortest sleep of an idle recorder that drains the
/// allocation ring (doubling from the shortest while the ring stays empty).
/// The longest is well below the time a program allocating flat out takes
/// to fill the default ring (~13 ms for its 2^20 slots), so a burst that
/// starts while the recorder sleeps finds it draining before the ring is full.
const IDLE_MIN: Duration = Duration::from_micros(100);
const IDLE_MAX: Duration = Duration::from_millis(2);
/// The recorder keeps its CPU pin between calls; this long without a call
/// (checked on the 0.5 s ticker) lets it go.
const IDLE_UNPIN: Duration = Duration::from_millis(500);

static SIGINTS: AtomicU32 = AtomicU32::new(0);
/// SIGALRM ticks not yet seen by the wait loop.
static TICKS: AtomicU32 = AtomicU32::new(0);
static SIGTERMS: AtomicU32 = AtomicU32::new(0);

extern "C" fn on_sigint(_: libc::c_int) {
    SIGINTS.fetch_add(1, Ordering::Relaxed);
}
extern "C" fn on_sigterm(_: libc::c_int) {
    SIGTERMS.fetch_add(1, Ordering::Relaxed);
}
extern "C" fn on_alarm(_: libc::c_int) {
    TICKS.fetch_add(1, Ordering::Relaxed);
}

fn install_handlers() {
    for (sig, h) in [
        (libc::SIGINT, on_sigint as extern "C" fn(libc::c_int)),
        (libc::SIGTERM, on_sigterm),
        (libc::SIGALRM, on_alarm),
    ] {
        // SAFETY: sigaction with a plain handler that only touches atomics;
        // no SA_RESTART so a blocking waitpid returns EINTR.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = h as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            sa.sa_flags = 0;
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

/// A 0.5 s periodic SIGALRM aimed at this thread (see [`sys::AlarmTimer`]).
fn start_ticker() -> Option<sys::AlarmTimer> {
    let t = sys::AlarmTimer::new()?;
    t.set(Some(Duration::from_millis(500)));
    Some(t)
}

#[derive(Debug, Default)]
pub(crate) struct Thread {
    pub frames: Vec<Frame>,
    /// Resumed by us and not yet reported a stop.
    pub running: bool,
    /// A stop we have not acted on yet (the thread was held).
    pub pending: Option<Stop>,
    /// Past its PTRACE_EVENT_EXIT stop.
    pub exiting: bool,
    /// `rsp` and `fs_base` at the PTRACE_EVENT_EXIT stop. An exiting thread
    /// keeps running (it cannot be held), so the guard set must still leave
    /// its stack and TCB alone: the kernel's CLONE_CHILD_CLEARTID write and
    /// futex wake land there, and pthread_join waits for them.
    pub exit_regs: Option<(u64, u64)>,
    /// Syscall-stop bookkeeping (foreign-mode syscalls into guarded memory).
    pub sys: crate::syscalls::SysState,
    /// Base of the thread's alternate signal stack, once asked (None inside: none set).
    pub altstack: Option<Option<(u64, u64)>>,
    /// Signals held back during foreign calls (see `signals`).
    pub sigs: crate::signals::SigState,
    /// A protection batch the thread runs without stopping (`guard::GoBatch`).
    pub go: Option<crate::guard::GoBatch>,
    /// Released while its foreign call waits in this syscall (see
    /// `process::Waiting`): guarding resumes at the syscall's exit stop.
    pub rearm: Option<crate::process::Waiting>,
}

impl Thread {
    /// True when the thread's code runs with foreign-mode protections.
    pub fn in_foreign(&self) -> bool {
        self.frames.last().is_some_and(|f| f.kind == FrameKind::Foreign && !f.suspended)
    }
}

pub(crate) struct Tracer {
    pub pid: Pid,
    pub mem: Mem,
    pub opts: Options,
    pub policy: Policy,
    pub sink: Sink,
    pub threads: BTreeMap<Pid, Thread>,
    pub modules: Vec<Loaded>,
    pub main_exe: String,
    pub inject: Option<Injected>,
    /// The thread whose call is in progress; every other thread is held.
    pub owner: Option<Pid>,
    /// Process-wide protection mode: foreign text executable, host text not, guards on.
    pub foreign_mode: bool,
    /// Ranges currently PROT_NONE (sorted), with their real protection.
    pub guards: Vec<GuardRange>,
    pub decode: DecodeCache,
    /// When a fault may use the cached code bytes at `rip` (`fault::CodeTrust`).
    pub code_trust: crate::fault::CodeTrust,
    pub ranges: Vec<MemAccess>,
    pub page: u64,
    pub next_call: u64,
    pub entry_bp: Option<(u64, u8)>,
    pub rbrk_bp: Option<u64>,
    /// Breakpoints on return addresses that would not fault (in neutral
    /// code): address → (original byte, frames using it).
    pub ret_bps: std::collections::HashMap<u64, (u8, u32)>,
    /// Allocation breakpoints: Some in a process the shim cannot reach (static).
    pub allocbp: Option<crate::allocbp::AllocBps>,
    pub exit: Option<ExitStatus>,
    pub last_owner_stop: Instant,
    pub foreign_since: Option<Instant>,
    /// The pinned thread's own affinity (see `pin`).
    pub saved_affinity: Option<libc::cpu_set_t>,
    /// The recorder pinned itself: to this CPU, and its own affinity before.
    pub tracer_pin: Option<(usize, libc::cpu_set_t)>,
    /// The pinned thread's own affinity allows only the recorder's CPU:
    /// it was not changed, and is not restored.
    pub pin_untouched: bool,
    pub xsave: Vec<u8>,
    pub xsave_layout: crate::fault::XsaveLayout,
    pub first_image: bool,
    pub warned_batch: bool,
    pub alloc: Option<crate::alloc::AllocTracker>,
    /// The foreign arena, never guarded (None with `--guard-foreign` or
    /// without allocation tracking).
    pub arena: Option<(u64, u64)>,
    /// Arena blocks, and which of them the host holds (guarded in calls).
    pub arena_blocks: crate::guard::ArenaBlocks,
    /// `rip` at the alloc shim's flush trap (after its int3).
    pub shim_trap: Option<u64>,
    /// Syscall the trampolines use to change protections.
    pub protect_nr: u32,
    pub announced_none: bool,
    /// Blocks realloc/mremap moved during the current foreign call.
    pub moved: Vec<(u64, u64)>,
    /// PROT_NONE mappings the program itself had when guards went on (None
    /// when the guard set came from the writable mappings only: see `adopt_moved`).
    pub none_at_entry: Option<Vec<(u64, u64)>>,
    pub warned_syscalls: std::collections::HashSet<u64>,
    /// A blocked call was reported (once per recording).
    pub warned_blocked: bool,
    /// FFIREC_DEBUG set: print every stop.
    pub debug: bool,
    /// Forked children not yet seen stopped (pid → was vfork).
    pub forks: std::collections::HashMap<Pid, bool>,
    /// Children that stopped before their parent's fork event.
    pub early_children: std::collections::HashMap<Pid, Stop>,
    pub tramp: crate::fault::Trampolines,
    /// The first process (its exit status is ffirec's).
    pub root: Pid,
    /// Followed processes other than the active one (`procs`).
    pub procs: std::collections::HashMap<Pid, crate::procs::ProcState>,
    /// Every known thread's process.
    pub tgids: std::collections::HashMap<Pid, Pid>,
    /// Stops to handle before waiting again (a child stopped before its fork event).
    pub deferred: Vec<Stop>,
    /// The thread pinned with the recorder (`saved_affinity`).
    pub pinned_tid: Option<Pid>,
    /// Pinning for bursts of host-init stops (`process::Burst`).
    pub burst: crate::process::Burst,
    /// Ends the foreign code's slice between two signal handlers (`signals`).
    pub slice_timer: crate::signals::SliceTimer,
    /// This process is a vfork child followed only until it execs
    /// (`--no-follow`: it shares the guarded memory of a call in progress).
    pub until_exec: bool,
    /// Host initialisation tracking (`hostinit`).
    pub hostinit: crate::hostinit::HostInit,
    /// The last guard set and batch table (`guard::GuardCache`).
    pub guard_cache: crate::guard::GuardCache,
    /// Registers of the stop being handled, when already read (by `go_stop`).
    pub stop_regs: Option<(Pid, RawRegs)>,
}

pub(crate) fn record(opts: Options) -> Result<Outcome, Error> {
    let program = opts.program.to_string_lossy().into_owned();
    let exe = process::resolve(&program)?;
    let mut argv: Vec<OsString> = vec![opts.program.clone()];
    argv.extend(opts.args.iter().cloned());
    let mut env: Vec<(OsString, OsString)> = std::env::vars_os().collect();
    if !env.iter().any(|(k, _)| k == "LD_BIND_NOW") {
        env.push(("LD_BIND_NOW".into(), "1".into()));
    }
    // --guard-foreign: no arena, so the library's allocations share the
    // guarded heap with the program's, as they would natively.
    let alloc_opts = crate::alloc::AllocOptions {
        foreign_arena: if opts.guard_foreign { None } else { Some(crate::alloc::DEFAULT_ARENA) },
        ..crate::alloc::AllocOptions::default()
    };
    let alloc = match crate::alloc::AllocTracker::with_options(alloc_opts) {
        Ok(a) => Some(a),
        Err(e) => {
            eprintln!("ffirec: warning: allocation tracking disabled: {e}");
            None
        }
    };
    let mut neutral_extra = opts.neutral.clone();
    let host_init = opts.host_init && alloc.is_some();
    if let Some(a) = &alloc {
        a.set_hostinit_want(host_init);
        let extra = a.env();
        env.retain(|(k, _)| !extra.iter().any(|(x, _)| x == k));
        env.extend(extra);
        neutral_extra.push(a.shim_path().display().to_string());
    }
    let options = libc::PTRACE_O_EXITKILL
        | libc::PTRACE_O_TRACECLONE
        | libc::PTRACE_O_TRACEEXEC
        | libc::PTRACE_O_TRACEFORK
        | libc::PTRACE_O_TRACEVFORK
        | libc::PTRACE_O_TRACEEXIT
        | libc::PTRACE_O_TRACESYSGOOD;
    let pid = process::spawn(&exe, &argv, &env, i64::from(options))?;
    // Before the trace writer's thread exists, so it inherits the mask: the
    // wait loop sleeps on SIGCHLD while it drains the allocation ring.
    sys::block_sigchld();

    let page = sys::page_size();
    let policy = Policy::new(opts.libs.clone(), neutral_extra);
    if let Some(a) = &alloc {
        a.set_tracer_present(true);
    }
    let header = Header {
        recorder_version: env!("CARGO_PKG_VERSION").to_string(),
        uuid: uuid::Uuid::new_v4().into_bytes(),
        command: argv.iter().map(|a| a.to_string_lossy().into_owned()).collect(),
        start_time_ns: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0),
        page_size: page,
        policy: FmtPolicy {
            foreign: policy.foreign.clone(),
            neutral: policy.neutral.clone(),
            track_host_init: host_init,
            guard_foreign: opts.guard_foreign,
        },
    };
    let sink = match Sink::create(&opts.output, header) {
        Ok(s) => s,
        Err(e) => {
            let _ = sys::kill(pid, libc::SIGKILL);
            return Err(e);
        }
    };
    let mut t = Tracer {
        pid,
        mem: Mem::open(pid)?,
        opts,
        policy,
        sink,
        threads: BTreeMap::new(),
        modules: Vec::new(),
        main_exe: String::new(),
        inject: None,
        owner: None,
        foreign_mode: false,
        guards: Vec::new(),
        decode: DecodeCache::new(),
        code_trust: crate::fault::CodeTrust::default(),
        ranges: Vec::with_capacity(16),
        page,
        next_call: 0,
        entry_bp: None,
        rbrk_bp: None,
        ret_bps: std::collections::HashMap::new(),
        allocbp: None,
        exit: None,
        last_owner_stop: Instant::now(),
        foreign_since: None,
        saved_affinity: None,
        tracer_pin: None,
        pin_untouched: false,
        xsave: vec![0u8; 8192],
        xsave_layout: crate::fault::XsaveLayout::detect(),
        first_image: true,
        warned_batch: false,
        arena: alloc.as_ref().and_then(|a| a.foreign_arena()).map(|r| (r.start, r.end)),
        arena_blocks: crate::guard::ArenaBlocks::default(),
        alloc,
        shim_trap: None,
        protect_nr: libc::SYS_mprotect as u32,
        announced_none: false,
        moved: Vec::new(),
        none_at_entry: None,
        warned_syscalls: std::collections::HashSet::new(),
        warned_blocked: false,
        debug: std::env::var_os("FFIREC_DEBUG").is_some(),
        forks: std::collections::HashMap::new(),
        early_children: std::collections::HashMap::new(),
        tramp: crate::fault::Trampolines::default(),
        root: pid,
        procs: std::collections::HashMap::new(),
        tgids: std::collections::HashMap::from([(pid, pid)]),
        deferred: Vec::new(),
        pinned_tid: None,
        burst: crate::process::Burst::default(),
        slice_timer: crate::signals::SliceTimer::default(),
        until_exec: false,
        hostinit: crate::hostinit::HostInit::new(host_init),
        guard_cache: Default::default(),
        stop_regs: None,
    };
    t.threads.insert(pid, Thread::default());
    if let Err(e) = t.on_exec_image(pid) {
        let _ = sys::kill(pid, libc::SIGKILL);
        return Err(e);
    }
    install_handlers();
    let ticker = start_ticker();
    let result = t.run();
    drop(ticker);
    if result.is_err() {
        let _ = sys::kill(pid, libc::SIGKILL);
    }
    let killed = result?;
    t.finish(killed)
}

impl Tracer {
    /// The wait loop. Returns true when ffirec killed the program on request.
    pub(crate) fn run(&mut self) -> Result<bool, Error> {
        let (mut idle, mut last_backlog) = (IDLE_MIN, 0);
        loop {
            if SIGTERMS.load(Ordering::Relaxed) > 0 || SIGINTS.load(Ordering::Relaxed) > 1 {
                eprintln!("ffirec: interrupted: finishing the trace and killing the program");
                for p in self.all_pids() {
                    let _ = sys::kill(p, libc::SIGKILL);
                }
                while let Ok(Some(_)) | Err(Error::Sys { .. }) = sys::wait(-1, false) {}
                return Ok(true);
            }
            let stop = if let Some(stop) = self.deferred.pop() {
                stop
            } else {
                let w = match self.wait_any(&mut idle, &mut last_backlog) {
                    Ok(Some(w)) => w,
                    Ok(None) => {
                        // The ticker: no call for a while lets the recorder's own pin go.
                        if self.burst.quiet() {
                            self.burst_unpin();
                        }
                        if self.owner.is_none() && self.last_owner_stop.elapsed() > IDLE_UNPIN {
                            self.unpin_tracer();
                        }
                        self.check_blocked_all()?;
                        self.send_held_signals_all();
                        continue;
                    }
                    Err(Error::NoTracees) => return Ok(false),
                    Err(e) => return Err(e),
                };
                self.sink.counters.ptrace_stops += 1;
                Stop::from_wait(w)
            };
            match self.handle(stop) {
                Ok(()) => {}
                Err(Error::TraceeDied { pid }) => {
                    // Killed under us (SIGKILL, exit_group from another thread):
                    // its death is reported by a later wait.
                    if let Some(t) = self.threads.get_mut(&pid) {
                        t.running = true;
                    }
                }
                Err(e) => return Err(e),
            }
            if self.threads.is_empty() && !self.next_process() {
                return Ok(false);
            }
        }
    }

    pub(crate) fn finish(mut self, killed: bool) -> Result<Outcome, Error> {
        self.drain_final()?;
        if let Some(since) = self.foreign_since.take() {
            self.sink.counters.foreign_ns += since.elapsed().as_nanos() as u64;
        }
        let unmatched: Vec<String> = self.policy.unmatched().map(String::from).collect();
        for p in &unmatched {
            eprintln!("ffirec: warning: --lib {p} never matched a loaded object");
        }
        let status = match (self.exit, killed) {
            (Some(s), _) => s,
            (None, true) => ExitStatus::Signal(libc::SIGKILL),
            (None, false) => ExitStatus::Code(0),
        };
        let accesses = self.sink.accesses;
        let counters = self.sink.counters;
        if self.hostinit.enabled && !self.opts.quiet {
            eprintln!(
                "ffirec: host-init: {} write faults ({} performed, {} run natively), {} pages released, {} given up, {} syscalls",
                counters.hostinit_faults,
                counters.hostinit_emulated,
                counters.hostinit_reexecuted,
                counters.hostinit_released,
                counters.hostinit_dead,
                counters.hostinit_syscalls
            );
        }
        let written = self.sink.finish(Some(status))?;
        let secs = counters.foreign_ns as f64 / 1e9;
        let rate = if secs > 0.0 { counters.faults as f64 / secs } else { 0.0 };
        eprintln!(
            "ffirec: recorded {} accesses in {} calls ({:.0} faults/s), trace {} ({})",
            accesses,
            counters.calls,
            rate,
            written.path.display(),
            human(written.bytes)
        );
        Ok(Outcome {
            status,
            trace: written.path,
            trace_bytes: written.bytes,
            accesses,
            calls: counters.calls,
            counters: counters.to_vec(),
        })
    }

    /// Waits for the next stop of `tid` (EINTR retried).
    pub fn wait_thread(&mut self, tid: Pid) -> Result<Stop, Error> {
        loop {
            if let Some(w) = sys::wait(tid, false)? {
                self.sink.counters.ptrace_stops += 1;
                return Ok(Stop::from_wait(w));
            }
        }
    }

    pub fn resume(&mut self, tid: Pid, sig: i32) -> Result<(), Error> {
        if sig == 0 {
            self.send_held_signals(tid);
        }
        self.resume_tracee(tid, sig)?;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.running = true;
        }
        Ok(())
    }

    pub(crate) fn handle(&mut self, stop: Stop) -> Result<(), Error> {
        self.code_trust.at_stop(&stop);
        if self.debug {
            eprintln!("ffirec: debug: {stop:?} owner={:?} foreign_mode={}", self.owner, self.foreign_mode);
        }
        if self.flush_trap_stop(&stop) {
            // The shim's ring is full. Nothing to order against: make room
            // for an eighth of it and let the program go on while the wait
            // loop drains the rest.
            let room = self.alloc.as_ref().map_or(0, |a| a.capacity() / 8);
            self.drain_allocs_some(room)?;
            self.sink.counters.flush_traps += 1;
            return self.resume(stop.tid(), 0);
        }
        self.drain_allocs()?;
        // Makes the stop's process the active one; consumes the stops of
        // children not followed or not announced yet.
        if self.route_stop(stop)? {
            return Ok(());
        }
        let tid = stop.tid();
        if let Some(t) = self.threads.get_mut(&tid) {
            t.running = false;
        }
        self.take_held_alloc(tid)?;
        self.stop_regs = None;
        if self.tramp.vload_pending.is_some() {
            self.vload_at_stop(&stop)?;
        }
        if let Stop::Signal { signal, .. } = stop {
            // A thread sent through a go stub (`guard::GoBatch`) may stop inside it.
            if self.threads.get(&tid).is_some_and(|t| t.go.is_some()) && self.go_stop(tid, signal)? {
                return Ok(());
            }
        }
        match stop {
            Stop::Exited { tid, code } => return self.on_death(tid, ExitStatus::Code(code)),
            Stop::Killed { tid, signal } => return self.on_death(tid, ExitStatus::Signal(signal)),
            _ => {}
        }
        if self.owner == Some(tid) {
            self.last_owner_stop = Instant::now();
        }
        if matches!(stop, Stop::Signal { .. } | Stop::Interrupt { .. }) && self.hostinit.enabled {
            self.stop_regs = None;
            self.hostinit_at_stop(tid)?;
        }
        if self.owner.is_some_and(|o| o != tid) {
            // Held while another thread's foreign call runs.
            let t = self.threads.entry(tid).or_default();
            if !matches!(stop, Stop::Interrupt { .. }) {
                t.pending = Some(stop);
            }
            return Ok(());
        }
        match stop {
            Stop::Exited { .. } | Stop::Killed { .. } => Ok(()),
            Stop::Interrupt { tid } => self.resume(tid, 0),
            Stop::Syscall { tid } => self.on_syscall_stop(tid),
            Stop::Group { tid, .. } => {
                sys::listen(tid).or_else(|_| sys::cont(tid, 0))?;
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.running = true;
                }
                Ok(())
            }
            Stop::Event { tid, event } => self.on_event(tid, event),
            Stop::Signal { tid, signal } => self.on_signal(tid, signal),
        }
    }

    pub(crate) fn on_death(&mut self, tid: Pid, status: ExitStatus) -> Result<(), Error> {
        if self.threads.remove(&tid).is_none() && tid != self.pid {
            // A forked child we had not detached yet.
            self.forks.remove(&tid);
            self.early_children.remove(&tid);
            return Ok(());
        }
        let code = match status {
            ExitStatus::Code(c) => c,
            ExitStatus::Signal(s) => 128 + s,
        };
        self.sink.push(Event::ThreadExit { tid: tid as u32, code })?;
        if let Some(a) = &self.alloc {
            a.remove_foreign_tid(tid as u32);
        }
        if self.owner == Some(tid) {
            self.owner = None;
            self.foreign_mode = false;
            self.guards.clear();
        }
        self.forget_pin(tid);
        if tid == self.pid {
            // Its pid may come back as another process's.
            self.guard_cache.clear();
            if self.pid == self.root {
                self.exit = Some(status);
            }
            self.sink.push(Event::Exit { pid: self.pid as u32, status })?;
        }
        Ok(())
    }

    pub(crate) fn on_event(&mut self, tid: Pid, event: i32) -> Result<(), Error> {
        match event {
            libc::PTRACE_EVENT_CLONE | libc::PTRACE_EVENT_FORK | libc::PTRACE_EVENT_VFORK => {
                let child = sys::geteventmsg(tid)? as Pid;
                // Created while pinned with us (a call, a burst of host-init
                // stops): the new thread or process gets the program's own
                // affinity (followed or not).
                if let (Some(theirs), Some(p)) = (self.saved_affinity.as_ref(), self.pinned_tid) {
                    if p == tid {
                        sys::set_affinity(child, theirs);
                    }
                }
                if event == libc::PTRACE_EVENT_CLONE {
                    // The new thread reports a PTRACE_EVENT_STOP first; it is
                    // held by `handle` if a foreign call is in progress.
                    self.threads.entry(child).or_insert_with(|| Thread { running: true, ..Thread::default() });
                    self.tgids.insert(child, self.pid);
                    self.sink.push(Event::ThreadStart {
                        tid: child as u32,
                        pid: self.pid as u32,
                        parent: tid as u32,
                    })?;
                } else {
                    self.sink.push(Event::Fork {
                        tid: tid as u32,
                        parent_pid: self.pid as u32,
                        child_pid: child as u32,
                    })?;
                    let vfork = event == libc::PTRACE_EVENT_VFORK;
                    if vfork {
                        // Shares the tracked pages with its parent: never given back.
                        self.hostinit_on_vfork(child);
                    }
                    if self.opts.follow || (vfork && self.foreign_mode) {
                        self.follow_child(tid, child)?;
                    } else if let Some(stop) = self.early_children.remove(&child) {
                        self.release_child(child, vfork, stop)?;
                    } else {
                        self.forks.insert(child, vfork);
                    }
                }
                self.resume(tid, 0)
            }
            libc::PTRACE_EVENT_EXEC if self.until_exec => {
                // A new program with fresh memory: nothing of ours left in it,
                // and nothing of it to record.
                self.threads.clear();
                let pid = self.pid;
                self.tgids.retain(|_, g| *g != pid);
                sys::detach(tid, 0)
            }
            libc::PTRACE_EVENT_EXEC => {
                // Every other thread is gone; the exec'ing thread is now the leader.
                let former = sys::geteventmsg(tid).unwrap_or(tid as u64) as Pid;
                // Exec'd inside a call while pinned: the new program runs
                // with the thread's own affinity.
                if let (Some(theirs), Some(p)) = (self.saved_affinity, self.pinned_tid) {
                    if p == former || p == tid {
                        sys::set_affinity(tid, &theirs);
                        self.forget_pin(p);
                    }
                }
                let frames_gone = self.threads.remove(&former);
                drop(frames_gone);
                self.threads.retain(|&t, _| t == tid);
                self.threads.insert(tid, Thread::default());
                self.tgids.insert(tid, self.pid);
                self.owner = None;
                self.foreign_mode = false;
                self.guards.clear();
                self.modules.clear();
                self.inject = None;
                self.tramp = crate::fault::Trampolines::default();
                self.arena_blocks = crate::guard::ArenaBlocks::default();
                self.ret_bps.clear();
                self.allocbp = None;
                self.rbrk_bp = None;
                self.decode.clear();
                self.mem = Mem::open(self.pid)?;
                self.guard_cache.clear();
                self.hostinit.on_exec_of(self.pid);
                self.hostinit_on_exec();
                let path = std::fs::read_link(format!("/proc/{}/exe", self.pid))
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                self.sink.push(Event::Exec { tid: tid as u32, pid: self.pid as u32, path })?;
                self.on_exec_image(tid)?;
                Ok(())
            }
            libc::PTRACE_EVENT_EXIT => {
                let regs = sys::getregs(tid).ok().map(|r| (r.rsp, r.fs_base));
                if let Some(t) = self.threads.get_mut(&tid) {
                    t.exiting = true;
                    t.exit_regs = regs;
                }
                self.forget_pin(tid);
                if self.owner == Some(tid) {
                    // Leaving through exit/exit_group inside a foreign call.
                    self.owner = None;
                    self.release_others()?;
                }
                self.resume(tid, 0)
            }
            _ => self.resume(tid, 0),
        }
    }

    /// A new program image: check it is dynamic, plant the entry breakpoint.
    pub(crate) fn on_exec_image(&mut self, tid: Pid) -> Result<(), Error> {
        let exe =
            std::fs::read_link(format!("/proc/{}/exe", self.pid)).map(|p| p.display().to_string()).unwrap_or_default();
        self.main_exe = exe.clone();
        let auxv = std::fs::read(format!("/proc/{}/auxv", self.pid))
            .map_err(|source| Error::Sys { what: "read /proc/PID/auxv", source })?;
        let mut entry = None;
        let mut has_interp = false;
        for kv in auxv.chunks_exact(16) {
            let k = u64::from_le_bytes(kv[..8].try_into().unwrap_or([0; 8]));
            let v = u64::from_le_bytes(kv[8..].try_into().unwrap_or([0; 8]));
            match k {
                9 => entry = Some(v),
                7 => has_interp = v != 0, // AT_BASE: the interpreter's load address
                _ => {}
            }
        }
        // Statically linked: no preload, so the allocator is tracked by
        // breakpoints (see `allocbp`).
        self.allocbp = (!has_interp).then(crate::allocbp::AllocBps::default);
        self.first_image = false;
        let entry = entry.ok_or_else(|| Error::Protocol("no AT_ENTRY in auxv".into()))?;
        let mut b = [0u8; 1];
        self.mem.read(RemoteAddr(entry), &mut b)?;
        self.mem.write(RemoteAddr(entry), &[0xcc])?;
        self.entry_bp = Some((entry, b[0]));
        self.resume(tid, 0)
    }

    pub(crate) fn on_signal(&mut self, tid: Pid, signal: i32) -> Result<(), Error> {
        match signal {
            libc::SIGTRAP => {
                let regs = sys::getregs(tid)?;
                if let Some((addr, byte)) = self.entry_bp {
                    if regs.rip == addr + 1 {
                        self.entry_bp = None;
                        self.mem.write(RemoteAddr(addr), &[byte])?;
                        let mut regs = regs;
                        regs.rip = addr;
                        return self.setup_image(tid, regs);
                    }
                }
                if self.rbrk_bp.is_some_and(|a| regs.rip == a + 1) {
                    return self.on_rbrk(tid, regs);
                }
                if self.shim_trap == Some(regs.rip) && regs.rax == crate::alloc::FLUSH_MAGIC {
                    // The shim's ring is full: drained at the top of `handle`.
                    return self.resume(tid, 0);
                }
                if self.allocbp.as_ref().is_some_and(|b| b.owns(regs.rip - 1))
                    && !self.ret_bps.contains_key(&(regs.rip - 1))
                    && self.on_alloc_bp(tid, regs)?
                {
                    return Ok(());
                }
                if self.ret_bps.contains_key(&(regs.rip - 1)) {
                    return self.on_return_bp(tid, regs);
                }
                self.program_signal(tid, signal)
            }
            libc::SIGSEGV | libc::SIGBUS => {
                let mut regs = match self.stop_regs.take() {
                    Some((t, r)) if t == tid => r,
                    _ => sys::getregs(tid)?,
                };
                if self.tramp.vload_pending.is_some() {
                    self.vload_rewind(tid, &mut regs)?;
                }
                if self.foreign_mode && self.owner == Some(tid) {
                    if let Some(orig) = self.slot_origin(regs.rip) {
                        return self.on_slot_fault(tid, regs, orig, signal);
                    }
                }
                if signal == libc::SIGBUS {
                    return self.program_signal(tid, signal);
                }
                let si = sys::getsiginfo(tid)?;
                let in_foreign = self.threads.get(&tid).is_some_and(Thread::in_foreign);
                if !in_foreign
                    && !self.foreign_mode
                    && si.code == SEGV_ACCERR
                    && si.addr != regs.rip
                    && self.hostinit.enabled
                    && self.hostinit_fault(tid, regs, si.addr)?
                {
                    return Ok(());
                }
                if in_foreign && self.foreign_mode && si.code == SEGV_ACCERR && self.guard_of(si.addr).is_some() {
                    return self.on_fault(tid, regs, si.addr);
                }
                if in_foreign
                    && self.foreign_mode
                    && si.code == SEGV_ACCERR
                    && si.addr != regs.rip
                    && self.adopt_moved(tid, si.addr)?
                {
                    return self.on_fault(tid, regs, si.addr);
                }
                if si.code == SEGV_ACCERR && si.addr == regs.rip {
                    if let Some(m) = self.module_text(regs.rip) {
                        match (m.module.domain, self.foreign_mode) {
                            (Domain::Foreign, false) => return self.on_foreign_text(tid, regs),
                            (Domain::Host, true) if self.owner == Some(tid) => return self.on_host_text(tid, regs),
                            _ => {}
                        }
                    }
                }
                self.program_signal(tid, signal)
            }
            _ => {
                if self.hold_back_signal(tid, signal)? {
                    return Ok(());
                }
                self.program_signal(tid, signal)
            }
        }
    }

    /// A signal that is the program's own: record it, deliver it unchanged.
    pub fn program_signal(&mut self, tid: Pid, signal: i32) -> Result<(), Error> {
        if signal == libc::SIGSTOP {
            // Delivered as a group-stop next; nothing to record.
            return self.resume(tid, signal);
        }
        let si = sys::getsiginfo(tid)?;
        let raw = sys::getregs(tid)?;
        let mut code = [0u8; 16];
        let n = self.mem.read_partial(RemoteAddr(raw.rip), &mut code);
        let fault_sig = matches!(signal, libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP);
        let fatal = is_fatal(self.pid, signal);
        self.sink.counters.signals += 1;
        self.sink.push(Event::Signal {
            tid: tid as u32,
            signo: signal,
            code: si.code,
            addr: if fault_sig { si.addr } else { 0 },
            regs: sys::to_regs(&raw),
            code_bytes: code[..n].to_vec(),
            fatal,
        })?;
        // A fatal one kills it with the protections it faulted under: nothing to restore.
        self.resume(tid, signal)
    }

    pub fn module_text(&self, addr: u64) -> Option<&Loaded> {
        self.modules.iter().find(|m| m.in_text(addr))
    }

    /// Entry breakpoint reached: every DT_NEEDED object is loaded and relocated.
    pub(crate) fn setup_image(&mut self, tid: Pid, regs: RawRegs) -> Result<(), Error> {
        self.inject_pages(tid, &regs)?;
        let added = self.scan_modules(true)?;
        if self.allocbp.is_some() {
            for i in added {
                self.plant_alloc_bps(i)?;
            }
        }
        self.hostinit_activate()?;
        self.plant_rbrk()?;
        let batch = self.text_batch(false);
        self.run_batch(tid, &regs, &batch)?;
        sys::setregs(tid, &regs)?;
        self.resume(tid, 0)
    }

    /// Reads the maps and adds every object not seen yet.
    pub fn scan_modules(&mut self, announce: bool) -> Result<Vec<usize>, Error> {
        let maps = crate::maps::read(self.pid)?;
        // Objects unloaded since the last scan (dlclose): forget them, so no
        // protection batch ever touches whatever is mapped there next.
        self.modules.retain(|l| {
            l.module.path == "[vdso]"
                || l.text
                    .iter()
                    .all(|t| maps.iter().any(|m| m.path == l.module.path && m.start <= t.start && t.start < m.end))
        });
        let mut added = Vec::new();
        let mut seen: Vec<&str> = Vec::new();
        for m in &maps {
            let named = m.is_file() || m.path == "[vdso]";
            if !named || seen.contains(&m.path.as_str()) {
                continue;
            }
            // The allocation ring (tens of MiB, no object): never read it.
            if self.alloc.as_ref().is_some_and(|a| std::path::Path::new(&m.path) == a.ring_path()) {
                continue;
            }
            seen.push(&m.path);
            let group: Vec<&crate::maps::Mapping> = maps.iter().filter(|x| x.path == m.path).collect();
            let lo = group.iter().map(|g| g.start).min().unwrap_or(m.start);
            if self
                .modules
                .iter()
                .any(|l| l.module.path == m.path && l.loads.iter().chain(&l.text).any(|t| t.start <= lo && lo < t.end))
            {
                continue;
            }
            let data = if m.path == "[vdso]" {
                let mut buf = vec![0u8; (m.end - m.start) as usize];
                self.mem.read(RemoteAddr(m.start), &mut buf)?;
                buf
            } else {
                match std::fs::read(&m.path)
                    .or_else(|_| std::fs::read(format!("/proc/{}/map_files/{:x}-{:x}", self.pid, m.start, m.end)))
                {
                    Ok(d) => d,
                    Err(_) => continue,
                }
            };
            let Some((mut module, soname, loads)) = modules::load(self.pid, &m.path, &data, &group, self.page) else {
                continue;
            };
            let is_main = m.path == self.main_exe;
            module.domain = if m.path == "[vdso]" {
                Domain::Neutral
            } else {
                self.policy.classify(&m.path, soname.as_deref(), is_main)
            };
            let text = group
                .iter()
                .filter(|g| g.prot & PROT_X != 0)
                .map(|g| modules::Load { start: g.start, end: g.end, prot: g.prot })
                .collect();
            if let Some(a) = &self.alloc {
                if std::path::Path::new(&m.path) == a.shim_path() {
                    if let Some(z) = group.iter().find(|g| g.offset == 0) {
                        self.shim_trap = Some(z.start + a.flush_trap_offset() + 1);
                    }
                }
            }
            let index = self.sink.add_module(module.clone())?;
            self.modules.push(Loaded { index, module, soname, loads, text });
            added.push(self.modules.len() - 1);
        }
        let foreign: Vec<String> = added
            .iter()
            .filter(|&&i| self.modules[i].module.domain == Domain::Foreign)
            .map(|&i| {
                let l = &self.modules[i];
                l.soname.clone().unwrap_or_else(|| l.module.path.rsplit('/').next().unwrap_or("").to_string())
            })
            .collect();
        if !self.opts.quiet {
            if !foreign.is_empty() {
                eprintln!("ffirec: foreign: {}", foreign.join(", "));
            } else if announce && self.policy.foreign.is_empty() && !self.announced_none {
                self.announced_none = true;
                eprintln!(
                    "ffirec: no foreign library loaded yet (libraries loaded later are matched when they appear)"
                );
            }
        }
        Ok(added)
    }

    /// Breakpoint on ld.so's `_dl_debug_state` (r_brk): fires around every
    /// dlopen/dlclose, so later libraries are classified when they appear.
    pub(crate) fn plant_rbrk(&mut self) -> Result<(), Error> {
        let mut addr = None;
        for l in &self.modules {
            if let Some(s) = l.module.symbols.iter().find(|s| s.name == "_dl_debug_state") {
                addr = Some(l.module.base + s.addr);
            }
        }
        let Some(addr) = addr else { return Ok(()) };
        let mut b = [0u8; 1];
        self.mem.read(RemoteAddr(addr), &mut b)?;
        if b[0] == 0xc3 {
            self.mem.write(RemoteAddr(addr), &[0xcc])?;
            self.rbrk_bp = Some(addr);
        }
        Ok(())
    }

    pub(crate) fn on_rbrk(&mut self, tid: Pid, mut regs: RawRegs) -> Result<(), Error> {
        // Emulate the `ret` we replaced.
        regs.rip = self.mem.read_u64(RemoteAddr(regs.rsp))?;
        regs.rsp += 8;
        let added = self.scan_modules(false)?;
        if self.allocbp.is_some() {
            for &i in &added {
                self.plant_alloc_bps(i)?;
            }
        }
        if !added.is_empty() {
            let mut batch = Vec::new();
            for &i in &added {
                let l = &self.modules[i];
                let strip = match l.module.domain {
                    Domain::Foreign => !self.foreign_mode,
                    Domain::Host => self.foreign_mode,
                    Domain::Neutral => false,
                };
                if strip {
                    batch.extend(l.text.iter().map(|t| (t.start, t.end - t.start, t.prot & !PROT_X)));
                }
            }
            if !batch.is_empty() {
                self.run_batch(tid, &regs, &batch)?;
            }
        }
        sys::setregs(tid, &regs)?;
        self.resume(tid, 0)
    }

    /// Alloc-shim events are drained here (before every stop is processed
    /// and before every boundary event), so they land in program order.
    pub fn drain_allocs(&mut self) -> Result<(), Error> {
        self.drain_allocs_some(usize::MAX).map(|_| ())
    }

    /// [`Self::drain_allocs`] for at most about `max` records; returns how
    /// many were consumed.
    pub fn drain_allocs_some(&mut self, max: usize) -> Result<usize, Error> {
        self.drain_allocs_held(max, None)
    }

    /// At a stop of `tid`, after [`Self::drain_allocs`]: the malloc the shim
    /// holds back for its free when `tid` wrote it (see "Held malloc" in
    /// `ffirec_shim.h`), so the stop sees every block allocated before it.
    pub(crate) fn take_held_alloc(&mut self, tid: Pid) -> Result<(), Error> {
        // One load at most stops (nothing held).
        if !self.alloc.as_ref().is_some_and(|a| a.holds()) {
            return Ok(());
        }
        self.drain_allocs_held(0, Some(tid as u32)).map(|_| ())
    }

    fn drain_allocs_held(&mut self, max: usize, held: Option<u32>) -> Result<usize, Error> {
        let Some(a) = self.alloc.as_mut() else { return Ok(0) };
        // Shared by the fast path and the general one.
        let sink = std::cell::RefCell::new(&mut self.sink);
        let active_moved = &mut self.moved;
        let active_guarding = self.foreign_mode;
        let arena = self.arena;
        let active_blocks = &mut self.arena_blocks;
        let active_guards = &self.guards;
        // Each record belongs to its thread's process (see `procs`).
        let (active, procs, tgids) = (self.pid, &mut self.procs, &self.tgids);
        let follow = self.opts.follow;
        // Shared by the fast path and the general one.
        let hostinit = std::cell::RefCell::new(&mut self.hostinit);
        let hi_epoch = a.hi_epoch_probe();
        let mut extra = Vec::new();
        let err = std::cell::RefCell::new(None);
        // Fast path: a host-mode malloc/free of the only process, nothing
        // to follow but the event itself (no call in progress, no arena
        // block, no host-init tracking): straight into the writer's columns.
        // With host-init tracking, the tracked process's records whose
        // pages' states are cached (`HostInit::fast_malloc`, `fast_pair`).
        let plain = !active_guarding && procs.is_empty();
        let hi_on = hostinit.borrow().enabled;
        let fast = |rs: &[crate::alloc::FastRec]| -> usize {
            if !plain {
                return 0;
            }
            let ours = |r: &crate::alloc::FastRec| {
                !r.foreign && r.pid == active as u32 && !arena.is_some_and(|(lo, hi)| r.ptr >= lo && r.ptr < hi)
            };
            let mut n = rs.iter().position(|r| !ours(r)).unwrap_or(rs.len());
            if hi_on && n > 0 {
                // The prefix host init follows on its fast paths; a malloc
                // whose free comes next is one step (`HostInit::fast_pair`).
                let mut h = hostinit.borrow_mut();
                let mut i = 0;
                while i < n {
                    let r = &rs[i];
                    // Its free in the next record (a MALLOC_FREE has it in its own).
                    let next = !r.free && !r.pair && i + 1 < n && rs[i + 1].free && rs[i + 1].ptr == r.ptr;
                    let done = match (r.free, r.pair || next) {
                        (true, _) => h.fast_free(active, r.ptr),
                        (false, true) => h.fast_pair(active, r.ptr, r.size, r.hi_epoch),
                        (false, false) => h.fast_malloc(active, r.ptr, r.size, r.hi_epoch),
                    };
                    if !done {
                        break;
                    }
                    i += 1 + usize::from(next);
                }
                n = i;
            }
            let get = crate::alloc::FastRec::plain_mem;
            if let Err(x) = sink.borrow_mut().push_plain_mem(Domain::Host, &rs[..n], get) {
                err.borrow_mut().get_or_insert(x);
            }
            n
        };
        // Runs of records from one thread are the rule: look its process up once.
        let mut last: Option<(u32, Option<Pid>)> = None;
        let mut general = |e: &Event| {
            let g = match e.tid() {
                Some(t) => match last {
                    Some((lt, g)) if lt == t => g,
                    _ => {
                        let g = tgids.get(&(t as Pid)).copied();
                        last = Some((t, g));
                        g
                    }
                },
                None => Some(active),
            };
            let g = match g {
                Some(g) => g,
                // A process not followed (--no-follow): not ours to record.
                None if !follow => return,
                None => active,
            };
            let (blocks, moved, guarding, guards) = match (g != active).then(|| procs.get_mut(&g)).flatten() {
                Some(p) => (&mut p.arena_blocks, &mut p.moved, p.foreign_mode, &p.guards[..]),
                None => (&mut *active_blocks, &mut *active_moved, active_guarding, &active_guards[..]),
            };
            if let Some(r) = arena {
                blocks.on_event(r, e);
            }
            // A guarded block moved by realloc/mremap keeps PROT_NONE at its
            // new address; remember it so the return restores it too.
            if let Event::Alloc {
                func: AllocFn::Realloc | AllocFn::Reallocarray | AllocFn::Mremap,
                ptr,
                size,
                old_ptr,
                ..
            } = *e
            {
                if guarding && old_ptr != 0 && ptr != old_ptr && ptr != 0 {
                    moved.push((ptr, size));
                }
            }
            let unknown = untracked_init(arena, e).or_else(|| unguarded_foreign_block(guarding, guards, e));
            extra.clear();
            hostinit.borrow_mut().on_alloc_event(g, arena, e, hi_epoch.load(Ordering::Relaxed), &mut extra);
            // By reference: an Alloc/Free goes into its columns without a copy.
            let mut sink = sink.borrow_mut();
            if let Err(x) = sink.push_ref(e) {
                err.borrow_mut().get_or_insert(x);
            }
            for ev in unknown.into_iter().chain(extra.drain(..)) {
                if let Err(x) = sink.push(ev) {
                    err.borrow_mut().get_or_insert(x);
                }
            }
        };
        let consumed = a.drain_some_fast(max, fast, &mut general);
        if let Some(tid) = held {
            a.take_held(tid, &mut general);
        }
        err.into_inner().map_or(Ok(consumed), Err)
    }

    /// The stop is the alloc shim's flush trap (a full ring) in the active
    /// process, at a time the wait loop drains the ring.
    fn flush_trap_stop(&self, stop: &Stop) -> bool {
        let Stop::Signal { tid, signal: libc::SIGTRAP } = *stop else { return false };
        if self.shim_trap.is_none() || self.tgids.get(&tid) != Some(&self.pid) || !self.drains_while_waiting() {
            return false;
        }
        sys::getregs(tid).is_ok_and(|r| Some(r.rip) == self.shim_trap && r.rax == crate::alloc::FLUSH_MAGIC)
    }

    /// True while the recorder may drain the allocation ring between stops:
    /// no foreign call is in progress in any process (during one, every stop
    /// matters and the wait for it stays a plain blocking `waitpid`).
    fn drains_while_waiting(&self) -> bool {
        // Some process must have the shim loaded (a static program has none).
        let shim = self.shim_trap.is_some() || self.procs.values().any(|p| p.shim_trap.is_some());
        self.alloc.is_some() && shim && self.owner.is_none() && self.procs.values().all(|p| p.owner.is_none())
    }

    /// Waits for the next stop. With no foreign call in progress, drains the
    /// allocation ring meanwhile, so the program (which records allocations
    /// without stopping) only waits for the recorder when the ring is full:
    /// `WNOHANG` polls between bounded drains, and an empty ring sleeps on
    /// SIGCHLD (blocked in every recorder thread) for at most `idle`, doubled
    /// while the ring stays empty.
    fn wait_any(&mut self, idle: &mut Duration, last_backlog: &mut u64) -> Result<Option<sys::WaitStatus>, Error> {
        if !self.drains_while_waiting() {
            return sys::wait(-1, false);
        }
        loop {
            if let Some(w) = sys::wait(-1, true)? {
                return Ok(Some(w));
            }
            if self.burst.quiet() {
                self.burst_unpin();
            }
            if SIGTERMS.load(Ordering::Relaxed) > 0 || SIGINTS.load(Ordering::Relaxed) > 1 {
                return Ok(None);
            }
            // Drain in bursts, well behind the producer: reading slots it is
            // writing right now costs both sides a cache-line transfer each.
            // A backlog that stopped growing is drained whatever its size.
            let backlog = self.alloc.as_ref().map_or(0, |a| a.backlog());
            let settled = backlog == std::mem::replace(last_backlog, backlog);
            if backlog >= DRAIN_BEHIND || (backlog > 0 && settled) {
                if self.drain_allocs_some(DRAIN_BATCH)? > 0 {
                    *idle = IDLE_MIN;
                    *last_backlog = 0;
                    continue;
                }
            } else if backlog > 0 {
                *idle = IDLE_MIN;
            }
            sys::wait_sigchld(*idle);
            *idle = (*idle * 2).min(IDLE_MAX);
            if TICKS.swap(0, Ordering::Relaxed) > 0 {
                // The 0.5 s ticker's turn (what an interrupted blocking wait does).
                return Ok(None);
            }
        }
    }

    pub(crate) fn drain_final(&mut self) -> Result<(), Error> {
        let Some(a) = self.alloc.as_mut() else { return Ok(()) };
        let sink = &mut self.sink;
        let arena = self.arena;
        let (follow, tgids) = (self.opts.follow, &self.tgids);
        let mut err = None;
        a.drain_final(|e| {
            if !follow && e.tid().is_some_and(|t| !tgids.contains_key(&(t as Pid))) {
                return;
            }
            let unknown = untracked_init(arena, &e);
            for ev in std::iter::once(e).chain(unknown) {
                if let Err(x) = sink.push(ev) {
                    err.get_or_insert(x);
                }
            }
        });
        err.map_or(Ok(()), Err)
    }

    /// Pushes a foreign call's `Return`; a returned arena block is now the host's.
    pub(crate) fn push_return(&mut self, tid: Pid, call: u64, rax: u64, rdx: u64) -> Result<(), Error> {
        self.arena_blocks.export(rax);
        self.sink.push(Event::Return { tid: tid as u32, call, rax, rdx })?;
        self.hostinit_on_escape(&[rax, rdx])
    }

    /// The shim's foreign tid slots: `tid` runs foreign code now; 0: the
    /// active process's owner left foreign mode (other processes' owners stay).
    pub(crate) fn set_foreign_tid(&self, tid: Pid) {
        if let Some(a) = &self.alloc {
            match (tid, self.owner) {
                (0, Some(o)) => a.remove_foreign_tid(o as u32),
                (0, None) => {}
                (t, _) => {
                    a.add_foreign_tid(t as u32);
                }
            }
        }
    }
}

/// A block served from the unguarded foreign arena: the library's writes to
/// it are not recorded, so its bytes' state is unknown from its allocation
/// on (an `InitUnknown` right after the `Alloc`), never "uninitialised".
/// Zeroed blocks stay exact: every byte is initialised whoever writes it.
fn untracked_init(arena: Option<(u64, u64)>, e: &Event) -> Option<Event> {
    match *e {
        Event::Alloc { ptr, size, zeroed: false, .. }
            if size > 0 && arena.is_some_and(|(a, b)| ptr >= a && ptr < b) =>
        {
            Some(Event::InitUnknown { addr: ptr, len: size })
        }
        _ => None,
    }
}

/// A block allocated during a foreign call on pages that were not guarded
/// when the call began (fresh heap or a new mapping, e.g. with
/// `--guard-foreign`): the library's writes to it during this call are not
/// recorded, so its state is unknown from here on, never "uninitialised".
pub(crate) fn unguarded_foreign_block(guarding: bool, guards: &[GuardRange], e: &Event) -> Option<Event> {
    let Event::Alloc { ptr, size, zeroed: false, .. } = *e else { return None };
    if !guarding || size == 0 {
        return None;
    }
    let end = ptr.saturating_add(size);
    let mut pos = ptr;
    while pos < end {
        match guards.iter().find(|g| g.start <= pos && pos < g.end) {
            Some(g) => pos = g.end,
            None => return Some(Event::InitUnknown { addr: ptr, len: size }),
        }
    }
    None
}

/// Whether `signal` will kill the process: no handler and not ignored, and
/// its default action terminates.
fn is_fatal(pid: Pid, signal: i32) -> bool {
    let default_kills = !matches!(
        signal,
        libc::SIGCHLD
            | libc::SIGCONT
            | libc::SIGURG
            | libc::SIGWINCH
            | libc::SIGSTOP
            | libc::SIGTSTP
            | libc::SIGTTIN
            | libc::SIGTTOU
    );
    if !default_kills {
        return false;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return true };
    let mask = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
            .unwrap_or(0)
    };
    let bit = 1u64 << (signal - 1);
    (mask("SigCgt:") | mask("SigIgn:")) & bit == 0
}

fn human(bytes: u64) -> String {
    if bytes >= 10 << 20 {
        format!("{} MiB", bytes >> 20)
    } else if bytes >= 10 << 10 {
        format!("{} KiB", bytes >> 10)
    } else {
        format!("{bytes} B")
    }
}
