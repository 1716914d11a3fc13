//! Records reserved from a signal handler that interrupted another record
//! (the primary ring's unlocked reservation must not be split): every record
//! arrives exactly once.

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use std::time::Duration;

use alloc_common::{caller, fixture, spawn, text_range, wait, Drainer};
use ffirec_format::{AllocFn, Event};
use ffirec_recorder::alloc::AllocTracker;

#[test]
fn alloc_signal_handler_records_interleave_without_loss() {
    let exe = fixture("alloc_signal");
    let tracker = AllocTracker::new().unwrap();
    let env = tracker.env();
    let drainer = Drainer::start(tracker, Duration::ZERO);
    let out = wait(spawn(&exe, &[], &env));
    let (tracker, events) = drainer.finish();
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let handled: usize = stdout.split_whitespace().find_map(|w| w.strip_prefix("handled=")).unwrap().parse().unwrap();
    let (lo, hi) = text_range(&String::from_utf8(out.stderr).unwrap());
    let stats = tracker.stats();
    assert_eq!(stats.reserved, stats.consumed, "{stats:?}");
    assert_eq!((stats.dropped, stats.skipped), (0, 0), "{stats:?}");

    let mine: Vec<&Event> = events.iter().filter(|e| caller(e).is_some_and(|c| (lo..hi).contains(&c))).collect();
    let maps = mine.iter().filter(|e| matches!(e, Event::Alloc { func: AllocFn::Mmap, .. })).count();
    let mallocs: Vec<&&Event> =
        mine.iter().filter(|e| matches!(e, Event::Alloc { func: AllocFn::Malloc, .. })).collect();
    assert!(handled > 0, "the timer never fired");
    assert_eq!(maps, handled);
    assert_eq!(mallocs.len(), 300_000);
    // Every record is there exactly once: mallocs + their frees + maps + their frees.
    assert_eq!(mine.len(), 2 * 300_000 + 2 * handled);
    for (i, e) in mallocs.iter().enumerate() {
        let Event::Alloc { size, .. } = ***e else { unreachable!() };
        assert_eq!(size, 24 + i as u64 % 8, "malloc #{i}");
    }
}
