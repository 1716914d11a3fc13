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
    let gaps: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Gap { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(gaps, vec![GapReason::Blocked]);
}
