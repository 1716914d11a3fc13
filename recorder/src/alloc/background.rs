//! Draining the ring on a background thread, delivering in order on demand.
//!
//! A recorder that drains only at ptrace stops makes the tracee wait for the
//! conversion of every record (the ring fills, the shim traps, the tracee
//! stays stopped while the recorder drains). [`BackgroundDrain`] keeps the
//! ring empty from its own thread and buffers the events; the recorder takes
//! them at its stops with [`BackgroundDrain::take`], which first hands over
//! the buffer and then drains what is left in the ring — so events still land
//! exactly where they belong relative to the recorder's own (ptrace) events.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use ffirec_format::Event;

use super::{AllocTracker, RingControl, RingStats};

struct State {
    tracker: AllocTracker,
    buffer: Vec<Event>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves plain data behind: keep going.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// An [`AllocTracker`] drained by a background thread.
pub struct BackgroundDrain {
    shared: Arc<Shared>,
    control: RingControl,
    thread: Option<JoinHandle<()>>,
}

impl BackgroundDrain {
    /// Starts the thread. It stops draining while `max_buffered` events wait
    /// to be taken (the shim then waits, or traps when a tracer is present).
    pub fn start(tracker: AllocTracker, max_buffered: usize) -> std::io::Result<BackgroundDrain> {
        let control = tracker.control();
        let shared =
            Arc::new(Shared { state: Mutex::new(State { tracker, buffer: Vec::new() }), stop: AtomicBool::new(false) });
        let worker = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("ffirec-alloc-drain".into()).spawn(move || {
            while !worker.stop.load(Ordering::Acquire) {
                let drained = {
                    let mut st = worker.lock();
                    let State { tracker, buffer } = &mut *st;
                    if buffer.len() < max_buffered {
                        tracker.drain(|e| buffer.push(e))
                    } else {
                        0
                    }
                };
                if drained == 0 {
                    std::thread::sleep(Duration::from_micros(200));
                }
            }
        })?;
        Ok(BackgroundDrain { shared, control, thread: Some(thread) })
    }

    /// The ring's control words (foreign tid, tracer flag, allocator activity).
    pub fn control(&self) -> &RingControl {
        &self.control
    }

    /// Every event recorded so far, in order: those already buffered, then
    /// the rest of the ring. Returns how many.
    pub fn take(&self, mut f: impl FnMut(Event)) -> usize {
        let mut st = self.shared.lock();
        let State { tracker, buffer } = &mut *st;
        let n = buffer.len();
        buffer.drain(..).for_each(&mut f);
        n + tracker.drain(f)
    }

    /// [`Self::take`] once no tracee process is left (see [`AllocTracker::drain_final`]).
    pub fn take_final(&self, mut f: impl FnMut(Event)) -> usize {
        let mut st = self.shared.lock();
        let State { tracker, buffer } = &mut *st;
        let n = buffer.len();
        buffer.drain(..).for_each(&mut f);
        n + tracker.drain_final(f)
    }

    /// Runs `f` on the tracker (paths, trap offset, arena, counters).
    pub fn with_tracker<R>(&self, f: impl FnOnce(&AllocTracker) -> R) -> R {
        f(&self.shared.lock().tracker)
    }

    /// See [`AllocTracker::is_blocked`].
    pub fn is_blocked(&self) -> bool {
        self.with_tracker(AllocTracker::is_blocked)
    }

    /// See [`AllocTracker::stats`].
    pub fn stats(&self) -> RingStats {
        self.with_tracker(AllocTracker::stats)
    }

    fn stop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for BackgroundDrain {
    fn drop(&mut self) {
        self.stop();
    }
}
