//! Statically linked programs (issue 5 part 1): no dynamic loader, so no
//! preloaded shim; the allocator is tracked by breakpoints on its entry and
//! return. The foreign library of a static program is one it dlopens.

mod common;
mod record_support;

use ffirec_format::{AllocFn, Domain, Event};
use record_support::{native, record, Recorded};

/// The static executable's `main`, as [start, end) in the traced process.
fn main_range(r: &Recorded) -> (u64, u64) {
    let t = r.trace();
    let exe = t.modules().iter().find(|m| m.path.ends_with("/static_alloc")).expect("the executable's module");
    let s = exe.symbols.iter().find(|s| s.name == "main").expect("symbol main");
    (exe.base + s.addr, exe.base + s.addr + s.size)
}

/// (function or "free", pointer, size, old pointer, zeroed, domain) of every
/// Alloc/Free whose caller satisfies `pick`, in order.
type Row = (&'static str, u64, u64, u64, bool, Domain);

fn rows(events: &[Event], pick: impl Fn(u64) -> bool) -> Vec<Row> {
    let name = |f: AllocFn| match f {
        AllocFn::Malloc => "malloc",
        AllocFn::Calloc => "calloc",
        AllocFn::Realloc => "realloc",
        AllocFn::PosixMemalign => "posix_memalign",
        AllocFn::Memalign => "memalign",
        _ => "other",
    };
    events
        .iter()
        .filter_map(|e| match *e {
            Event::Alloc { func, ptr, size, old_ptr, caller, domain, zeroed, .. } if pick(caller) => {
                Some((name(func), ptr, size, old_ptr, zeroed, domain))
            }
            Event::Free { ptr, caller, domain, .. } if pick(caller) => Some(("free", ptr, 0, 0, false, domain)),
            _ => None,
        })
        .collect()
}

#[test]
fn record_static_allocations_by_breakpoints_exact() {
    let prog = common::program("static_alloc");
    let nat = native(&prog, &[]);
    assert!(nat.status.success(), "{nat:?}");
    let r = record("record_static_alloc", &prog, &[], &[]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(r.out.stdout, nat.stdout);
    let (lo, hi) = main_range(&r);
    let h = Domain::Host;
    let [p0, p, q, a, m, z] = ["p0", "p", "q", "a", "m", "z"].map(|n| r.addr(n));
    assert_eq!(
        rows(&r.events(), |c| (lo..hi).contains(&c)),
        vec![
            ("malloc", p0, 100, 0, false, h),
            ("calloc", q, 120, 0, true, h),
            ("realloc", p, 300, p0, false, h),
            ("posix_memalign", a, 200, 0, false, h),
            ("memalign", m, 50, 0, false, h),
            // realloc(NULL, 24) is a realloc (its inner malloc is not recorded).
            ("realloc", z, 24, 0, false, h),
            // realloc(z, 0) freed z (and its inner free is not recorded).
            ("free", z, 0, 0, false, h),
            ("free", q, 0, 0, false, h),
            ("free", p, 0, 0, false, h),
            ("free", a, 0, 0, false, h),
            ("free", m, 0, 0, false, h),
        ]
    );
    let t = r.trace();
    let stops = record_support::counter(&t, "alloc_bp_stops");
    assert!(stops >= 15, "{stops} allocation breakpoint stops");
}

#[test]
fn record_static_host_dlopened_library_allocations_are_foreign() {
    let prog = common::program("static_alloc");
    let lib = common::library("statlib");
    let lib_arg = lib.to_str().expect("utf-8 path");
    let nat = native(&prog, &[lib_arg]);
    if nat.status.code() == Some(3) {
        eprintln!("note: static dlopen failed here (needs the glibc it was linked with); skipped");
        return;
    }
    assert!(nat.status.success(), "{nat:?}");
    let r = record("record_static_dlopen", &prog, &[lib_arg], &["--lib", "libstatlib.so"]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(r.out.stdout, nat.stdout);
    let events = r.events();
    // The one foreign call: lib_work(77), which mallocs 77 bytes and frees them.
    let call =
        events.iter().position(|e| matches!(e, Event::Call { args, .. } if args[0] == 77)).expect("the lib_work call");
    let ret = events[call..].iter().position(|e| matches!(e, Event::Return { .. })).expect("its return") + call;
    let inside = rows(&events[call..ret], |_| true);
    assert_eq!(inside.len(), 2, "{inside:?}");
    let (f, ptr, size, old, zeroed, d) = inside[0];
    assert_eq!((f, size, old, zeroed, d), ("malloc", 77, 0, false, Domain::Foreign));
    assert_eq!(inside[1], ("free", ptr, 0, 0, false, Domain::Foreign));
    // Nothing outside the call is the library's.
    let outside: Vec<Event> = events[..call].iter().chain(&events[ret..]).cloned().collect();
    assert!(rows(&outside, |_| true).iter().all(|r| r.5 == Domain::Host));
}
