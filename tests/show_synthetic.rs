//! `ffirec show` on traces written with `TraceWriter`: exact expectations
//! that do not depend on a compiler or ASLR — the `--at` view agrees with
//! `analyze`'s findings, jumps use the chunk index, errors are one line.
//! Instruction bytes are GNU as output (`as` + `objdump -d -M intel`):
//!   48 8b 07      mov rax, [rdi]
//!   f3 0f 7f 07   movdqu [rdi], xmm0
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::path::{Path, PathBuf};

use ffirec_format::*;
use serde_json::Value;

use common::synth::{HOST, LIB};
const BUF: u64 = 0x5555_6000_0010;
const TID: u32 = 100;
const LOAD: &[u8] = &[0x48, 0x8b, 0x07];
const STORE16: &[u8] = &[0xf3, 0x0f, 0x7f, 0x07];

fn header(track_host_init: bool) -> Header {
    common::synth::header(1, "synthetic", track_host_init)
}

fn modules(w: &mut TraceWriter) {
    common::synth::add_modules(w, 1);
}

fn call(call: u64, symbol: u32, args: [u64; 6]) -> Event {
    Event::Call {
        tid: TID,
        call,
        target: LIB + 0x1000 + 0x100 * u64::from(symbol),
        module: 1,
        symbol: Some(symbol),
        args,
        rsp: 0x7ffc_0000_1000,
        return_addr: HOST + 0x1040 + call,
    }
}

fn access(rip: u64, code: &[u8], rdi: u64, rax: u64, data: Vec<u8>) -> Event {
    let mut regs = Regs { rip, rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RDI] = rdi;
    regs.gpr[Regs::RAX] = rax;
    regs.gpr[Regs::RSP] = 0x7ffc_0000_0ff0;
    Event::Access { tid: TID, code: code.to_vec(), regs, fault_addr: rdi, data, vregs: vec![] }
}

/// Host mallocs 64 bytes; `fill` writes [0,16) with one 16-byte store;
/// `sum` reads [0,32) as four 8-byte loads; the host frees the block.
/// Events: 0 alloc, 1 call, 2 store, 3 return, 4 call, 5..=8 loads, 9 return, 10 free, 11 exit.
fn uninit_trace(dir: &Path, track_host_init: bool) -> PathBuf {
    let path = dir.join(format!("uninit-{track_host_init}.ffr"));
    let mut w = TraceWriter::create(&path, header(track_host_init)).unwrap();
    modules(&mut w);
    w.push(Event::Alloc {
        tid: TID,
        func: AllocFn::Malloc,
        ptr: BUF,
        size: 64,
        old_ptr: 0,
        caller: HOST + 0x1020,
        domain: Domain::Host,
        zeroed: false,
    })
    .unwrap();
    w.push(call(0, 0, [BUF, 16, 0, 0, 0, 0])).unwrap();
    w.push(access(LIB + 0x1010, STORE16, BUF, 0, vec![])).unwrap();
    w.push(Event::Return { tid: TID, call: 0, rax: 0, rdx: 0 }).unwrap();
    w.push(call(1, 1, [BUF, 32, 0, 0, 0, 0])).unwrap();
    for k in 0..4u64 {
        let value = if k < 2 { 0x0101_0101_0101_0101u64 } else { 0 };
        w.push(access(LIB + 0x1110, LOAD, BUF + 8 * k, 0, value.to_le_bytes().to_vec())).unwrap();
    }
    w.push(Event::Return { tid: TID, call: 1, rax: 16, rdx: 0 }).unwrap();
    w.push(Event::Free { tid: TID, ptr: BUF, caller: HOST + 0x1060, domain: Domain::Host }).unwrap();
    w.push(Event::Exit { pid: 1, status: ExitStatus::Code(0) }).unwrap();
    w.finish(Summary::default()).unwrap();
    path
}

