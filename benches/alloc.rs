//! Allocation-tracking overhead: a host makes N malloc/free pairs (default
//! 1 000 000, sizes 16..1040) and then one foreign call; native against
//! recorded (the recorder's LD_PRELOAD shim reports every allocation through
//! its shared-memory ring), with host-init tracking (`--host-init`) and
//! without (`--no-host-init`: the shim alone), rounds interleaved, best of N rounds. Times are
//! the allocation loop's own (CLOCK_MONOTONIC in the fixture), so start-up and
//! the recorder's set-up are not counted; "through call" also counts the wait
//! at the foreign call, where a recorder that lags behind the ring makes the
//! program catch up. Target: ≤ 3× native.
//!
//! The breakpoint fallback (statically linked programs: no preload, so
//! breakpoints on the allocator's entry and return) is measured on the same
//! fixture linked statically, with fewer pairs (`FFIREC_BENCH_BP_PAIRS`,
//! default 20 000: two to three ptrace stops per call), against that static
//! program run natively with as many pairs.
//!
//! Run: `cargo bench --bench alloc` (`FFIREC_BENCH_PAIRS=N`, `FFIREC_BENCH_ROUNDS=R`;
//! `FFIREC_BENCH_BASELINE=/path/to/an/older/ffirec` adds that binary's figures
//! to the same run, for before/after comparisons).

mod support;

/// Rounds of the (slow) breakpoint-fallback rows.
const BP_ROUNDS: usize = 3;

use std::path::PathBuf;
use std::time::Duration;

use ffirec_format::Trace;

struct Config {
    label: String,
    prog: PathBuf,
    pairs: u64,
    /// Index of the native configuration this one is compared with.
    base: usize,
    /// None: the program natively; Some(bin): recorded by that ffirec.
    ffirec: Option<PathBuf>,
    /// The static binary's rows (the breakpoint fallback and its native run).
    statik: bool,
    /// Extra `ffirec record` flags.
    flags: Vec<&'static str>,
    loop_ns: u64,
    through_ns: u64,
    wall: Duration,
    events: (u64, u64),
    counters: String,
}

