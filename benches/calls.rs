//! Call boundaries: a host calls `lib_nop` (a foreign function that touches no
//! host memory) N times (default 100 000); native against recorded, rounds
//! interleaved, best of N rounds. Times are the host loop's own (the fixture
//! reads CLOCK_MONOTONIC around the loop), so start-up and the recorder's
//! set-up and teardown are not counted; what is left is entry + exit per call
//! (domain flips, guard and unguard batches).
//!
//! Run: `cargo bench --bench calls` (`FFIREC_BENCH_CALLS=N`, `FFIREC_BENCH_ROUNDS=R`).

mod support;

use std::time::Duration;

use ffirec_format::Trace;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("FFIREC_BENCH_CALLS").ok().and_then(|v| v.parse().ok()).unwrap_or(100_000);
    let rounds = support::rounds(3);
    support::library("bnop");
    let prog = support::program("calls_host", &["bnop"]);
    let trace = support::out_dir().join("calls.ffr");
    println!("calls bench: {n} calls of lib_nop per run, best of {rounds} interleaved rounds");
    println!("  machine: {}; load before: {}", support::machine(), support::load());

    let (mut native_ns, mut rec_ns, mut rec_wall) = (u64::MAX, u64::MAX, Duration::MAX);
    let mut counters = None;
    for _ in 0..rounds {
        let (out, _) = support::run_ok(std::process::Command::new(&prog).arg(n.to_string()), Duration::from_secs(60));
        native_ns = native_ns.min(support::stderr_value(&out, "loop_ns"));
        let native_stdout = out.stdout;

        let mut cmd = support::ffirec();
        cmd.args(["record", "-q", "--lib", "libbnop.so", "-o"]).arg(&trace).arg("--").arg(&prog).arg(n.to_string());
        let (out, wall) = support::run_ok(&mut cmd, Duration::from_secs(1800));
        assert_eq!(out.stdout, native_stdout, "program output differs under ffirec");
        rec_ns = rec_ns.min(support::stderr_value(&out, "loop_ns"));
        rec_wall = rec_wall.min(wall);
        let t = Trace::open(&trace).expect("open calls trace");
        let s = t.summary().expect("complete trace");
        let c = |k: &str| s.counter(k).unwrap_or(0);
        counters = Some((c("calls"), c("ptrace_stops"), c("batches"), c("batch_ranges"), c("events.access")));
    }
    let (calls, stops, batches, ranges, accesses) = counters.unwrap_or_default();
    let rate = |ns: u64| n as f64 / (ns as f64 / 1e9);
    println!("  {:<28} {:>14} {:>16} {:>12}", "", "loop time", "calls/s", "µs per call");
    println!(
        "  {:<28} {:>11.3} ms {:>16.0} {:>12.4}",
        "native",
        native_ns as f64 / 1e6,
        rate(native_ns),
        native_ns as f64 / 1e3 / n as f64
    );
    println!(
        "  {:<28} {:>11.3} ms {:>16.0} {:>12.2}",
        "ffirec record (entry+exit)",
        rec_ns as f64 / 1e6,
        rate(rec_ns),
        rec_ns as f64 / 1e3 / n as f64
    );
    println!(
        "  slowdown per call: {:.0}x; whole recorded run {:.0} ms wall",
        rec_ns as f64 / native_ns as f64,
        support::ms(rec_wall)
    );
    println!(
        "  recorder counters (last run): {calls} calls, {:.2} ptrace stops/call, {:.2} guard batches/call, {:.2} ranges/batch, {accesses} accesses",
        stops as f64 / calls.max(1) as f64,
        batches as f64 / calls.max(1) as f64,
        ranges as f64 / batches.max(1) as f64
    );
    println!("  load after: {}", support::load());
}
