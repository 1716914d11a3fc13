//! `ffirec analyze` on a trace of two processes (a parent and its forked
//! child, written with `TraceWriter`): both use the same addresses, and each
//! process's accesses are judged against its own allocations only.
//! Instruction bytes are GNU as output:
//!   48 8b 07      mov rax, [rdi]
//!   f3 0f 7f 07   movdqu [rdi], xmm0
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::path::{Path, PathBuf};

use ffirec_format::*;
use serde_json::Value;

use common::synth::{HOST, LIB};
const BUF: u64 = 0x5555_6000_0010;
const PARENT: u32 = 100;
const CHILD: u32 = 200;
const LOAD: &[u8] = &[0x48, 0x8b, 0x07];
const STORE16: &[u8] = &[0xf3, 0x0f, 0x7f, 0x07];

fn header() -> Header {
    common::synth::header(2, "synthetic-fork", true)
}

fn modules(w: &mut TraceWriter) {
    common::synth::add_modules(w, PARENT);
}

fn call(tid: u32, call: u64, symbol: u32) -> Event {
    Event::Call {
        tid,
        call,
        target: LIB + 0x1000 + 0x100 * u64::from(symbol),
        module: 1,
        symbol: Some(symbol),
        args: [BUF, 0, 0, 0, 0, 0],
        rsp: 0x7ffc_0000_1000,
        return_addr: HOST + 0x1040 + call,
    }
}

fn access(tid: u32, rip: u64, code: &[u8], rdi: u64, data: Vec<u8>) -> Event {
    let mut regs = Regs { rip, rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RDI] = rdi;
    regs.gpr[Regs::RSP] = 0x7ffc_0000_0ff0;
    Event::Access { tid, code: code.to_vec(), regs, fault_addr: rdi, data, vregs: vec![] }
}

fn malloc(tid: u32, size: u64, domain: Domain) -> Event {
    Event::Alloc {
        tid,
        func: AllocFn::Malloc,
        ptr: BUF,
        size,
        old_ptr: 0,
        caller: HOST + 0x1020,
        domain,
        zeroed: false,
    }
}

/// The parent mallocs 64 bytes at BUF and `fill` writes [0,16); it forks.
/// The child frees its copy and (in a foreign call's name) mallocs 32 bytes at the same address; its
/// `sum` reads [0,40): [0,32) never written, [32,40) past the end. Then the
/// parent's `sum` reads [0,16) of its own block: initialised, no finding.
/// Events: 0 alloc, 1 call, 2 store, 3 return, 4 fork, 5 free, 6 alloc,
/// 7 call, 8..=12 loads, 13 return, 14 call, 15..=16 loads, 17 return, 18 exit.
fn fork_trace(dir: &Path) -> PathBuf {
    let path = dir.join("fork.ffr");
    let mut w = TraceWriter::create(&path, header()).unwrap();
    modules(&mut w);
    w.push(malloc(PARENT, 64, Domain::Host)).unwrap();
    w.push(call(PARENT, 0, 0)).unwrap();
    w.push(access(PARENT, LIB + 0x1010, STORE16, BUF, vec![])).unwrap();
    w.push(Event::Return { tid: PARENT, call: 0, rax: 0, rdx: 0 }).unwrap();
    w.push(Event::Fork { tid: PARENT, parent_pid: PARENT, child_pid: CHILD }).unwrap();
    w.push(Event::Free { tid: CHILD, ptr: BUF, caller: HOST + 0x1060, domain: Domain::Host }).unwrap();
    // A foreign block (its whole life is traced; host bytes of a forked
    // process are never exact).
    w.push(malloc(CHILD, 32, Domain::Foreign)).unwrap();
    w.push(call(CHILD, 1, 1)).unwrap();
    for k in 0..5u64 {
        w.push(access(CHILD, LIB + 0x1110, LOAD, BUF + 8 * k, vec![0; 8])).unwrap();
    }
    w.push(Event::Return { tid: CHILD, call: 1, rax: 0, rdx: 0 }).unwrap();
    w.push(call(PARENT, 2, 1)).unwrap();
    for k in 0..2u64 {
        w.push(access(PARENT, LIB + 0x1110, LOAD, BUF + 8 * k, vec![1; 8])).unwrap();
    }
    w.push(Event::Return { tid: PARENT, call: 2, rax: 0, rdx: 0 }).unwrap();
    w.push(Event::Exit { pid: PARENT, status: ExitStatus::Code(0) }).unwrap();
    w.finish(Summary::default()).unwrap();
    path
}

fn analyze(trace: &Path, format: &str) -> String {
    let out =
        common::run(common::ffirec().args(["analyze", "--format", format, "--no-dwarf"]).arg(trace), common::TIMEOUT);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn forked_processes_are_analysed_in_their_own_address_spaces() {
    let dir = common::scratch("analyze_fork");
    let trace = fork_trace(&dir);
    let report: Value = serde_json::from_str(&analyze(&trace, "json")).unwrap();

    let calls: Vec<(u64, u64, u64)> = report["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["call"].as_u64().unwrap(), c["tid"].as_u64().unwrap(), c["pid"].as_u64().unwrap()))
        .collect();
    assert_eq!(calls, vec![(0, 100, 100), (1, 200, 200), (2, 100, 100)]);
    // Footprints, each in its own process's block: alloc#0 is the parent's,
    // alloc#1 the child's inherited copy, alloc#2 the child's own malloc.
    let touched = |i: usize| -> (u64, Value, Value) {
        let t = &report["calls"][i]["touched"];
        assert_eq!(t.as_array().unwrap().len(), 1, "{t:#}");
        (t[0]["alloc"].as_u64().unwrap(), t[0]["read"].clone(), t[0]["written"].clone())
    };
    assert_eq!(touched(0), (0, serde_json::json!([]), serde_json::json!([[0, 16]])));
    assert_eq!(touched(1), (2, serde_json::json!([[0, 40]]), serde_json::json!([])));
    assert_eq!(touched(2), (0, serde_json::json!([[0, 16]]), serde_json::json!([])));

    // Two findings, both the child's, both against the child's block.
    let findings: Vec<(String, u64, u64, u64, String, u64, u64)> = report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| {
            (
                f["kind"].as_str().unwrap().to_string(),
                f["pid"].as_u64().unwrap(),
                f["call"]["call"].as_u64().unwrap(),
                f["allocation"]["id"].as_u64().unwrap(),
                f["addr"].as_str().unwrap().to_string(),
                f["size"].as_u64().unwrap(),
                f["first_event"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        findings,
        vec![
            ("uninit".into(), 200, 1, 2, format!("{BUF:#x}"), 32, 8),
            ("out_of_bounds".into(), 200, 1, 2, format!("{:#x}", BUF + 32), 8, 12),
        ],
        "{:#}",
        report["findings"]
    );
    let allocs: Vec<(u64, String, u64, u64)> = report["allocations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            (
                a["id"].as_u64().unwrap(),
                a["base"].as_str().unwrap().to_string(),
                a["size"].as_u64().unwrap(),
                a["pid"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(allocs, vec![(0, format!("{BUF:#x}"), 64, 100), (2, format!("{BUF:#x}"), 32, 200)]);

    let text = analyze(&trace, "text");
    assert!(text.contains("==ffirec==    in process 200\n"), "{text}");
    assert!(!text.contains("in process 100"), "{text}");
    assert!(text.contains("sum [pid 200]"), "{text}");
}
