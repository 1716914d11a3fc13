//! Host initialisation state (issue 5, part 3; on by default, `--host-init` here):
//! the recorder learns exactly which bytes of host heap blocks the host wrote
//! (write-protected pages while host code runs, one `HostWrite` per write
//! fault or host syscall), so a library reading never-written host bytes is
//! an exact uninitialised-read finding — and the program computes exactly
//! what it computes natively.
//!
//! Fixture: `hi_host SCENARIO` prepares a `malloc`'d buffer in a known way,
//! prints `buf=0x…` to stderr and calls `hi_read(buf, n)` in libhifx.so,
//! which reads bytes [0, n) one at a time.

#![allow(clippy::unwrap_used)] // test code

mod common;
mod record_support;

use std::path::PathBuf;
use std::sync::OnceLock;

use ffirec_format::Event;
use record_support::{counter, native, record, Recorded};
use serde_json::Value;

fn host() -> PathBuf {
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(|| common::program("hi_host")).clone()
}

struct Run {
    rec: Recorded,
    json: Value,
}

impl Run {
    fn findings(&self) -> Vec<(String, String, u64, u64)> {
        let base = self.rec.addrs.get("buf").copied().unwrap_or(0);
        self.json["findings"]
            .as_array()
            .expect("findings")
            .iter()
            .map(|f| {
                let addr = u64::from_str_radix(f["addr"].as_str().unwrap().trim_start_matches("0x"), 16).unwrap();
                let size = f["size"].as_u64().unwrap();
                (
                    f["kind"].as_str().unwrap().to_string(),
                    f["verdict"].as_str().unwrap_or("").to_string(),
                    addr.wrapping_sub(base),
                    addr.wrapping_sub(base) + size,
                )
            })
            .collect()
    }
    /// `HostWrite`s inside [buf, buf+4096) before the first foreign call, relative to buf.
    fn writes_before_call(&self) -> Vec<(u64, u64)> {
        let buf = self.rec.addr("buf");
        self.rec
            .events()
            .iter()
            .take_while(|e| !matches!(e, Event::Call { .. }))
            .filter_map(|e| match *e {
                Event::HostWrite { addr, len, .. } if addr >= buf && addr < buf + 4096 => Some((addr - buf, len)),
                _ => None,
            })
            .collect()
    }
    fn unknown_bytes(&self) -> u64 {
        self.json["summary"]["unknown_bytes"].as_u64().expect("unknown_bytes")
    }
    fn counter(&self, name: &str) -> u64 {
        counter(&self.rec.trace(), name)
    }
}

/// Records `hi_host args` with `--host-init` (plus `extra`), checks stdout and
/// exit status are the native ones, and analyses the trace.
fn run(test: &str, args: &[&str], extra: &[&str]) -> Run {
    run_env(test, args, extra, &[])
}

fn run_env(test: &str, args: &[&str], extra: &[&str], env: &[(&str, &str)]) -> Run {
    let prog = host();
    let nat = native(&prog, args);
    let mut flags = vec!["-q", "--host-init", "--lib", "libhifx.so"];
    flags.extend_from_slice(extra);
    let rec = if env.is_empty() {
        record(test, &prog, args, &flags)
    } else {
        record_with_env(test, &prog, args, &flags, env)
    };
    assert_eq!(rec.out.status.code(), nat.status.code(), "exit status differs; stderr:\n{}", rec.stderr);
    assert_eq!(rec.stdout, String::from_utf8_lossy(&nat.stdout), "stdout differs; stderr:\n{}", rec.stderr);
    let out = common::run(common::ffirec().args(["analyze", "--format", "json"]).arg(&rec.trace), common::TIMEOUT);
    let json: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("analyze: {e}\n{}", String::from_utf8_lossy(&out.stderr)));
    assert_eq!(json["trace"]["track_host_init"], true);
    Run { rec, json }
}

