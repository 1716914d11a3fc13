//! Recorder throughput: recorded faults per second on a tight foreign loop
//! over a host buffer, next to the ceiling of a minimal tracer measured in
//! the same run (a tracee faulting on a PROT_NONE page in a loop; a tracer
//! that only does GETSIGINFO / GETREGS / SETREGS(rip += 3) / CONT).
//! Both with tracer and tracee pinned to one CPU and unpinned. Loops: 8-byte
//! loads; 8-byte load+store, 16-byte SSE and 32-byte AVX copies (emulated
//! through the GPR and XSAVE register sets); a read-modify-write `add` that
//! goes through a trampoline.
//!
//! `cargo bench --bench recorder` (env FFIREC_BENCH_FAULTS to change the
//! size, FFIREC_BENCH_ROUNDS the rounds, FFIREC_BENCH_SCENARIOS=loop,avxloop
//! to run some loops only, FFIREC_BENCH_PIN=pinned or unpinned for one kind
//! of row only, FFIREC_BENCH_BASELINE=/path/to/ffirec to add an older
//! recorder's rows to every round, for a before/after in one run).

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::Instant;

use ffirec_format::Trace;

fn faults_wanted() -> u64 {
    std::env::var("FFIREC_BENCH_FAULTS").ok().and_then(|v| v.parse().ok()).unwrap_or(400_000)
}

fn pin_to(pid: i32, cpu: usize) {
    // SAFETY: cpu_set_t is a plain bit array; CPU_SET stays in bounds for cpu < 1024.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

fn unpin(pid: i32) {
    // SAFETY: as above; every CPU the machine may have.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in 0..libc::CPU_SETSIZE as usize {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(pid, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// The minimal tracer: faults/s.
fn ceiling(n: u64, pinned: bool) -> f64 {
    // SAFETY: the child only runs ptrace/raise/mmap/inline loads/_exit.
    let pid = unsafe { libc::fork() };
    assert!(pid >= 0, "fork failed");
    if pid == 0 {
        // SAFETY: child side: traceme, stop, then fault `n` times on a PROT_NONE page.
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0usize, 0usize);
            libc::raise(libc::SIGSTOP);
            let page =
                libc::mmap(std::ptr::null_mut(), 4096, libc::PROT_NONE, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS, -1, 0);
            for _ in 0..n {
                // mov rax, [rdi]: 3 bytes (48 8b 07); the tracer skips it.
                std::arch::asm!("mov rax, [rdi]", in("rdi") page, out("rax") _);
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: plain waitpid/ptrace calls on our own child.
    unsafe {
        libc::waitpid(pid, &mut status, 0);
        libc::ptrace(libc::PTRACE_SETOPTIONS, pid, 0usize, libc::PTRACE_O_EXITKILL as usize);
    }
    if pinned {
        // SAFETY: sched_getcpu has no preconditions.
        let cpu = unsafe { libc::sched_getcpu() }.max(0) as usize;
        pin_to(0, cpu);
        pin_to(pid, cpu);
    }
    // SAFETY: as above.
    unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0usize, 0usize) };
    let mut count = 0u64;
    let mut start = None;
    loop {
        // SAFETY: waitpid writes one int.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        if libc::WIFEXITED(status) || libc::WIFSIGNALED(status) {
            break;
        }
        let sig = libc::WSTOPSIG(status);
        if sig == libc::SIGSEGV {
            start.get_or_insert_with(Instant::now);
            count += 1;
            // SAFETY: siginfo/regs are plain data the kernel fills.
            unsafe {
                let mut si: libc::siginfo_t = std::mem::zeroed();
                libc::ptrace(libc::PTRACE_GETSIGINFO, pid, 0usize, &mut si as *mut _);
                let mut regs: libc::user_regs_struct = std::mem::zeroed();
                libc::ptrace(libc::PTRACE_GETREGS, pid, 0usize, &mut regs as *mut _);
                regs.rip += 3;
                libc::ptrace(libc::PTRACE_SETREGS, pid, 0usize, &regs as *const _);
                libc::ptrace(libc::PTRACE_CONT, pid, 0usize, 0usize);
            }
        } else {
            // SAFETY: pass other signals through.
            unsafe { libc::ptrace(libc::PTRACE_CONT, pid, 0usize, sig as usize) };
        }
    }
    unpin(0);
    let secs = start.map(|s| s.elapsed().as_secs_f64()).unwrap_or(1.0);
    assert_eq!(count, n, "ceiling tracee faulted {count} times, expected {n}");
    count as f64 / secs
}

/// One foreign loop of the fixture (`rec_host SCENARIO ELEMS ROUNDS`).
struct Scenario {
    name: &'static str,
    label: &'static str,
    /// Faults per element and round (a copy loads and stores).
    faults_per_elem: u64,
}