fn ffirec(args: &[&str], trace: &Path) -> (i32, String, String) {
    let out = common::run(common::ffirec().args(args).arg(trace), common::TIMEOUT);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn analyze(trace: &Path) -> Value {
    let (_, stdout, stderr) = ffirec(&["analyze", "--format", "json", "--no-dwarf"], trace);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("analyze JSON: {e}\n{stderr}"))
}

/// The state marks of `--at` hex rows, concatenated (one char per byte).
fn marks(view: &str) -> String {
    view.lines().filter(|l| l.starts_with("0x")).filter_map(|l| l.split_whitespace().last()).collect()
}

#[test]
fn show_at_agrees_with_analyze_uninit_finding() {
    let dir = common::scratch("show_at_agrees_uninit");
    let trace = uninit_trace(&dir, true);
    let report = analyze(&trace);
    let f: Vec<&Value> = report["findings"].as_array().unwrap().iter().filter(|f| f["kind"] == "uninit").collect();
    assert_eq!(f.len(), 1, "{:#}", report["findings"]);
    let (first, id, dist, size) = (
        f[0]["first_event"].as_u64().unwrap(),
        f[0]["allocation"]["id"].as_u64().unwrap(),
        f[0]["allocation"]["distance"].as_u64().unwrap(),
        f[0]["size"].as_u64().unwrap(),
    );
    assert_eq!((first, id, dist, size), (7, 0, 16, 16));

    // The finding's bytes, just before the read that found them: uninitialised.
    let spec = format!("alloc{id}+{dist}:{size}");
    let (code, view, err) = ffirec(&["show", "--at", &(first - 1).to_string(), "--memory", &spec], &trace);
    assert_eq!(code, 0, "{err}");
    assert_eq!(marks(&view), "U".repeat(size as usize), "{view}");
    assert!(
        view.contains("  +0..+16  uninitialised  alloc#0[16,32)  no recorded write since birth (event 0)"),
        "{view}"
    );

    // The whole block: [0,16) written by event 2 (fill's store), the rest never written.
    let (_, view, _) = ffirec(&["show", "--at", "6", "--memory", "alloc0+0:64"], &trace);
    assert_eq!(marks(&view), format!("{}{}", "I".repeat(16), "U".repeat(48)), "{view}");
    let runs: Vec<&str> = view.lines().filter(|l| l.starts_with("  +")).collect();
    assert_eq!(
        runs,
        vec![
            "  +0..+16  initialised  alloc#0[0,16)  last written by event 2 at fill+0x10 (libsyn.so)",
            "  +16..+64  uninitialised  alloc#0[16,64)  no recorded write since birth (event 0)",
        ]
    );
    // Values: the loads of events 5 and 6 saw 01 bytes in [0,16); nothing was read beyond [0,16) yet.
    let first_row = view.lines().find(|l| l.starts_with("0x")).unwrap();
    assert!(first_row.contains(&"01 ".repeat(16)), "{first_row}");
    assert!(view.contains("# alloc#0 (malloc 64 at main+0x20) [0x555560000010,0x555560000050), host, born at event 0: exposed: argument 0 of #0 fill(); argument 0 of #1 sum()"), "{view}");

    // After the free: every byte is freed.
    let (_, view, _) = ffirec(&["show", "--at", "10", "--memory", &format!("{BUF:#x}:8")], &trace);
    assert_eq!(marks(&view), "F".repeat(8), "{view}");
    // Before the allocation existed, allocN is an error naming the point.
    let (code, _, err) = ffirec(&["show", "--at", "0", "--memory", "alloc1+0:8"], &trace);
    assert_eq!(
        (code, err.trim_end()),
        (
            2,
            format!("ffirec: error: {}: alloc#1 was not born by event 0 (1 allocations by then)", trace.display())
                .as_str()
        )
    );
}