/// `record_support::record` with extra environment variables for ffirec.
fn record_with_env(
    test: &str,
    prog: &std::path::Path,
    args: &[&str],
    extra: &[&str],
    env: &[(&str, &str)],
) -> Recorded {
    let dir = common::scratch(test);
    let trace = dir.join("trace.ffr");
    let mut cmd = common::ffirec();
    cmd.envs(env.iter().copied()).arg("record").args(extra).arg("-o").arg(&trace).arg("--").arg(prog).args(args);
    let out = common::run(&mut cmd, common::TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let addrs = record_support::parse_addrs(&stderr);
    Recorded { out, trace, stdout, stderr, addrs }
}

fn uninit(a: u64, b: u64) -> Vec<(String, String, u64, u64)> {
    vec![("uninit".to_string(), "exact".to_string(), a, b)]
}

#[test]
fn hostinit_plain_stores_100_of_4096_library_reads_200() {
    let r = run("hostinit_store", &["store"], &[]);
    assert_eq!(r.findings(), uninit(100, 200));
    assert_eq!(r.unknown_bytes(), 0);
    // 25 four-byte stores, each a fault performed through /proc/PID/mem.
    let writes = r.writes_before_call();
    assert_eq!(writes, (0..25).map(|i| (i * 4, 4)).collect::<Vec<_>>());
}

#[test]
fn hostinit_memset_100() {
    let r = run("hostinit_memset", &["memset"], &[]);
    assert_eq!(r.findings(), uninit(100, 200));
    assert_eq!(r.unknown_bytes(), 0);
}

#[test]
fn hostinit_memset_3000_is_one_fault() {
    // glibc's memset switches to `rep stosb` for big sizes: one fault, one HostWrite.
    let r = run("hostinit_memset_big", &["memset_big"], &[]);
    assert_eq!(r.findings(), uninit(3000, 3100));
    let writes = r.writes_before_call();
    assert_eq!(writes, vec![(0, 3000)]);
}

#[test]
fn hostinit_read_syscall_100_bytes() {
    let dir = common::scratch("hostinit_read_file");
    let file = dir.join("in.txt");
    std::fs::write(&file, vec![b'x'; 150]).unwrap();
    let r = run("hostinit_read", &["read", file.to_str().unwrap()], &[]);
    assert_eq!(r.rec.stdout, "100 1\n");
    assert_eq!(r.findings(), uninit(100, 200));
    assert_eq!(r.unknown_bytes(), 0);
    // The kernel's write is one HostWrite of exactly what read() returned.
    let writes = r.writes_before_call();
    assert_eq!(writes, vec![(0, 100)]);
    assert!(r.counter("hostinit_syscalls") >= 1);
}

#[test]
fn hostinit_read_syscall_after_a_call_returned() {
    // The return from a foreign call must leave host syscalls observed: the
    // read() after it fills a tracked page (exactly [0,100) recorded).
    let dir = common::scratch("hostinit_read_after_call_file");
    let file = dir.join("in.txt");
    std::fs::write(&file, vec![b'x'; 150]).unwrap();
    let r = run("hostinit_read_after_call", &["read_after_call", file.to_str().unwrap()], &[]);
    assert_eq!(r.rec.stdout, "0 100 1\n");
    assert_eq!(r.findings(), uninit(100, 200));
    assert_eq!(r.unknown_bytes(), 0);
}

#[test]
fn hostinit_fread_into_malloc_and_print() {
    // stdio's own buffer is malloc'd: read() into a protected page must work.
    let dir = common::scratch("hostinit_fread_file");
    let file = dir.join("in.txt");
    let text: String = (1..=2000).map(|i| format!("{i}\n")).collect();
    std::fs::write(&file, &text).unwrap();
    let r = run("hostinit_fread", &["fread", file.to_str().unwrap()], &[]);
    assert!(r.rec.stdout.starts_with(&text[..4096]));
    assert_eq!(r.rec.stdout[4096..], *"4096 1\n");
    // Every byte the library read was written by fread's copy.
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 0);
}

