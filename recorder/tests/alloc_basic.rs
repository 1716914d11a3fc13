//! Every tracked allocation function, called once by a real program through
//! the LD_PRELOAD shim: the drained events match the program's calls exactly.

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use std::collections::HashMap;

use alloc_common::{caller, fixture, hex, spawn, text_range, wait};
use ffirec_format::{AllocFn, Domain, Event};
use ffirec_recorder::alloc::AllocTracker;

const PAGE: u64 = 4096;

/// Runs fixture `name` with a fresh tracker to its end: its stdout, the pid
/// and text range it printed, and every event of the final drain.
fn run_fixture(name: &str) -> (String, u32, (u64, u64), Vec<Event>, AllocTracker) {
    let exe = fixture(name);
    let mut tracker = AllocTracker::new().unwrap();
    let out = wait(spawn(&exe, &[], &tracker.env()));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let text = text_range(&stdout);
    let pid: u32 = stdout.split_whitespace().find_map(|w| w.strip_prefix("pid=")).unwrap().parse().unwrap();
    let mut all = vec![];
    tracker.drain_final(|e| all.push(e));
    (stdout, pid, text, all, tracker)
}

/// The events with their callers zeroed.
fn without_callers(events: &[Event]) -> Vec<Event> {
    let mut v = events.to_vec();
    for e in &mut v {
        if let Event::Alloc { caller, .. } | Event::Free { caller, .. } = e {
            *caller = 0;
        }
    }
    v
}

#[test]
fn alloc_basic_every_function_exactly_once() {
    let (stdout, pid, (lo, hi), all, tracker) = run_fixture("alloc_basic");
    let p: HashMap<&str, u64> = stdout
        .lines()
        .nth(1)
        .unwrap()
        .split_whitespace()
        .map(|w| {
            let (k, v) = w.split_once('=').unwrap();
            (k, hex(v))
        })
        .collect();

    let stats = tracker.stats();
    assert_eq!(stats.reserved, stats.consumed);
    assert_eq!((stats.dropped, stats.skipped, stats.flush_traps), (0, 0, 0));

    // The program's own calls: Alloc/Free made from its text, and Unmaps (the
    // only munmap calls that reach the shim are the program's).
    let mine: Vec<Event> = all
        .into_iter()
        .filter(|e| matches!(e, Event::Unmap { .. }) || caller(e).is_some_and(|c| (lo..hi).contains(&c)))
        .collect();
    let callers: Vec<u64> = mine.iter().filter_map(caller).collect();
    let normalised = without_callers(&mine);

    let alloc = |func, ptr, size, old_ptr, zeroed| Event::Alloc {
        tid: pid,
        func,
        ptr,
        size,
        old_ptr,
        caller: 0,
        domain: Domain::Host,
        zeroed,
    };
    let free = |ptr| Event::Free { tid: pid, ptr, caller: 0, domain: Domain::Host };
    let expected = vec![
        alloc(AllocFn::Malloc, p["a"], 10, 0, false),
        alloc(AllocFn::Calloc, p["b"], 24, 0, true),
        alloc(AllocFn::Realloc, p["c"], 100, p["a"], false),
        alloc(AllocFn::PosixMemalign, p["d"], 200, 0, false),
        alloc(AllocFn::Reallocarray, p["e"], 35, 0, false),
        alloc(AllocFn::AlignedAlloc, p["f"], 256, 0, false),
        alloc(AllocFn::Memalign, p["g"], 48, 0, false),
        alloc(AllocFn::Valloc, p["h"], 1000, 0, false),
        alloc(AllocFn::Pvalloc, p["i"], 2 * PAGE, 0, false),
        alloc(AllocFn::Mmap, p["m"], 3 * PAGE, 0, true),
        alloc(AllocFn::Mremap, p["m2"], 5 * PAGE, p["m"], false),
        Event::Unmap { tid: pid, addr: p["m2"], len: PAGE },
        free(p["m2"] + PAGE),
        free(p["e"]),
        free(p["b"]),
        free(p["c"]),
        free(p["d"]),
        free(p["f"]),
        free(p["g"]),
        free(p["h"]),
        free(p["i"]),
    ];
    assert_eq!(normalised, expected);
    assert_eq!(p["z"], 0);
    assert_eq!(p["d"] % 64, 0);
    assert_eq!(p["f"] % 128, 0);
    assert_eq!(callers.len(), expected.len() - 1); // all but the Unmap
                                                   // Call sites are distinct instructions of main, in program order.
    assert!(callers.windows(2).all(|w| w[0] < w[1]), "callers not increasing: {callers:x?}");
}

