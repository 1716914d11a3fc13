//! The report does not depend on the thread count.
#![allow(clippy::unwrap_used)]

mod support;

use support::*;

#[test]
fn json_is_identical_with_one_and_two_threads() {
    let p = write("determinism", false, random_events(42, 60, 400), 700);
    let one = run(&p, 1).to_json();
    let two = run(&p, 2).to_json();
    let three = run(&p, 3).to_json();
    assert!(one == two, "JSON differs between --threads 1 and 2");
    assert!(one == three, "JSON differs between --threads 1 and 3");
    let r = run(&p, 2);
    assert_eq!(r.calls.len(), 60);
    assert_eq!(r.summary.access_events, 60 * 400);
    assert!(r.summary.findings > 0);
}
