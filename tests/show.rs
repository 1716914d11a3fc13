//! `ffirec show` on real recordings of the analyzer's C fixture
//! (`ana_host` + `libanafx.so`): one snapshot per mode, with addresses,
//! thread ids and the first full register dump normalised. Snapshots live in
//! `tests/fixtures/show_*.txt`; `SHOW_BLESS=1 cargo test --test show` rewrites them.
#![allow(clippy::unwrap_used)] // test code

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

fn host() -> PathBuf {
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(|| common::program("ana_host")).clone()
}

fn record(test: &str, scenario: &str, expect_code: i32) -> PathBuf {
    let dir = common::scratch(test);
    let trace = dir.join("trace.ffr");
    let out = common::run(
        common::ffirec()
            // The snapshots are of the recording without host-init's HostWrite events.
            .args(["record", "-q", "--no-host-init", "--lib", "libanafx.so", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(host())
            .arg(scenario),
        common::TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(expect_code), "record: {}", String::from_utf8_lossy(&out.stderr));
    trace
}

fn show(trace: &Path, args: &[&str]) -> String {
    let out = common::run(common::ffirec().arg("show").arg(trace).args(args), common::TIMEOUT);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "show {args:?}: {stderr}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hex numbers of 5+ digits become `0x…`, thread and process ids `N`,
/// loaded pointer values `<pointer>`.
fn normalise(text: &str) -> String {
    let mut out = String::new();
    for line in text.lines() {
        let mut words = Vec::new();
        let mut prev = "";
        for w in line.split(' ') {
            let w2 = if matches!(prev, "tid" | "thread" | "process" | "in")
                && w.trim_end_matches([';', ',']).parse::<u64>().is_ok()
            {
                let tail = &w[w.trim_end_matches([';', ',']).len()..];
                format!("N{tail}")
            } else {
                w.to_string()
            };
            words.push(w2);
            prev = w;
        }
        out.push_str(&hex_norm(&words.join(" ")));
        out.push('\n');
    }
    out
}

fn hex_norm(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = String::new();
    let (mut i, mut copied) = (0, 0);
    while i < b.len() {
        if b[i] == b'0' && b.get(i + 1) == Some(&b'x') && (i == 0 || !b[i - 1].is_ascii_alphanumeric()) {
            let mut j = i + 2;
            while j < b.len() && b[j].is_ascii_hexdigit() {
                j += 1;
            }
            if j - (i + 2) >= 5 {
                out.push_str(&s[copied..i]);
                out.push_str("0x…");
                copied = j;
            }
            i = j;
            continue;
        }
        i += 1;
    }
    out.push_str(&s[copied..]);
    pointer_data(&out)
}

/// `= a0 42 c9 3a 12 56 00 00` (8 bytes read that hold a user-space
/// pointer, different every run) becomes `= <pointer>`.
fn pointer_data(line: &str) -> String {
    let Some((pre, data)) = line.rsplit_once(" = ") else { return line.to_string() };
    let bytes: Vec<u8> = data.split(' ').filter_map(|h| u8::from_str_radix(h, 16).ok()).collect();
    if bytes.len() == 8 && data.len() == 23 {
        let v = u64::from_le_bytes(bytes.try_into().unwrap());
        if (0x100_0000_0000..0x8000_0000_0000).contains(&v) {
            return format!("{pre} = <pointer>");
        }
    }
    line.to_string()
}

fn snapshot(name: &str, actual: &str) {
    let path = common::fixtures_src().join(format!("show_{name}.txt"));
    if std::env::var_os("SHOW_BLESS").is_some() {
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let expected =
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e} (SHOW_BLESS=1 to create)", path.display()));
    assert!(expected == actual, "snapshot {} differs:\n--- expected\n{expected}\n--- actual\n{actual}", path.display());
}

#[test]
fn show_listing_of_uninit_scenario() {
    let trace = record("show_listing", "uninit", 0);
    let text = normalise(&show(&trace, &["--from", "0", "--count", "4"]));
    snapshot("listing_uninit", &text);
    // The exact facts behind the snapshot.
    assert!(text.contains("       2  tid N  #0 sum_bytes() called from main+"), "{text}");
    assert!(text.contains("read 1 byte at 0x… alloc#0+0 (malloc 64 at main+"), "{text}");
    assert!(text.contains("read 1 byte at 0x… alloc#0+1 (malloc 64 at main+"), "{text}");
}

#[test]
fn show_call_of_linked_list_walk() {
    let trace = record("show_call", "list", 0);
    let text = normalise(&show(&trace, &["--call", "0"]));
    snapshot("call_list", &text);
    // list_sum(a): arg 0 is node a (alloc#1), b (alloc#0) was reached through a->next.
    assert!(text.contains("  arg 0 = 0x… -> alloc#1 (malloc 16 at main+"), "{text}");
    assert!(text.contains(": read [0,16) (16 bytes), wrote nothing\n  also alloc#0 (malloc 16 at main+"), "{text}");
    assert!(text.contains("  loaded a pointer to alloc#0 (malloc 16 at main+"), "{text}");
}

#[test]
fn show_crash_of_null_dereference() {
    let trace = record("show_crash", "crash", 139);
    let text = normalise(&show(&trace, &["--crash"]));
    snapshot("crash", &text);
    assert!(text.contains("signal 11 (SIGSEGV) code 1, fault address 0x0 no allocation, fatal"), "{text}");
    assert!(text.contains("at deref+0xc (libanafx.c:48): mov eax, [rax]"), "{text}");
}

#[test]
fn show_memory_at_off_by_one() {
    let trace = record("show_memory", "oob", 0);
    // After the call: malloc(10) fully set by the host (untracked: unknown),
    // then 6 bytes outside the block.
    let text = normalise(&show(&trace, &["--at", "13", "--memory", "alloc0+0:16"]));
    snapshot("memory_oob", &text);
    let marks: String =
        text.lines().filter(|l| l.starts_with("0x")).filter_map(|l| l.split_whitespace().last()).collect();
    assert_eq!(marks.len(), 16, "{text}");
    assert!(marks.ends_with("......"), "{text}");
}

#[test]
fn show_memory_agrees_with_analyze_on_recorded_uninit_scenario() {
    // ana_host uninit: malloc(64), memset 16 bytes, sum_bytes reads 32.
    let trace = record("show_memory_vs_analyze", "uninit", 0);
    let out =
        common::run(common::ffirec().args(["analyze", "--format", "json", "--no-dwarf"]).arg(&trace), common::TIMEOUT);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let call = &report["calls"][0];
    assert_eq!(call["symbol"], "sum_bytes");
    let first = call["first_event"].as_u64().unwrap();
    let marks = |text: &str| -> String {
        text.lines().filter(|l| l.starts_with("0x")).filter_map(|l| l.split_whitespace().last()).collect()
    };
    let view = show(&trace, &["--at", &first.to_string(), "--memory", "alloc0+0:32"]);
    if report["trace"]["track_host_init"] == true {
        // Host writes tracked: memset's 16 bytes initialised, the next 16 are
        // exactly analyze's finding.
        let f = &report["findings"][0];
        assert_eq!(
            (f["kind"].as_str(), f["allocation"]["distance"].as_u64(), f["size"].as_u64()),
            (Some("uninit"), Some(16), Some(16))
        );
        assert_eq!(marks(&view), format!("{}{}", "I".repeat(16), "U".repeat(16)), "{view}");
    } else {
        // Untracked host writes: analyze reports no finding and 32 bytes of
        // unknown state read; show has the same 32 bytes unknown.
        assert_eq!(report["summary"]["findings"], 0);
        assert_eq!(report["summary"]["unknown_bytes"], 32);
        assert_eq!(marks(&view), "?".repeat(32), "{view}");
    }
}

#[test]
fn show_concurrent_threads_each_listed_in_their_own_call() {
    // rec_threads concurrent: 4 threads, each 20 x lib_loop_sum(own 32-long buffer).
    let prog = common::program("rec_threads");
    let dir = common::scratch("show_threads");
    let trace = dir.join("trace.ffr");
    let out = common::run(
        common::ffirec()
            .args(["record", "-q", "--lib", "librecfx.so", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(&prog)
            .arg("concurrent"),
        common::TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let out =
        common::run(common::ffirec().args(["analyze", "--format", "json", "--no-dwarf"]).arg(&trace), common::TIMEOUT);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let call_tid: std::collections::HashMap<u64, u64> = report["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| (c["call"].as_u64().unwrap(), c["tid"].as_u64().unwrap()))
        .collect();

    let text = show(&trace, &["--count", "1000000", "--no-dwarf"]);
    // Per thread: accesses listed, each inside a call of that same thread.
    let mut per_tid: std::collections::BTreeMap<u64, usize> = std::collections::BTreeMap::new();
    let lines: Vec<&str> = text.lines().collect();
    for (i, l) in lines.iter().enumerate() {
        let w: Vec<&str> = l.split_whitespace().collect();
        if w.len() < 4
            || w[1] != "tid"
            || !lines.get(i + 1).is_some_and(|n| n.trim_start().starts_with("at lib_loop_sum+"))
        {
            continue;
        }
        let tid: u64 = w[2].parse().unwrap();
        let call: u64 =
            w[3].strip_prefix('#').and_then(|c| c.parse().ok()).unwrap_or_else(|| panic!("no call context: {l}"));
        assert_eq!(call_tid[&call], tid, "{l}");
        *per_tid.entry(tid).or_default() += 1;
    }
    assert_eq!(per_tid.values().copied().collect::<Vec<_>>(), vec![640; 4], "{per_tid:?}");

    // --tid: only that thread, from the event asked for.
    let &tid = per_tid.keys().nth(2).unwrap();
    let only = show(&trace, &["--from", "100", "--count", "50", "--tid", &tid.to_string(), "--no-dwarf"]);
    let headers: Vec<&str> = only.lines().filter(|l| l.split_whitespace().nth(1) == Some("tid")).collect();
    assert_eq!(headers.len(), 50, "{only}");
    for h in &headers {
        let w: Vec<&str> = h.split_whitespace().collect();
        assert!(w[0].parse::<u64>().unwrap() >= 100 && w[2] == tid.to_string(), "{h}");
    }
}
