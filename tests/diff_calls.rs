//! `ffirec diff` on calls and return values: `libdiffcalls.c` as v1 and v2
//! (`-DV2`). v2 returns other integers, a pointer one byte further into a
//! host buffer, makes the host call `dc_step` once more, and loads a host
//! pointer it was not given (a new exposure); the heap block `dc_alloc`
//! returns lies elsewhere in each run but is the same allocation.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

fn host() -> PathBuf {
    // Built once: concurrent `common::program` calls for one fixture race.
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(|| common::program("diff_calls_host")).clone()
}

fn record(dir: &Path, name: &str, lib_dir: Option<&Path>, pad: u32) -> PathBuf {
    let host = host();
    let trace = dir.join(name);
    let mut cmd = common::ffirec();
    cmd.args(["record", "-q", "--lib", "libdiffcalls.so", "-o"]).arg(&trace).arg("--").arg(&host).arg(pad.to_string());
    if let Some(d) = lib_dir {
        cmd.env("LD_LIBRARY_PATH", d);
    }
    let out = common::run(&mut cmd, common::TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "record failed:\n{}", String::from_utf8_lossy(&out.stderr));
    trace
}

#[test]
fn diff_calls_only_in_new_counts_and_normalised_return_values() {
    let v2 = common::library_variant("diffcalls", "v2", &["-DV2"]);
    let dir = common::scratch("diff_calls");
    let old = record(&dir, "v1.ffr", None, 0);
    let new = record(&dir, "v2.ffr", v2.parent(), 0);
    let out = common::run(common::ffirec().arg("diff").arg(&old).arg(&new).args(["--format", "json"]), common::TIMEOUT);
    assert_eq!(out.status.code(), Some(3), "a new exposure is a new finding: {}", String::from_utf8_lossy(&out.stderr));
    let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(j["only_in_old"], json!([]));
    let only = &j["only_in_new"];
    assert_eq!(only.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (
            only[0]["name"].as_str(),
            only[0]["thread"].as_u64(),
            only[0]["bytes_read"].as_u64(),
            only[0]["bytes_written"].as_u64()
        ),
        (Some("dc_step#2"), Some(0), Some(4), Some(4))
    );
    assert_eq!(j["call_counts"], json!([{"symbol": "dc_step", "old": 2, "new": 3}]));
    let rets: Vec<(String, Value)> = j["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .map(|c| (c["name"].as_str().unwrap_or("?").to_string(), c["ret"].clone()))
        .collect();
    let site = |v: &Value| v.as_str().map(|s| s.to_string()).unwrap_or_default();
    assert_eq!(rets.len(), 4, "{rets:?}");
    assert_eq!(rets[3], ("dc_peek#0".into(), Value::Null));
    assert_eq!(rets[0], ("dc_version#0".into(), json!({"old": "1", "new": "2", "counted": true})));
    assert_eq!(rets[2], ("dc_steps#0".into(), json!({"old": "2", "new": "3", "counted": true})));
    // A pointer into the host's calloc(16): offset 3 -> 4, never the raw address.
    assert_eq!(rets[1].0, "dc_find#0");
    let (o, n) = (site(&rets[1].1["old"]), site(&rets[1].1["new"]));
    assert!(o.starts_with("alloc main+0x") && o.ends_with("#0 (calloc 16)+3"), "{o}");
    assert_eq!(n, o.replace(")+3", ")+4"));
    // dc_alloc's fresh block: another address each run, the same normalised value.
    assert!(!rets.iter().any(|(name, _)| name == "dc_alloc#0"));
    assert_eq!(
        j["summary"],
        json!({"differences": 7, "matched_calls": 10, "changed_calls": 4, "only_in_old": 0, "only_in_new": 1,
               "new_findings": 1, "fixed_findings": 0, "noise": 1})
    );
    // dc_peek: the holder's pointer field [8,16) and the first byte of the
    // block it points to are newly read; that block was never an argument.
    let peek = &j["calls"][3];
    let mem: Vec<(Value, Value, Value)> = peek["memory"]
        .as_array()
        .expect("memory")
        .iter()
        .map(|m| {
            (
                m["newly_read"].clone(),
                m["args"].clone(),
                json!(m["label"].as_str().unwrap_or("?").ends_with("(malloc 16)")),
            )
        })
        .collect();
    let mut mem = mem;
    mem.sort_by_key(|m| m.0.to_string());
    assert_eq!(mem, vec![(json!([[0, 1]]), json!([]), json!(false)), (json!([[8, 16]]), json!([0]), json!(true))]);
    let f = &j["new_findings"];
    assert_eq!(f.as_array().map(Vec::len), Some(1));
    assert_eq!(
        (f[0]["kind"].as_str(), f[0]["call"].as_str(), f[0]["relation"].as_str(), f[0]["distance"].as_u64()),
        (Some("exposed_pointer"), Some("dc_peek#0"), Some("inside"), Some(0))
    );
    assert!(f[0]["allocation"].as_str().is_some_and(|l| l.ends_with("#0 (calloc 24)")), "{f:#}");
    // The text form.
    let out = common::run(common::ffirec().arg("diff").arg(&old).arg(&new), common::TIMEOUT);
    let text = String::from_utf8_lossy(&out.stdout);
    for want in [
        "+ call dc_step#2 (thread 0) only in NEW [call 5]: read 4 bytes, wrote 4 bytes",
        "  calls to dc_step: 2 -> 3",
        "  ! returned 1 -> 2",
        "  ! returned 2 -> 3",
        "7 differences: 4 calls changed, 0 only in OLD, 1 only in NEW, 1 new finding, 0 fixed (1 change not counted)",
    ] {
        assert!(text.lines().any(|l| l == want), "missing {want:?} in:\n{text}");
    }
}

/// `strlen`'s vector loads stop at a block boundary that moves with the heap
/// address: v1 against v1 with the buffers moved by 48-byte steps is still
/// no behavioural difference, the moved over-read shown as noise.
#[test]
fn diff_string_overread_moved_by_heap_alignment_is_noise() {
    let dir = common::scratch("diff_overread");
    let base = record(&dir, "pad0.ffr", None, 0);
    let mut noisy = Vec::new();
    for pad in 1..=3 {
        let other = record(&dir, &format!("pad{pad}.ffr"), None, pad);
        let out = common::run(
            common::ffirec().arg("diff").arg(&base).arg(&other).args(["--format", "json"]),
            common::TIMEOUT,
        );
        assert_eq!(out.status.code(), Some(0), "pad {pad}: {}", String::from_utf8_lossy(&out.stdout));
        let j: Value = serde_json::from_slice(&out.stdout).expect("JSON");
        assert_eq!(j["summary"]["differences"], 0, "pad {pad}: {j:#}");
        for c in j["calls"].as_array().expect("calls") {
            assert_eq!(c["name"], "dc_len#0", "only strlen's over-read may move: {c:#}");
            for m in c["memory"].as_array().expect("memory") {
                assert_eq!(m["counted"], false, "{m:#}");
                assert_eq!((m["newly_read"].clone(), m["no_longer_read"].clone()), (json!([]), json!([])), "{m:#}");
                let over: Vec<Value> = ["overread_newly_read", "overread_no_longer_read"]
                    .iter()
                    .flat_map(|k| m.get(*k).and_then(Value::as_array).cloned().unwrap_or_default())
                    .collect();
                // Past the terminator at offset 100, less than one 64-byte block.
                for r in &over {
                    let (s, e) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
                    assert!(s >= 100 && e - s < 64, "{r}");
                }
                noisy.push(over);
            }
        }
    }
    // The libc in use scans in aligned blocks of at least 32 bytes, so at
    // least one 48-byte shift moved the block boundary.
    assert!(!noisy.is_empty(), "no over-read moved: the test did not exercise the rule");
}
