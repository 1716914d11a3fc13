//! The full-ring wait protocol: with `tracer_present` set the shim executes
//! its flush trap (here caught by the program's own SIGTRAP handler, standing
//! in for a tracer), otherwise it yields; either way nothing is lost.

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use std::io::Write;
use std::time::Duration;

use alloc_common::{caller, fixture, spawn, text_range, wait, Drainer};
use ffirec_format::{Domain, Event};
use ffirec_recorder::alloc::AllocTracker;

fn run_trap_fixture(tracer_present: bool) -> (u64, Vec<Event>, ffirec_recorder::alloc::RingStats, (u64, u64)) {
    let exe = fixture("alloc_trap");
    let tracker = AllocTracker::with_capacity(16).unwrap();
    tracker.set_tracer_present(tracer_present);
    let env = tracker.env();
    // A slow consumer: the 16-record ring is full most of the time.
    let drainer = Drainer::start(tracker, Duration::from_micros(200));
    let out = wait(spawn(&exe, &[], &env));
    let (tracker, events) = drainer.finish();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let traps: u64 = stdout.split_whitespace().find_map(|w| w.strip_prefix("traps=")).unwrap().parse().unwrap();
    (traps, events, tracker.stats(), text_range(&String::from_utf8(out.stderr).unwrap()))
}

fn assert_all_pairs(events: &[Event], (lo, hi): (u64, u64)) {
    let mine: Vec<&Event> = events.iter().filter(|e| caller(e).is_some_and(|c| (lo..hi).contains(&c))).collect();
    assert_eq!(mine.len(), 10_000);
    for (i, pair) in mine.chunks(2).enumerate() {
        let Event::Alloc { ptr, size, .. } = *pair[0] else { panic!("{:?}", pair[0]) };
        assert_eq!(size, 8 + i as u64 % 8);
        assert!(matches!(*pair[1], Event::Free { ptr: p, .. } if p == ptr));
    }
}

#[test]
fn alloc_trap_full_ring_with_tracer_present_traps_and_loses_nothing() {
    let (traps, events, stats, text) = run_trap_fixture(true);
    assert!(traps > 0, "the ring never filled: {stats:?}");
    // Every trap the shim counted reached the program's handler (the program
    // installs it before its first allocation; earlier records fit in the ring).
    assert_eq!(stats.flush_traps, traps, "{stats:?}");
    assert_eq!(stats.reserved, stats.consumed);
    assert_eq!((stats.dropped, stats.skipped), (0, 0));
    assert_all_pairs(&events, text);
}

#[test]
fn alloc_trap_full_ring_without_tracer_yields_and_never_traps() {
    let (traps, events, stats, text) = run_trap_fixture(false);
    assert_eq!((traps, stats.flush_traps), (0, 0));
    assert_eq!(stats.reserved, stats.consumed);
    assert_eq!((stats.dropped, stats.skipped), (0, 0));
    assert_all_pairs(&events, text);
}

#[test]
fn alloc_trap_foreign_tid_marks_the_domain() {
    let exe = fixture("alloc_domain");
    let mut tracker = AllocTracker::new().unwrap();
    let mut child = spawn(&exe, &[], &tracker.env());
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut events = vec![];
    let wait_for_size = |tracker: &mut AllocTracker, events: &mut Vec<Event>, want: u64| {
        let deadline = std::time::Instant::now() + alloc_common::TIMEOUT;
        while !events.iter().any(|e| matches!(e, Event::Alloc { size, tid, .. } if *size == want && *tid == pid)) {
            assert!(std::time::Instant::now() < deadline, "no malloc({want})");
            alloc_common::drain_at_stop(tracker, pid, events);
            std::thread::sleep(Duration::from_millis(1));
        }
    };
    wait_for_size(&mut tracker, &mut events, 1);
    tracker.set_foreign_tid(pid);
    stdin.write_all(b"x").unwrap();
    wait_for_size(&mut tracker, &mut events, 2);
    tracker.set_foreign_tid(0);
    stdin.write_all(b"x").unwrap();
    let out = wait(child);
    assert!(out.status.success());
    tracker.drain_final(|e| events.push(e));
    let domains: Vec<(u64, Domain)> = events
        .iter()
        .filter_map(|e| match *e {
            Event::Alloc { size, domain, tid, .. } if tid == pid && (1..=3).contains(&size) => Some((size, domain)),
            _ => None,
        })
        .collect();
    assert_eq!(domains, vec![(1, Domain::Host), (2, Domain::Foreign), (3, Domain::Host)]);
}
