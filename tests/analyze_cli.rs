//! `ffirec analyze` command line: exit codes, formats, suppressions and
//! truncated traces, on small synthetic traces.

mod common;

use std::path::{Path, PathBuf};

use ffirec_format::*;
use serde_json::Value;

const HEAP: u64 = 0x5555_5555_a000;
const LIB: u64 = 0x7f00_0000_0000;

fn header() -> Header {
    Header {
        recorder_version: "test".into(),
        uuid: [3; 16],
        command: vec!["./prog".into()],
        start_time_ns: 0,
        page_size: 4096,
        policy: Policy {
            foreign: vec!["libfoo.so".into()],
            neutral: vec![],
            track_host_init: true,
            guard_foreign: false,
        },
    }
}

fn module() -> Module {
    Module {
        pid: 1,
        path: "/nonexistent/libfoo.so".into(),
        build_id: vec![],
        base: LIB,
        segments: vec![Segment { start: LIB, len: 0x2000, prot: 5, file_offset: 0 }],
        domain: Domain::Foreign,
        symbols: vec![Symbol { name: "foo".into(), addr: 0x1000, size: 0x100 }],
    }
}

/// malloc(10) by the host, fully written, then `movzx eax, BYTE PTR [rdi]`
/// (0f b6 07, from GNU as) at offset `off`.
fn events(off: u64) -> Vec<Event> {
    let mut regs = Regs { rip: LIB + 0x1010, ..Regs::default() };
    regs.gpr[Regs::RDI] = HEAP + off;
    vec![
        Event::Alloc {
            tid: 1,
            func: AllocFn::Malloc,
            ptr: HEAP,
            size: 10,
            old_ptr: 0,
            caller: 0x40_1000,
            domain: Domain::Host,
            zeroed: false,
        },
        Event::HostWrite { tid: 1, addr: HEAP, len: 10 },
        Event::Call {
            tid: 1,
            call: 0,
            target: LIB + 0x1000,
            module: 0,
            symbol: Some(0),
            args: [HEAP, 0, 0, 0, 0, 0],
            rsp: 0x7ffd_0000_0000,
            return_addr: 0x40_2000,
        },
        Event::Access {
            tid: 1,
            code: vec![0x0f, 0xb6, 0x07],
            regs,
            fault_addr: HEAP + off,
            data: vec![0],
            vregs: vec![],
        },
        Event::Return { tid: 1, call: 0, rax: 0, rdx: 0 },
    ]
}

fn write(dir: &Path, name: &str, off: u64, finish: bool) -> PathBuf {
    let p = dir.join(name);
    let opts = WriterOptions { events_per_chunk: 2, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(&p, header(), opts).expect("writer");
    w.add_module(module()).expect("module");
    for e in events(off) {
        w.push(e).expect("push");
    }
    if finish {
        w.finish(Summary::default()).expect("finish");
        p
    } else {
        drop(w);
        let mut partial = p.into_os_string();
        partial.push(".partial");
        PathBuf::from(partial)
    }
}

fn analyze(args: &[&str], trace: &Path) -> (i32, String, String) {
    let out = common::run(common::ffirec().arg("analyze").args(args).arg(trace), common::TIMEOUT);
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn analyze_exit_codes_0_1_and_error_exitcode() {
    let dir = common::scratch("analyze_cli_exit");
    let clean = write(&dir, "clean.ffr", 9, true);
    let oob = write(&dir, "oob.ffr", 10, true);
    let (code, out, _) = analyze(&[], &clean);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("TOTALS: 1 accesses (1 bytes read, 0 written) in 1 calls; 0 findings"), "{out}");
    let (code, out, _) = analyze(&[], &oob);
    assert_eq!(code, 1);
    assert!(out.contains("==ffirec== Out-of-bounds access (read of size 1 at 0x55555555a00a)"), "{out}");
    assert!(out.contains("is 0 bytes after the end of alloc#0 (malloc 10 at 0x401000)"), "{out}");
    assert_eq!(analyze(&["--error-exitcode", "7"], &oob).0, 7);
}

#[test]
fn analyze_json_schema_and_summary() {
    let dir = common::scratch("analyze_cli_json");
    let oob = write(&dir, "oob.ffr", 10, true);
    let (code, out, _) = analyze(&["--format", "json"], &oob);
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["schema"], "ffirec.report/1");
    assert_eq!(v["trace"]["complete"], true);
    assert_eq!(v["summary"]["findings"], 1);
    assert_eq!(v["summary"]["by_kind"]["out_of_bounds"], 1);
    assert_eq!(v["summary"]["by_kind"]["uninit"], 0);
    assert_eq!(v["findings"][0]["kind"], "out_of_bounds");
    assert_eq!(v["findings"][0]["verdict"], "exact");
    assert_eq!(v["findings"][0]["at"]["symbol"], "foo");
    assert_eq!(v["findings"][0]["at"]["offset"], 0x10);
    assert_eq!(v["calls"][0]["symbol"], "foo");
    assert_eq!(v["calls"][0]["args"][0], "0x55555555a000");
    assert_eq!(v["calls"][0]["touched"][0]["read"], serde_json::json!([[10, 11]]));
}

