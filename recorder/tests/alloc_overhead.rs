//! Recording overhead of the shim: a host making 1 M malloc/free pairs,
//! natively and through the shim with a consumer draining concurrently.
//! Measurement, not a correctness test: run it explicitly, in release mode:
//! `cargo test --release -p ffirec-recorder --test alloc_overhead -- --ignored --nocapture`

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use alloc_common::{fixture, spawn, wait};
use ffirec_recorder::alloc::AllocTracker;

const RUNS: usize = 7;

/// (loop ns as the program measured it, whole-process wall ns)
fn run(exe: &std::path::Path, env: &[(std::ffi::OsString, std::ffi::OsString)]) -> (u64, u64) {
    let t0 = Instant::now();
    let out = wait(spawn(exe, &[], env));
    let wall = t0.elapsed().as_nanos() as u64;
    assert!(out.status.success());
    let s = String::from_utf8(out.stdout).unwrap();
    let ns = s.split_whitespace().find_map(|w| w.strip_prefix("ns=")).unwrap().parse().unwrap();
    (ns, wall)
}

fn median(mut v: Vec<u64>) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// One recorded run: a fresh tracker (the bench process owns the primary
/// ring, as a recorded program does), drained concurrently by a thread.
fn run_shim(exe: &std::path::Path, capacity: usize, pause_us: u64) -> (u64, u64, u64) {
    let mut tracker = AllocTracker::with_capacity(capacity).unwrap();
    let env = tracker.env();
    let stop = Arc::new(AtomicBool::new(false));
    let flag = Arc::clone(&stop);
    let consumer = std::thread::spawn(move || {
        let mut events = 0u64;
        while !flag.load(Ordering::Acquire) {
            if tracker.drain(|_| events += 1) == 0 {
                std::thread::sleep(Duration::from_micros(50));
            } else if pause_us > 0 {
                std::thread::sleep(Duration::from_micros(pause_us));
            }
        }
        tracker.drain_final(|_| events += 1);
        (tracker.stats(), events)
    });
    let (ns, wall) = run(exe, &env);
    stop.store(true, Ordering::Release);
    let (stats, events) = consumer.join().unwrap();
    assert_eq!(stats.reserved, stats.consumed);
    assert_eq!(stats.dropped, 0);
    assert!(events >= 2_000_000);
    (ns, wall, events)
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn alloc_overhead_1m_malloc_free_pairs() {
    let exe = fixture("alloc_bench");
    let capacity = std::env::var("FFIREC_BENCH_CAPACITY")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(ffirec_recorder::alloc::DEFAULT_CAPACITY);
    // The consumer's pause between drains (an empty drain always pauses 50 µs).
    let pause_us: u64 = std::env::var("FFIREC_BENCH_PAUSE_US").ok().and_then(|v| v.parse().ok()).unwrap_or(0);
    let (mut native, mut shim, mut native_wall, mut shim_wall) = (vec![], vec![], vec![], vec![]);
    let mut events = 0;
    for _ in 0..RUNS {
        // Interleaved, so drift in machine load hits both sides alike.
        let (n, nw) = run(&exe, &[]);
        let (s, sw, e) = run_shim(&exe, capacity, pause_us);
        native.push(n);
        native_wall.push(nw);
        shim.push(s);
        shim_wall.push(sw);
        events = e;
    }
    let (n, s, nw, sw) = (median(native), median(shim), median(native_wall), median(shim_wall));
    println!(
        "alloc_overhead: 1M malloc/free pairs, ring {capacity} records, pause {pause_us} us, median of {RUNS}: \
         native loop {:.1} ms, shim loop {:.1} ms, ratio {:.2}x; \
         whole process {:.1} ms vs {:.1} ms, ratio {:.2}x; {events} events drained per run",
        n as f64 / 1e6,
        s as f64 / 1e6,
        s as f64 / n as f64,
        nw as f64 / 1e6,
        sw as f64 / 1e6,
        sw as f64 / nw as f64
    );
}

#[test]
#[ignore = "measurement; run with --release --ignored --nocapture"]
fn alloc_overhead_drain_throughput() {
    // 1 M pairs into a ring that holds them all, then one timed drain: the
    // cost a recorder that drains at ptrace stops pays while the tracee waits.
    let exe = fixture("alloc_bench");
    let mut tracker = AllocTracker::with_capacity(1 << 22).unwrap();
    let out = wait(spawn(&exe, &[], &tracker.env()));
    assert!(out.status.success());
    let t0 = Instant::now();
    let mut events = 0u64;
    tracker.drain_final(|_| events += 1);
    let dt = t0.elapsed();
    assert!(events >= 2_000_000);
    println!(
        "alloc_overhead: drained {events} events in {:.1} ms: {:.1} ns/event",
        dt.as_secs_f64() * 1e3,
        dt.as_nanos() as f64 / events as f64
    );
}
