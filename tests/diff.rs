//! `ffirec diff` end to end: `libdiffv.c` built as v1 and v2 (`-DV2`), the
//! same host recorded against each; the diff reports exactly v2's four
//! changes, and v1 against v1 (other heap addresses) reports nothing.

mod common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::OnceLock;

use serde_json::{json, Value};

struct Traces {
    /// v1, host run without extra allocations.
    v1: PathBuf,
    /// v1 again, host makes 7 unrelated allocations first.
    v1b: PathBuf,
    /// v2.
    v2: PathBuf,
}

fn record(dir: &Path, name: &str, lib_dir: Option<&Path>, extra: &str) -> PathBuf {
    let host = common::program("diff_host");
    let trace = dir.join(name);
    let mut cmd = common::ffirec();
    cmd.args(["record", "-q", "--lib", "libdiffv.so", "-o"]).arg(&trace).arg("--").arg(&host).arg(extra);
    if let Some(d) = lib_dir {
        cmd.env("LD_LIBRARY_PATH", d);
    }
    let out = common::run(&mut cmd, common::TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "record failed:\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "16 33 26 1\n");
    trace
}

/// Recorded once per test process.
fn traces() -> &'static Traces {
    static T: OnceLock<Traces> = OnceLock::new();
    T.get_or_init(|| {
        let v2 = common::library_variant("diffv", "v2", &["-DV2"]);
        let v2_dir = v2.parent().expect("variant dir").to_path_buf();
        let dir = common::scratch("diff_traces");
        Traces {
            v1: record(&dir, "v1.ffr", None, "0"),
            v1b: record(&dir, "v1b.ffr", None, "7"),
            v2: record(&dir, "v2.ffr", Some(&v2_dir), "0"),
        }
    })
}

fn diff(old: &Path, new: &Path, extra: &[&str]) -> Output {
    common::run(common::ffirec().arg("diff").arg(old).arg(new).args(extra), common::TIMEOUT)
}

fn json_of(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("diff output is not JSON ({e}); stderr:\n{}", String::from_utf8_lossy(&out.stderr)))
}

/// Text lines that carry differences, with `+0x…` offsets (compiler-dependent) blanked.
fn difference_lines(text: &str) -> Vec<String> {
    let blank = |l: &str| {
        let mut out = String::new();
        let mut rest = l;
        while let Some(i) = rest.find("+0x") {
            out.push_str(&rest[..i]);
            out.push_str("+0x?");
            rest = rest[i + 3..].trim_start_matches(|c: char| c.is_ascii_hexdigit());
        }
        out.push_str(rest);
        out
    };
    text.lines()
        .skip(1) // paths
        .filter(|l| !l.trim().is_empty() && !l.starts_with("  ~"))
        .map(blank)
        .collect()
}

#[test]
fn diff_v1_v2_text_reports_exactly_the_four_changes() {
    let t = traces();
    let out = diff(&t.v1, &t.v2, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(3), "NEW has a finding OLD had not:\n{text}");
    let expected = vec![
        "  program diff_host; foreign libdiffv.so -> libdiffv.so",
        "  calls: 6 in OLD, 6 in NEW, 6 matched, 0 only in OLD, 0 only in NEW",
        "call diffv_sum#0 (thread 0) [OLD call 0, NEW call 0]",
        "  + read [16,17) of alloc main+0x?#0 (malloc 16) [arg 0]",
        "call diffv_fill#0 (thread 0) [OLD call 1, NEW call 1]",
        "  + wrote [8,16) of alloc main+0x?#0 (malloc 16) [arg 0]",
        "call diffv_mix#0 (thread 0) [OLD call 2, NEW call 2]",
        "  - read [0,8) of alloc main+0x?#0 (malloc 8) [arg 2]",
        "call diffv_scan#0 (thread 0) [OLD call 3, NEW call 3]",
        "  + code diffv_checksum (libdiffv.so) accessed memory at +0x?",
        "new findings:",
        "+ out_of_bounds: read of 1 byte just past the end of alloc main+0x?#0 (malloc 16) in call diffv_sum#0 (thread 0), at diffv_sum+0x? (libdiffv.so)",
        "fixed findings: none",
        "5 differences: 4 calls changed, 0 only in OLD, 0 only in NEW, 1 new finding, 0 fixed (3 changes not counted)",
    ];
    assert_eq!(difference_lines(&text), expected, "full text:\n{text}");
}

