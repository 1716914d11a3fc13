//! Allocations and ownership (issue 5): the library's own allocations come
//! from the foreign arena, which is never guarded unless `--guard-foreign`;
//! what the library does to the host's buffers is recorded the same either way.

mod common;
mod real_support;
mod record_support;

use std::collections::BTreeSet;

use ffirec_format::{Domain, Event};
use ffirec_recorder::alloc::DEFAULT_ARENA;
use real_support::call_bytes;
use record_support::{counter, native, ranges_in, record, Recorded};

type Ranges = Vec<(u64, u64)>;

/// Per foreign call: its name and, for each host buffer, the offsets it read and wrote.
fn host_footprint(r: &Recorded, bufs: &[(&'static str, u64, u64)]) -> Vec<(String, Vec<(&'static str, Ranges, Ranges)>)> {
    let calls = call_bytes(&r.trace(), &r.events());
    calls
        .iter()
        .map(|c| {
            let touched = bufs
                .iter()
                .map(|&(name, base, len)| (name, ranges_in(&c.read, base, len), ranges_in(&c.written, base, len)))
                .filter(|(_, rd, wr)| !rd.is_empty() || !wr.is_empty())
                .collect();
            (c.name.clone(), touched)
        })
        .collect()
}

/// Every byte address any Access event touched.
fn all_bytes(events: &[Event]) -> BTreeSet<u64> {
    let b = record_support::bytes(events);
    b.read.union(&b.written).copied().collect()
}

#[test]
fn record_alloc_zlib_stream_arena_unguarded_by_default() {
    let Some(prog) = real_support::build("alloc_zlib_host", &[]) else { return };
    let chunks = "4";
    let nat = native(&prog, &[chunks]);
    assert!(nat.status.success(), "{nat:?}");
    let fast = record("record_alloc_default", &prog, &[chunks], &["--lib", "libz.so.1"]);
    let full = record("record_alloc_guard_foreign", &prog, &[chunks], &["--lib", "libz.so.1", "--guard-foreign"]);
    for r in [&fast, &full] {
        real_support::assert_same_as_native(&nat, r);
    }
    let (ft, gt) = (fast.trace(), full.trace());
    assert!(!ft.header().policy.guard_foreign);
    assert!(gt.header().policy.guard_foreign);

    // Same calls, same bytes of the host's buffers, offset by offset.
    let bufs = |r: &Recorded| [("zs", r.addr("zs"), r.addr("zs_len")), ("in", r.addr("in"), 8192), ("out", r.addr("out"), 16384)];
    let a = host_footprint(&fast, &bufs(&fast));
    let b = host_footprint(&full, &bufs(&full));
    assert_eq!(a, b, "host-buffer accesses differ between the default and --guard-foreign");
    // (ld.so also runs zlib's destructors at exit: unnamed calls.)
    let names: Vec<&str> = a.iter().map(|(n, _)| n.as_str()).filter(|&n| n != "?").collect();
    assert_eq!(names, ["deflateInit_", "deflate", "deflate", "deflate", "deflate", "deflateEnd"]);
    // The last deflate (Z_FINISH) writes the stream to `out`; all of them read their chunk.
    for (name, t) in &a[1..5] {
        let input = t.iter().find(|(n, ..)| *n == "in").unwrap_or_else(|| panic!("{name} did not read `in`: {t:?}"));
        assert_eq!(input.1, vec![(0, 8192)]);
        assert_eq!(input.2, vec![]);
    }

    // The library's own allocations: in the arena by default, on the heap with --guard-foreign.
    let foreign_allocs = |ev: &[Event]| -> Vec<(u64, u64)> {
        ev.iter()
            .filter_map(|e| match *e {
                Event::Alloc { ptr, size, domain: Domain::Foreign, .. } => Some((ptr, size)),
                _ => None,
            })
            .collect()
    };
    let (fe, ge) = (fast.events(), full.events());
    let (fa, ga) = (foreign_allocs(&fe), foreign_allocs(&ge));
    assert_eq!(fa.iter().map(|a| a.1).collect::<Vec<_>>(), ga.iter().map(|a| a.1).collect::<Vec<_>>(), "same foreign allocation sizes");
    assert!(fa.len() >= 4, "deflateInit allocates state, window, prev, head, pending: {fa:?}");
    assert!(fa.iter().all(|&(p, n)| DEFAULT_ARENA.contains(&p) && DEFAULT_ARENA.contains(&(p + n - 1))), "{fa:x?}");
    assert!(ga.iter().all(|&(p, _)| !DEFAULT_ARENA.contains(&p)), "{ga:x?}");
    // By default no fault is taken in the arena (an instruction that faults
    // on a host buffer may still name it, e.g. memcpy from zlib's pending
    // buffer to `out`); with --guard-foreign the library's internal state
    // is most of what is recorded.
    let faults_in_arena = fe.iter().filter(|e| matches!(e, Event::Access { fault_addr, .. } if DEFAULT_ARENA.contains(fault_addr))).count();
    assert_eq!(faults_in_arena, 0);
    let in_any = |set: &BTreeSet<u64>, allocs: &[(u64, u64)]| set.iter().filter(|&&x| allocs.iter().any(|&(p, n)| x >= p && x < p + n)).count();
    assert!(in_any(&all_bytes(&ge), &ga) > 100_000);

    // Faults per call drop by more than 10×.
    let per_call = |t: &ffirec_format::Trace| counter(t, "faults") as f64 / counter(t, "calls") as f64;
    let (f, g) = (per_call(&ft), per_call(&gt));
    eprintln!("faults per call: --guard-foreign {g:.0}, default {f:.1} ({:.0}×)", g / f);
    assert_eq!(counter(&ft, "calls"), counter(&gt, "calls"));
    assert!(g > 10.0 * f, "faults per call: --guard-foreign {g}, default {f}");
}
