//! End to end on a real library: a zlib streaming round trip
//! (`benches/fixtures/zstream.c`: 1 MiB of deterministic input fed to
//! `deflate` 8 KiB at a time through a heap `z_stream`, then `inflate`d back,
//! checksums printed). Wall time of the native program, `ffirec record --lib
//! libz.so.1`, `ffirec analyze` and `valgrind --tool=memcheck` on the same
//! program, rounds interleaved, best of N rounds; the program's stdout must be
//! identical natively, under ffirec and under memcheck. Also the recorder's
//! footer counters: calls, faults per call, accesses recorded (split by where
//! they landed: the host's memory or the library's own heap, the recorder's
//! foreign arena).
//!
//! A calibration run at 64 KiB predicts the recording time; when 1 MiB would
//! take longer than the budget (`FFIREC_BENCH_E2E_BUDGET_S`, default 120 s per
//! recording) the input is halved until it fits, and the bench says so; when
//! one recording is predicted to take over a minute, one round instead of three.
//!
//! Run: `cargo bench --bench e2e` (`FFIREC_BENCH_ZLIB_KIB=N` fixes the input
//! size, `FFIREC_BENCH_ROUNDS=R` the rounds). Needs zlib's headers
//! (`zlib1g-dev`) and valgrind; without valgrind the memcheck row is skipped.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use ffirec_format::{Event, Trace};
use ffirec_recorder::alloc::DEFAULT_ARENA;

const TIMEOUT: Duration = Duration::from_secs(3600);

fn record(prog: &Path, kib: u64, trace: &Path) -> (std::process::Output, Duration) {
    let mut cmd = support::ffirec();
    cmd.args(["record", "-q", "--lib", "libz.so.1", "-o"]).arg(trace).arg("--").arg(prog).arg(kib.to_string());
    support::run_ok(&mut cmd, TIMEOUT)
}

