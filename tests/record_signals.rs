//! Signals during foreign calls: a SIGALRM storm (`setitimer` every 100 µs)
//! while the library runs a ~50 ms compute loop must not livelock the
//! recording; the handler runs in host mode, the result is the native one.
#![allow(clippy::unwrap_used)] // test code

mod common;
mod record_support;

use std::time::Instant;

use ffirec_format::Event;
use record_support::{bytes, native, ranges_in, record};

#[test]
fn sigalrm_storm_during_a_foreign_loop() {
    let prog = common::program("sig_storm");
    let t0 = Instant::now();
    let nat = native(&prog, &["100"]);
    let native_s = t0.elapsed().as_secs_f64();
    let t0 = Instant::now();
    let r = record("sig_storm", &prog, &["100"], &["--lib", "libsigfx.so"]);
    let record_s = t0.elapsed().as_secs_f64();
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert!(r.stdout.starts_with("result ") && r.stdout.ends_with(" 1\n"), "{}", r.stdout);
    // The handler counted into a global and into the heap alike: it ran in host mode.
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let hits = r.stderr.lines().find_map(|l| l.strip_prefix("hits=")).unwrap();
    let hits: u64 = hits.split_whitespace().next().unwrap().parse().unwrap();
    eprintln!("native {native_s:.3} s, recorded {record_s:.3} s; handler ran {hits} times recorded");
    // Plausible: at most once per period; and during the call too, in host
    // mode (each run is a Callback of the call).
    assert!(hits as f64 <= record_s / 100e-6, "{hits} in {record_s} s");
    let ev = r.events();
    let call = ev.iter().position(|e| matches!(e, Event::Call { .. })).unwrap();
    let ret = ev.iter().position(|e| matches!(e, Event::Return { .. })).unwrap();
    let in_call = ev[call..ret].iter().filter(|e| matches!(e, Event::Callback { .. })).count();
    eprintln!("handler runs inside the foreign call: {in_call}");
    assert!(in_call >= 2, "{in_call}");
    // Every delivery is in the trace, one Signal event per handler run.
    let delivered = ev.iter().filter(|e| matches!(e, Event::Signal { signo: 14, .. })).count() as u64;
    assert_eq!(delivered, hits);
    // The only foreign accesses: the loop's input read and its output write.
    let calls: Vec<u64> = ev
        .iter()
        .filter_map(|e| match *e {
            Event::Return { rax, .. } => Some(rax),
            _ => None,
        })
        .collect();
    let result = u64::from_str_radix(r.stdout.split_whitespace().nth(1).unwrap(), 16).unwrap();
    assert!(calls.contains(&result), "{calls:x?}");
    let b = bytes(&ev);
    assert_eq!(ranges_in(&b.read, r.addr("in"), 8), vec![(0, 8)]);
    assert_eq!(ranges_in(&b.written, r.addr("out"), 8), vec![(0, 8)]);
    assert_eq!((b.read.len(), b.written.len()), (8, 8), "the handler's writes are not foreign");
}

#[test]
fn sigalrm_storm_during_a_foreign_sleep() {
    // The library sleeps 100 ms in nanosleep, resuming after every handler:
    // a held-back signal must still interrupt the sleep once its slice is over.
    let prog = common::program("sig_storm");
    let args = ["100", "2000000", "100"];
    let nat = native(&prog, &args);
    let t0 = Instant::now();
    let r = record("sig_storm_sleep", &prog, &args, &["--lib", "libsigfx.so"]);
    let record_s = t0.elapsed().as_secs_f64();
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let field = |name: &str| -> i64 {
        let line = r.stderr.lines().find(|l| l.starts_with("hits=")).unwrap();
        let v = line.split_whitespace().find_map(|w| w.strip_prefix(name)).unwrap();
        v.parse().unwrap()
    };
    let (hits, interrupted) = (field("hits="), field("interrupted="));
    eprintln!("recorded {record_s:.3} s; handler ran {hits} times, the sleep was interrupted {interrupted} times");
    assert!(interrupted >= 1 && interrupted < hits, "{interrupted} of {hits}");
    assert!(record_s >= 0.1);
    let ev = r.events();
    let sleep_ret = ev
        .iter()
        .filter_map(|e| match *e {
            Event::Return { rax, .. } => Some(rax as i64),
            _ => None,
        })
        .any(|rax| rax == interrupted);
    assert!(sleep_ret, "sleep_through's return value is the interruption count");
}
