//! Processes share the ring: a forked child's records carry its own tid and
//! see the parent's anonymous mappings; an exec'd image starts a fresh model.

#![allow(clippy::unwrap_used)] // test support functions outside #[test]

mod alloc_common;

use alloc_common::{caller, fixture, hex, spawn, text_range, wait};
use ffirec_format::{AllocFn, Domain, Event};
use ffirec_recorder::alloc::AllocTracker;

#[test]
fn alloc_fork_child_and_parent_unmap_the_inherited_mapping() {
    let exe = fixture("alloc_fork");
    let mut tracker = AllocTracker::new().unwrap();
    let out = wait(spawn(&exe, &[], &tracker.env()));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let field = |name: &str| {
        stdout.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")[..])).unwrap().to_owned()
    };
    let (a, q) = (hex(&field("a")), hex(&field("q")));
    let child: u32 = field("child").parse().unwrap();
    let parent: u32 = field("parent").parse().unwrap();
    let (lo, hi) = text_range(&stdout);

    let mut events = vec![];
    tracker.drain_final(|e| events.push(e));
    let mut mine: Vec<Event> = events
        .into_iter()
        .filter(|e| e.tid().is_some_and(|t| t == child || t == parent))
        .filter(|e| caller(e).is_some_and(|c| (lo..hi).contains(&c)))
        .collect();
    for e in &mut mine {
        if let Event::Alloc { caller, .. } | Event::Free { caller, .. } = e {
            *caller = 0;
        }
    }
    let free = |tid, ptr| Event::Free { tid, ptr, caller: 0, domain: Domain::Host };
    // Processes write different rings: order is exact per process, and the
    // child sees the mapping it inherited.
    let of = |tid| mine.iter().filter(|e| e.tid() == Some(tid)).cloned().collect::<Vec<_>>();
    assert_eq!(
        of(parent),
        vec![
            Event::Alloc {
                tid: parent,
                func: AllocFn::Mmap,
                ptr: a,
                size: 8192,
                old_ptr: 0,
                caller: 0,
                domain: Domain::Host,
                zeroed: true
            },
            free(parent, a),
        ]
    );
    assert_eq!(
        of(child),
        vec![
            free(child, a),
            Event::Alloc {
                tid: child,
                func: AllocFn::Malloc,
                ptr: q,
                size: 77,
                old_ptr: 0,
                caller: 0,
                domain: Domain::Host,
                zeroed: false
            },
            free(child, q),
        ]
    );
    assert_eq!(mine.len(), 5);
    assert_eq!(tracker.primary_pid(), Some(parent));
}

#[test]
fn alloc_fork_exec_keeps_the_primary_ring_and_the_order() {
    let exe = fixture("alloc_exec");
    let mut tracker = AllocTracker::new().unwrap();
    let out = wait(spawn(&exe, &[], &tracker.env()));
    assert!(out.status.success(), "{out:?}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let mut lines = stdout.lines();
    let (l1, l2) = (lines.next().unwrap(), lines.next().unwrap());
    let field = |l: &str, name: &str| {
        l.split_whitespace().find_map(|w| w.strip_prefix(&format!("{name}=")[..])).unwrap().to_owned()
    };
    let (p, q) = (hex(&field(l1, "p")), hex(&field(l2, "q")));
    let pid: u32 = field(l2, "pid").parse().unwrap();
    let (t1, t2) = (text_range(l1), text_range(l2));
    let mut events = vec![];
    tracker.drain_final(|e| events.push(e));
    let mine: Vec<(u64, u64)> = events
        .iter()
        .filter(|e| caller(e).is_some_and(|c| (t1.0..t1.1).contains(&c) || (t2.0..t2.1).contains(&c)))
        .filter_map(|e| match *e {
            Event::Alloc { tid, ptr, size, .. } if tid == pid => Some((ptr, size)),
            Event::Free { tid, ptr, .. } if tid == pid => Some((ptr, 0)),
            _ => None,
        })
        .collect();
    assert_eq!(mine, vec![(p, 11), (q, 22), (q, 0)]);
    assert_eq!(tracker.primary_pid(), Some(pid));
}
