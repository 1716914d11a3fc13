//! Recorder end to end: exact byte sets of foreign accesses to host buffers,
//! and stdout/exit status identical to a native run.

mod common;
mod record_support;

use ffirec_format::Event;
use record_support::{bytes, host_calls, native, ranges_in, record, Recorded};

fn host() -> std::path::PathBuf {
    // Built once: concurrent `common::program` calls for the same fixture race.
    static HOST: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOST.get_or_init(|| common::program("rec_host")).clone()
}

/// Records a scenario and checks stdout and exit status match a native run.
fn scenario(test: &str, name: &str) -> Recorded {
    let prog = host();
    let r = record(test, &prog, &[name], &["--lib", "librecfx.so"]);
    let nat = native(&prog, &[name]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout), "stdout differs under ffirec; stderr:\n{}", r.stderr);
    assert_eq!(r.out.status.code(), nat.status.code(), "exit status differs; stderr:\n{}", r.stderr);
    r
}

#[test]
fn record_sum_reads_exactly_n_ints() {
    let r = scenario("sum", "sum");
    let ev = r.events();
    let b = bytes(&ev);
    let buf = r.addr("buf");
    assert_eq!(ranges_in(&b.read, buf, 64), vec![(0, 40)]);
    assert_eq!(ranges_in(&b.written, buf, 64), vec![]);
    assert_eq!(host_calls(&r.trace(), &ev), vec!["sum_ints"]);
    let returns = ev.iter().filter(|e| matches!(e, Event::Return { .. })).count();
    let calls = ev.iter().filter(|e| matches!(e, Event::Call { .. })).count();
    assert_eq!(returns, calls, "every call returns");
}

#[test]
fn record_struct_fields_written_one_by_one() {
    let r = scenario("struct", "struct");
    let b = bytes(&r.events());
    let buf = r.addr("buf");
    assert_eq!(ranges_in(&b.written, buf, 16), vec![(0, 7), (8, 16)]);
    assert_eq!(ranges_in(&b.read, buf, 16), vec![]);
}

#[test]
fn record_libc_memcpy_memset_of_host_buffers() {
    let r = scenario("memcpy", "memcpy");
    let b = bytes(&r.events());
    let (src, dst, d2) = (r.addr("src"), r.addr("dst"), r.addr("dst2"));
    assert_eq!(ranges_in(&b.read, src, 1000), vec![(5, 782)]);
    assert_eq!(ranges_in(&b.written, src, 1000), vec![]);
    assert_eq!(ranges_in(&b.written, dst, 1000), vec![(3, 780)]);
    assert_eq!(ranges_in(&b.read, dst, 1000), vec![]);
    assert_eq!(ranges_in(&b.written, d2, 1000), vec![(0, 513)]);
    assert_eq!(ranges_in(&b.read, d2, 1000), vec![]);
}

#[test]
fn record_rep_movsb_stosb_forward_and_backward() {
    let r = scenario("rep", "rep");
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("src"), 256), vec![(2, 102)]);
    assert_eq!(ranges_in(&b.written, r.addr("dst"), 256), vec![(1, 101)]);
    assert_eq!(ranges_in(&b.written, r.addr("dst2"), 256), vec![(4, 54)]);
    assert_eq!(ranges_in(&b.read, r.addr("bsrc"), 256), vec![(20, 84)]);
    assert_eq!(ranges_in(&b.written, r.addr("bdst"), 256), vec![(10, 74)]);
    assert_eq!(ranges_in(&b.written, r.addr("bdst2"), 256), vec![(70, 100)]);
    for n in ["dst", "dst2", "bdst", "bdst2"] {
        assert_eq!(ranges_in(&b.read, r.addr(n), 256), vec![], "{n} read");
    }
    // `rep` strings are not simple moves: they run through trampoline slots.
    let t = r.trace();
    assert_eq!(record_support::counter(&t, "singlestepped"), 0);
    assert!(record_support::counter(&t, "trampolined") >= 4);
}

#[test]
fn record_movs_with_both_operands_guarded() {
    let r = scenario("movs", "movs");
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("src"), 64), vec![(16, 24)]);
    assert_eq!(ranges_in(&b.written, r.addr("dst"), 64), vec![(8, 16)]);
}

