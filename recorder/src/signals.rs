//! The program's asynchronous signals while a thread runs foreign code.
//!
//! A handler is host code: running it from a foreign call costs two full
//! protection flips (host mode for the handler, foreign mode after it). A
//! periodic signal faster than that (a `setitimer` of 100 µs) would then be
//! delivered again before a single foreign instruction ran: a livelock.
//! So after each handler the foreign code gets a slice of time
//! [`FLIPS_PER_SLICE`] times what the flips cost (within [`MIN_SLICE`] and
//! [`MAX_SLICE`]). A
//! caught signal arriving within the slice is held back: it is blocked in
//! the thread's signal mask and re-sent, so it waits in the kernel as a
//! pending signal does natively (standard signals coalesce, real-time ones
//! queue) and costs no further stop; a one-shot timer of ours ends the slice
//! (`PTRACE_INTERRUPT`), the mask is restored, and the signal is delivered.
//! The thread leaving foreign mode restores it at once. The handler still
//! runs, later; the foreign code always progresses. A held-back signal is
//! re-sent with `tgkill` (its `si_code` becomes `SI_TKILL`), and the library
//! would see the signal in its mask if it asked during the slice.

use std::time::{Duration, Instant};

use crate::sys::{self, Pid};
use crate::tracer::Tracer;
use crate::Error;

/// Shortest slice of foreign execution between two handlers.
pub(crate) const MIN_SLICE: Duration = Duration::from_micros(500);
/// The slice is at least this many times the cost of the last handler's flips.
pub(crate) const FLIPS_PER_SLICE: u32 = 2;
/// Longest slice: any slice guarantees progress; a long one (one slow flip
/// measured) would only hold the program's handlers back for longer.
pub(crate) const MAX_SLICE: Duration = Duration::from_millis(5);

/// Per-thread bookkeeping of signals delivered during foreign calls.
#[derive(Debug, Default, Clone)]
pub(crate) struct SigState {
    /// Signals held back without a mask (the mask could not be changed).
    pub deferred: Vec<i32>,
    /// Signals we added to the thread's blocked mask (bit N-1: signal N).
    blocked: u64,
    /// When a handler was last let run from foreign mode.
    delivered: Option<Instant>,
    /// When foreign mode resumed after it.
    back: Option<Instant>,
}

impl SigState {
    /// When the foreign code's slice since the last handler is over.
    fn slice_end(&self) -> Option<Instant> {
        match (self.delivered, self.back) {
            (Some(d), Some(b)) if b >= d => {
                Some(b + (b.duration_since(d) * FLIPS_PER_SLICE).clamp(MIN_SLICE, MAX_SLICE))
            }
            _ => None,
        }
    }

    fn slice_over(&self, now: Instant) -> bool {
        self.slice_end().is_none_or(|e| now >= e)
    }

    fn pending(&self) -> bool {
        self.blocked != 0 || !self.deferred.is_empty()
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

fn bit(signal: i32) -> u64 {
    if (1..=64).contains(&signal) {
        1u64 << (signal - 1)
    } else {
        0
    }
}

/// Whether process `pid` has a handler installed for `signal`.
fn caught(pid: Pid, signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else { return false };
    let mask = status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    mask & bit(signal) != 0
}

/// A periodic timer that interrupts the recorder's `waitpid` (SIGALRM to
/// this thread, as the ticker does) every [`MIN_SLICE`] while signals are
/// held back, so a slice's end is noticed (a tick lost while the recorder
/// was busy is followed by the next).
#[derive(Debug, Default)]
pub(crate) struct SliceTimer {
    timer: Option<crate::sys::AlarmTimer>,
    running: bool,
}

impl SliceTimer {
    fn set(&mut self, period: Option<Duration>) {
        if self.timer.is_none() {
            self.timer = crate::sys::AlarmTimer::new();
        }
        let Some(t) = &self.timer else { return };
        t.set(period);
        self.running = period.is_some();
    }

    fn start(&mut self) {
        if !self.running {
            self.set(Some(MIN_SLICE));
        }
    }

    fn stop(&mut self) {
        if self.running {
            self.set(None);
        }
    }
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
            if signal < libc::SIGRTMIN() {
                // A held-back instance of a standard signal merges with this one.
                t.sigs.deferred.retain(|&s| s != signal);
            }
            return Ok(false);
        }
        // Blocked and sent again, it waits in the kernel without stopping the thread.
        let blocked = sys::getsigmask(tid)
            .and_then(|m| {
                if m & bit(signal) == 0 {
                    sys::setsigmask(tid, m | bit(signal)).map(|()| true)
                } else {
                    Ok(false)
                }
            })
            .and_then(|added| sys::tgkill(self.pid, tid, signal).map(|()| added));
        let Some(t) = self.threads.get_mut(&tid) else { return Ok(false) };
        match blocked {
            Ok(added) => {
                if added {
                    t.sigs.blocked |= bit(signal);
                }
            }
            Err(_) => {
                if signal >= libc::SIGRTMIN() || !t.sigs.deferred.contains(&signal) {
                    t.sigs.deferred.push(signal);
                }
            }
        }
        self.slice_timer.start();
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

    /// Before `tid` (stopped) is resumed: once the slice is over, or the
    /// thread left foreign mode, its held-back signals are let through.
    pub(crate) fn send_held_signals(&mut self, tid: Pid) {
        let in_foreign = self.foreign_mode && self.owner == Some(tid);
        let pid = self.pid;
        let Some(t) = self.threads.get_mut(&tid) else { return };
        if !t.sigs.pending() || (in_foreign && !t.sigs.slice_over(Instant::now())) {
            return;
        }
        if t.sigs.blocked != 0 {
            let added = std::mem::take(&mut t.sigs.blocked);
            // Gone meanwhile: nothing to deliver.
            if let Ok(m) = sys::getsigmask(tid) {
                let _ = sys::setsigmask(tid, m & !added);
            }
        }
        for s in std::mem::take(&mut t.sigs.deferred) {
            let _ = sys::tgkill(pid, tid, s);
        }
    }

    /// Slice timer or ticker: an owner with held-back signals whose slice
    /// is over is interrupted, so they are let through at that stop.
    pub(crate) fn send_held_signals_all(&mut self) {
        let busy: Vec<Pid> = std::iter::once((self.pid, self.owner))
            .chain(self.procs.values().map(|p| (p.pid, p.owner)))
            .filter_map(|(p, o)| o.map(|_| p))
            .collect();
        let now = Instant::now();
        let mut waiting = false;
        for p in busy {
            self.activate(p);
            let Some(o) = self.owner else { continue };
            let Some(t) = self.threads.get(&o) else { continue };
            if !t.sigs.pending() {
                continue;
            }
            waiting = true;
            if t.running && t.sigs.slice_over(now) {
                // Its interrupt stop resumes it through `resume`, which lets them through.
                let _ = sys::interrupt(o);
            }
        }
        if !waiting {
            self.slice_timer.stop();
        }
    }
}
