//! `ffirec analyze` end to end: record a C fixture under `ffirec record`,
//! analyse the trace, and check exact findings and footprints in the JSON.

mod common;

use std::path::PathBuf;
use std::sync::OnceLock;

use serde_json::Value;

fn host() -> PathBuf {
    // Built once: concurrent `common::program` calls for the same fixture race.
    static HOST: OnceLock<PathBuf> = OnceLock::new();
    HOST.get_or_init(|| common::program("ana_host")).clone()
}

struct Analysed {
    json: Value,
    code: i32,
    trace: PathBuf,
    /// `name=0x…` lines the fixture printed.
    addrs: Vec<(String, u64)>,
}

impl Analysed {
    fn addr(&self, name: &str) -> u64 {
        self.addrs.iter().find(|(n, _)| n == name).map(|&(_, a)| a).unwrap_or_else(|| panic!("no {name}="))
    }
    fn findings(&self) -> &Vec<Value> {
        self.json["findings"].as_array().expect("findings array")
    }
    /// The first call to `symbol`.
    fn call(&self, symbol: &str) -> &Value {
        self.json["calls"]
            .as_array()
            .expect("calls")
            .iter()
            .find(|c| c["symbol"] == symbol)
            .unwrap_or_else(|| panic!("no call to {symbol}: {:#}", self.json["calls"]))
    }
    /// Id of the allocation whose base is `addr`.
    fn alloc_id(&self, addr: u64) -> u64 {
        let base = format!("{addr:#x}");
        self.json["allocations"]
            .as_array()
            .expect("allocations")
            .iter()
            .find(|a| a["base"] == base.as_str())
            .and_then(|a| a["id"].as_u64())
            .unwrap_or_else(|| panic!("no allocation at {base}: {:#}", self.json["allocations"]))
    }
}

fn analyse(test: &str, scenario: &str) -> Analysed {
    analyse_expecting(test, scenario, 0)
}

/// Records `scenario` (whose own exit status must be `status`) and analyses it.
fn analyse_expecting(test: &str, scenario: &str, status: i32) -> Analysed {
    analyse_with(test, scenario, status, &[])
}

/// [`analyse_expecting`] with extra `ffirec record` flags.
fn analyse_with(test: &str, scenario: &str, status: i32, flags: &[&str]) -> Analysed {
    let prog = host();
    let dir = common::scratch(test);
    let trace = dir.join("trace.ffr");
    let out = common::run(
        common::ffirec()
            .args(["record", "-q"])
            .args(flags)
            .args(["--lib", "libanafx.so", "-o"])
            .arg(&trace)
            .arg("--")
            .arg(&prog)
            .arg(scenario),
        common::TIMEOUT,
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(status), "record failed:\n{stderr}");
    let addrs = stderr
        .lines()
        .filter_map(|l| l.split_once("=0x"))
        .filter_map(|(k, v)| Some((k.to_string(), u64::from_str_radix(v.trim(), 16).ok()?)))
        .collect();
    let out = common::run(common::ffirec().args(["analyze", "--format", "json"]).arg(&trace), common::TIMEOUT);
    let json: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("analyze output is not JSON ({e}); stderr:\n{}", String::from_utf8_lossy(&out.stderr))
    });
    assert_eq!(json["schema"], "ffirec.report/1");
    Analysed { json, code: out.status.code().unwrap_or(-1), trace, addrs }
}

fn kinds(a: &Analysed) -> Vec<&str> {
    a.findings().iter().map(|f| f["kind"].as_str().unwrap_or("?")).collect()
}

#[test]
fn analyze_host_malloc64_16_written_32_read() {
    // Host writes tracked (--host-init): the 16 bytes memset wrote are
    // initialised, the next 16 are not — one exact finding, bytes [16,32).
    let a = analyse_with("analyze_uninit", "uninit", 0, &["--host-init"]);
    let buf = a.addr("buf");
    let id = a.alloc_id(buf);
    let c = a.call("sum_bytes");
    let t = &c["touched"][0];
    assert_eq!(
        (t["alloc"].as_u64(), &t["read"], &t["written"]),
        (Some(id), &serde_json::json!([[0, 32]]), &serde_json::json!([]))
    );
    assert_eq!(t["args"], serde_json::json!([0]));
    assert_eq!(a.json["trace"]["track_host_init"], true);
    assert_eq!(kinds(&a), vec!["uninit"]);
    let f = &a.findings()[0];
    assert_eq!((f["addr"].as_str(), f["size"].as_u64()), (Some(format!("{:#x}", buf + 16).as_str()), Some(16)));
    assert_eq!(f["verdict"], "exact");
    assert_eq!(
        (f["allocation"]["relation"].as_str(), f["allocation"]["distance"].as_u64()),
        (Some("inside"), Some(16))
    );
    assert_eq!(a.json["summary"]["unknown_bytes"], 0);
    assert_eq!(a.code, 1);
}

