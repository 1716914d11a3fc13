//! `ffirec diff` with threads: two workers race through the same calls and
//! allocation sites; calls and allocations are matched per thread, so v1
//! against v1 is empty whatever the interleaving, and v2's out-of-bounds read
//! shows once per call on each thread.

mod common;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use serde_json::{json, Value};

fn host() -> PathBuf {
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(|| common::program("diff_threads_host")).clone()
}

fn record(dir: &Path, name: &str, lib_dir: Option<&Path>, extra: u32) -> PathBuf {
    let trace = dir.join(name);
    let mut cmd = common::ffirec();
    cmd.args(["record", "-q", "--lib", "libdiffv.so", "-o"]).arg(&trace).arg("--").arg(host()).arg(extra.to_string());
    if let Some(d) = lib_dir {
        cmd.env("LD_LIBRARY_PATH", d);
    }
    let out = common::run(&mut cmd, common::TIMEOUT);
    assert_eq!(out.status.code(), Some(0), "record failed:\n{}", String::from_utf8_lossy(&out.stderr));
    trace
}

fn diff_json(old: &Path, new: &Path) -> (Option<i32>, Value) {
    let out = common::run(common::ffirec().arg("diff").arg(old).arg(new).args(["--format", "json"]), common::TIMEOUT);
    let j = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code(), j)
}

#[test]
fn diff_threads_match_per_thread() {
    let v2 = common::library_variant("diffv", "v2", &["-DV2"]);
    let dir = common::scratch("diff_threads");
    let a = record(&dir, "a.ffr", None, 0);
    for extra in [0, 5] {
        let b = record(&dir, &format!("b{extra}.ffr"), None, extra);
        let (code, j) = diff_json(&a, &b);
        assert_eq!(code, Some(0), "v1 vs v1 (extra {extra}): {j:#}");
        assert_eq!(j["summary"]["differences"], 0);
        assert_eq!(j["summary"]["matched_calls"], 14, "3 rounds x 2 calls x 2 threads + 2 destructors");
    }

    let n = record(&dir, "v2.ffr", v2.parent(), 0);
    let (code, j) = diff_json(&a, &n);
    assert_eq!(code, Some(3));
    assert_eq!(
        j["summary"],
        json!({"differences": 18, "matched_calls": 14, "changed_calls": 12, "only_in_old": 0, "only_in_new": 0,
               "new_findings": 6, "fixed_findings": 0, "noise": 6})
    );
    // Worker k (thread k+1) sums 16 + 16k bytes: v2 reads one more, per round.
    let mut sums: Vec<(u64, String, Value, String)> = j["calls"]
        .as_array()
        .expect("calls")
        .iter()
        .filter(|c| c["symbol"] == "diffv_sum")
        .map(|c| {
            let m = &c["memory"][0];
            (
                c["thread"].as_u64().unwrap(),
                c["name"].as_str().unwrap().to_string(),
                m["newly_read"].clone(),
                m["label"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    sums.sort_by(|x, y| (x.0, &x.1).cmp(&(y.0, &y.1)));
    let got: Vec<(u64, String, Value, String)> = sums
        .into_iter()
        .map(|(t, n, r, l)| {
            (
                t,
                n,
                r,
                l.split_once('+')
                    .map(|(_, rest)| rest.trim_start_matches(|c: char| c.is_ascii_hexdigit() || c == 'x').to_string())
                    .unwrap_or(l),
            )
        })
        .collect();
    let want: Vec<(u64, String, Value, String)> = [1u64, 2]
        .iter()
        .flat_map(|&t| {
            (0..3).map(move |k| {
                let size = 16 * t;
                (t, format!("diffv_sum#{k}"), json!([[size, size + 1]]), format!("#{k}@t{t} (malloc {size})"))
            })
        })
        .collect();
    assert_eq!(got, want);
    let f: Vec<(Option<u64>, Option<&str>)> = j["new_findings"]
        .as_array()
        .expect("findings")
        .iter()
        .map(|f| (f["thread"].as_u64(), f["call"].as_str()))
        .collect();
    let mut f = f;
    f.sort();
    assert_eq!(
        f,
        vec![
            (Some(1), Some("diffv_sum#0")),
            (Some(1), Some("diffv_sum#1")),
            (Some(1), Some("diffv_sum#2")),
            (Some(2), Some("diffv_sum#0")),
            (Some(2), Some("diffv_sum#1")),
            (Some(2), Some("diffv_sum#2")),
        ]
    );
}