#[test]
fn show_at_untracked_host_bytes_are_unknown_like_analyze() {
    let dir = common::scratch("show_at_unknown");
    let trace = uninit_trace(&dir, false);
    let report = analyze(&trace);
    assert_eq!(report["summary"]["findings"], 0);
    // sum read [0,32): [0,16) fill wrote, [16,32) unknown.
    assert_eq!(report["summary"]["unknown_bytes"], 16);
    // The host may have written them before the calls (untracked): unknown,
    // except [0,16) that fill() was seen writing.
    let (_, view, _) = ffirec(&["show", "--at", "6", "--memory", "alloc0+0:64"], &trace);
    assert_eq!(marks(&view), format!("{}{}", "I".repeat(16), "?".repeat(48)), "{view}");
}

#[test]
fn show_call_lists_events_args_return_and_footprint() {
    let dir = common::scratch("show_call_synthetic");
    let trace = uninit_trace(&dir, true);
    let (code, text, err) = ffirec(&["show", "--call", "1", "--no-dwarf"], &trace);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "# call #1 sum(0x555560000010, 0x20, 0x0, 0x0, 0x0, 0x0) called from main+0x41 (host), thread 100, entered at event 4");
    let headers: Vec<&str> =
        lines.iter().copied().filter(|l| l.starts_with("       ") && !l.starts_with("        ")).collect();
    assert_eq!(headers.len(), 6, "{text}");
    assert!(text.contains("       7  tid 100  #1 sum() called from main+0x41 (host)\n          at sum+0x10 (libsyn.so): mov rax, [rdi]\n          read 8 bytes at 0x555560000020 alloc#0+16 (malloc 64 at main+0x20) = 00 00 00 00 00 00 00 00\n          regs changed: rdi 0x555560000018->0x555560000020\n"), "{text}");
    let tail: Vec<&str> = lines.iter().copied().skip_while(|l| !l.starts_with("# footprint")).collect();
    assert_eq!(
        tail,
        vec![
            "# footprint of call #1:",
            "  arg 0 = 0x555560000010 -> alloc#0 (malloc 64 at main+0x20)+0: read [0,32) (32 bytes), wrote nothing"
        ]
    );
    assert!(text.contains("\n# returned rax=0x10 rdx=0x0 at event 9\n# footprint"), "{text}");
    // --count limits the listing, not the footprint.
    let (_, text, _) = ffirec(&["show", "--call", "1", "--count", "2", "--no-dwarf"], &trace);
    let headers: Vec<&str> = text.lines().filter(|l| !l.starts_with("          ")).collect();
    assert_eq!(
        headers,
        vec![
            "# call #1 sum(0x555560000010, 0x20, 0x0, 0x0, 0x0, 0x0) called from main+0x41 (host), thread 100, entered at event 4",
            "       4  tid 100  #1 sum() called from main+0x41 (host)",
            "       5  tid 100  #1 sum() called from main+0x41 (host)",
            "# (first 2 events of the call's thread shown; --count to change)",
            "# returned rax=0x10 rdx=0x0 at event 9",
            "# footprint of call #1:",
            "  arg 0 = 0x555560000010 -> alloc#0 (malloc 64 at main+0x20)+0: read [0,32) (32 bytes), wrote nothing",
        ]
    );
    // The same numbers as analyze's footprint for that call.
    let report = analyze(&trace);
    assert_eq!(report["calls"][1]["touched"][0]["read"], serde_json::json!([[0, 32]]));
}