const SCENARIOS: &[Scenario] = &[
    Scenario { name: "loop", label: "8-byte loads", faults_per_elem: 1 },
    Scenario { name: "copyloop", label: "8-byte load+store", faults_per_elem: 2 },
    Scenario { name: "sseloop", label: "16-byte SSE copy", faults_per_elem: 2 },
    Scenario { name: "avxloop", label: "32-byte AVX copy", faults_per_elem: 2 },
    Scenario { name: "addloop", label: "add [m] (trampoline)", faults_per_elem: 1 },
];

/// What one recorded run measured.
#[derive(Clone, Copy, Default)]
struct Run {
    rate: f64,
    stops: u64,
    faults: u64,
    emulated: u64,
    trampolined: u64,
    code_cached: u64,
}

/// ffirec on one of the fixture's tight loops: faults/s inside foreign calls.
fn recorder(n: u64, pinned: bool, sc: &Scenario, bin: Option<&std::path::Path>) -> Run {
    let prog = common::program("rec_host");
    let dir = common::scratch(if pinned { "bench_pinned" } else { "bench_unpinned" });
    let trace = dir.join("bench.ffr");
    let elems = 4096u64;
    let rounds = (n / (elems * sc.faults_per_elem)).max(1);
    let mut cmd = match bin {
        Some(b) => std::process::Command::new(b),
        None => common::ffirec(),
    };
    cmd.args(["record", "-q", "--lib", "librecfx.so", "-o"]).arg(&trace);
    if !pinned {
        cmd.arg("--no-pin");
    }
    cmd.arg("--").arg(&prog).args([sc.name, &elems.to_string(), &rounds.to_string()]);
    let out = common::run(&mut cmd, std::time::Duration::from_secs(600));
    assert!(out.status.success(), "ffirec failed: {}", String::from_utf8_lossy(&out.stderr));
    let native = common::run(
        std::process::Command::new(&prog).args([sc.name, &elems.to_string(), &rounds.to_string()]),
        std::time::Duration::from_secs(60),
    );
    assert_eq!(out.stdout, native.stdout, "{}: program output differs under ffirec", sc.name);
    let t = Trace::open(&trace).expect("open bench trace");
    let s = t.summary().expect("complete trace");
    let c = |n: &str| s.counter(n).unwrap_or(0);
    let faults = c("faults");
    let secs = c("foreign_ns") as f64 / 1e9;
    Run {
        rate: faults as f64 / secs,
        stops: c("fault_stops"),
        faults,
        emulated: c("emulated"),
        trampolined: c("trampolined"),
        code_cached: c("code_cached"),
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = faults_wanted();
    println!("recorder bench: {n} faults per measurement");
    let rounds: usize = std::env::var("FFIREC_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    println!("  (best of {rounds} interleaved rounds each: the machine is shared, single runs are noisy)");
    let only: Option<Vec<String>> =
        std::env::var("FFIREC_BENCH_SCENARIOS").ok().map(|v| v.split(',').map(String::from).collect());
    let scenarios: Vec<&Scenario> =
        SCENARIOS.iter().filter(|s| only.as_ref().map_or(true, |o| o.iter().any(|x| x == s.name))).collect();
    let baseline: Option<std::path::PathBuf> = std::env::var_os("FFIREC_BENCH_BASELINE").map(Into::into);
    let pins: Vec<bool> = match std::env::var("FFIREC_BENCH_PIN").as_deref() {
        Ok("pinned") => vec![true],
        Ok("unpinned") => vec![false],
        _ => vec![true, false],
    };
    for pinned in pins {
        let label = if pinned { "pinned (same CPU)" } else { "unpinned" };
        let mut ceil = 0f64;
        let mut best = vec![Run::default(); scenarios.len()];
        let mut base = vec![Run::default(); scenarios.len()];
        for _ in 0..rounds {
            ceil = ceil.max(ceiling(n, pinned));
            for ((sc, b), o) in scenarios.iter().zip(best.iter_mut()).zip(base.iter_mut()) {
                let r = recorder(n, pinned, sc, None);
                if r.rate > b.rate {
                    *b = r;
                }
                if let Some(bin) = &baseline {
                    let r = recorder(n, pinned, sc, Some(bin));
                    if r.rate > o.rate {
                        *o = r;
                    }
                }
            }
        }
        println!("  {label:18} {:<22} {ceil:>9.0} faults/s", "ceiling");
        for (sc, r) in scenarios.iter().zip(&best) {
            if baseline.is_some() {
                let o = &base[scenarios.iter().position(|x| x.name == sc.name).unwrap_or(0)];
                println!(
                    "  {label:18} {:<22} {:>9.0} faults/s | ratio {:.2} | baseline {}",
                    sc.label,
                    o.rate,
                    o.rate / ceil,
                    baseline.as_ref().map(|b| b.display().to_string()).unwrap_or_default()
                );
            }
            println!(
                "  {label:18} {:<22} {:>9.0} faults/s | ratio {:.2} | {:.2} stops/fault, {} of {} faults emulated, {} trampolined, {} code reads cached",
                sc.label,
                r.rate,
                r.rate / ceil,
                r.stops as f64 / r.faults.max(1) as f64,
                r.emulated,
                r.faults,
                r.trampolined,
                r.code_cached
            );
        }
    }
}
