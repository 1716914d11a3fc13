//! The foreign arena: allocations made while the thread is the foreign tid
//! come from the fixed arena range, frees and reallocs route by address,
//! whoever calls them; the program computes the same either way.

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use std::collections::HashMap;
use std::io::Write;
use std::time::Duration;

use alloc_common::{caller, fixture, hex, spawn, text_range, wait};
use ffirec_format::{AllocFn, Domain, Event};
use ffirec_recorder::alloc::{AllocOptions, AllocTracker, DEFAULT_ARENA};

struct Run {
    ok: bool,
    p: HashMap<String, u64>,
    events: Vec<Event>,
}

/// Runs the fixture with the main thread foreign during phase 2.
fn run(tracker: &mut AllocTracker) -> Run {
    let exe = fixture("alloc_arena");
    let mut child = spawn(&exe, &[], &tracker.env());
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut events = vec![];
    // Wait for phase 1's malloc(100) so the switch lands between the phases.
    let deadline = std::time::Instant::now() + alloc_common::TIMEOUT;
    while !events.iter().any(|e| matches!(e, Event::Alloc { size: 100, tid, .. } if *tid == pid)) {
        assert!(std::time::Instant::now() < deadline);
        alloc_common::drain_at_stop(tracker, pid, &mut events);
        std::thread::sleep(Duration::from_millis(1));
    }
    tracker.set_foreign_tid(pid);
    stdin.write_all(b"x").unwrap();
    // Phase 2 ends with free(big), a 3 MiB block.
    let mut big = None;
    while big.is_none() {
        assert!(std::time::Instant::now() < deadline);
        alloc_common::drain_at_stop(tracker, pid, &mut events);
        big = events.iter().find_map(|e| match *e {
            Event::Alloc { size, ptr, tid, .. } if size == 3 << 20 && tid == pid => Some(ptr),
            _ => None,
        });
        let freed = big.is_some_and(|b| events.iter().any(|e| matches!(e, Event::Free { ptr, .. } if *ptr == b)));
        if !freed {
            big = None;
            std::thread::sleep(Duration::from_millis(1));
        }
    }
    tracker.set_foreign_tid(0);
    stdin.write_all(b"x").unwrap();
    let out = wait(child);
    assert!(out.status.success(), "{out:?}");
    tracker.drain_final(|e| events.push(e));
    let stdout = String::from_utf8(out.stdout).unwrap();
    let (lo, hi) = text_range(&String::from_utf8(out.stderr).unwrap());
    let p = stdout
        .split_whitespace()
        .filter_map(|w| w.split_once('='))
        .filter(|(k, _)| *k != "ok")
        .map(|(k, v)| (k.to_owned(), hex(v)))
        .collect();
    let events = events.into_iter().filter(|e| caller(e).is_some_and(|c| (lo..hi).contains(&c))).collect();
    Run { ok: stdout.contains("ok=1"), p, events }
}

#[test]
fn alloc_arena_foreign_allocations_live_in_the_arena_and_route_back() {
    let mut tracker = AllocTracker::new().unwrap();
    let arena = tracker.foreign_arena().unwrap();
    assert_eq!(arena, DEFAULT_ARENA);
    let Run { ok, p, events } = run(&mut tracker);
    assert!(ok, "the program saw different data");
    for k in ["f1", "f2", "f3", "f4", "big", "f5"] {
        assert!(arena.contains(&p[k]), "{k}={:#x} outside the arena", p[k]);
    }
    for k in ["h", "h2"] {
        assert!(!arena.contains(&p[k]), "{k}={:#x} inside the arena", p[k]);
    }
    let pid = events[0].tid().unwrap();
    let mut normalised = events;
    for e in &mut normalised {
        if let Event::Alloc { caller, .. } | Event::Free { caller, .. } = e {
            *caller = 0;
        }
    }
    let alloc = |func, ptr, size, old_ptr, domain, zeroed| Event::Alloc {
        tid: pid,
        func,
        ptr,
        size,
        old_ptr,
        caller: 0,
        domain,
        zeroed,
    };
    let free = |ptr, domain| Event::Free { tid: pid, ptr, caller: 0, domain };
    let (host, foreign) = (Domain::Host, Domain::Foreign);
    assert_eq!(
        normalised,
        vec![
            alloc(AllocFn::Malloc, p["h"], 100, 0, host, false),
            alloc(AllocFn::Malloc, p["f1"], 100, 0, foreign, false),
            alloc(AllocFn::Calloc, p["f2"], 100, 0, foreign, true),
            alloc(AllocFn::AlignedAlloc, p["f3"], 1000, 0, foreign, false),
            alloc(AllocFn::Realloc, p["f4"], 5000, p["f1"], foreign, false),
            alloc(AllocFn::Malloc, p["big"], 3 << 20, 0, foreign, false),
            free(p["h"], foreign),
            free(p["big"], foreign),
            free(p["f2"], host),
            alloc(AllocFn::Realloc, p["f5"], 2000, p["f3"], host, false),
            free(p["f4"], host),
            free(p["f5"], host),
            alloc(AllocFn::Malloc, p["h2"], 100, 0, host, false),
            free(p["h2"], host),
        ]
    );
}