#[test]
fn diff_v1_v2_json_schema_and_exact_ranges() {
    let t = traces();
    let out = diff(&t.v1, &t.v2, &["--format", "json"]);
    assert_eq!(out.status.code(), Some(3));
    let j = json_of(&out);
    assert_eq!(j["schema"], "ffirec.diff/1");
    assert_eq!((j["old"]["calls"].as_u64(), j["new"]["calls"].as_u64()), (Some(6), Some(6)));
    assert_eq!((j["old"]["findings"].as_u64(), j["new"]["findings"].as_u64()), (Some(0), Some(1)));
    assert_eq!(j["old"]["foreign"], json!(["libdiffv.so"]));
    assert_eq!(j["warnings"], json!([]));
    assert_eq!(
        (j["only_in_old"].clone(), j["only_in_new"].clone(), j["call_counts"].clone()),
        (json!([]), json!([]), json!([]))
    );
    assert_eq!(j["fixed_findings"], json!([]));
    assert_eq!(
        j["summary"],
        json!({"differences": 5, "matched_calls": 6, "changed_calls": 4, "only_in_old": 0, "only_in_new": 0,
               "new_findings": 1, "fixed_findings": 0, "noise": 3})
    );
    let calls = j["calls"].as_array().expect("calls");
    let names: Vec<&str> = calls.iter().map(|c| c["name"].as_str().unwrap_or("?")).collect();
    assert_eq!(names, vec!["diffv_sum#0", "diffv_fill#0", "diffv_mix#0", "diffv_scan#0"]);
    for c in calls {
        assert_eq!(c["differences"], 1, "{c:#}");
        assert_eq!(c.get("ret"), None, "return values are unchanged: {c:#}");
    }
    // (a) one byte past the end of the 16-byte buffer.
    let m = &calls[0]["memory"];
    assert_eq!(m.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (m[0]["target"].as_str(), m[0]["args"].clone(), m[0]["ordinal"].as_u64()),
        (Some("alloc"), json!([0]), Some(0))
    );
    assert!(m[0]["site"].as_str().is_some_and(|s| s.starts_with("main+0x")), "{m:#}");
    assert_eq!(
        (
            m[0]["newly_read"].clone(),
            m[0]["no_longer_read"].clone(),
            m[0]["newly_written"].clone(),
            m[0]["no_longer_written"].clone()
        ),
        (json!([[16, 17]]), json!([]), json!([]), json!([]))
    );
    assert_eq!(m[0]["counted"], true);
    // (b) struct field b ([8,16)) newly written.
    let m = &calls[1]["memory"];
    assert_eq!(m.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (m[0]["newly_written"].clone(), m[0]["newly_read"].clone(), m[0]["args"].clone()),
        (json!([[8, 16]]), json!([]), json!([0]))
    );
    // (c) third argument no longer read.
    let m = &calls[2]["memory"];
    assert_eq!(m.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (m[0]["no_longer_read"].clone(), m[0]["newly_read"].clone(), m[0]["args"].clone()),
        (json!([[0, 8]]), json!([]), json!([2]))
    );
    assert!(m[0]["label"].as_str().is_some_and(|l| l.ends_with("#0 (malloc 8)")), "{m:#}");
    // (d) the library's own helper now touches memory during diffv_scan; no memory change.
    assert_eq!(calls[3]["memory"], json!([]));
    let added: Vec<(&str, &str)> = calls[3]["code"]
        .as_array()
        .expect("code")
        .iter()
        .filter(|k| k["change"] != "moved")
        .map(|k| (k["change"].as_str().unwrap_or("?"), k["symbol"].as_str().unwrap_or("?")))
        .collect();
    assert_eq!(added, vec![("added", "diffv_checksum")]);
    // Code that only moved is noise in every call.
    for c in calls {
        for k in c["code"].as_array().expect("code") {
            assert!(k["change"] == "moved" || k["symbol"] == "diffv_checksum", "{k:#}");
        }
    }
    // The finding.
    let f = &j["new_findings"];
    assert_eq!(f.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (f[0]["kind"].as_str(), f[0]["access"].as_str(), f[0]["size"].as_u64(), f[0]["call"].as_str()),
        (Some("out_of_bounds"), Some("read"), Some(1), Some("diffv_sum#0"))
    );
    assert_eq!((f[0]["relation"].as_str(), f[0]["distance"].as_u64()), (Some("after"), Some(0)));
    assert!(f[0]["allocation"].as_str().is_some_and(|l| l.ends_with("#0 (malloc 16)")), "{f:#}");
    assert!(
        f[0]["at"].as_str().is_some_and(|l| l.starts_with("diffv_sum+0x") && l.ends_with("(libdiffv.so)")),
        "{f:#}"
    );
}

/// Every hex number in the diff is an offset into a module, never a heap address.
#[test]
fn diff_json_has_no_raw_heap_addresses() {
    let t = traces();
    let out = diff(&t.v1, &t.v2, &["--format", "json"]);
    let text = String::from_utf8_lossy(&out.stdout);
    for (i, _) in text.match_indices("0x") {
        let digits: String = text[i + 2..].chars().take_while(|c| c.is_ascii_hexdigit()).collect();
        let v = u64::from_str_radix(&digits, 16).unwrap_or(u64::MAX);
        assert!(v < 0x10_0000, "raw address 0x{digits} in the diff:\n{text}");
    }
}