impl Config {
    fn new(label: &str, prog: &std::path::Path, pairs: u64, base: usize, ffirec: Option<PathBuf>) -> Config {
        Config {
            label: label.into(),
            prog: prog.to_path_buf(),
            pairs,
            base,
            ffirec,
            statik: false,
            flags: Vec::new(),
            loop_ns: u64::MAX,
            through_ns: u64::MAX,
            wall: Duration::MAX,
            events: (0, 0),
            counters: String::new(),
        }
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n: u64 = std::env::var("FFIREC_BENCH_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(1_000_000);
    // Single runs of this VM spread 2x (native 9.5-16 ms); the shim rows take
    // a tenth of a second each, so take the best of more of them. The
    // breakpoint rows (seconds each) run the first BP_ROUNDS rounds only.
    let rounds = support::rounds(11);
    support::library("bnop");
    let prog = support::program("alloc_host", &["bnop"]);
    let trace = support::out_dir().join("alloc.ffr");
    println!(
        "alloc bench: {n} malloc/free pairs then one foreign call, best of {rounds} interleaved rounds \
         (breakpoint rows: {})",
        rounds.min(BP_ROUNDS)
    );
    println!("  machine: {}; load before: {}", support::machine(), support::load());

    let ffirec = support::ffirec_bin();
    // Host-init tracking on and off (the shim alone), the same binary.
    let mut host_init = Config::new("record host-init", &prog, n, 0, Some(ffirec.clone()));
    host_init.flags.push("--host-init");
    let mut shim_only = Config::new("record shim only", &prog, n, 0, Some(ffirec.clone()));
    shim_only.flags.push("--no-host-init");
    let mut configs = vec![Config::new("native", &prog, n, 0, None), host_init, shim_only];
    if let Some(base) = std::env::var_os("FFIREC_BENCH_BASELINE") {
        // Both modes, as for the binary under test.
        for (label, flag) in [("baseline host-init", "--host-init"), ("baseline shim", "--no-host-init")] {
            let mut c = Config::new(label, &prog, n, 0, Some(PathBuf::from(&base)));
            c.flags.push(flag);
            configs.push(c);
        }
    }
    let bp_pairs: u64 = std::env::var("FFIREC_BENCH_BP_PAIRS").ok().and_then(|v| v.parse().ok()).unwrap_or(20_000);
    match support::static_program("alloc_host", &["libbnop.c"]) {
        Some(st) => {
            let base = configs.len();
            for (label, bin) in [("static native", None), ("breakpoints", Some(ffirec))] {
                let mut c = Config::new(label, &st, bp_pairs, base, bin);
                c.statik = true;
                configs.push(c);
            }
        }
        None => println!("  (no static C library: breakpoint fallback not measured)"),
    }
    let mut native_stdout = std::collections::HashMap::new();
    for round in 0..rounds {
        for c in configs.iter_mut() {
            if c.statik && round >= BP_ROUNDS {
                continue;
            }
            let mut cmd = match &c.ffirec {
                None => std::process::Command::new(&c.prog),
                Some(bin) => {
                    let mut cmd = std::process::Command::new(bin);
                    cmd.args(["record", "-q", "--lib", "libbnop.so"]).args(&c.flags);
                    cmd.arg("-o").arg(&trace).arg("--").arg(&c.prog);
                    cmd
                }
            };
            cmd.arg(c.pairs.to_string());
            let (out, wall) = support::run_ok(&mut cmd, Duration::from_secs(1800));
            match native_stdout.get(&c.pairs) {
                None => drop(native_stdout.insert(c.pairs, out.stdout.clone())),
                Some(s) => assert_eq!(&out.stdout, s, "program output differs under {}", c.label),
            }
            c.loop_ns = c.loop_ns.min(support::stderr_value(&out, "loop_ns"));
            c.through_ns = c.through_ns.min(support::stderr_value(&out, "through_call_ns"));
            c.wall = c.wall.min(wall);
            if c.ffirec.is_none() {
                continue;
            }
            let t = Trace::open(&trace).expect("open alloc trace");
            let s = t.summary().expect("complete trace");
            c.events = (s.counter("events.alloc").unwrap_or(0), s.counter("events.free").unwrap_or(0));
            c.counters = s
                .counters
                .iter()
                .filter(|(k, v)| *v != 0 && !k.starts_with("events.") && !k.ends_with("_ns"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect::<Vec<_>>()
                .join(" ");
        }
    }
    println!(
        "  {:<16} {:>9} {:>12} {:>12} {:>8} {:>14} {:>8} {:>10}",
        "", "pairs", "loop time", "ns per pair", "ratio", "through call", "ratio", "run wall"
    );
    let ratio = |c: &Config| c.loop_ns as f64 / configs[c.base].loop_ns as f64;
    for c in &configs {
        println!(
            "  {:<16} {:>9} {:>9.1} ms {:>12.1} {:>7.2}x {:>11.1} ms {:>7.2}x {:>7.0} ms",
            c.label,
            c.pairs,
            c.loop_ns as f64 / 1e6,
            c.loop_ns as f64 / c.pairs as f64,
            ratio(c),
            c.through_ns as f64 / 1e6,
            c.through_ns as f64 / configs[c.base].through_ns as f64,
            support::ms(c.wall)
        );
    }
    for c in configs.iter().filter(|c| c.ffirec.is_some()) {
        let ratio = ratio(c);
        let through = c.through_ns as f64 / configs[c.base].through_ns as f64;
        // The target is the shim's (dynamically linked programs), on the
        // program's wall time up to the foreign call's return: its loop and
        // its wait there for the recorder to catch up.
        let target = match (c.base, through <= 3.0) {
            (0, true) => " (target <= 3x through the call: met)",
            (0, false) => " (target <= 3x through the call: NOT met)",
            _ => "",
        };
        println!(
            "  {}: {ratio:.2}x native loop, {through:.2}x through the call{target}; trace has {} alloc and {} free events",
            c.label, c.events.0, c.events.1
        );
        println!("    recorder counters (last run): {}", c.counters);
    }
    println!("  load after: {}", support::load());
}