#[test]
fn hostinit_byte_loop_ends_unknown_past_the_budget() {
    // 100 one-byte stores on one page: the page's budget (64 faults) runs out
    // at the 65th; the bytes never written by then become unknown, never
    // reported. Bytes [0,65) were recorded, [65,200) are unknown.
    let r = run("hostinit_loop", &["loop"], &[]);
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 135);
    assert_eq!(r.counter("hostinit_dead"), 1);
    // With a budget above 100 the same loop ends exact.
    let r = run_env("hostinit_loop_budget", &["loop"], &[], &[("FFIREC_HOSTINIT_BUDGET", "200")]);
    assert_eq!(r.findings(), uninit(100, 200));
}

#[test]
fn hostinit_guard_set_reused_keeps_pages_tracked() {
    // Two calls with nothing changed in between: the second reuses the guard
    // set, and its return still makes the tracked page read-only again, so
    // the host's memset of [10,100) after it is recorded: [100,200) exact.
    let r = run("hostinit_reuse", &["reuse"], &[]);
    assert_eq!(r.rec.stdout, "10 10 1\n");
    assert_eq!(r.findings(), uninit(100, 200));
    assert_eq!(r.unknown_bytes(), 0);
    // 5 calls (3 hi_read, 2 in the library's destructors at exit); the 2nd
    // and 3rd hi_read and one exit call find nothing changed.
    assert_eq!((r.counter("calls"), r.counter("guard_sets_reused")), (5, 3));
}

#[test]
fn hostinit_calloc_no_finding() {
    let r = run("hostinit_calloc", &["calloc"], &[]);
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 0);
}

#[test]
fn hostinit_realloc_growth_only_new_tail_uninit() {
    // malloc(64), all 64 written, realloc to 8192: the library reads [0,200).
    // The 64 old bytes carry their (written) state, [64,200) is the new,
    // never-written tail.
    let r = run("hostinit_realloc", &["realloc"], &[]);
    assert_eq!(r.findings(), uninit(64, 200));
    assert_eq!(r.unknown_bytes(), 0);
}

#[test]
fn hostinit_realloc_carries_never_written_bytes() {
    // malloc(64) with [0,16) written, moved by realloc to 8192, then [16,32)
    // written in the new block: the never-written bytes that moved are still
    // tracked, so exactly [32,200) is uninitialised.
    let r = run("hostinit_realloc_partial", &["realloc_partial"], &[]);
    assert_eq!(r.findings(), uninit(32, 200));
    assert_eq!(r.unknown_bytes(), 0);
}

#[test]
fn hostinit_struct_padding_written_field_by_field() {
    // struct { char c; long l; short s; }: bytes 1..8 and 18..24 are padding.
    let r = run("hostinit_padding", &["padding"], &[]);
    let mut f = r.findings();
    f.sort();
    assert_eq!(
        f,
        vec![("uninit".to_string(), "exact".to_string(), 1, 8), ("uninit".to_string(), "exact".to_string(), 18, 24)]
    );
}

#[test]
fn hostinit_program_reading_uninit_memory_prints_as_natively() {
    // `run` asserts identical stdout and status; nothing is poisoned.
    let r = run("hostinit_uninit_print", &["uninit_print"], &[]);
    assert_eq!(r.findings(), vec![]);
}

#[test]
fn hostinit_library_struct_fourth_field_uninit_with_guard_foreign() {
    // The library mallocs a struct, writes 3 of its 4 fields and returns it;
    // the host passes it back and the library reads all 4. With the default
    // arena the library's own writes are not traced (unknown, not reported);
    // with --guard-foreign they are, and the 4th field is an exact finding.
    let r = run("hostinit_struct_arena", &["struct"], &[]);
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 32);
    let r = run("hostinit_struct_guarded", &["struct"], &["--guard-foreign"]);
    assert_eq!(r.findings(), uninit(24, 32));
}