#[test]
fn diff_v2_v1_reports_the_finding_fixed_and_the_reverse_ranges() {
    let t = traces();
    let out = diff(&t.v2, &t.v1, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "differences, but no new finding:\n{text}");
    let lines = difference_lines(&text);
    for want in [
        "  - read [16,17) of alloc main+0x?#0 (malloc 16) [arg 0]",
        "  - wrote [8,16) of alloc main+0x?#0 (malloc 16) [arg 0]",
        "  + read [0,8) of alloc main+0x?#0 (malloc 8) [arg 2]",
        "  - code diffv_checksum (libdiffv.so) accessed memory at +0x?",
        "new findings: none",
        "fixed findings:",
        "5 differences: 4 calls changed, 0 only in OLD, 0 only in NEW, 0 new findings, 1 fixed (3 changes not counted)",
    ] {
        assert!(lines.iter().any(|l| l == want), "missing {want:?} in:\n{text}");
    }
    assert!(lines.iter().any(|l| l.starts_with("- out_of_bounds: read of 1 byte just past the end")), "{text}");
}

#[test]
fn diff_fail_on_modes() {
    let t = traces();
    let code = |old: &Path, new: &Path, mode: &str| diff(old, new, &["--fail-on", mode]).status.code();
    assert_eq!(code(&t.v1, &t.v2, "findings"), Some(3));
    assert_eq!(code(&t.v1, &t.v2, "any"), Some(3));
    assert_eq!(code(&t.v1, &t.v2, "never"), Some(1));
    assert_eq!(code(&t.v2, &t.v1, "findings"), Some(1));
    assert_eq!(code(&t.v2, &t.v1, "any"), Some(3));
    assert_eq!(code(&t.v2, &t.v1, "never"), Some(1));
    assert_eq!(code(&t.v1, &t.v1b, "any"), Some(0));
}

#[test]
fn diff_v1_v1_other_heap_addresses_is_empty() {
    let t = traces();
    // The two runs really placed the buffers elsewhere.
    let base = |trace: &Path| {
        let out = common::run(common::ffirec().args(["analyze", "--format", "json"]).arg(trace), common::TIMEOUT);
        let j = json_of(&out);
        let c = j["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .find(|c| c["symbol"] == "diffv_sum")
            .cloned()
            .expect("diffv_sum");
        let id = c["touched"][0]["alloc"].as_u64().expect("alloc");
        j["allocations"].as_array().expect("allocations").iter().find(|a| a["id"] == id).expect("allocation")["base"]
            .clone()
    };
    assert_ne!(base(&t.v1), base(&t.v1b));

    let out = diff(&t.v1, &t.v1b, &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert_eq!(
        difference_lines(&text),
        vec![
            "  program diff_host; foreign libdiffv.so -> libdiffv.so",
            "  calls: 6 in OLD, 6 in NEW, 6 matched, 0 only in OLD, 0 only in NEW",
            "new findings: none",
            "fixed findings: none",
            "no behavioural differences (0 changes not counted)",
        ],
        "{text}"
    );
    let j = json_of(&diff(&t.v1, &t.v1b, &["--format", "json"]));
    assert_eq!(j["summary"]["differences"], 0);
    assert_eq!(j["summary"]["noise"], 0);
    assert_eq!(j["calls"], json!([]));
    assert_eq!((j["new_findings"].clone(), j["fixed_findings"].clone()), (json!([]), json!([])));
}

#[test]
fn diff_refuses_same_recording_other_program_and_bad_files() {
    let t = traces();
    let dir = common::scratch("diff_refuses");
    // One recording twice.
    let out = diff(&t.v1, &t.v1, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("same recording") && err.contains("--force"), "{err}");
    assert_eq!(diff(&t.v1, &t.v1, &["--force"]).status.code(), Some(0));

    // Another program (the same binary under another name).
    let other = dir.join("other_host");
    std::fs::copy(common::program("diff_host"), &other).unwrap();
    let trace = dir.join("other.ffr");
    let rec = common::run(
        common::ffirec().args(["record", "-q", "--lib", "libdiffv.so", "-o"]).arg(&trace).arg("--").arg(&other),
        common::TIMEOUT,
    );
    assert_eq!(rec.status.code(), Some(0), "{}", String::from_utf8_lossy(&rec.stderr));
    let out = diff(&t.v1, &trace, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("different programs: OLD ran diff_host, NEW ran other_host"), "{err}");
    let out = diff(&t.v1, &trace, &["--force"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).contains("warning: the traces are of different programs"));

    // The same program, recorded with another --lib pattern.
    let trace = dir.join("pattern.ffr");
    let rec = common::run(
        common::ffirec()
            .args(["record", "-q", "--lib", "libdiffv*", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(common::program("diff_host")),
        common::TIMEOUT,
    );
    assert_eq!(rec.status.code(), Some(0), "{}", String::from_utf8_lossy(&rec.stderr));
    let out = diff(&t.v1, &trace, &[]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(r#"different --lib patterns: OLD ["libdiffv.so"], NEW ["libdiffv*"]"#), "{err}");
    assert_eq!(diff(&t.v1, &trace, &["--force"]).status.code(), Some(0));

    // Not a trace.
    let junk = dir.join("junk.ffr");
    std::fs::write(&junk, b"not a trace").unwrap();
    let out = diff(&t.v1, &junk, &[]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", String::from_utf8_lossy(&out.stderr));
}