/// A malloc waits in the ring header for its free ("Held malloc" in
/// `ffirec_shim.h`): the pair in one slot, or two when the callers are far
/// apart; any other record moves it into the ring first; one still held at
/// exit comes out of the final drain. The events are what the program did.
#[test]
fn alloc_basic_held_malloc_pairs_give_the_programs_events() {
    let (stdout, pid, (lo, hi), all, _tracker) = run_fixture("alloc_pairs");
    let p = |k: &str| hex(stdout.split_whitespace().find_map(|w| w.strip_prefix(&format!("{k}="))).unwrap());
    let mine: Vec<Event> = all.into_iter().filter(|e| caller(e).is_some_and(|c| (lo..hi).contains(&c))).collect();
    let callers: Vec<u64> = mine.iter().filter_map(caller).collect();
    let normalised = without_callers(&mine);
    let alloc = |ptr, size| Event::Alloc {
        tid: pid,
        func: AllocFn::Malloc,
        ptr,
        size,
        old_ptr: 0,
        caller: 0,
        domain: Domain::Host,
        zeroed: false,
    };
    let free = |ptr| Event::Free { tid: pid, ptr, caller: 0, domain: Domain::Host };
    let expected = vec![
        alloc(p("a"), 24),
        free(p("a")),
        alloc(p("b"), 40),
        free(p("b")),
        alloc(p("c"), 56),
        alloc(p("d"), 72),
        free(p("c")),
        free(p("d")),
        alloc(p("e"), 88),
    ];
    assert_eq!(normalised, expected);
    // The call sites exactly: a's pair close together (one slot), b's free
    // in far_free, more than 2^15 bytes from its malloc (two slots).
    assert_eq!(callers[..4], [p("am"), p("af"), p("bm"), p("bf")], "{callers:x?}");
    assert!(p("af") - p("am") < 0x100 && p("bm").abs_diff(p("bf")) > 0x8000);
}

#[test]
fn alloc_basic_tracker_cleans_up_its_files() {
    let tracker = AllocTracker::new().unwrap();
    let shim = tracker.shim_path().to_owned();
    let ring = tracker.ring_path().to_owned();
    assert!(shim.is_file() && ring.is_file());
    use std::os::unix::fs::PermissionsExt;
    let dir_mode = std::fs::metadata(shim.parent().unwrap()).unwrap().permissions().mode();
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(AllocTracker::flush_trap_symbol(), "ffirec_shim_flush_trap");
    assert!(tracker.flush_trap_offset() > 0);
    drop(tracker);
    assert!(!shim.exists() && !ring.exists());
    assert!(!shim.parent().unwrap().exists() && !ring.parent().unwrap().exists());
}

#[test]
fn alloc_basic_bad_capacity_is_an_error() {
    assert!(AllocTracker::with_capacity(1000).is_err());
    assert!(AllocTracker::with_capacity(8).is_err());
}

#[test]
fn alloc_basic_stale_directories_of_dead_recorders_are_swept() {
    // A pid that no longer exists: a child we have reaped.
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let dead = child.id();
    child.wait().unwrap();
    let stale_tmp = std::env::temp_dir().join(format!("ffirec-{dead}-{}", "0123456789abcdef0123456789abcdef"));
    let stale_shm =
        std::path::Path::new("/dev/shm").join(format!("ffirec-{dead}-{}", "fedcba9876543210fedcba9876543210"));
    // Not ours by name: must survive.
    let other = std::env::temp_dir().join(format!("ffirec-{dead}-not-a-uuid"));
    for d in [&stale_tmp, &stale_shm, &other] {
        std::fs::create_dir_all(d).unwrap();
        std::fs::write(d.join("ring"), b"x").unwrap();
    }
    let tracker = AllocTracker::new().unwrap();
    let alive = std::path::Path::new("/proc").join(dead.to_string()).exists();
    if !alive {
        assert!(!stale_tmp.exists() && !stale_shm.exists());
    }
    assert!(other.exists());
    std::fs::remove_dir_all(&other).unwrap();
    assert!(tracker.shim_path().exists());
}