#[test]
fn show_errors_are_one_line_exit_2() {
    let dir = common::scratch("show_errors");
    let trace = uninit_trace(&dir, true);
    let cases: [(&[&str], String); 4] = [
        (&["show", "--from", "12"], "no event 12: the trace has 12 events".into()),
        (&["show", "--call", "7"], "no foreign call #7 in the trace (2 calls recorded)".into()),
        (&["show", "--crash"], "the trace records no crash (no fault signal and no fatal signal)".into()),
        (&["show", "--at", "99", "--memory", "alloc0"], "no event 99: the trace has 12 events".into()),
    ];
    for (args, msg) in cases {
        let (code, out, err) = ffirec(args, &trace);
        assert_eq!((code, out.as_str()), (2, ""), "{args:?}");
        assert_eq!(err, format!("ffirec: error: {}: {msg}\n", trace.display()), "{args:?}");
    }
    let (code, _, err) = ffirec(&["show", "--at", "3", "--memory", "allocx+1"], &trace);
    assert_eq!(code, 2);
    assert!(err.contains("bad allocation number in `allocx+1`"), "{err}");
    let (code, _, err) = ffirec(&["show", "--memory", "0x10:4"], &trace);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn show_colour_only_when_asked_or_on_a_terminal() {
    let dir = common::scratch("show_colour");
    let trace = uninit_trace(&dir, true);
    let (_, piped, _) = ffirec(&["show", "--count", "3"], &trace);
    assert!(!piped.contains('\x1b'), "{piped}");
    let (_, always, _) = ffirec(&["show", "--count", "3", "--color", "always"], &trace);
    assert!(always.contains("\x1b[1;33m       0\x1b[0m"), "{always}");
    let strip = |s: &str| {
        let mut o = String::new();
        let mut esc = false;
        for c in s.chars() {
            match (esc, c) {
                (false, '\x1b') => esc = true,
                (true, 'm') => esc = false,
                (true, _) => {}
                (false, c) => o.push(c),
            }
        }
        o
    };
    assert_eq!(strip(&always), piped);
}

/// `calls` calls of `per_call` loads each, in chunks of `chunk` events;
/// one host buffer allocated at event 0.
fn long_trace(path: &Path, calls: u64, per_call: u64, chunk: usize) {
    let opts = WriterOptions { events_per_chunk: chunk, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(path, header(true), opts).unwrap();
    modules(&mut w);
    w.push(Event::Alloc {
        tid: TID,
        func: AllocFn::Malloc,
        ptr: BUF,
        size: 1 << 20,
        old_ptr: 0,
        caller: HOST + 0x1020,
        domain: Domain::Host,
        zeroed: true,
    })
    .unwrap();
    for c in 0..calls {
        w.push(call(c, 1, [BUF, per_call, 0, 0, 0, 0])).unwrap();
        for k in 0..per_call {
            w.push(access(LIB + 0x1110, LOAD, BUF + 8 * (k % 1000), k, vec![0; 8])).unwrap();
        }
        w.push(Event::Return { tid: TID, call: c, rax: 0, rdx: 0 }).unwrap();
    }
    w.finish(Summary::default()).unwrap();
}

#[test]
fn show_from_jumps_by_chunk_index_with_call_context() {
    let dir = common::scratch("show_jump");
    let trace = dir.join("long.ffr");
    // 200 calls x 1000 loads = 200 401 events in chunks of 1000.
    long_trace(&trace, 200, 1000, 1000);
    let t = Trace::open(&trace).unwrap();
    assert_eq!((t.event_count(), t.chunks().len()), (200_401, 201));
    // Call c is event 1 + 1002c, its loads follow: event 150 500 is load k = 198 of call 150.
    let (code, text, err) = ffirec(&["show", "--from", "150500", "--count", "2", "--no-dwarf"], &trace);
    assert_eq!(code, 0, "{err}");
    let expected = "\
# replayed from event 150000: allocations born before it are not known; others are named alloc@BIRTH_EVENT
  150500  tid 100  #150 sum() called from main+0xd6 (host)
          at sum+0x10 (libsyn.so): mov rax, [rdi]
          read 8 bytes at 0x555560000640 no allocation born in the replayed part = 00 00 00 00 00 00 00 00
          regs changed: rax 0xc5->0xc6 rdi 0x555560000638->0x555560000640
  150501  tid 100  #150 sum() called from main+0xd6 (host)
          at sum+0x10 (libsyn.so): mov rax, [rdi]
          read 8 bytes at 0x555560000648 no allocation born in the replayed part = 00 00 00 00 00 00 00 00
          regs changed: rax 0xc6->0xc7 rdi 0x555560000640->0x555560000648
";
    assert_eq!(text, expected);
    // --full-replay: the same events, with the allocation known.
    let (_, text, _) = ffirec(&["show", "--from", "150500", "--count", "1", "--no-dwarf", "--full-replay"], &trace);
    assert!(text.starts_with("  150500  tid 100  #150 sum() called from main+0xd6 (host)\n"), "{text}");
    assert!(text.contains("read 8 bytes at 0x555560000640 alloc#0+1584 (malloc 1048576 at main+0x20)"), "{text}");
    // Near the start the replay begins at event 0: analyze's ordinals.
    let (_, text, _) = ffirec(&["show", "--from", "1005", "--count", "1", "--no-dwarf"], &trace);
    assert!(text.starts_with("    1005  tid 100  #1 sum() called from main+0x41 (host)\n"), "{text}");
    assert!(text.contains("read 8 bytes at 0x555560000018 alloc#0+8 (malloc 1048576 at main+0x20)"), "{text}");
}

#[test]
fn show_from_inside_a_call_longer_than_the_scan_says_so() {
    let dir = common::scratch("show_jump_long_call");
    let trace = dir.join("onecall.ffr");
    // One call of 100 000 loads in chunks of 1000: its Call is 99 chunks back.
    long_trace(&trace, 1, 100_000, 1000);
    let (code, text, err) = ffirec(&["show", "--from", "99000", "--count", "1", "--no-dwarf"], &trace);
    assert_eq!(code, 0, "{err}");
    assert!(text.contains("   99000  tid 100  in a call entered before event 92000 (not scanned)\n"), "{text}");
    let (_, text, _) = ffirec(&["show", "--from", "99000", "--count", "1", "--no-dwarf", "--full-replay"], &trace);
    assert!(text.starts_with("   99000  tid 100  #0 sum() called from main+0x40 (host)\n"), "{text}");
}

#[test]
fn show_crash_lists_the_crashing_threads_last_events() {
    let dir = common::scratch("show_crash_synthetic");
    let path = dir.join("crash.ffr");
    let mut w = TraceWriter::create(&path, header(true)).unwrap();
    modules(&mut w);
    let alloc = |tid, ptr| Event::Alloc {
        tid,
        func: AllocFn::Malloc,
        ptr,
        size: 64,
        old_ptr: 0,
        caller: HOST + 0x1020,
        domain: Domain::Host,
        zeroed: true,
    };
    w.push(alloc(TID, BUF)).unwrap(); // 0
    w.push(call(0, 1, [BUF, 0, 0, 0, 0, 0])).unwrap(); // 1
    w.push(access(LIB + 0x1110, LOAD, BUF, 0, vec![0; 8])).unwrap(); // 2
    w.push(alloc(200, BUF + 0x100)).unwrap(); // 3: another thread
    w.push(access(LIB + 0x1110, LOAD, BUF + 8, 0, vec![0; 8])).unwrap(); // 4
    w.push(access(LIB + 0x1110, LOAD, BUF + 16, 0, vec![0; 8])).unwrap(); // 5
    let mut regs = Regs { rip: LIB + 0x1110, rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RSP] = 0x7ffc_0000_0ff0;
    w.push(Event::Signal { tid: TID, signo: 11, code: 1, addr: 0, regs, code_bytes: LOAD.to_vec(), fatal: true })
        .unwrap(); // 6
    w.push(Event::Exit { pid: 1, status: ExitStatus::Signal(11) }).unwrap(); // 7
    w.finish(Summary::default()).unwrap();

    let (code, text, err) = ffirec(&["show", "--crash", "--count", "2", "--no-dwarf"], &path);
    assert_eq!(code, 0, "{err}");
    let expected = "\
# crash at event 6 in thread 100; the thread's events before it:
       4  tid 100  #0 sum() called from main+0x40 (host)
          at sum+0x10 (libsyn.so): mov rax, [rdi]
          read 8 bytes at 0x555560000018 alloc#0+8 (malloc 64 at main+0x20) = 00 00 00 00 00 00 00 00
          regs changed: rdi 0x555560000010->0x555560000018
       5  tid 100  #0 sum() called from main+0x40 (host)
          at sum+0x10 (libsyn.so): mov rax, [rdi]
          read 8 bytes at 0x555560000020 alloc#0+16 (malloc 64 at main+0x20) = 00 00 00 00 00 00 00 00
          regs changed: rdi 0x555560000018->0x555560000020
       6  tid 100  #0 sum() called from main+0x40 (host)
          signal 11 (SIGSEGV) code 1, fault address 0x0 no allocation, fatal
          at sum+0x10 (libsyn.so): mov rax, [rdi]
          regs changed: rdi 0x555560000020->0x0
";
    assert_eq!(text, expected);
    // --tid lists one thread only, from the event asked for.
    let (_, text, _) = ffirec(&["show", "--from", "1", "--tid", "200", "--no-dwarf"], &path);
    assert_eq!(text, "       3  tid 200  host\n          malloc(64) = 0x555560000110 -> alloc#1, host at main+0x20 (host), zero-filled\n");
}

#[test]
fn show_context_through_a_callback_after_a_jump() {
    let dir = common::scratch("show_callback");
    let path = dir.join("callback.ffr");
    // One event per chunk, so the jump's replay cannot start at event 0.
    let opts = WriterOptions { events_per_chunk: 1, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(&path, header(true), opts).unwrap();
    modules(&mut w);
    for i in 0..20u64 {
        let ptr = 0x5555_7000_0000 + 0x100 * i;
        w.push(Event::Alloc {
            tid: 300,
            func: AllocFn::Malloc,
            ptr,
            size: 16,
            old_ptr: 0,
            caller: HOST + 0x1020,
            domain: Domain::Host,
            zeroed: false,
        })
        .unwrap();
    }
    w.push(call(0, 0, [0; 6])).unwrap(); // 20
    w.push(Event::Callback {
        tid: TID,
        call: 0,
        target: HOST + 0x1100,
        args: [16, 0, 0, 0, 0, 0],
        rsp: 0x7ffc_0000_0f00,
        return_addr: LIB + 0x1020,
    })
    .unwrap(); // 21
    w.push(Event::Alloc {
        tid: TID,
        func: AllocFn::Malloc,
        ptr: BUF,
        size: 16,
        old_ptr: 0,
        caller: HOST + 0x1110,
        domain: Domain::Host,
        zeroed: false,
    })
    .unwrap(); // 22
    w.push(Event::CallbackReturn { tid: TID, call: 0, rax: BUF }).unwrap(); // 23
    w.push(access(LIB + 0x1030, STORE16, BUF, 0, vec![])).unwrap(); // 24
    w.push(Event::Return { tid: TID, call: 0, rax: 0, rdx: 0 }).unwrap(); // 25
    w.finish(Summary::default()).unwrap();

    let (code, text, err) = ffirec(&["show", "--from", "22", "--count", "3", "--no-dwarf"], &path);
    assert_eq!(code, 0, "{err}");
    let headers: Vec<&str> = text.lines().filter(|l| !l.starts_with("          ")).collect();
    assert_eq!(
        headers,
        vec![
            "# replayed from event 20: allocations born before it are not known; others are named alloc@BIRTH_EVENT",
            "      22  tid 100  #0 fill() called from main+0x40 (host)",
            "      23  tid 100  #0 fill() called from main+0x40 (host)",
            "      24  tid 100  #0 fill() called from main+0x40 (host)",
        ]
    );
    assert!(
        text.contains("          write 16 bytes at 0x555560000010 alloc@22+0 (malloc 16 at main+0x110)\n"),
        "{text}"
    );
}

#[test]
fn show_rejects_a_file_that_is_not_a_trace() {
    let dir = common::scratch("show_not_a_trace");
    let path = dir.join("junk.ffr");
    std::fs::write(&path, b"hello, not a trace").unwrap();
    let (code, out, err) = ffirec(&["show", "--from", "0"], &path);
    assert_eq!((code, out.as_str(), err.lines().count()), (2, "", 1), "{err}");
    assert!(err.starts_with(&format!("ffirec: error: {}: ", path.display())), "{err}");
}

#[test]
fn show_symbolises_rip_relative_operands() {
    // `mov rax, [rip+0x1000]` (48 8b 05 00 10 00 00, GNU as) at libsyn+0x1110
    // reads libsyn+0x2117: 0x17 bytes into the data symbol `table`.
    let dir = common::scratch("show_rip_relative");
    let path = dir.join("rip.ffr");
    let mut w = TraceWriter::create(&path, header(true)).unwrap();
    w.add_module(Module {
        pid: 1,
        path: "/nonexistent/libsyn.so".into(),
        build_id: vec![],
        base: LIB,
        segments: vec![Segment { start: LIB, len: 0x3000, prot: 5, file_offset: 0 }],
        domain: Domain::Foreign,
        symbols: vec![
            Symbol { name: "sum".into(), addr: 0x1100, size: 0x100 },
            Symbol { name: "table".into(), addr: 0x2100, size: 0x40 },
        ],
    })
    .unwrap();
    w.push(access(LIB + 0x1110, &[0x48, 0x8b, 0x05, 0x00, 0x10, 0x00, 0x00], 0, 0, vec![7; 8])).unwrap();
    w.finish(Summary::default()).unwrap();
    let (code, text, err) = ffirec(&["show", "--no-dwarf"], &path);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[1], "          at sum+0x10 (libsyn.so): mov rax, [table+0x17]");
    assert_eq!(lines[2], "          read 8 bytes at 0x7f0000002117 table+0x17 (libsyn.so) = 07 07 07 07 07 07 07 07");
}

#[test]
fn show_at_module_data_is_named_by_symbol() {
    // Host module memory (inside `main`, no allocation) is named by symbol.
    let dir = common::scratch("show_at_module");
    let trace = uninit_trace(&dir, true);
    let (code, view, err) = ffirec(&["show", "--at", "3", "--memory", &format!("{:#x}:4", HOST + 0x1010)], &trace);
    assert_eq!(code, 0, "{err}");
    assert_eq!(marks(&view), "....", "{view}");
    assert!(view.contains("  +0..+4  outside  main+0x10 (host+0x1010)  no recorded write\n"), "{view}");
}

#[test]
fn show_reads_a_truncated_trace_and_warns() {
    let dir = common::scratch("show_truncated");
    let trace = uninit_trace(&dir, true);
    // Cut into the trailer: the reader recovers the chunks by scanning.
    let bytes = std::fs::read(&trace).unwrap();
    let cut = dir.join("cut.ffr");
    std::fs::write(&cut, &bytes[..bytes.len() - 10]).unwrap();
    let (code, text, err) = ffirec(&["show", "--from", "10", "--no-dwarf"], &cut);
    assert_eq!(code, 0, "{err}");
    assert_eq!(text.lines().next(), Some("      10  tid 100  host"));
    assert_eq!(err, format!("ffirec: warning: {} is truncated; showing the 12 events recovered\n", cut.display()));
}

#[test]
fn show_two_operand_instruction_lists_both_accesses_and_feeds_at() {
    // `movsq` (48 a5, GNU as): writes 8 bytes at [rdi], reads 8 at [rsi]
    // (operand order); the recorded data belongs to the read.
    let dir = common::scratch("show_movs");
    let path = dir.join("movs.ffr");
    let mut w = TraceWriter::create(&path, header(true)).unwrap();
    modules(&mut w);
    w.push(Event::Alloc {
        tid: TID,
        func: AllocFn::Calloc,
        ptr: BUF,
        size: 64,
        old_ptr: 0,
        caller: HOST + 0x1020,
        domain: Domain::Host,
        zeroed: true,
    })
    .unwrap();
    w.push(call(0, 1, [BUF, 0, 0, 0, 0, 0])).unwrap();
    let mut regs = Regs { rip: LIB + 0x1120, rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RSI] = BUF;
    regs.gpr[Regs::RDI] = BUF + 32;
    regs.gpr[Regs::RSP] = 0x7ffc_0000_0ff0;
    w.push(Event::Access { tid: TID, code: vec![0x48, 0xa5], regs, fault_addr: BUF, data: vec![0; 8], vregs: vec![] })
        .unwrap();
    w.push(Event::Return { tid: TID, call: 0, rax: 0, rdx: 0 }).unwrap();
    w.finish(Summary::default()).unwrap();

    let (code, text, err) = ffirec(&["show", "--from", "2", "--count", "1", "--no-dwarf"], &path);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1..4],
        [
            "          at sum+0x20 (libsyn.so): movsq [rdi], [rsi]",
            "          write 8 bytes at 0x555560000030 alloc#0+32 (calloc 64 at main+0x20)",
            "          read 8 bytes at 0x555560000010 alloc#0+0 (calloc 64 at main+0x20) = 00 00 00 00 00 00 00 00",
        ]
    );
    // The replay saw the write: [32,40) last written by event 2; the read value of [0,8) is known.
    let (_, view, _) = ffirec(&["show", "--at", "2", "--memory", "alloc0+0:48", "--no-dwarf"], &path);
    let runs: Vec<&str> = view.lines().filter(|l| l.starts_with("  +")).collect();
    assert_eq!(
        runs,
        vec![
            "  +0..+32  initialised  alloc#0[0,32)  zero-filled at birth (event 0)",
            "  +32..+40  initialised  alloc#0[32,40)  last written by event 2 at sum+0x20 (libsyn.so)",
            "  +40..+48  initialised  alloc#0[40,48)  zero-filled at birth (event 0)",
        ]
    );
    let rows: Vec<&str> = view.lines().filter(|l| l.starts_with("0x")).collect();
    assert!(rows[0].contains("+0     00 00 00 00 00 00 00 00 -- -- -- -- -- -- -- --  IIIIIIIIIIIIIIII"), "{view}");
}