#[test]
fn record_avx2_load_store() {
    let r = scenario("avx2", "avx2");
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("src"), 128), vec![(1, 33)]);
    assert_eq!(ranges_in(&b.written, r.addr("dst"), 128), vec![(32, 64)]);
}

#[test]
fn record_avx512_load_store() {
    if !record_support::cpu_has("avx512f") {
        eprintln!("note: CPU lacks AVX-512F; record_avx512_load_store skipped");
        return;
    }
    let r = scenario("avx512", "avx512");
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("src"), 256), vec![(3, 67)]);
    assert_eq!(ranges_in(&b.written, r.addr("dst"), 256), vec![(64, 128)]);
}

#[test]
fn record_call_through_pointer_in_host_memory() {
    let r = scenario("fnptr", "fnptr");
    assert_eq!(r.stdout, "42\n");
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("slot"), 16), vec![(0, 8)]);
    assert_eq!(ranges_in(&b.written, r.addr("slot"), 16), vec![]);
    // `call [m]` is emulated by the recorder: no single-step.
    let t = r.trace();
    assert_eq!(record_support::counter(&t, "singlestepped"), 0);
    assert_eq!(record_support::counter(&t, "fault_stops"), record_support::counter(&t, "faults"));
}

#[test]
fn record_callback_host_accesses_not_recorded() {
    let r = scenario("callback", "callback");
    let ev = r.events();
    let b = bytes(&ev);
    let buf = r.addr("buf");
    // The library reads p[0] and p[3]; the host callback writes p[1], reads p[2].
    assert_eq!(ranges_in(&b.read, buf, 32), vec![(0, 4), (12, 16)]);
    assert_eq!(ranges_in(&b.written, buf, 32), vec![]);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Callback { .. })).count(), 1);
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::CallbackReturn { .. })).count(), 1);
}

#[test]
fn record_nested_calls() {
    let r = scenario("nested", "nested");
    let ev = r.events();
    let b = bytes(&ev);
    let buf = r.addr("buf");
    assert_eq!(ranges_in(&b.read, buf, 32), vec![(0, 4), (12, 16), (20, 24)]);
    assert_eq!(host_calls(&r.trace(), &ev), vec!["lib_apply", "lib_inner"]);
    // lib_inner's Call and Return nest inside lib_apply's.
    let seq: Vec<&str> = ev
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Call { .. } | Event::Return { .. } | Event::Callback { .. } | Event::CallbackReturn { .. }
            )
        })
        .map(|e| e.kind())
        .take(6)
        .collect();
    assert_eq!(seq, vec!["call", "callback", "call", "return", "callback_return", "return"]);
}

#[test]
fn record_host_global_and_copy_relocated_variable() {
    let r = scenario("global", "global");
    assert_eq!(r.stdout, "1234\n6\n6\n");
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("host_global"), 4), vec![(0, 4)]);
    assert_eq!(ranges_in(&b.read, r.addr("lib_counter"), 4), vec![(0, 4)]);
    assert_eq!(ranges_in(&b.written, r.addr("lib_counter"), 4), vec![(0, 4)]);
}

#[test]
fn record_null_deref_in_library_is_the_programs_sigsegv() {
    let prog = host();
    let r = record("null", &prog, &["null"], &["--lib", "librecfx.so"]);
    let nat = native(&prog, &["null"]);
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(nat.status.signal(), Some(11));
    assert_eq!(r.code(), 139, "stderr:\n{}", r.stderr);
    assert_eq!(r.stdout, "before\n");
    let ev = r.events();
    let sig: Vec<_> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Signal { signo, addr, fatal, .. } => Some((*signo, *addr, *fatal)),
            _ => None,
        })
        .collect();
    assert_eq!(sig, vec![(11, 0, true)]);
    assert!(matches!(ev.last(), Some(Event::Exit { status: ffirec_format::ExitStatus::Signal(11), .. })));
}