#[test]
fn hostinit_foreign_allocation_never_freed_is_a_leak() {
    let r = run("hostinit_leak", &["leak"], &[]);
    let f = r.findings();
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!((f[0].0.as_str(), f[0].3 - f[0].2), ("foreign_leak", 24));
}

#[test]
fn hostinit_forked_child_writes_inherited_block() {
    // The parent wrote [0,10) and forks; the child (followed, not tracked:
    // its inherited pages are writable again) writes [10,200) and reads it,
    // and reads its own malloc(300). Only the parent's read of [10,200) is a
    // finding; the child's bytes are unknown, never reported.
    let r = run("hostinit_fork", &["fork"], &[]);
    assert_eq!(r.rec.stdout, format!("child {} 900\nparent 0 1\n", 10 + 190 * 2));
    assert_eq!(r.findings(), uninit(10, 200));
}

#[test]
fn hostinit_second_thread_keeps_tracking() {
    // A second thread writes [10,200) of main's block (memset: recorded, not
    // a reason to stop tracking); a block allocated after the thread is
    // tracked too: its [100,200) is an exact finding, nothing is unknown.
    let r = run("hostinit_thread", &["thread"], &[]);
    assert_eq!(r.rec.stdout, format!("{} 1\n", 10 + 190 * 2));
    let q = r.rec.addr("q") - r.rec.addr("buf");
    assert_eq!(r.findings(), uninit(q + 100, q + 200));
    assert_eq!(r.unknown_bytes(), 0);
}

#[test]
fn hostinit_two_threads_block_written_by_the_other_thread() {
    // Thread B mallocs 4096 and writes [0,100) while thread A (main) lives;
    // A passes the block to the library, which reads [0,200): exactly one
    // exact finding, [100,200). B stays alive (held) during the call.
    let r = run("hostinit_thread2_store", &["thread2_store"], &[]);
    assert_eq!(r.rec.stdout, "1\n");
    assert_eq!(r.findings(), uninit(100, 200));
    assert_eq!(r.unknown_bytes(), 0);
    // memset's overlapping vector stores: their union is [0,100).
    let mut covered = [false; 4096];
    for (a, n) in r.writes_before_call() {
        covered[a as usize..(a + n) as usize].fill(true);
    }
    assert_eq!(covered.iter().position(|&c| !c), Some(100));
    assert!(covered[100..].iter().all(|&c| !c));
}

#[test]
fn hostinit_two_threads_read_syscall_page_leaves_tracking() {
    // The same, but B fills [0,100) with read() while A lives: opening the
    // page for the kernel would open it for A too, so the page leaves
    // tracking (dead). What read() wrote is still known ([0,100) written);
    // [100,200) ends unknown, never a finding.
    let dir = common::scratch("hostinit_thread2_read_file");
    let file = dir.join("in.txt");
    std::fs::write(&file, vec![b'x'; 150]).unwrap();
    let r = run("hostinit_thread2_read", &["thread2_read", file.to_str().unwrap()], &[]);
    assert_eq!(r.rec.stdout, "1\n");
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 100);
    assert_eq!(r.writes_before_call(), vec![(0, 100)]);
    assert_eq!(r.counter("hostinit_dead"), 1);
}

#[test]
fn hostinit_two_threads_atomic_add_page_leaves_tracking() {
    // B writes [0,100) with memset, then a `lock xadd` on [0,8): the
    // recorder cannot perform it, and single-stepping it with the page open
    // would let A write unrecorded, so the page leaves tracking: [100,200)
    // ends unknown, never a finding.
    let r = run("hostinit_thread2_atomic", &["thread2_atomic"], &[]);
    assert_eq!(r.rec.stdout, "1\n");
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 100);
    assert_eq!(r.counter("hostinit_dead"), 1);
}

