//! Many producers, one concurrent consumer, a ring that wraps hundreds of
//! times: every record arrives, in a gapless order, and the program computes
//! exactly what it computes without the shim.

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use std::collections::BTreeMap;
use std::time::Duration;

use alloc_common::{caller, fixture, spawn, text_range, wait, Drainer};
use ffirec_format::{AllocFn, Domain, Event};
use ffirec_recorder::alloc::AllocTracker;

const THREADS: usize = 4;
const PAIRS: u64 = 10_000;

#[test]
fn alloc_threads_80000_records_none_lost_on_a_wrapping_ring() {
    let exe = fixture("alloc_threads");
    let tracker = AllocTracker::with_capacity(256).unwrap();
    let env = tracker.env();
    let drainer = Drainer::start(tracker, Duration::ZERO);
    let out = wait(spawn(&exe, &[], &env));
    let (tracker, events) = drainer.finish();
    assert!(out.status.success(), "{out:?}");
    let (lo, hi) = text_range(&String::from_utf8(out.stderr).unwrap());

    let stats = tracker.stats();
    assert_eq!(stats.reserved, stats.consumed, "{stats:?}");
    assert_eq!((stats.dropped, stats.skipped, stats.flush_traps), (0, 0, 0), "{stats:?}");
    assert!(stats.reserved > 300 * 256, "the ring must wrap many times: {stats:?}");

    let mine: Vec<&Event> = events.iter().filter(|e| caller(e).is_some_and(|c| (lo..hi).contains(&c))).collect();
    assert_eq!(mine.len(), THREADS * 2 * PAIRS as usize);

    // Per thread: malloc(16 + i % 64) then free of that very pointer, 10 000 times, in order.
    let mut per_tid: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
    for e in &mine {
        per_tid.entry(e.tid().unwrap()).or_default().push(e);
    }
    assert_eq!(per_tid.len(), THREADS);
    for (tid, evs) in per_tid {
        assert_eq!(evs.len(), 2 * PAIRS as usize, "tid {tid}");
        for (i, pair) in evs.chunks(2).enumerate() {
            let Event::Alloc {
                func: AllocFn::Malloc, ptr, size, old_ptr: 0, domain: Domain::Host, zeroed: false, ..
            } = *pair[0]
            else {
                panic!("tid {tid} pair {i}: {:?}", pair[0]);
            };
            assert_eq!(size, 16 + i as u64 % 64, "tid {tid} pair {i}");
            assert!(
                matches!(*pair[1], Event::Free { ptr: p, domain: Domain::Host, .. } if p == ptr),
                "tid {tid} pair {i}: {:?}",
                pair[1]
            );
        }
    }

    // Global order is consistent: a pointer is never allocated twice without a free between.
    let mut live = std::collections::HashSet::new();
    for e in &events {
        match *e {
            Event::Alloc { ptr, old_ptr, .. } => {
                if old_ptr != 0 {
                    live.remove(&old_ptr);
                }
                assert!(live.insert(ptr), "{ptr:#x} allocated twice");
            }
            Event::Free { ptr, .. } => {
                live.remove(&ptr);
            }
            _ => {}
        }
    }
}

#[test]
fn alloc_threads_stdout_identical_with_and_without_the_shim() {
    let exe = fixture("alloc_threads");
    let native = wait(spawn(&exe, &[], &[]));
    let tracker = AllocTracker::with_capacity(1024).unwrap();
    let env = tracker.env();
    let drainer = Drainer::start(tracker, Duration::ZERO);
    let shimmed = wait(spawn(&exe, &[], &env));
    drainer.finish();
    assert!(native.status.success());
    assert_eq!(native.status.code(), shimmed.status.code());
    assert_eq!(String::from_utf8_lossy(&native.stdout), String::from_utf8_lossy(&shimmed.stdout));
    assert!(native.stdout.starts_with(b"checksum="));
}

#[test]
fn alloc_threads_shim_without_a_ring_is_a_pass_through() {
    let exe = fixture("alloc_threads");
    let native = wait(spawn(&exe, &[], &[]));
    let tracker = AllocTracker::new().unwrap();
    let preload: Vec<_> = tracker.env().into_iter().filter(|(k, _)| k == "LD_PRELOAD").collect();
    let shimmed = wait(spawn(&exe, &[], &preload));
    assert_eq!(native.status.code(), shimmed.status.code());
    assert_eq!(native.stdout, shimmed.stdout);
    let mut tracker = tracker;
    assert_eq!(tracker.drain(|_| {}), 0);
    assert_eq!(tracker.stats().reserved, 0);
}

#[test]
fn alloc_threads_dropping_the_tracker_never_hangs_the_program() {
    let exe = fixture("alloc_threads");
    let native = wait(spawn(&exe, &[], &[]));
    let tracker = AllocTracker::with_capacity(16).unwrap();
    // Nobody drains: the program fills the ring and waits for room ...
    let child = spawn(&exe, &[], &tracker.env());
    std::thread::sleep(Duration::from_millis(200));
    assert!(tracker.stats().reserved >= 16);
    // ... until the consumer goes away.
    drop(tracker);
    let shimmed = wait(child);
    assert!(shimmed.status.success());
    assert_eq!(native.stdout, shimmed.stdout);
}

#[test]
fn alloc_threads_background_drain_delivers_everything_in_order() {
    use ffirec_recorder::alloc::BackgroundDrain;
    let exe = fixture("alloc_threads");
    let tracker = AllocTracker::with_capacity(256).unwrap();
    let env = tracker.env();
    // A small buffer bound: the background thread often has to pause.
    let bg = BackgroundDrain::start(tracker, 1000).unwrap();
    let mut child = spawn(&exe, &[], &env);
    let mut events = vec![];
    let mut takes = 0;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        bg.take(|e| events.push(e));
        takes += 1;
        std::thread::sleep(Duration::from_millis(2));
    };
    let out = wait(child);
    assert!(status.success(), "{out:?}");
    bg.take_final(|e| events.push(e));
    assert!(takes > 1);
    let stats = bg.stats();
    assert_eq!(stats.reserved, stats.consumed, "{stats:?}");
    assert_eq!((stats.dropped, stats.skipped), (0, 0), "{stats:?}");
    let (lo, hi) = text_range(&String::from_utf8(out.stderr).unwrap());
    let mine: Vec<&Event> = events.iter().filter(|e| caller(e).is_some_and(|c| (lo..hi).contains(&c))).collect();
    assert_eq!(mine.len(), THREADS * 2 * PAIRS as usize);
    let mut per_tid: BTreeMap<u32, Vec<&Event>> = BTreeMap::new();
    for e in &mine {
        per_tid.entry(e.tid().unwrap()).or_default().push(e);
    }
    for (tid, evs) in per_tid {
        for (i, pair) in evs.chunks(2).enumerate() {
            let Event::Alloc { ptr, size, .. } = *pair[0] else { panic!("tid {tid} pair {i}: {:?}", pair[0]) };
            assert_eq!(size, 16 + i as u64 % 64, "tid {tid} pair {i}");
            assert!(matches!(*pair[1], Event::Free { ptr: p, .. } if p == ptr), "tid {tid} pair {i}");
        }
    }
}