#[test]
fn record_one_ptrace_stop_per_fault() {
    let prog = host();
    // Host-init tracking's own stops (write faults, syscalls) are not this test's.
    let r = record("stops", &prog, &["loop", "256", "40"], &["--lib", "librecfx.so", "--no-host-init"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    let t = r.trace();
    let faults = record_support::counter(&t, "faults");
    assert_eq!(faults, 256 * 40);
    assert_eq!(record_support::counter(&t, "fault_stops"), faults, "more than one stop per fault");
    assert_eq!(record_support::counter(&t, "emulated") + record_support::counter(&t, "trampolined"), faults);
    assert_eq!(record_support::counter(&t, "singlestepped"), 0);
    let accesses = r.events().iter().filter(|e| matches!(e, Event::Access { .. })).count() as u64;
    assert_eq!(accesses, faults);
    // One loop, one call: only its first fault reads the instruction bytes.
    assert_eq!(record_support::counter(&t, "code_cached"), faults - 1);
    // Everything else is boundary work: a handful of stops per call.
    let stops = record_support::counter(&t, "ptrace_stops");
    let calls = record_support::counter(&t, "calls");
    assert!(stops - faults <= 20 + 8 * calls, "{stops} stops for {faults} faults and {calls} calls");
}

#[test]
fn record_simd_copies_emulated_and_trampolined_agree() {
    // 8-byte GPR, 16-byte SSE (movdqu) and 32-byte AVX (vmovdqu) copies
    // between two host buffers: emulated through the register sets, and
    // with FFIREC_NO_EMULATE=1 run through trampolines. Same output as
    // native, same exact byte sets, one stop per fault either way.
    let prog = host();
    for (sc, w) in [("copyloop", 8u64), ("sseloop", 16), ("avxloop", 32)] {
        if sc == "avxloop" && !record_support::cpu_has("avx") {
            continue;
        }
        let args = [sc, "64", "3"];
        let nat = native(&prog, &args);
        let mut sets = Vec::new();
        // Vector loads run in a slot by default, through the register sets
        // with FFIREC_NO_VLOAD_SLOT=1: both must agree with the trampolines.
        for (no_emulate, no_slot) in [(false, false), (false, true), (true, false)] {
            let test = format!("simd_{sc}_{no_emulate}_{no_slot}");
            let trace = common::scratch(&test).join("trace.ffr");
            let mut cmd = common::ffirec();
            cmd.env("FFIREC_NO_EMULATE", if no_emulate { "1" } else { "0" });
            cmd.env("FFIREC_NO_VLOAD_SLOT", if no_slot { "1" } else { "0" });
            cmd.args(["record", "--lib", "librecfx.so", "-o"]).arg(&trace).arg("--").arg(&prog).args(args);
            let out = common::run(&mut cmd, common::TIMEOUT);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.stdout, nat.stdout, "{sc} no_emulate={no_emulate}: output differs; stderr:\n{stderr}");
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            let t = ffirec_format::Trace::open(&trace).expect("trace");
            let faults = record_support::counter(&t, "faults");
            assert_eq!(faults, 2 * 64 * 3, "{sc}");
            assert_eq!(record_support::counter(&t, "fault_stops"), faults, "{sc}: one stop per fault");
            let path = if no_emulate { "trampolined" } else { "emulated" };
            assert_eq!(record_support::counter(&t, path), faults, "{sc} no_emulate={no_emulate}");
            let addrs = record_support::parse_addrs(&stderr);
            let (src, dst) = (addrs["src"], addrs["dst"]);
            let ev: Vec<Event> = t.events().map(|r| r.expect("event").1).collect();
            let b = bytes(&ev);
            let n = 64 * w;
            let set = (
                ranges_in(&b.read, src, n),
                ranges_in(&b.written, src, n),
                ranges_in(&b.read, dst, n),
                ranges_in(&b.written, dst, n),
            );
            assert_eq!(set, (vec![(0, n)], vec![], vec![], vec![(0, n)]), "{sc} no_emulate={no_emulate}");
            sets.push(set);
        }
        assert_eq!(sets[0], sets[1], "{sc}");
        assert_eq!(sets[0], sets[2], "{sc}");
    }
}

#[test]
fn record_one_ptrace_stop_per_fault_through_trampolines() {
    let prog = host();
    let r = record("stops_tramp", &prog, &["addloop", "256", "40"], &["--lib", "librecfx.so"]);
    assert_eq!(r.code(), 0, "stderr:\n{}", r.stderr);
    let nat = native(&prog, &["addloop", "256", "40"]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    let t = r.trace();
    let faults = record_support::counter(&t, "faults");
    assert_eq!(faults, 256 * 40);
    assert_eq!(record_support::counter(&t, "fault_stops"), faults, "more than one stop per fault");
    assert_eq!(record_support::counter(&t, "trampolined"), faults);
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("buf"), 2048), vec![(0, 2048)]);
    assert_eq!(ranges_in(&b.written, r.addr("buf"), 2048), vec![(0, 2048)]);
}