#[test]
fn hostinit_vfork_child_writes_parents_block() {
    // A vfork child shares its parent's memory: its writes to the tracked
    // block are the parent's too, recorded the same way (or unknown past the
    // page's budget), never lost.
    let r = run("hostinit_vfork", &["vfork"], &[]);
    assert_eq!(r.rec.stdout, format!("0 {}\n", 10 + 190 * 2));
    assert_eq!(r.findings(), vec![]);
}

#[test]
fn hostinit_program_mprotect_on_a_tracked_page() {
    // The program makes a tracked page read-only and read-write again, then
    // writes [10,100): that page leaves tracking (its never-written bytes
    // become unknown) instead of silently losing the writes.
    let r = run("hostinit_mprotect", &["mprotect"], &[]);
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 190);
}

#[test]
fn hostinit_signal_frame_on_malloced_alternate_stack() {
    // sigaltstack on a malloc'd block: the kernel writes the signal frame
    // there, so those pages are never protected; the handler runs as natively.
    let r = run("hostinit_altstack", &["altstack"], &[]);
    assert_eq!(r.rec.stdout, "10 1\n");
    assert_eq!(r.findings(), uninit(100, 200));
}

/// `NAME=VALUE` from the recording's stderr.
fn stderr_value(r: &Run, name: &str) -> String {
    let key = format!("{name}=");
    let line = r.rec.stderr.lines().find(|l| l.starts_with(&key));
    line.unwrap_or_else(|| panic!("no {key} in stderr:\n{}", r.rec.stderr))[key.len()..].to_string()
}

/// The CPUs of a kernel-style list ("0-1,3").
fn cpus(list: &str) -> Vec<usize> {
    let mut out = Vec::new();
    for part in list.split(',') {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        out.extend(a.parse::<usize>().unwrap()..=b.parse::<usize>().unwrap());
    }
    out
}

#[test]
fn hostinit_burst_pin_is_invisible_to_the_program() {
    // A burst of host write faults pins the thread with the recorder (the
    // burst never ends here: FFIREC_HOSTINIT_PIN_MS=60000). The program sees
    // its own mask through sched_getaffinity (by tid 0 and by pid), so do a
    // thread it creates and a child it forks during the burst, whose real
    // masks (/proc Cpus_allowed_list) are the program's own; restricted to
    // its first CPU and widened back, it sees that too. Stdout is native.
    let r = run_env("hostinit_burst_affinity", &["affinity_burst"], &[], &[("FFIREC_HOSTINIT_PIN_MS", "60000")]);
    let mask = stderr_value(&r, "mask");
    let first = cpus(&mask)[0].to_string();
    let expected =
        format!("mask {mask}, by pid {mask}\nthread {mask}\nchild {mask} 0\nrestricted {first}\nwidened {mask}\n1\n");
    assert_eq!(r.rec.stdout, expected);
    // Pinned: one CPU of its mask, the recorder's.
    let main = stderr_value(&r, "main_kernel");
    assert_eq!(cpus(&main).len(), 1, "{main}");
    assert!(cpus(&mask).contains(&cpus(&main)[0]), "{main} not in {mask}");
    assert_eq!(stderr_value(&r, "thread_kernel"), mask);
    assert_eq!(stderr_value(&r, "child_kernel"), mask);
    // Its own mask excludes the recorder's CPU: the pin ends (the recorder
    // goes to that CPU for the next burst) or it was that CPU already.
    assert_eq!(stderr_value(&r, "restricted_kernel"), first);
    // Widened while pinned on that CPU: pinned there still, seeing its mask.
    assert_eq!(stderr_value(&r, "widened_kernel"), first);
    assert_eq!(r.counter("hostinit_pins"), if main == first { 1 } else { 2 });
    assert_eq!(r.findings(), uninit(100, 200));
}

