//! Recorder with threads: others are held during a foreign call; a call that
//! blocks on a held thread does not hang.

mod common;
mod record_support;

use ffirec_format::{Event, GapReason};
use record_support::{bytes, native, ranges_in, record};

fn prog() -> std::path::PathBuf {
    static P: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    P.get_or_init(|| common::program("rec_threads")).clone()
}

#[test]
fn record_threads_other_thread_held_during_calls() {
    let p = prog();
    let r = record("threads", &p, &["threads"], &["--lib", "librecfx.so"]);
    let nat = native(&p, &["threads"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    let ev = r.events();
    let main_tid = ev.iter().find_map(|e| match e {
        Event::Call { tid, .. } => Some(*tid),
        _ => None,
    });
    // Every access comes from the calling thread, 64 longs per call.
    let tids: std::collections::BTreeSet<u32> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Access { tid, .. } => Some(*tid),
            _ => None,
        })
        .collect();
    assert_eq!(tids.into_iter().collect::<Vec<_>>(), vec![main_tid.unwrap()]);
    let accesses = ev.iter().filter(|e| matches!(e, Event::Access { .. })).count();
    assert_eq!(accesses, 50 * 64);
    let b = bytes(&ev);
    assert_eq!(ranges_in(&b.read, r.addr("buf"), 512), vec![(0, 512)]);
    assert!(ev.iter().any(|e| matches!(e, Event::ThreadStart { .. })));
}

#[test]
fn record_blocked_call_releases_held_threads() {
    let p = prog();
    let r = record("blocked", &p, &["blocked"], &["--lib", "librecfx.so"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, "1\n");
    assert!(r.stderr.contains("ffirec: warning: foreign call #"), "stderr:\n{}", r.stderr);
    let ev = r.events();
    let gaps = gap_reasons(&ev);
    assert_eq!(gaps, vec![GapReason::Blocked]);
}

/// The library waits on the host's condition variable (its futex word on a
/// guarded page) until a held host thread signals it, then sums
/// buf[0, 40): the wait is released at once (the owner entered FUTEX_WAIT
/// with every other thread held), one `Blocked` gap covers only the wait, and
/// guarding resumes when the futex returns (its 4-byte read of the condition
/// variable is recorded then): all 40 reads after the wait are in the trace,
/// exactly buf[0, 320).
#[test]
fn record_condvar_wait_releases_at_once_and_records_after_it() {
    let p = prog();
    let t0 = std::time::Instant::now();
    let r = record("condvar", &p, &["condvar"], &["--lib", "librecfx.so"]);
    let took = t0.elapsed();
    eprintln!("condvar fixture recorded in {took:?}");
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, "780\n");
    let ev = r.events();
    let gaps = gap_reasons(&ev);
    assert_eq!(gaps, vec![GapReason::Blocked]);
    let buf = r.addr("buf");
    let gap = ev.iter().position(|e| matches!(e, Event::Gap { .. })).unwrap();
    let on_buf: Vec<usize> = ev
        .iter()
        .enumerate()
        .filter(|(_, e)| matches!(e, Event::Access { fault_addr, .. } if (buf..buf + 48 * 8).contains(fault_addr)))
        .map(|(i, _)| i)
        .collect();
    // The wait itself: the futex on the condition variable (args[1]), read
    // by the kernel, recorded when it returned.
    let cv = ev
        .iter()
        .find_map(|e| match e {
            Event::Call { args, .. } => Some(args[1]),
            _ => None,
        })
        .unwrap();
    let futex: Vec<(u64, u64, bool)> = ev[gap..]
        .iter()
        .filter_map(|e| match e {
            Event::SyscallAccess { nr: 202, ranges, .. } => Some(ranges.iter().map(|r| (r.addr, r.len, r.write))),
            _ => None,
        })
        .flatten()
        .collect();
    assert_eq!(futex.len(), 1, "{futex:?}");
    assert!((cv..cv + 48).contains(&futex[0].0) && futex[0].1 == 4 && !futex[0].2, "{futex:?} cv={cv:#x}");
    assert_eq!(on_buf.len(), 40, "one load per element");
    assert!(on_buf.iter().all(|&i| i > gap), "every read of buf comes after the wait");
    let b = bytes(&ev);
    assert_eq!(ranges_in(&b.read, buf, 48 * 8), vec![(0, 320)]);
    assert!(ranges_in(&b.written, buf, 48 * 8).is_empty());
}

#[test]
fn record_concurrent_callers_are_serialised() {
    let p = prog();
    let r = record("concurrent", &p, &["concurrent"], &["--lib", "librecfx.so"]);
    let nat = native(&p, &["concurrent"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    let ev = r.events();
    // 4 threads x 20 calls x 32 longs; each call's accesses come from its own thread,
    // and calls never interleave (one foreign call at a time).
    let mut open: Option<(u32, u64)> = None;
    let mut per_thread = std::collections::BTreeMap::new();
    for e in &ev {
        match e {
            Event::Call { tid, call, .. } => {
                assert!(open.is_none(), "call {call} on {tid} started while {open:?} was running");
                open = Some((*tid, *call));
            }
            Event::Return { tid, call, .. } => {
                assert_eq!(open, Some((*tid, *call)));
                open = None;
            }
            Event::Access { tid, .. } => {
                assert_eq!(open.map(|o| o.0), Some(*tid), "access outside its thread's call");
                *per_thread.entry(*tid).or_insert(0u64) += 1;
            }
            _ => {}
        }
    }
    assert_eq!(per_thread.len(), 4);
    assert!(per_thread.values().all(|&n| n == 20 * 32), "{per_thread:?}");
    let b = bytes(&ev);
    for i in 0..4 {
        assert_eq!(ranges_in(&b.read, r.addr(&format!("buf{i}")), 256), vec![(0, 256)]);
    }
}

/// The reasons of the trace's `Gap` events, in order.
fn gap_reasons(ev: &[Event]) -> Vec<GapReason> {
    ev.iter()
        .filter_map(|e| match e {
            Event::Gap { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect()
}
