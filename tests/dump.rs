//! `ffirec dump`: traces written with the format crate, printed by the binary.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;

use ffirec_format::*;
use serde_json::Value;

fn header() -> Header {
    Header {
        recorder_version: "0.1.0".into(),
        uuid: [1; 16],
        command: vec!["./prog".into(), "-x".into()],
        start_time_ns: 1,
        page_size: 4096,
        policy: Policy { foreign: vec!["libz.so.1".into()], ..Policy::default() },
    }
}

/// One event of every kind, in `EVENT_KINDS` order.
fn all_kinds() -> Vec<Event> {
    let mut regs = Regs { rip: 0x7f00_0000_1130, rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RSI] = 0x5555_0000_02a0;
    vec![
        Event::Access {
            tid: 11,
            code: vec![0x48, 0x8b, 0x06],
            regs,
            fault_addr: 0x5555_0000_02a0,
            data: vec![0x2a, 0, 0, 0, 0, 0, 0, 0],
            vregs: vec![],
        },
        Event::Call {
            tid: 11,
            call: 0,
            target: 0x7f00_0000_1000,
            module: 1,
            symbol: Some(4),
            args: [0x5555_0000_02a0, 8, 0, 0, 0, 0],
            rsp: 0x7ffc_0000_0ff8,
            return_addr: 0x5555_0000_1234,
        },
        Event::Return { tid: 11, call: 0, rax: 0, rdx: 0 },
        Event::Callback {
            tid: 11,
            call: 0,
            target: 0x5555_0000_1500,
            args: [0; 6],
            rsp: 0x7ffc_0000_0f00,
            return_addr: 1,
        },
        Event::CallbackReturn { tid: 11, call: 0, rax: 7 },
        Event::Alloc {
            tid: 11,
            func: AllocFn::Calloc,
            ptr: 0x5555_0001_0000,
            size: 64,
            old_ptr: 0,
            caller: 0x7f00_0000_1200,
            domain: Domain::Foreign,
            zeroed: true,
        },
        Event::Free { tid: 11, ptr: 0x5555_0001_0000, caller: 0x5555_0000_1300, domain: Domain::Host },
        Event::Map { tid: 11, addr: 0x7f10_0000_0000, len: 8192, prot: 3, flags: 0x22, domain: Domain::Host },
        Event::Unmap { tid: 11, addr: 0x7f10_0000_0000, len: 8192 },
        Event::Protect { tid: 11, addr: 0x7f10_0000_0000, len: 4096, prot: 1 },
        Event::SyscallAccess {
            tid: 11,
            nr: 0,
            args: [3, 0x5555_0000_4000, 16, 0, 0, 0],
            ret: 16,
            ranges: vec![SyscallRange { addr: 0x5555_0000_4000, len: 16, write: true }],
        },
        Event::Signal { tid: 11, signo: 11, code: 1, addr: 0, regs, code_bytes: vec![0x0f, 0x0b], fatal: true },
        Event::Gap { tid: 12, reason: GapReason::Blocked, detail: 202 },
        Event::ThreadStart { tid: 12, pid: 10, parent: 11 },
        Event::ThreadExit { tid: 12, code: 0 },
        Event::Fork { tid: 11, parent_pid: 10, child_pid: 20 },
        Event::Exec { tid: 20, pid: 20, path: "/bin/true".into() },
        Event::Exit { pid: 10, status: ExitStatus::Signal(11) },
        Event::HostWrite { tid: 11, addr: 0x5555_0000_5000, len: 8 },
        Event::InitUnknown { addr: 0x5555_0000_6000, len: 4096 },
    ]
}