#[test]
fn alloc_arena_off_serves_foreign_allocations_from_the_heap() {
    let mut tracker =
        AllocTracker::with_options(AllocOptions { foreign_arena: None, ..AllocOptions::default() }).unwrap();
    assert_eq!(tracker.foreign_arena(), None);
    let Run { ok, p, events } = run(&mut tracker);
    assert!(ok);
    for k in ["h", "f1", "f2", "f3", "f4", "big", "f5", "h2"] {
        assert!(!DEFAULT_ARENA.contains(&p[k]), "{k}={:#x}", p[k]);
    }
    let domains: Vec<Domain> = events
        .iter()
        .filter_map(|e| match *e {
            Event::Alloc { domain, .. } => Some(domain),
            _ => None,
        })
        .collect();
    use Domain::{Foreign as F, Host as H};
    assert_eq!(domains, vec![H, F, F, F, F, F, H, H]);
}

#[test]
fn alloc_arena_disabled_at_run_time_behaves_like_no_arena() {
    let mut tracker = AllocTracker::new().unwrap();
    tracker.set_foreign_arena(false);
    let Run { ok, p, .. } = run(&mut tracker);
    assert!(ok);
    assert!(!DEFAULT_ARENA.contains(&p["f1"]));
}

#[test]
fn alloc_arena_bad_range_is_an_error() {
    let bad = |r: std::ops::Range<u64>| {
        AllocTracker::with_options(AllocOptions { foreign_arena: Some(r), ..AllocOptions::default() }).is_err()
    };
    assert!(bad(0x1000..0x1000));
    assert!(bad(0x1001..0x3000));
    assert!(bad(0..0x3000));
    assert!(bad(0x7fff_ffff_0000..0x8000_0001_0000));
}

#[test]
fn alloc_arena_exhausted_falls_back_to_the_heap() {
    // 64 KiB: room for the small foreign blocks, not for the 3 MiB one.
    let arena = 0x6f10_0000_0000..0x6f10_0001_0000;
    let mut tracker =
        AllocTracker::with_options(AllocOptions { foreign_arena: Some(arena.clone()), ..AllocOptions::default() })
            .unwrap();
    let Run { ok, p, events } = run(&mut tracker);
    assert!(ok);
    for k in ["f1", "f2", "f3", "f4", "f5"] {
        assert!(arena.contains(&p[k]), "{k}={:#x}", p[k]);
    }
    assert!(!arena.contains(&p["big"]));
    let big = events.iter().find_map(|e| match *e {
        Event::Alloc { ptr, domain, .. } if ptr == p["big"] => Some(domain),
        _ => None,
    });
    assert_eq!(big, Some(Domain::Foreign));
}

#[test]
fn alloc_arena_range_taken_by_the_program_falls_back_to_the_heap() {
    let exe = fixture("alloc_arena_taken");
    let mut tracker = AllocTracker::new().unwrap();
    let arena = tracker.foreign_arena().unwrap();
    let start = format!("{:#x}", arena.start);
    let mut child = spawn(&exe, &[&start], &tracker.env());
    let pid = child.id();
    let mut stdin = child.stdin.take().unwrap();
    let mut events = vec![];
    let deadline = std::time::Instant::now() + alloc_common::TIMEOUT;
    // Foreign mode only once the program's page is mapped (its malloc(7)).
    while !events.iter().any(|e| matches!(e, Event::Alloc { size: 7, tid, .. } if *tid == pid)) {
        assert!(std::time::Instant::now() < deadline);
        alloc_common::drain_at_stop(&mut tracker, pid, &mut events);
        std::thread::sleep(Duration::from_millis(1));
    }
    tracker.set_foreign_tid(pid);
    stdin.write_all(b"x").unwrap();
    while !events.iter().any(|e| matches!(e, Event::Alloc { size: 100, tid, .. } if *tid == pid)) {
        assert!(std::time::Instant::now() < deadline);
        alloc_common::drain_at_stop(&mut tracker, pid, &mut events);
        std::thread::sleep(Duration::from_millis(1));
    }
    tracker.set_foreign_tid(0);
    stdin.write_all(b"x").unwrap();
    let out = wait(child);
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    assert!(stdout.contains("mine=mine"), "{stdout}");
    let p = hex(stdout.split_whitespace().find_map(|w| w.strip_prefix("p=")).unwrap());
    assert!(!arena.contains(&p), "{p:#x} in the arena range the program owns");
    tracker.drain_final(|e| events.push(e));
    let domain = events.iter().find_map(|e| match *e {
        Event::Alloc { ptr, domain, .. } if ptr == p => Some(domain),
        _ => None,
    });
    assert_eq!(domain, Some(Domain::Foreign));
    assert!(events.iter().any(|e| matches!(*e, Event::Free { ptr, domain: Domain::Host, .. } if ptr == p)));
}