#[test]
fn analyze_host_malloc64_without_host_init_is_unknown() {
    // With --no-host-init the host's writes are not tracked: its bytes are
    // unknown, never reported.
    let a = analyse_with("analyze_uninit_untracked", "uninit", 0, &["--no-host-init"]);
    assert_eq!(a.json["trace"]["track_host_init"], false);
    assert_eq!(kinds(&a), Vec::<&str>::new());
    assert_eq!(a.json["summary"]["unknown_bytes"], 32);
    assert_eq!(a.code, 0);
}

#[test]
fn analyze_off_by_one_after_malloc10() {
    let a = analyse("analyze_oob", "oob");
    let buf = a.addr("buf");
    assert_eq!(kinds(&a), vec!["out_of_bounds"]);
    let f = &a.findings()[0];
    assert_eq!(f["addr"], format!("{:#x}", buf + 10));
    assert_eq!((f["size"].as_u64(), f["count"].as_u64(), f["read"].as_bool()), (Some(1), Some(1), Some(true)));
    let al = &f["allocation"];
    assert_eq!(
        (al["relation"].as_str(), al["distance"].as_u64(), al["size"].as_u64()),
        (Some("after"), Some(0), Some(10))
    );
    assert_eq!(al["id"].as_u64(), Some(a.alloc_id(buf)));
    // Named by number, allocator, size and site.
    let label = format!("alloc#{} (malloc 10 at main+0x", a.alloc_id(buf));
    assert!(al["label"].as_str().is_some_and(|l| l.starts_with(&label)), "{al:#}");
    assert_eq!(f["at"]["symbol"], "sum_off_by_one");
    assert_eq!(f["at"]["module"], "libanafx.so");
    assert!(f["at"]["file"].as_str().is_some_and(|p| p.ends_with("libanafx.c")), "{:#}", f["at"]);
    assert_eq!(f["at"]["line"], 17);
    assert_eq!(f["call"]["symbol"], "sum_off_by_one");
    assert_eq!(f["call"]["call_site"]["symbol"], "main");
    assert_eq!(a.call("sum_off_by_one")["touched"][0]["read"], serde_json::json!([[0, 11]]));
    assert_eq!(a.code, 1);
}

#[test]
fn analyze_read_after_free() {
    let a = analyse("analyze_uaf", "uaf");
    let buf = a.addr("buf");
    assert_eq!(kinds(&a), vec!["use_after_free"]);
    let f = &a.findings()[0];
    assert_eq!(f["addr"], format!("{buf:#x}"));
    // sum_bytes(p, 8) after free(p): eight 1-byte reads of bytes [0,8) of the freed block.
    assert_eq!((f["size"].as_u64(), f["count"].as_u64()), (Some(8), Some(8)));
    assert_eq!(
        (f["read"].as_bool(), f["write"].as_bool(), f["verdict"].as_str()),
        (Some(true), Some(false), Some("exact"))
    );
    assert_eq!(
        (f["allocation"]["relation"].as_str(), f["allocation"]["size"].as_u64(), f["allocation"]["distance"].as_u64()),
        (Some("freed"), Some(48), Some(0))
    );
    assert_eq!(f["allocation"]["id"].as_u64(), Some(a.alloc_id(buf)));
    assert_eq!((f["at"]["symbol"].as_str(), f["at"]["line"].as_u64()), (Some("sum_bytes"), Some(10)));
    assert_eq!(
        (f["call"]["symbol"].as_str(), f["call"]["call_site"]["symbol"].as_str()),
        (Some("sum_bytes"), Some("main"))
    );
    let t = &a.call("sum_bytes")["touched"][0];
    assert_eq!((t["alloc"].as_u64(), &t["read"]), (Some(a.alloc_id(buf)), &serde_json::json!([[0, 8]])));
    assert_eq!(a.code, 1);
}

