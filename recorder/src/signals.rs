//! The program's asynchronous signals while a thread runs foreign code.
//!
//! A handler is host code: running it from a foreign call costs two full
//! protection flips (host mode for the handler, foreign mode after it). A
//! periodic signal faster than that (a `setitimer` of 100 µs) would then be
//! delivered again before a single foreign instruction ran: a livelock.
//! So after each handler the foreign code gets a slice of time at least
//! [`FLIPS_PER_SLICE`] times what the flips cost (and [`MIN_SLICE`]); a
//! caught signal arriving within the slice is held back — one pending
//! instance per standard signal, as the kernel itself coalesces them — and
//! delivered when the slice is over (at the thread's next stop or the next
//! timer check), or as soon as the thread is back in host mode. The handler
//! still runs, later; the foreign code always progresses. A held-back
//! signal is re-sent with `tgkill` (its `si_code` becomes `SI_TKILL`).

use std::time::{Duration, Instant};

use crate::sys::{self, Pid};
use crate::tracer::Tracer;
use crate::Error;

/// Shortest slice of foreign execution between two handlers.
pub(crate) const MIN_SLICE: Duration = Duration::from_millis(1);
/// The slice is at least this many times the cost of the last handler's flips.
pub(crate) const FLIPS_PER_SLICE: u32 = 4;

/// Per-thread bookkeeping of signals delivered during foreign calls.
#[derive(Debug, Default, Clone)]
pub(crate) struct SigState {
    /// Signals held back, in arrival order (standard signals once each).
    pub deferred: Vec<i32>,
    /// When a handler was last let run from foreign mode.
    delivered: Option<Instant>,
    /// When foreign mode resumed after it.
    back: Option<Instant>,
}

impl SigState {
    /// Whether the foreign code has had its slice since the last handler.
    fn slice_over(&self, now: Instant) -> bool {
        match (self.delivered, self.back) {
            (Some(d), Some(b)) if b >= d => {
                let flips = b.duration_since(d);
                now.duration_since(b) >= MIN_SLICE.max(flips * FLIPS_PER_SLICE)
            }
            _ => true,
        }
    }

    fn hold(&mut self, signal: i32) {
        if signal >= libc::SIGRTMIN() || !self.deferred.contains(&signal) {
            self.deferred.push(signal);
        }
    }
}

/// Signals that report a fault of the instruction itself, or that the
/// kernel handles specially: never held back.
fn synchronous(signal: i32) -> bool {
    matches!(
        signal,
        libc::SIGSEGV | libc::SIGBUS | libc::SIGILL | libc::SIGFPE | libc::SIGTRAP | libc::SIGSTOP | libc::SIGKILL
    )
}

/// Whether process `pid` has a handler installed for `signal`.
fn caught(pid: Pid, signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    (1..=64).contains(&signal) && mask & (1u64 << (signal - 1)) != 0
}

impl Tracer {
    /// At a signal-delivery-stop of `tid`: true when the signal was held
    /// back (the thread has been resumed without it).
    pub(crate) fn hold_back_signal(&mut self, tid: Pid, signal: i32) -> Result<bool, Error> {
        if !self.foreign_mode || self.owner != Some(tid) || synchronous(signal) || !caught(self.pid, signal) {
            return Ok(false);
        }
        let now = Instant::now();
        let Some(t) = self.threads.get_mut(&tid) else { return Ok(false) };
        if t.sigs.slice_over(now) {
            // Delivered now: the handler runs in host mode, foreign mode resumes after it.
            t.sigs.delivered = Some(now);
            t.sigs.back = None;
            // A held-back instance of a standard signal merges with this one.
            if signal < libc::SIGRTMIN() {
                t.sigs.deferred.retain(|&s| s != signal);
            }
            return Ok(false);
        }
        t.sigs.hold(signal);
        self.resume(tid, 0)?;
        Ok(true)
    }

    /// Foreign mode (re)starts on `tid`: the end of a handler's flips.
    pub(crate) fn foreign_resumed(&mut self, tid: Pid) {
        if let Some(t) = self.threads.get_mut(&tid) {
            if t.sigs.delivered.is_some() && t.sigs.back.is_none() {
                t.sigs.back = Some(Instant::now());
            }
        }
    }

    /// Before `tid` is resumed: re-sends its held-back signals once their
    /// time has come (the slice is over, or the thread left foreign mode).
    pub(crate) fn send_held_signals(&mut self, tid: Pid) {
        let in_foreign = self.foreign_mode && self.owner == Some(tid);
        let pid = self.pid;
        let Some(t) = self.threads.get_mut(&tid) else { return };
        if t.sigs.deferred.is_empty() || (in_foreign && !t.sigs.slice_over(Instant::now())) {
            return;
        }
        for s in std::mem::take(&mut t.sigs.deferred) {
            // Gone meanwhile: nothing to deliver.
            let _ = sys::tgkill(pid, tid, s);
        }
    }

    /// Timer tick: a foreign call that stops for nothing (a compute loop)
    /// still gets its held-back signals once the slice is over.
    pub(crate) fn send_held_signals_all(&mut self) {
        let busy: Vec<Pid> = std::iter::once((self.pid, self.owner))
            .chain(self.procs.values().map(|p| (p.pid, p.owner)))
            .filter_map(|(p, o)| o.map(|_| p))
            .collect();
        for p in busy {
            self.activate(p);
            if let Some(o) = self.owner {
                if self.threads.get(&o).is_some_and(|t| t.running) {
                    self.send_held_signals(o);
                }
            }
        }
    }
}
