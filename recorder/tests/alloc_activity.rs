//! `in_allocator`: while the foreign thread runs inside glibc's allocator the
//! header names it, so a recorder can tag those faults as allocator activity.

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use std::io::Write;
use std::time::Duration;

use alloc_common::{fixture, spawn, wait};
use ffirec_format::Event;
use ffirec_recorder::alloc::AllocTracker;

#[test]
fn alloc_activity_allocator_tid_is_set_exactly_inside_foreign_allocator_calls() {
    let exe = fixture("alloc_activity");
    let mut tracker = AllocTracker::new().unwrap();
    let mut child = spawn(&exe, &[], &tracker.env());
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut events = vec![];
    let deadline = std::time::Instant::now() + alloc_common::TIMEOUT;
    while !events.iter().any(|e| matches!(e, Event::Alloc { size: 64, tid, .. } if *tid == pid)) {
        assert!(std::time::Instant::now() < deadline);
        alloc_common::drain_at_stop(&mut tracker, pid, &mut events);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!tracker.in_allocator(pid));
    tracker.set_foreign_tid(pid);
    stdin.write_all(b"x").unwrap();
    // Wait for the foreign free(h), then leave foreign mode.
    while events.iter().filter(|e| matches!(e, Event::Free { tid, .. } if *tid == pid)).count() < 1 {
        assert!(std::time::Instant::now() < deadline);
        alloc_common::drain_at_stop(&mut tracker, pid, &mut events);
        std::thread::sleep(Duration::from_millis(1));
    }
    assert!(!tracker.in_allocator(pid), "still set after free returned");
    tracker.set_foreign_tid(0);
    stdin.write_all(b"x").unwrap();
    let out = wait(child);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert_eq!(stdout.trim(), format!("n=3 seen={pid},0,0 pid={pid} between=0 after=0"));
}
