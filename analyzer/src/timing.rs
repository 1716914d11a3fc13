//! `FFIREC_ANALYZE_TIMING=1`: CPU time per pipeline stage, summed over the
//! workers. CPU time, not wall time: on a shared machine a thread's wall
//! time includes the time it waited for a core, which made two threads look
//! twice as slow per event as one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};

static ON: AtomicBool = AtomicBool::new(false);

/// What a span of work belongs to.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Stage {
    /// Reading a chunk and turning it into records (parallel).
    Decode = 0,
    /// Replaying one shard's part of a batch (parallel).
    Replay = 1,
    /// The in-order pass over control events (overlaps decoding).
    Timeline = 2,
    /// Gathering the shards and building the report: nothing else runs.
    Serial = 3,
    /// The driver waiting for a chunk with no other work to take (wall time).
    Idle = 4,
}

const STAGES: usize = 5;
static NS: [AtomicU64; STAGES] = [const { AtomicU64::new(0) }; STAGES];

pub(crate) fn enable(on: bool) {
    ON.store(on, Relaxed);
    for n in &NS {
        n.store(0, Relaxed);
    }
}

pub(crate) fn on() -> bool {
    ON.load(Relaxed)
}

/// CPU time of the calling thread, in nanoseconds.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; CLOCK_THREAD_CPUTIME_ID
    // needs nothing else.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if r != 0 {
        return 0;
    }
    (ts.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(ts.tv_nsec as u64)
}

/// Runs `f`, adding its CPU time to `stage`.
pub(crate) fn task<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    if !on() {
        return f();
    }
    let t0 = thread_cpu_ns();
    let r = f();
    NS[stage as usize].fetch_add(thread_cpu_ns().saturating_sub(t0), Relaxed);
    r
}

/// Adds wall time to `stage` (for [`Stage::Idle`]).
pub(crate) fn add_wall(stage: Stage, d: std::time::Duration) {
    if on() {
        NS[stage as usize].fetch_add(d.as_nanos() as u64, Relaxed);
    }
}

/// One line: wall time (all, and of the decode/replay pipeline), CPU seconds per stage, and what they imply on `threads` free
/// cores: the share of the time in which only one thread has work (the
/// serial part, plus the driver's idle waits) and the speed-up it allows.
pub(crate) fn summary(threads: usize, wall: f64, pipeline: f64) -> String {
    let s = |st: Stage| NS[st as usize].load(Relaxed) as f64 / 1e9;
    let (dec, rep, tl, ser, idle) =
        (s(Stage::Decode), s(Stage::Replay), s(Stage::Timeline), s(Stage::Serial), s(Stage::Idle));
    let p = threads.max(1) as f64;
    let parallel = dec + rep + tl;
    let ideal = parallel / p + ser;
    format!(
        "wall {wall:.3}s (decode+replay {pipeline:.3}s); CPU: decode {dec:.3}s, replay {rep:.3}s, timeline {tl:.3}s, serial {ser:.3}s (total {:.3}s); driver idle {idle:.3}s; serial fraction {:.1}%, ideal on {p} free cores {ideal:.3}s ({:.2}x of one core)",
        parallel + ser,
        100.0 * ser / (parallel + ser).max(1e-9),
        (parallel + ser) / ideal.max(1e-9),
    )
}