#[test]
fn analyze_linked_list_next_pointer_exposes_node() {
    let a = analyse("analyze_list", "list");
    let (na, nb) = (a.addr("a"), a.addr("b"));
    let (ida, idb) = (a.alloc_id(na), a.alloc_id(nb));
    assert_eq!(kinds(&a), vec!["exposed_pointer"]);
    let f = &a.findings()[0];
    assert_eq!(f["allocation"]["id"].as_u64(), Some(idb));
    // Loaded from a->next (offset 8 of node a).
    assert_eq!(f["addr"], format!("{:#x}", na + 8));
    let ex = &a.call("list_sum")["exposed"];
    assert_eq!(ex.as_array().map(|v| v.len()), Some(2), "{ex:#}");
    assert_eq!(
        (ex[0]["via"].as_str(), ex[0]["alloc"].as_u64(), ex[0]["arg"].as_u64()),
        (Some("argument"), Some(ida), Some(0))
    );
    assert_eq!(
        (ex[1]["via"].as_str(), ex[1]["alloc"].as_u64(), ex[1]["from_alloc"].as_u64()),
        (Some("load"), Some(idb), Some(ida))
    );
    assert_eq!(a.code, 1);
}

#[test]
fn analyze_clean_call_exits_0() {
    let a = analyse("analyze_clean", "clean");
    assert_eq!(kinds(&a), Vec::<&str>::new());
    assert_eq!(a.code, 0);
    assert_eq!(a.call("sum_bytes")["touched"][0]["read"], serde_json::json!([[0, 64]]));
    assert_eq!(a.json["summary"]["findings"], 0);
}

#[test]
fn analyze_foreign_allocation_never_freed() {
    let a = analyse("analyze_leak", "leak");
    assert_eq!(kinds(&a), vec!["foreign_leak"]);
    let f = &a.findings()[0];
    assert_eq!((f["size"].as_u64(), f["addr"].as_str()), (Some(24), Some(format!("{:#x}", a.addr("kept")).as_str())));
    assert_eq!(f["at"]["symbol"], "keep");
    assert_eq!(f["call"]["symbol"], "keep");
}

#[test]
fn analyze_threads_1_and_2_identical_and_dump_accesses() {
    let a = analyse("analyze_threads", "oob");
    let run = |threads: &str| {
        common::run(
            common::ffirec().args(["analyze", "--format", "json", "--threads", threads]).arg(&a.trace),
            common::TIMEOUT,
        )
        .stdout
    };
    assert!(run("1") == run("2"), "JSON differs between --threads 1 and 2");
    let out = common::run(common::ffirec().args(["dump", "--accesses"]).arg(&a.trace), common::TIMEOUT);
    assert_eq!(out.status.code(), Some(0));
    let lines: Vec<Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    let buf = a.addr("buf");
    let addrs: Vec<String> = (0..=10).map(|i| format!("{:#x}", buf + i)).collect();
    assert_eq!(lines.iter().map(|l| l["addr"].as_str().unwrap_or("").to_string()).collect::<Vec<_>>(), addrs);
    for l in &lines {
        assert_eq!((l["kind"].as_str(), l["size"].as_u64(), l["rw"].as_str()), (Some("access"), Some(1), Some("r")));
        assert_eq!(l["module"], "libanafx.so");
        assert!(l["symbol"].as_str().is_some_and(|s| s.starts_with("sum_off_by_one+0x")), "{l}");
        assert_eq!(l["call"], lines[0]["call"]);
    }
}

#[test]
fn analyze_crash_in_library_names_the_site() {
    // The fixture dies of SIGSEGV (128+11) natively and under ffirec.
    let a = analyse_expecting("analyze_crash", "crash", 139);
    assert_eq!(kinds(&a), vec!["crash"]);
    let f = &a.findings()[0];
    assert_eq!((f["addr"].as_str(), f["at"]["symbol"].as_str()), (Some("0x0"), Some("deref")));
    // `*p` of an `int *`: a 4-byte read at the fault address.
    assert_eq!((f["size"].as_u64(), f["read"].as_bool(), f["write"].as_bool()), (Some(4), Some(true), Some(false)));
    assert!(f["detail"].as_str().is_some_and(|d| d.ends_with("fault address 0x0 (read of 4 bytes at 0x0)")), "{f:#}");
    assert!(f["at"]["file"].as_str().is_some_and(|p| p.ends_with("libanafx.c")), "{:#}", f["at"]);
    assert_eq!(f["at"]["line"], 48);
    assert_eq!(f["call"]["symbol"], "deref");
    assert_eq!(a.json["trace"]["exit"], "signal 11");
    assert_eq!(a.call("deref")["ret"], Value::Null);
    assert_eq!(a.code, 1);
}