#[test]
fn record_avx2_gather_uses_recorded_index_vector() {
    if !record_support::cpu_has("avx2") {
        eprintln!("note: CPU lacks AVX2; record_avx2_gather_uses_recorded_index_vector skipped");
        return;
    }
    let r = scenario("gather", "gather");
    let ev = r.events();
    let b = bytes(&ev);
    let want: Vec<(u64, u64)> = [0u64, 3, 5, 7, 9, 11, 13, 15].iter().map(|i| (i * 4, i * 4 + 4)).collect();
    assert_eq!(ranges_in(&b.read, r.addr("base"), 64), want);
    assert_eq!(ranges_in(&b.written, r.addr("out"), 32), vec![(0, 32)]);
    // The gather's Access carries the index vector (ymm1) it was decoded with.
    let vregs = ev.iter().find_map(|e| match e {
        Event::Access { vregs, .. } if !vregs.is_empty() => Some(vregs.clone()),
        _ => None,
    });
    let vregs = vregs.expect("an access with vector registers");
    assert!(
        vregs.iter().any(|v| v.index == 1
            && v.bytes.len() == 32
            && v.bytes[4..8] == 3u32.to_le_bytes()
            && v.bytes[28..32] == 15u32.to_le_bytes()),
        "{vregs:?}"
    );
}

#[test]
fn record_longjmp_out_of_a_callback_closes_the_call() {
    let r = scenario("longjmp", "longjmp");
    let ev = r.events();
    assert_eq!(host_calls(&r.trace(), &ev), vec!["lib_apply", "sum_ints"]);
    let b = bytes(&ev);
    // lib_apply read p[0] before calling back; sum_ints read all 8 ints.
    assert_eq!(ranges_in(&b.read, r.addr("buf"), 32), vec![(0, 32)]);
    let seq: Vec<&str> = ev
        .iter()
        .filter(|e| {
            matches!(
                e,
                Event::Call { .. } | Event::Return { .. } | Event::Callback { .. } | Event::CallbackReturn { .. }
            )
        })
        .map(|e| e.kind())
        .take(6)
        .collect();
    assert_eq!(seq, vec!["call", "callback", "callback_return", "return", "call", "return"]);
}

#[test]
fn record_signal_handler_during_a_foreign_call() {
    let r = scenario("signal", "signal");
    let ev = r.events();
    let b = bytes(&ev);
    assert_eq!(ranges_in(&b.read, r.addr("buf"), 32), vec![(0, 8)]);
    let sigs: Vec<i32> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Signal { signo, fatal, .. } => Some(if *fatal { -signo } else { *signo }),
            _ => None,
        })
        .collect();
    assert_eq!(sigs, vec![10]);
    // rt_sigreturn's stale register values are not taken for buffers.
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Gap { .. })).count(), 0);
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn record_calls_under_a_fast_timer_signal() {
    // SIGALRM every 500 µs lands in the middle of protection batches (the
    // return batch runs without a stop and holds signals back until it is
    // done): the program's results and the recorded accesses stay exact.
    let r = scenario("timercalls", "timercalls");
    assert_eq!(r.stdout, "1\n");
    let ev = r.events();
    let b = bytes(&ev);
    assert_eq!(ranges_in(&b.read, r.addr("buf"), 32), vec![(0, 16)]);
    assert_eq!(ranges_in(&b.written, r.addr("buf"), 32), vec![]);
    let calls = ev.iter().filter(|e| matches!(e, Event::Call { .. })).count();
    let returns = ev.iter().filter(|e| matches!(e, Event::Return { .. })).count();
    assert!(calls >= 4001, "{calls} calls");
    assert_eq!(returns, calls, "every call returns");
    assert!(!r.stderr.contains("warning"), "{}", r.stderr);
}

