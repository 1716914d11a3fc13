//! Allocation-tracking overhead: a host makes N malloc/free pairs (default
//! 1 000 000, sizes 16..1040) and then one foreign call; native against
//! recorded (the recorder's LD_PRELOAD shim reports every allocation through
//! its shared-memory ring), rounds interleaved, best of N rounds. Times are
//! the allocation loop's own (CLOCK_MONOTONIC in the fixture), so start-up and
//! the recorder's set-up are not counted. Target: ≤ 3× native.
//!
//! Run: `cargo bench --bench alloc` (`FFIREC_BENCH_PAIRS=N`, `FFIREC_BENCH_ROUNDS=R`).

mod support;

use std::time::Duration;

use ffirec_format::Trace;

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("FFIREC_BENCH_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    let rounds = support::rounds(3);
    support::library("bnop");
    let prog = support::program("alloc_host", &["bnop"]);
    let trace = support::out_dir().join("alloc.ffr");
    println!("alloc bench: {n} malloc/free pairs then one foreign call, best of {rounds} interleaved rounds");
    println!("  machine: {}; load before: {}", support::machine(), support::load());

    let (mut native_ns, mut rec_ns) = (u64::MAX, u64::MAX);
    let (mut native_wall, mut rec_wall) = (Duration::MAX, Duration::MAX);
    let mut events = (0, 0);
    let mut recorder_counters = String::new();
    for _ in 0..rounds {
        let (out, wall) =
            support::run_ok(std::process::Command::new(&prog).arg(n.to_string()), Duration::from_secs(60));
        native_ns = native_ns.min(support::stderr_value(&out, "loop_ns"));
        native_wall = native_wall.min(wall);
        let native_stdout = out.stdout;

        let mut cmd = support::ffirec();
        cmd.args(["record", "-q", "--lib", "libbnop.so", "-o"]).arg(&trace).arg("--").arg(&prog).arg(n.to_string());
        let (out, wall) = support::run_ok(&mut cmd, Duration::from_secs(1800));
        assert_eq!(out.stdout, native_stdout, "program output differs under ffirec");
        rec_ns = rec_ns.min(support::stderr_value(&out, "loop_ns"));
        rec_wall = rec_wall.min(wall);
        let t = Trace::open(&trace).expect("open alloc trace");
        let s = t.summary().expect("complete trace");
        events = (s.counter("events.alloc").unwrap_or(0), s.counter("events.free").unwrap_or(0));
        recorder_counters = s
            .counters
            .iter()
            .filter(|(k, v)| *v != 0 && !k.starts_with("events.") && !k.ends_with("_ns"))
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(" ");
    }
    let ratio = rec_ns as f64 / native_ns as f64;
    println!("  {:<16} {:>12} {:>14} {:>12}", "", "loop time", "ns per pair", "run wall");
    for (label, ns, wall) in [("native", native_ns, native_wall), ("ffirec record", rec_ns, rec_wall)] {
        println!(
            "  {label:<16} {:>9.1} ms {:>14.1} {:>9.0} ms",
            ns as f64 / 1e6,
            ns as f64 / n as f64,
            support::ms(wall)
        );
    }
    println!(
        "  overhead: {ratio:.2}x native (target <= 3x: {}); trace has {} alloc and {} free events",
        if ratio <= 3.0 { "met" } else { "NOT met" },
        events.0,
        events.1
    );
    println!("  recorder counters (last run): {recorder_counters}");
    println!("  load after: {}", support::load());
}