fn has_valgrind() -> bool {
    Command::new("valgrind").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Footer counters and a pass over the access events.
struct TraceStats {
    calls: u64,
    faults: u64,
    fault_stops: u64,
    emulated: u64,
    trampolined: u64,
    accesses: u64,
    in_arena: u64,
    bytes: u64,
}

fn trace_stats(path: &Path) -> TraceStats {
    let t = Trace::open(path).expect("open e2e trace");
    let s = t.summary().expect("complete trace");
    let c = |k: &str| s.counter(k).unwrap_or(0);
    let mut in_arena = 0;
    for i in 0..t.chunks().len() {
        for e in t.read_chunk(i).expect("read chunk") {
            if let Event::Access { fault_addr, .. } = e {
                in_arena += u64::from(DEFAULT_ARENA.contains(&fault_addr));
            }
        }
    }
    TraceStats {
        calls: c("calls"),
        faults: c("faults"),
        fault_stops: c("fault_stops"),
        emulated: c("emulated"),
        trampolined: c("trampolined"),
        accesses: c("events.access"),
        in_arena,
        bytes: std::fs::metadata(path).map_or(0, |m| m.len()),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let prog = support::program("zstream", &["z"]);
    let dir = support::out_dir();
    let trace = dir.join("zstream.ffr");
    let budget: f64 = std::env::var("FFIREC_BENCH_E2E_BUDGET_S").ok().and_then(|v| v.parse().ok()).unwrap_or(120.0);
    println!("e2e bench: zlib streaming round trip (deflate + inflate, 8 KiB at a time, heap z_stream)");
    println!("  machine: {}; load before: {}", support::machine(), support::load());

    let fixed: Option<u64> = std::env::var("FFIREC_BENCH_ZLIB_KIB").ok().and_then(|v| v.parse().ok());
    let mut predicted = 0.0;
    let kib = fixed.unwrap_or_else(|| {
        let (_, wall) = record(&prog, 64, &trace);
        let per_kib = wall.as_secs_f64() / 64.0;
        let kib = [1024u64, 512, 256, 128, 64].into_iter().find(|&k| per_kib * k as f64 <= budget).unwrap_or(64);
        predicted = per_kib * kib as f64;
        if kib < 1024 {
            println!(
                "  NOTE: calibration recorded 64 KiB in {:.1} s; 1 MiB would take ~{:.0} s per recording (budget {budget:.0} s): input reduced to {kib} KiB",
                wall.as_secs_f64(),
                per_kib * 1024.0
            );
        }
        kib
    });
    let explicit_rounds = std::env::var("FFIREC_BENCH_ROUNDS").is_ok();
    let rounds = if !explicit_rounds && predicted > 60.0 { 1 } else { support::rounds(3) };
    let valgrind = has_valgrind();
    if !valgrind {
        println!("  valgrind not found: memcheck row skipped (apt-get install valgrind)");
    }
    println!("  input {kib} KiB, best of {rounds} interleaved round(s)");

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let (mut native, mut rec, mut ana, mut mc) = (Duration::MAX, Duration::MAX, Duration::MAX, Duration::MAX);
    let mut native_stdout = Vec::new();
    let mut totals = String::new();
    let mut mc_errors = String::new();
    for _ in 0..rounds {
        // Native: the best of a few runs (it is milliseconds).
        for _ in 0..5 {
            let (out, wall) = support::run_ok(Command::new(&prog).arg(kib.to_string()), Duration::from_secs(60));
            native = native.min(wall);
            native_stdout = out.stdout;
        }
        let text = String::from_utf8_lossy(&native_stdout);
        assert!(text.contains("round trip ok"), "native round trip failed: {text}");

        let (out, wall) = record(&prog, kib, &trace);
        assert_eq!(String::from_utf8_lossy(&out.stdout), text, "program stdout differs under ffirec record");
        rec = rec.min(wall);

        let mut cmd = support::ffirec();
        cmd.args(["analyze", "--error-exitcode", "0"]).arg(&trace);
        let (out, wall) = support::run_ok(&mut cmd, TIMEOUT);
        ana = ana.min(wall);
        totals = String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains("TOTALS:"))
            .map(|l| l.trim_start_matches("==ffirec== ").to_string())
            .collect();

        if valgrind {
            let mut cmd = Command::new("valgrind");
            cmd.args(["--tool=memcheck", "-q", "--error-exitcode=0"]).arg(&prog).arg(kib.to_string());
            let (out, wall) = support::run_ok(&mut cmd, TIMEOUT);
            assert_eq!(String::from_utf8_lossy(&out.stdout), text, "program stdout differs under memcheck");
            mc = mc.min(wall);
            let lines = String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.starts_with("==")).count();
            mc_errors = if lines == 0 { "no errors".into() } else { format!("{lines} lines of errors") };
        }
    }

    let st = trace_stats(&trace);
    let x = |d: Duration| d.as_secs_f64() / native.as_secs_f64();
    println!(
        "  stdout identical natively, under ffirec and under memcheck: {}",
        String::from_utf8_lossy(&native_stdout).lines().next().unwrap_or("")
    );
    println!("  {:<34} {:>11} {:>10}", "", "wall", "x native");
    let ana_label = format!("ffirec analyze ({threads} threads)");
    let rows = [("native", native), ("ffirec record --lib libz.so.1", rec), (ana_label.as_str(), ana)];
    for (label, d) in rows {
        println!("  {label:<34} {:>8.0} ms {:>9.1}x", support::ms(d), x(d));
    }
    let both = rec + ana;
    println!("  {:<34} {:>8.0} ms {:>9.1}x", "record + analyze", support::ms(both), x(both));
    if valgrind {
        println!("  {:<34} {:>8.0} ms {:>9.1}x   ({mc_errors})", "valgrind --tool=memcheck", support::ms(mc), x(mc));
        let r = both.as_secs_f64() / mc.as_secs_f64();
        println!(
            "  ratio (record + analyze) / memcheck: {r:.2}  (record alone {:.2}; goal < 1: {})",
            rec.as_secs_f64() / mc.as_secs_f64(),
            if r < 1.0 { "met" } else { "NOT met" }
        );
    }
    let host = st.accesses - st.in_arena;
    println!(
        "  trace: {} calls, {:.0} faults per call ({} faults, {:.2} stops per fault, {} emulated, {} trampolined)",
        st.calls,
        st.faults as f64 / st.calls.max(1) as f64,
        st.faults,
        st.fault_stops as f64 / st.faults.max(1) as f64,
        st.emulated,
        st.trampolined
    );
    println!(
        "  accesses recorded: {} ({host} to host memory, {} to the library's own heap in the foreign arena); {} KiB, {:.2} B/access",
        st.accesses,
        st.in_arena,
        st.bytes / 1024,
        st.bytes as f64 / st.accesses.max(1) as f64
    );
    println!("  analyze: {totals}");
    println!("  load after: {}", support::load());
}