#[test]
fn hostinit_burst_pin_child_not_followed_gets_its_own_mask() {
    // --no-follow: the child forked while its parent is pinned runs
    // untraced, with the program's own mask, not the pin.
    let r = run_env(
        "hostinit_burst_nofollow",
        &["affinity_burst"],
        &["--no-follow"],
        &[("FFIREC_HOSTINIT_PIN_MS", "60000")],
    );
    let mask = stderr_value(&r, "mask");
    assert_eq!(cpus(&stderr_value(&r, "main_kernel")).len(), 1);
    assert_eq!(stderr_value(&r, "child_kernel"), mask);
}

#[test]
fn hostinit_burst_pin_off_with_no_pin() {
    // --no-pin: the same program runs on its own mask throughout.
    let r = run_env("hostinit_burst_nopin", &["affinity_burst"], &["--no-pin"], &[("FFIREC_HOSTINIT_PIN_MS", "60000")]);
    let mask = stderr_value(&r, "mask");
    assert_eq!(stderr_value(&r, "main_kernel"), mask);
    assert_eq!(stderr_value(&r, "widened_kernel"), mask);
    assert_eq!(r.counter("hostinit_pins"), 0);
    assert_eq!(r.findings(), uninit(100, 200));
}

#[test]
fn hostinit_burst_pin_ends_when_stops_stop() {
    // Two bursts 600 ms of computation apart, bursts ending after 100 ms
    // without a host-init stop: the thread is pinned twice (its own mask
    // back in between, given by the wait loop while it computes).
    let r = run_env("hostinit_burst_twice", &["burst_twice"], &[], &[("FFIREC_HOSTINIT_PIN_MS", "100")]);
    assert_eq!(r.rec.stdout, "1\n");
    assert_eq!(r.counter("hostinit_pins"), 2);
}

#[test]
fn hostinit_page_protected_again_too_often_is_given_up() {
    // One 8000-byte block at the same address each time, filled and freed:
    // the page fully inside it is released and protected again 6 times in
    // all (5 refills, then the last block, whose [0,100) of that page is
    // written; the library reads [0,200) of it). A page may be protected
    // again 3 times (FFIREC_HOSTINIT_CYCLES): past that it is given up, so
    // [100,200) is unknown — never a finding.
    let r = run("hostinit_recycle", &["recycle"], &[]);
    assert_eq!(r.rec.stdout, "1 21 1\n");
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 200);
    // The block's three pages: its first and last, which the first free()
    // wrote (chunk headers) and so released, cycle once more than the inner one.
    assert_eq!(r.counter("hostinit_dead"), 3);
    // The boundary: 5 protections again are too many, 6 allowed keep it
    // tracked to the end, and the finding is exact.
    let r = run_env("hostinit_recycle5", &["recycle"], &[], &[("FFIREC_HOSTINIT_CYCLES", "5")]);
    assert_eq!(r.findings(), vec![]);
    assert_eq!(r.unknown_bytes(), 200);
    let r = run_env("hostinit_recycle6", &["recycle"], &[], &[("FFIREC_HOSTINIT_CYCLES", "6")]);
    assert_eq!(r.findings(), uninit(100, 200));
    assert_eq!(r.unknown_bytes(), 0);
    // The first and last pages were protected again 7 times: given up.
    assert_eq!(r.counter("hostinit_dead"), 2);
}

#[test]
fn hostinit_burst_pin_leaves_a_thread_blocked_in_read() {
    // The main thread's burst pins it; it then blocks in read() while a
    // second thread has a burst of its own 400 ms later (bursts end after
    // 100 ms without a stop): the pin leaves the blocked thread (read cannot
    // see or pass on its mask) and the second thread gets it.
    let r = run_env("hostinit_burst_blocked", &["burst_blocked"], &[], &[("FFIREC_HOSTINIT_PIN_MS", "100")]);
    let mask = stderr_value(&r, "mask");
    assert_eq!(r.rec.stdout, format!("main {mask} thread {mask}\n"));
    let thread = stderr_value(&r, "thread_kernel");
    assert_eq!(cpus(&thread).len(), 1, "{thread}");
    assert!(cpus(&mask).contains(&cpus(&thread)[0]), "{thread} not in {mask}");
}