#[test]
fn record_realloc_moving_a_guarded_block_keeps_the_program_working() {
    // glibc moves the 1 MiB mmap'd block with mremap, which carries our
    // PROT_NONE along: the recorder adopts the new range and restores it.
    let r = scenario("realloc", "realloc");
    assert_eq!(r.stdout, "7 7 1\n");
    assert_eq!(r.code(), 0);
}

#[test]
fn record_foreign_syscalls_on_guarded_buffers() {
    let r = scenario("syscall", "syscall");
    assert_eq!(r.stdout, "written by the library\n23 13 from the pipe\n");
    let ev = r.events();
    let (msg, inp) = (r.addr("msg"), r.addr("in"));
    // (syscall number, return value, [(addr, len, write)])
    type SyscallSet = (u64, i64, Vec<(u64, u64, bool)>);
    let sys: Vec<SyscallSet> = ev
        .iter()
        .filter_map(|e| match e {
            Event::SyscallAccess { nr, ret, ranges, .. } => {
                Some((*nr, *ret, ranges.iter().map(|x| (x.addr, x.len, x.write)).collect()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(sys, vec![(1, 23, vec![(msg, 23, false)]), (0, 13, vec![(inp, 13, true)])]);
}

#[test]
fn record_libc_string_routines_on_host_strings() {
    // SIMD string routines read whole aligned blocks, so they may read past
    // the terminator (within the block): check what must be there.
    let r = scenario("string", "string");
    let b = bytes(&r.events());
    let (a, d) = (r.addr("a"), r.addr("d"));
    let read_a = ranges_in(&b.read, a, 300);
    assert!(read_a.first().is_some_and(|&(s, e)| s == 0 && e >= 201), "{read_a:?}");
    assert_eq!(ranges_in(&b.written, d, 300), vec![(1, 199)]);
    assert_eq!(ranges_in(&b.written, a, 300), vec![]);
}

#[test]
fn record_signal_on_an_alternate_stack_in_the_heap() {
    // The owner's sigaltstack is carved out of the guard set: the kernel
    // must be able to write the signal frame there during the call.
    let r = scenario("altstack", "altstack");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let b = bytes(&r.events());
    assert_eq!(ranges_in(&b.read, r.addr("buf"), 32), vec![(0, 8)]);
}

/// (instruction bytes, rip, offset into `[base, base+len)`, size) of every
/// access that touches the buffer, in event order.
fn accesses_in(ev: &[Event], base: u64, len: u64) -> Vec<(Vec<u8>, u64, u64, u64)> {
    let mut out = Vec::new();
    for e in ev {
        if let Event::Access { code, regs, vregs, .. } = e {
            let d = ffirec_decode::Decoded::new(regs.rip, code).expect("decode recorded instruction");
            for a in d.accesses(regs, vregs).expect("accesses") {
                if a.addr >= base && a.addr + a.size <= base + len {
                    out.push((code.clone(), regs.rip, a.addr - base, a.size));
                }
            }
        }
    }
    out
}

#[test]
fn record_code_rewritten_inside_one_call_is_read_again() {
    // One foreign call runs an instruction 3 times, rewrites it in place
    // and runs the new one 3 times: the library patching its own text
    // (mprotect RWX, write, mprotect RX), and a JIT rewriting an anonymous
    // RWX page without any syscall. Every access must carry the bytes that
    // ran and the range they touched, emulated or through trampolines. Text
    // of a loaded object is cached between faults until a syscall (here the
    // mprotects) breaks the chain; anonymous code is read on every fault.
    let prog = host();
    for (sc, cached) in [("patchself", 4u64), ("jit", 0)] {
        let nat = native(&prog, &[sc, "3"]);
        assert_eq!(nat.status.code(), Some(0), "{sc} natively");
        for no_emulate in [false, true] {
            let trace = common::scratch(&format!("rewrite_{sc}_{no_emulate}")).join("trace.ffr");
            let mut cmd = common::ffirec();
            cmd.env("FFIREC_NO_EMULATE", if no_emulate { "1" } else { "0" });
            cmd.args(["record", "--lib", "librecfx.so", "-o"]).arg(&trace).arg("--").arg(&prog).args([sc, "3"]);
            let out = common::run(&mut cmd, common::TIMEOUT);
            let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
            assert_eq!(out.stdout, nat.stdout, "{sc} no_emulate={no_emulate}: output differs; stderr:\n{stderr}");
            assert_eq!(out.status.code(), Some(0), "{stderr}");
            let t = ffirec_format::Trace::open(&trace).expect("trace");
            let buf = record_support::parse_addrs(&stderr)["buf"];
            let ev: Vec<Event> = t.events().map(|r| r.expect("event").1).collect();
            let got = accesses_in(&ev, buf, 32);
            assert_eq!(got.len(), 6, "{sc} no_emulate={no_emulate}: {got:x?}");
            let rip = got[0].1;
            let old = (vec![0x48, 0x8b, 0x07], rip, 0, 8);
            let new = (vec![0x8b, 0x47, 0x10], rip, 16, 4);
            let want = vec![old.clone(), old.clone(), old, new.clone(), new.clone(), new];
            assert_eq!(got, want, "{sc} no_emulate={no_emulate}");
            assert_eq!(record_support::counter(&t, "faults"), 6, "{sc}");
            assert_eq!(record_support::counter(&t, "fault_stops"), 6, "{sc}: one stop per fault");
            let path = if no_emulate { "trampolined" } else { "emulated" };
            assert_eq!(record_support::counter(&t, path), 6, "{sc} no_emulate={no_emulate}");
            let want_cached = if no_emulate { 0 } else { cached };
            assert_eq!(record_support::counter(&t, "code_cached"), want_cached, "{sc} no_emulate={no_emulate}");
        }
    }
}

#[test]
fn record_vector_loads_under_a_fast_timer_signal() {
    // SIGALRM every 50 us during AVX and SSE copy loops: signals arrive while
    // the recorder handles a fault and stop the thread as it resumes at its
    // vector-load slot. The load is then completed through the register
    // sets and the thread moved on: same output as native, exact byte sets,
    // and every fault recorded once.
    let prog = host();
    for (sc, w) in [("ssetimer", 16u64), ("avxtimer", 32)] {
        if sc == "avxtimer" && !record_support::cpu_has("avx") {
            continue;
        }
        let args = [sc, "256", "8"];
        let nat = native(&prog, &args);
        assert_eq!(nat.status.code(), Some(0), "{sc} natively");
        // --no-host-init: host-init's two stops per host syscall (here the
        // rt_sigreturn of every 50 us SIGALRM) make this run ~20x slower
        // (5.6 s vs 0.25 s, debug build), past the timeout on a loaded machine.
        let r = record(&format!("vload_timer_{sc}"), &prog, &args, &["--lib", "librecfx.so", "--no-host-init"]);
        assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout), "{sc}: output differs; stderr:\n{}", r.stderr);
        assert_eq!(r.code(), 0, "{}", r.stderr);
        let t = r.trace();
        let ev = r.events();
        let faults = record_support::counter(&t, "faults");
        assert_eq!(faults, 2 * 256 * 8, "{sc}");
        let accesses = ev.iter().filter(|e| matches!(e, Event::Access { .. })).count() as u64;
        assert_eq!(accesses, faults, "{sc}");
        let b = bytes(&ev);
        let n = 256 * w;
        let (src, dst) = (r.addr("src"), r.addr("dst"));
        assert_eq!(ranges_in(&b.read, src, n), vec![(0, n)], "{sc}");
        assert_eq!(ranges_in(&b.written, dst, n), vec![(0, n)], "{sc}");
        assert_eq!(ranges_in(&b.written, src, n), vec![], "{sc}");
        assert_eq!(ranges_in(&b.read, dst, n), vec![], "{sc}");
        // Every load went to its slot (the rewound ones were caught inside).
        assert_eq!(record_support::counter(&t, "vload_slots"), 256 * 8, "{sc}");
        eprintln!(
            "{sc}: {} loads completed after a stop inside the slot",
            record_support::counter(&t, "vload_rewound")
        );
    }
}