#[test]
fn show_store_values_come_from_the_registers() {
    // `mov [rdi], rax` (48 89 07, GNU as) with rax = 0x1122334455667788.
    let dir = common::scratch("show_store_value");
    let path = dir.join("store.ffr");
    let mut w = TraceWriter::create(&path, header(true)).unwrap();
    modules(&mut w);
    w.push(Event::Alloc {
        tid: TID,
        func: AllocFn::Malloc,
        ptr: BUF,
        size: 16,
        old_ptr: 0,
        caller: HOST + 0x1020,
        domain: Domain::Host,
        zeroed: false,
    })
    .unwrap();
    w.push(call(0, 0, [BUF, 0, 0, 0, 0, 0])).unwrap();
    w.push(access(LIB + 0x1030, &[0x48, 0x89, 0x07], BUF + 4, 0x1122_3344_5566_7788, vec![])).unwrap();
    w.push(Event::Return { tid: TID, call: 0, rax: 0, rdx: 0 }).unwrap();
    w.finish(Summary::default()).unwrap();
    let (_, text, _) = ffirec(&["show", "--from", "2", "--count", "1", "--no-dwarf"], &path);
    assert!(
        text.contains(
            "          write 8 bytes at 0x555560000014 alloc#0+4 (malloc 16 at main+0x20) := 88 77 66 55 44 33 22 11\n"
        ),
        "{text}"
    );
    let (_, view, _) = ffirec(&["show", "--at", "3", "--memory", "alloc0", "--no-dwarf"], &path);
    let row = view.lines().find(|l| l.starts_with("0x")).unwrap();
    assert!(row.ends_with("+0     -- -- -- -- 88 77 66 55 44 33 22 11 -- -- -- --  UUUUIIIIIIIIUUUU"), "{view}");
}