#[test]
fn analyze_suppressions_file() {
    let dir = common::scratch("analyze_cli_supp");
    let oob = write(&dir, "oob.ffr", 10, true);
    let supp = dir.join("supp.txt");
    std::fs::write(&supp, "# known\nkind=out_of_bounds symbol=fo* module=libfoo*\n").expect("write");
    let (code, out, _) = analyze(&["--suppressions", supp.to_str().expect("utf8")], &oob);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("suppressed: 1,"), "{out}");
    std::fs::write(&supp, "kind=out_of_bounds\nsymbol foo\n").expect("write");
    let (code, _, err) = analyze(&["--suppressions", supp.to_str().expect("utf8")], &oob);
    assert_eq!(code, 2);
    assert!(err.contains("line 2"), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
}

#[test]
fn analyze_truncated_trace_is_analysed_and_flagged() {
    let dir = common::scratch("analyze_cli_trunc");
    let partial = write(&dir, "t.ffr", 10, false);
    let (code, out, err) = analyze(&["--format", "json"], &partial);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!(v["trace"]["complete"], false);
    assert_eq!(v["summary"]["truncated"], true);
    assert!(err.contains("truncated"), "{err}");
    // Whatever was recovered is analysed; the exit code follows its findings.
    assert_eq!((v["trace"]["events"].as_u64(), v["trace"]["chunks"].as_u64()), (Some(5), Some(3)));
    assert_eq!((code, v["summary"]["findings"].as_u64()), (1, Some(1)));
    // Cut into the last chunk (event 4, the Return): events 0..4 remain.
    let bytes = std::fs::read(&partial).expect("read");
    let cut = dir.join("cut.ffr");
    std::fs::write(&cut, &bytes[..bytes.len() - 8]).expect("write");
    let (code, out, _) = analyze(&["--format", "json"], &cut);
    let v: Value = serde_json::from_str(&out).expect("json");
    assert_eq!((v["trace"]["events"].as_u64(), v["trace"]["complete"].as_bool()), (Some(4), Some(false)));
    assert_eq!((code, v["summary"]["findings"].as_u64()), (1, Some(1)));
    assert_eq!(v["calls"][0]["ret"], Value::Null);
}

#[test]
fn analyze_unreadable_trace_exits_2_with_one_line() {
    let dir = common::scratch("analyze_cli_bad");
    let bad = dir.join("bad.ffr");
    std::fs::write(&bad, b"this is not a trace").expect("write");
    let (code, _, err) = analyze(&[], &bad);
    assert_eq!(code, 2);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.starts_with("ffirec: error:"), "{err}");
    let (code, _, _) = analyze(&[], &dir.join("missing.ffr"));
    assert_eq!(code, 2);
}
