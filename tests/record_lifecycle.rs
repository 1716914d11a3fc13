//! Calls that `exit` makes into a stripped library (its destructors) are
//! named from its dynamic section, and what they do to host memory is
//! recorded like any other call's.

mod common;

use serde_json::Value;

#[test]
fn destructors_of_a_stripped_library_are_named_calls_with_their_footprint() {
    let dir = common::scratch("lifecycle_dtor");
    let trace = dir.join("trace.ffr");
    let prog = common::program("dtor_host");
    let out = common::run(
        common::ffirec().args(["record", "-q", "--lib", "libdtorfx.so", "-o"]).arg(&trace).arg("--").arg(&prog),
        common::TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(0), "record failed:\n{stderr}");
    let buf = stderr
        .lines()
        .find_map(|l| l.strip_prefix("buf=0x"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or_else(|| panic!("no buf= line:\n{stderr}"));

    let out = common::run(common::ffirec().args(["analyze", "--format", "json"]).arg(&trace), common::TIMEOUT);
    let json: Value = serde_json::from_slice(&out.stdout).expect("analyze JSON");
    let calls = json["calls"].as_array().expect("calls");
    let symbols: Vec<&str> = calls.iter().map(|c| c["symbol"].as_str().unwrap_or("?")).collect();
    // glibc runs a library's DT_FINI_ARRAY from the last entry down, then
    // DT_FINI; entry 0 is gcc's __do_global_dtors_aux, entry 1 dtor_fill.
    assert_eq!(symbols, ["dtor_keep", "__fini_array[1]", "__fini_array[0]", "_fini"], "{:#}", json["calls"]);

    let base = format!("{buf:#x}");
    let id = json["allocations"]
        .as_array()
        .expect("allocations")
        .iter()
        .find(|a| a["base"] == base.as_str())
        .and_then(|a| a["id"].as_u64())
        .expect("the calloc'd buffer");
    // dtor_keep only stores the pointer in the library's own data.
    assert_eq!(calls[0]["touched"], serde_json::json!([]), "{:#}", calls[0]);
    // The destructor wrote bytes [0,8) of the buffer and read nothing of it.
    let t = &calls[1]["touched"];
    assert_eq!(t.as_array().map(Vec::len), Some(1), "{t:#}");
    assert_eq!(
        (t[0]["alloc"].as_u64(), &t[0]["read"], &t[0]["written"]),
        (Some(id), &serde_json::json!([]), &serde_json::json!([[0, 8]]))
    );
    assert_eq!(calls[2]["touched"], serde_json::json!([]));
    assert_eq!(calls[3]["touched"], serde_json::json!([]));
}
