//! Recorder throughput: recorded faults per second on a tight foreign loop
//! over a host buffer, next to the ceiling of a minimal tracer measured in
//! the same run (a tracee faulting on a PROT_NONE page in a loop; a tracer
//! that only does GETSIGINFO / GETREGS / SETREGS(rip += 3) / CONT).
//! Both with tracer and tracee pinned to one CPU and unpinned.
//!
//! `cargo bench --bench recorder` (env FFIREC_BENCH_FAULTS to change the size).

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

/// ffirec on the fixture's tight loop: faults/s inside foreign calls.
/// `scenario` is `loop` (loads: emulated) or `addloop` (read-modify-write:
/// trampolined).
fn recorder(n: u64, pinned: bool, scenario: &str) -> (f64, u64, u64) {
    let prog = common::program("rec_host");
    let dir = common::scratch(if pinned { "bench_pinned" } else { "bench_unpinned" });
    let trace = dir.join("bench.ffr");
    let longs = 4096u64;
    let rounds = (n / longs).max(1);
    let mut cmd = common::ffirec();
    cmd.args(["record", "-q", "--lib", "librecfx.so", "-o"]).arg(&trace);
    if !pinned {
        cmd.arg("--no-pin");
    }
    cmd.arg("--").arg(&prog).args([scenario, &longs.to_string(), &rounds.to_string()]);
    let out = common::run(&mut cmd, std::time::Duration::from_secs(600));
    assert!(out.status.success(), "ffirec failed: {}", String::from_utf8_lossy(&out.stderr));
    let t = Trace::open(&trace).expect("open bench trace");
    let s = t.summary().expect("complete trace");
    let c = |n: &str| s.counter(n).unwrap_or(0);
    let faults = c("faults");
    let secs = c("foreign_ns") as f64 / 1e9;
    (faults as f64 / secs, c("fault_stops"), faults)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let n = faults_wanted();
    println!("recorder bench: {n} faults per measurement");
    let rounds: usize = std::env::var("FFIREC_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(3);
    println!("  (best of {rounds} interleaved rounds each: the machine is shared, single runs are noisy)");
    for pinned in [true, false] {
        let label = if pinned { "pinned (same CPU)" } else { "unpinned" };
        let (mut ceil, mut emu, mut tramp) = (0f64, (0f64, 0, 0), (0f64, 0, 0));
        for _ in 0..rounds {
            ceil = ceil.max(ceiling(n, pinned));
            let e = recorder(n, pinned, "loop");
            if e.0 > emu.0 {
                emu = e;
            }
            let t = recorder(n / 2, pinned, "addloop");
            if t.0 > tramp.0 {
                tramp = t;
            }
        }
        println!("  {label:18} ceiling            {ceil:>9.0} faults/s");
        println!(
            "  {label:18} ffirec emulated    {:>9.0} faults/s ({} stops for {} faults) | ratio {:.2}",
            emu.0,
            emu.1,
            emu.2,
            emu.0 / ceil
        );
        println!(
            "  {label:18} ffirec trampolined {:>9.0} faults/s ({} stops for {} faults) | ratio {:.2}",
            tramp.0,
            tramp.1,
            tramp.2,
            tramp.0 / ceil
        );
    }
}
