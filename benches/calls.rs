//! Call boundaries: a host calls `lib_nop` (a foreign function that touches no
//! host memory) N times (default 100 000); native against recorded, rounds
//! interleaved, best of N rounds. Times are the host loop's own (the fixture
//! reads CLOCK_MONOTONIC around the loop), so start-up and the recorder's
//! set-up and teardown are not counted; what is left is entry + exit per call
//! (domain flips, guard and unguard batches). Also the CPU time of the whole
//! recorded run (recorder and program, from the children's rusage) per call,
//! which a loaded machine disturbs less than the wall time.
//!
//! Run: `cargo bench --bench calls` (`FFIREC_BENCH_CALLS=N`, `FFIREC_BENCH_ROUNDS=R`;
//! `FFIREC_BENCH_BASELINE=/path/to/older/ffirec` adds that binary to every
//! round, for a before/after ratio taken in one run).

mod support;

use std::path::PathBuf;
use std::time::Duration;

use ffirec_format::Trace;

/// User + system CPU time of every child waited for so far, in ns.
fn children_cpu_ns() -> u64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_CHILDREN with a valid out pointer.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as u64 * 1_000_000_000 + t.tv_usec as u64 * 1000;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Best loop time and whole-run CPU time of one recorder binary.
struct Best {
    label: String,
    bin: PathBuf,
    loop_ns: u64,
    cpu_ns: u64,
    counters: (u64, u64, u64, u64, u64),
}

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

    let mut bins = vec![Best {
        label: "ffirec record".into(),
        bin: support::ffirec_bin(),
        loop_ns: u64::MAX,
        cpu_ns: u64::MAX,
        counters: (0, 0, 0, 0, 0),
    }];
    if let Some(b) = std::env::var_os("FFIREC_BENCH_BASELINE") {
        bins.push(Best {
            label: "baseline record".into(),
            bin: b.into(),
            loop_ns: u64::MAX,
            cpu_ns: u64::MAX,
            counters: (0, 0, 0, 0, 0),
        });
    }
    let mut native_ns = u64::MAX;
    for _ in 0..rounds {
        let (out, _) = support::run_ok(std::process::Command::new(&prog).arg(n.to_string()), Duration::from_secs(60));
        native_ns = native_ns.min(support::stderr_value(&out, "loop_ns"));
        let native_stdout = out.stdout;
        for b in &mut bins {
            let mut cmd = std::process::Command::new(&b.bin);
            cmd.args(["record", "-q", "--lib", "libbnop.so", "-o"]).arg(&trace).arg("--").arg(&prog).arg(n.to_string());
            let cpu0 = children_cpu_ns();
            let (out, _) = support::run_ok(&mut cmd, Duration::from_secs(1800));
            let cpu = children_cpu_ns() - cpu0;
            assert_eq!(out.stdout, native_stdout, "program output differs under {}", b.bin.display());
            b.loop_ns = b.loop_ns.min(support::stderr_value(&out, "loop_ns"));
            b.cpu_ns = b.cpu_ns.min(cpu);
            let t = Trace::open(&trace).expect("open calls trace");
            let s = t.summary().expect("complete trace");
            let c = |k: &str| s.counter(k).unwrap_or(0);
            b.counters = (c("calls"), c("ptrace_stops"), c("batches"), c("batch_ranges"), c("guard_sets_reused"));
        }
    }
    let rate = |ns: u64| n as f64 / (ns as f64 / 1e9);
    println!("  {:<28} {:>14} {:>16} {:>12} {:>18}", "", "loop time", "calls/s", "µs per call", "CPU µs per call");
    println!(
        "  {:<28} {:>11.3} ms {:>16.0} {:>12.4}",
        "native",
        native_ns as f64 / 1e6,
        rate(native_ns),
        native_ns as f64 / 1e3 / n as f64
    );
    for b in &bins {
        println!(
            "  {:<28} {:>11.3} ms {:>16.0} {:>12.2} {:>18.2}",
            b.label,
            b.loop_ns as f64 / 1e6,
            rate(b.loop_ns),
            b.loop_ns as f64 / 1e3 / n as f64,
            b.cpu_ns as f64 / 1e3 / n as f64
        );
    }
    for b in &bins {
        let (calls, stops, batches, ranges, reused) = b.counters;
        println!(
            "  {}: {calls} calls, {:.2} ptrace stops/call, {:.2} guard batches/call, {:.2} ranges/batch, guard set reused at {reused} entries",
            b.label,
            stops as f64 / calls.max(1) as f64,
            batches as f64 / calls.max(1) as f64,
            ranges as f64 / batches.max(1) as f64
        );
    }
    if let [new, old] = &bins[..] {
        println!(
            "  this build / baseline: calls/s {:.2}x, CPU per call {:.2}x",
            old.loop_ns as f64 / new.loop_ns as f64,
            new.cpu_ns as f64 / old.cpu_ns as f64
        );
    }
    println!("  load after: {}", support::load());
}
