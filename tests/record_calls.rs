//! Call boundaries: the guard set follows what the host maps, unmaps,
//! reprotects and grows between calls (and is reused exactly when nothing
//! changed); the CPU pin that keeps the recorder and the calling thread on
//! one CPU is invisible to the program.

mod common;
mod record_support;

use std::collections::BTreeSet;

use record_support::{bytes, counter, native, record, Recorded};

fn scenario(test: &str, name: &str) -> Recorded {
    let prog = common::program("calls_maps_host");
    let r = record(test, &prog, &[name], &["--lib", "libcallsfx.so"]);
    let nat = native(&prog, &[name]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout), "stdout differs under ffirec; stderr:\n{}", r.stderr);
    assert_eq!(r.out.status.code(), nat.status.code(), "exit status differs; stderr:\n{}", r.stderr);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    r
}

fn span(set: &mut BTreeSet<u64>, base: u64, from: u64, to: u64) {
    set.extend(base + from..base + to);
}

#[test]
fn calls_guard_set_follows_host_mappings_between_calls() {
    let r = scenario("calls_maps", "maps");
    let b = bytes(&r.events());
    let (mut read, mut written) = (BTreeSet::new(), BTreeSet::new());
    // a: read while mapped, then unmapped. b: mapped after that (the new
    // mappings may reuse a's addresses), written, then made read-only and
    // read: read-only memory is never guarded, so that read is not recorded.
    // c: mapped by a raw syscall, written. d: new heap pages (sbrk),
    // written, then read five times.
    span(&mut read, r.addr("a"), 0, 100);
    span(&mut written, r.addr("b"), 0, 50);
    span(&mut written, r.addr("c"), 0, 32);
    span(&mut written, r.addr("d"), 0, 16);
    span(&mut read, r.addr("d"), 0, 16);
    assert_eq!(b.read, read, "read bytes");
    assert_eq!(b.written, written, "written bytes");
    // Every change above made the entry after it compute the guard set
    // again; the five calls with nothing changed in between reused it, and
    // so did the library's two destructor calls at exit (stdout is a pipe:
    // the printf in between only fills the buffer it already had).
    assert_eq!(counter(&r.trace(), "calls"), 12);
    assert_eq!(counter(&r.trace(), "guard_sets_reused"), 7);
    // b's protection after the call is the program's (read-only), not the one it had before.
    assert_eq!(r.stdout.lines().find(|l| l.starts_with("b perms")), Some("b perms r--p"));
}

#[test]
fn calls_cpu_pin_is_invisible_to_the_program() {
    let r = scenario("calls_affinity", "affinity");
    // The comparison with the native run above is the test; with the
    // program's CPU count n the whole output is known.
    let first = r.stdout.lines().next().unwrap_or_default();
    let n: i32 = first.strip_prefix("host before calls: ").and_then(|v| v.parse().ok()).expect("count");
    let expected = format!(
        "host before calls: {n}\nlibrary: {n}\nhost between calls: {n}\nthread created by the library: {n}\n\
         callback: {}\nhost after 100 calls: {n}\nthread created by the host: {n}\n\
         library restricted to one CPU: 1\nhost after that: 1\n",
        1000 + n
    );
    assert!(r.stdout.starts_with(&expected), "{}", r.stdout);
}

#[test]
fn calls_cpu_pin_is_invisible_to_a_program_on_one_cpu() {
    // The thread's own mask allows one CPU: the recorder moves there and
    // leaves the thread's affinity alone, until the program widens it.
    let r = scenario("calls_affinity1", "affinity1");
    let expected = "restricted to one CPU: 1\nhost before calls: 1\nlibrary: 1\nhost between calls: 1\n\
                    thread created by the library: 1\ncallback: 1001\nhost after 100 calls: 1\n\
                    thread created by the host: 1\nlibrary restricted to one CPU: 1\nhost after that: 1\n";
    assert!(r.stdout.starts_with(expected), "{}", r.stdout);
    let widened = r.stdout.lines().find(|l| l.starts_with("host widened again: ")).expect("widened line");
    let n = widened.trim_start_matches("host widened again: ").split(' ').next().unwrap_or_default();
    assert!(r.stdout.ends_with(&format!("library after widening: {n}\n")), "{}", r.stdout);
}