fn write_trace(path: &Path, events: &[Event], per_chunk: usize) {
    let opts = WriterOptions { events_per_chunk: per_chunk, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(path, header(), opts).unwrap();
    w.add_module(Module {
        pid: 10,
        path: "/usr/lib/libz.so.1".into(),
        build_id: vec![0xab],
        base: 0x7f00_0000_0000,
        segments: vec![],
        domain: Domain::Foreign,
        symbols: vec![],
    })
    .unwrap();
    for e in events {
        w.push(e.clone()).unwrap();
    }
    w.finish(Summary { exit: Some(ExitStatus::Code(0)), counters: vec![] }).unwrap();
}

fn dump(trace: &Path, args: &[&str]) -> Output {
    common::run(common::ffirec().arg("dump").arg(trace).args(args), common::TIMEOUT)
}

fn stdout_lines(o: &Output) -> Vec<String> {
    String::from_utf8(o.stdout.clone()).unwrap().lines().map(String::from).collect()
}

fn one_line_error(o: &Output) -> String {
    let err = String::from_utf8(o.stderr.clone()).unwrap();
    assert_eq!(err.lines().count(), 1, "stderr should be one line: {err:?}");
    assert!(err.starts_with("ffirec: error: "), "{err:?}");
    assert!(!err.contains("panicked"), "{err:?}");
    err
}

fn trace_path(test: &str) -> PathBuf {
    common::scratch(test).join("t.ffr")
}

#[test]
fn dump_jsonl_prints_every_event_with_kind_seq_and_hex_addresses() {
    let path = trace_path("dump_jsonl");
    let events = all_kinds();
    write_trace(&path, &events, 6);
    let o = dump(&path, &["--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(o.stderr.is_empty());
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), events.len());
    let objs: Vec<Value> = lines.iter().map(|l| serde_json::from_str(l).unwrap()).collect();
    for (i, (v, e)) in objs.iter().zip(&events).enumerate() {
        assert_eq!(v["seq"], i as u64);
        assert_eq!(v["kind"], e.kind());
    }
    let kinds: Vec<&str> = objs.iter().map(|v| v["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds, EVENT_KINDS);
    let a = &objs[0];
    assert_eq!(a["tid"], 11);
    assert_eq!(a["ip"], "0x7f0000001130");
    assert_eq!(a["code"], "488b06");
    assert_eq!(a["fault_addr"], "0x5555000002a0");
    assert_eq!(a["data"], "2a00000000000000");
    assert_eq!(a["regs"]["rsi"], "0x5555000002a0");
    assert_eq!(a["regs"]["rflags"], "0x246");
    assert_eq!(objs[1]["target"], "0x7f0000001000");
    assert_eq!(objs[1]["symbol"], 4);
    assert_eq!(objs[1]["args"][0], "0x5555000002a0");
    assert_eq!(objs[5]["func"], "calloc");
    assert_eq!(objs[5]["domain"], "foreign");
    assert_eq!(objs[5]["size"], 64);
    assert_eq!(objs[10]["ranges"][0]["addr"], "0x555500004000");
    assert_eq!(objs[10]["ranges"][0]["write"], true);
    assert_eq!(objs[12]["reason"], "blocked");
    assert_eq!(objs[17]["status"]["signal"], 11);
    assert_eq!(objs[19]["addr"], "0x555500006000");
    assert_eq!(objs[19]["len"], 4096);
}

#[test]
fn dump_text_is_one_compact_line_per_event_after_a_commented_preamble() {
    let path = trace_path("dump_text");
    let events = all_kinds();
    write_trace(&path, &events, 100);
    let o = dump(&path, &[]);
    assert_eq!(o.status.code(), Some(0));
    let lines = stdout_lines(&o);
    assert_eq!(lines[0], "# ffirec trace, format v2, recorder 0.1.0, page size 4096: ./prog -x");
    assert_eq!(lines[1], "# module 0: pid 10 0x7f0000000000 foreign /usr/lib/libz.so.1 (0 symbols)");
    let body = &lines[2..];
    assert_eq!(body.len(), events.len());
    assert_eq!(
        body[0],
        "       0 access          tid=11 ip=0x7f0000001130 code=488b06 fault_addr=0x5555000002a0 data=2a00000000000000"
    );
    assert_eq!(body[8], "       8 unmap           tid=11 addr=0x7f1000000000 len=8192");
    assert_eq!(body[17], "      17 exit            pid=10 status={signal=11}");
}

#[test]
fn dump_truncated_trace_prints_the_complete_chunks_then_exits_4() {
    let path = trace_path("dump_truncated");
    let events = all_kinds();
    write_trace(&path, &events, 4);
    let t = Trace::open(&path).unwrap();
    assert_eq!(t.chunks().len(), 5);
    // Cut in the middle of chunk 3: chunks 0..3 (12 events) survive.
    let cut = t.chunks()[3].offset as usize + 50;
    drop(t);
    let bytes = std::fs::read(&path).unwrap();
    std::fs::write(&path, &bytes[..cut]).unwrap();
    let o = dump(&path, &["--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(4));
    let lines = stdout_lines(&o);
    assert_eq!(lines.len(), 12);
    let last: Value = serde_json::from_str(&lines[11]).unwrap();
    assert_eq!(last["seq"], 11);
    assert_eq!(last["kind"], "signal");
    let err = one_line_error(&o);
    assert!(
        err.ends_with("trace truncated (no valid footer): printed the 12 events of its 3 complete chunks\n"),
        "{err}"
    );
}

#[test]
fn dump_corrupt_chunk_prints_what_precedes_it_then_exits_2() {
    let path = trace_path("dump_corrupt");
    let events = all_kinds();
    write_trace(&path, &events, 4);
    let t = Trace::open(&path).unwrap();
    let c = t.chunks()[1];
    drop(t);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[c.offset as usize + 40 + c.compressed_len as usize / 2] ^= 0x10;
    std::fs::write(&path, &bytes).unwrap();
    let o = dump(&path, &["--format", "jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(stdout_lines(&o).len(), 4);
    let err = one_line_error(&o);
    assert!(err.contains("corrupt trace: chunk 1: payload checksum mismatch"), "{err}");
}

#[test]
fn dump_non_trace_exits_2_with_one_line() {
    let dir = common::scratch("dump_non_trace");
    let path = dir.join("notes.txt");
    std::fs::write(&path, "this is not a trace\n").unwrap();
    let o = dump(&path, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    assert!(one_line_error(&o).contains("not an ffirec trace"));
    // A newer format version is named as such.
    let trace = dir.join("v3.ffr");
    write_trace(&trace, &all_kinds()[..2], 10);
    let mut bytes = std::fs::read(&trace).unwrap();
    bytes[8] = 3;
    std::fs::write(&trace, &bytes).unwrap();
    let o = dump(&trace, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line_error(&o).contains("trace format version 3 is not supported"));
}

#[test]
fn dump_missing_file_exits_2_with_one_line() {
    let path = common::scratch("dump_missing").join("nope.ffr");
    let o = dump(&path, &[]);
    assert_eq!(o.status.code(), Some(2));
    assert!(one_line_error(&o).contains("No such file"));
}

#[test]
fn dump_unknown_flag_is_a_usage_error() {
    let path = trace_path("dump_flag");
    let o = dump(&path, &["--frobnicate"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("unexpected argument '--frobnicate'"));
    let o = dump(&path, &["--format", "xml"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid value 'xml'"));
}
