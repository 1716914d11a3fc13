//! Processes: forked children are recorded in the same trace (events carry
//! their tids, `Fork` names the pids), children that exec keep working, a
//! library may fork inside a call, `--no-follow` records only the first
//! process, and `ffirec analyze` keeps each process's allocations apart.
#![allow(clippy::unwrap_used)] // test code

mod common;
mod record_support;

use std::collections::BTreeSet;

use ffirec_format::Event;
use record_support::{bytes, native, ranges_in, record, Recorded};
use serde_json::Value;

/// (tid, symbol) of every call made from the main executable, in order.
fn host_calls_by_tid(r: &Recorded, ev: &[Event]) -> Vec<(u32, String)> {
    let trace = r.trace();
    let names = record_support::host_calls(&trace, ev);
    let main = &trace.modules()[0];
    let tids = ev.iter().filter_map(|e| match e {
        Event::Call { tid, return_addr, .. } if main.contains(*return_addr) => Some(*tid),
        _ => None,
    });
    tids.zip(names).collect()
}

fn forks(ev: &[Event]) -> Vec<(u32, u32, u32)> {
    ev.iter()
        .filter_map(|e| match *e {
            Event::Fork { tid, parent_pid, child_pid } => Some((tid, parent_pid, child_pid)),
            _ => None,
        })
        .collect()
}

/// The events of one thread.
fn of_tid(ev: &[Event], tid: u32) -> Vec<Event> {
    ev.iter().filter(|e| e.tid() == Some(tid)).cloned().collect()
}

fn root_pid(r: &Recorded) -> u32 {
    r.trace().modules()[0].pid
}

fn analyze(r: &Recorded) -> Value {
    let out = common::run(
        common::ffirec().args(["analyze", "--format", "json", "--no-dwarf"]).arg(&r.trace),
        common::TIMEOUT,
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("analyze JSON: {e}\n{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn forked_child_and_parent_calls_in_one_trace() {
    let prog = common::program("fork_host");
    let nat = native(&prog, &[]);
    let r = record("fork_follow", &prog, &[], &["--lib", "librecfx.so"]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.stdout, "child 627 1\nchild status 7\nparent 68\n");
    assert_eq!((r.code(), nat.status.code()), (3, Some(3)), "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    let f = forks(&ev);
    assert_eq!(f.len(), 1, "{f:?}");
    let child = f[0].2;
    assert_eq!((f[0].0, f[0].1), (parent, parent));
    assert_ne!(child, parent);
    let s = |n: &str| n.to_string();
    assert_eq!(
        host_calls_by_tid(&r, &ev),
        vec![(child, s("sum_ints")), (child, s("sum_ints")), (parent, s("sum_ints"))]
    );
    // Exact bytes, each process in its own buffers (same addresses in both).
    let (pbuf, cbuf) = (r.addr("pbuf"), r.addr("cbuf"));
    let c = bytes(&of_tid(&ev, child));
    assert_eq!(ranges_in(&c.read, cbuf, 40), vec![(8, 32)]);
    assert_eq!(ranges_in(&c.read, pbuf, 64), vec![(0, 20)]);
    assert!(c.written.is_empty());
    let p = bytes(&of_tid(&ev, parent));
    assert_eq!(ranges_in(&p.read, pbuf, 64), vec![(16, 48)]);
    assert_eq!(p.read.len(), 32);
    assert!(p.written.is_empty());
    // Every access is one of the two processes'.
    let all = bytes(&ev);
    assert_eq!(all.read.len(), c.read.union(&p.read).count());

    // The analysis keeps the processes apart: the child's read past its
    // shrunk block is out of bounds in the child only (in the parent the
    // same bytes lie inside its 64-byte block).
    let rep = analyze(&r);
    let calls: Vec<(u64, u64)> = rep["calls"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|c| c["symbol"] == "sum_ints")
        .map(|c| (c["call"].as_u64().unwrap(), c["pid"].as_u64().unwrap()))
        .collect();
    assert_eq!(calls, vec![(0, u64::from(child)), (1, u64::from(child)), (2, u64::from(parent))]);
    let findings = rep["findings"].as_array().unwrap();
    let oob: Vec<&Value> = findings.iter().filter(|f| f["kind"] == "out_of_bounds").collect();
    assert_eq!(oob.len(), 1, "{findings:#?}");
    let o = oob[0];
    assert_eq!(o["pid"].as_u64(), Some(u64::from(child)));
    assert_eq!(o["call"]["call"], 1);
    assert_eq!(o["addr"].as_str().unwrap(), format!("{:#x}", pbuf + 16));
    assert_eq!(o["size"], 4);
    let a = &o["allocation"];
    assert_eq!(
        (a["base"].as_str().unwrap(), a["size"].as_u64(), a["relation"].as_str()),
        (format!("{pbuf:#x}").as_str(), Some(16), Some("after"))
    );
    assert_eq!(a["distance"], 0);
    assert!(findings.iter().all(|f| f["pid"].as_u64() == Some(u64::from(child))), "{findings:#?}");
}

#[test]
fn no_follow_records_only_the_first_process() {
    let prog = common::program("fork_host");
    let r = record("fork_no_follow", &prog, &[], &["--lib", "librecfx.so", "--no-follow"]);
    assert_eq!(r.stdout, "child 627 1\nchild status 7\nparent 68\n");
    assert_eq!(r.code(), 3, "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    assert_eq!(forks(&ev).len(), 1);
    assert_eq!(host_calls_by_tid(&r, &ev), vec![(parent, "sum_ints".to_string())]);
    let tids: BTreeSet<u32> = ev.iter().filter_map(Event::tid).collect();
    assert_eq!(tids, BTreeSet::from([parent]));
    let p = bytes(&ev);
    assert_eq!(ranges_in(&p.read, r.addr("pbuf"), 64), vec![(16, 48)]);
    assert_eq!(p.read.len(), 32);
}

#[test]
fn system_posix_spawn_and_vfork_children_exec() {
    let prog = common::program("fork_spawn");
    let nat = native(&prog, &[]);
    let r = record("fork_spawn", &prog, &[], &["--lib", "librecfx.so"]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.stdout, "hi\nsystem 0\nposix_spawn 0 0\nfrom vfork\nvfork exec 0\nvfork exit 9\nsum 36\n");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    // Four children: system's and posix_spawn's CLONE_VFORK clones and two vforks.
    let f = forks(&ev);
    assert_eq!(f.len(), 4, "{f:?}");
    assert!(f.iter().all(|&(t, p, _)| t == parent && p == parent), "{f:?}");
    // Three of them exec (the shell, /bin/true, /bin/echo); the new images are re-read.
    let execs: Vec<(u32, String)> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Exec { pid, path, .. } => Some((*pid, path.rsplit('/').next().unwrap_or("").to_string())),
            _ => None,
        })
        .collect();
    let children: Vec<u32> = f.iter().map(|x| x.2).collect();
    assert_eq!(execs.len(), 3, "{execs:?}");
    assert_eq!(execs.iter().map(|e| e.0).collect::<Vec<_>>(), children[..3].to_vec());
    assert_eq!(execs[1].1, "true");
    assert_eq!(execs[2].1, "echo");
    let t = r.trace();
    for (pid, name) in &execs {
        assert!(
            t.modules().iter().any(|m| m.pid == *pid && m.path.ends_with(name.as_str())),
            "no module table entry for {name} in {pid}"
        );
    }
    assert_eq!(host_calls_by_tid(&r, &ev), vec![(parent, "sum_ints".to_string())]);
    assert_eq!(ranges_in(&bytes(&ev).read, r.addr("buf"), 32), vec![(0, 32)]);
}

#[test]
fn library_that_forks_inside_a_call() {
    let prog = common::program("fork_lib_host");
    let nat = native(&prog, &[]);
    let r = record("fork_in_lib", &prog, &[], &["--lib", "libforkfx.so"]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.stdout, "first 26010\nsecond 11007\n");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    let f = forks(&ev);
    assert_eq!(f.len(), 2, "{f:?}");
    let (c1, c2) = (f[0].2, f[1].2);
    // Each child continues the call it was forked in, as a call of its own
    // (it exits inside it: no Return).
    let s = |n: &str| n.to_string();
    assert_eq!(
        host_calls_by_tid(&r, &ev),
        vec![(parent, s("fork_sum")), (c1, s("fork_sum")), (parent, s("fork_sum")), (c2, s("fork_sum"))]
    );
    let returns: Vec<u32> = ev
        .iter()
        .filter_map(|e| match *e {
            Event::Return { tid, .. } if tid != parent => Some(tid),
            _ => None,
        })
        .collect();
    assert_eq!(returns, Vec::<u32>::new());
    // The child inherited the call's guards: its reads are recorded, exactly.
    let buf = r.addr("buf");
    let read = |tid| ranges_in(&bytes(&of_tid(&ev, tid)).read, buf, 32);
    assert_eq!(read(c1), vec![(0, 16)]);
    assert_eq!(read(c2), vec![(8, 16)]);
    assert_eq!(read(parent), vec![(16, 32)]);
    let exits: Vec<(u32, i32)> = ev
        .iter()
        .filter_map(|e| match *e {
            Event::ThreadExit { tid, code } => Some((tid, code)),
            _ => None,
        })
        .collect();
    assert!(exits.contains(&(c1, 10)) && exits.contains(&(c2, 7)), "{exits:?}");
}

#[test]
fn host_init_tracks_the_first_process_only() {
    // --host-init tracks host writes in the first process; a forked child's
    // host bytes are unknown (never reported): its cbuf, written by the
    // child's host code, is no uninitialised read.
    let prog = common::program("fork_host");
    let r = record("fork_host_init", &prog, &[], &["--lib", "librecfx.so", "--host-init"]);
    assert_eq!(r.stdout, "child 627 1\nchild status 7\nparent 68\n");
    assert_eq!(r.code(), 3, "{}", r.stderr);
    let rep = analyze(&r);
    let kinds: Vec<(&str, u64)> = rep["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| (f["kind"].as_str().unwrap(), f["pid"].as_u64().unwrap()))
        .collect();
    let child = forks(&r.events())[0].2;
    assert_eq!(kinds, vec![("out_of_bounds", u64::from(child))]);
}

#[test]
fn concurrent_foreign_calls_in_two_processes() {
    // Both processes are inside slow_dup at once; each one's allocation in
    // its call is the library's (one foreign tid per process in the shim).
    let prog = common::program("fork_concurrent");
    let r = record("fork_concurrent", &prog, &[], &["--lib", "libforkfx.so"]);
    let mut lines: Vec<&str> = r.stdout.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, vec!["child 100", "parent 100 0"]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    let child = forks(&ev)[0].2;
    // Each call's Alloc: 16 bytes, by the library, from the foreign arena.
    let arena = ffirec_recorder::alloc::DEFAULT_ARENA;
    let mut allocs: Vec<(u32, ffirec_format::Domain, bool)> = ev
        .iter()
        .filter_map(|e| match *e {
            Event::Alloc { tid, size: 16, ptr, domain, .. } if tid == parent || tid == child => {
                Some((tid, domain, arena.contains(&ptr)))
            }
            _ => None,
        })
        .filter(|a| a.1 == ffirec_format::Domain::Foreign || a.2)
        .collect();
    allocs.sort_unstable_by_key(|a| a.0);
    use ffirec_format::Domain::Foreign;
    let mut want = vec![(parent, Foreign, true), (child, Foreign, true)];
    want.sort_unstable_by_key(|a| a.0);
    assert_eq!(allocs, want);
    // The calls overlapped: the child's Call came before the parent's Return.
    let pos = |f: &dyn Fn(&Event) -> bool| ev.iter().position(f).unwrap();
    let child_call = pos(&|e| matches!(e, Event::Call { tid, .. } if *tid == child));
    let parent_ret = pos(&|e| matches!(e, Event::Return { tid, .. } if *tid == parent));
    assert!(child_call < parent_ret);
}

#[test]
fn library_runs_system_inside_a_call() {
    // posix_spawn's CLONE_VFORK child shares the guarded memory of the call
    // until it execs; the command string it passes is on the guarded heap.
    let prog = common::program("fork_lib_system");
    let nat = native(&prog, &[]);
    let r = record("fork_lib_system", &prog, &[], &["--lib", "libforkfx.so"]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.stdout, "from-lib\nstatus 5\n");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    let f = forks(&ev);
    assert_eq!(f.len(), 1, "{f:?}");
    let execs: Vec<u32> = ev
        .iter()
        .filter_map(|e| match *e {
            Event::Exec { pid, .. } => Some(pid),
            _ => None,
        })
        .collect();
    assert_eq!(execs, vec![f[0].2]);
    assert_eq!(host_calls_by_tid(&r, &ev)[0], (parent, "lib_system".to_string()));
}

/// A real python3 binary (not a wrapper script) with zlib and multiprocessing.
fn python() -> Option<std::path::PathBuf> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys, zlib, multiprocessing, subprocess; print(sys.executable)"])
        .output()
        .ok()?;
    let exe = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || exe.is_empty() {
        eprintln!("note: no python3 with zlib and multiprocessing; test skipped");
        return None;
    }
    Some(exe.into())
}

const MP_PY: &str = "import multiprocessing as mp, zlib, subprocess
def work(i):
    d = bytes(range(256)) * (i + 1)
    return zlib.crc32(zlib.compress(d))
if __name__ == '__main__':
    mp.set_start_method('fork')
    with mp.Pool(2) as p:
        print(p.map(work, range(4)))
    print(subprocess.run(['echo', 'sub'], capture_output=True).stdout)
    print(work(9))
";

#[test]
fn python_multiprocessing_workers_call_zlib() {
    let Some(py) = python() else { return };
    let nat = native(&py, &["-c", MP_PY]);
    let r = record("fork_python_mp", &py, &["-c", MP_PY], &["--lib", "libz.so*"]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.stdout, "[2320552445, 3213480209, 4130155209, 959860250]\nb'sub\\n'\n3656055523\n");
    assert_eq!((r.code(), nat.status.code()), (0, Some(0)), "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    let children: BTreeSet<u32> = forks(&ev).iter().map(|f| f.2).collect();
    // crc32: four in the pool's workers (forked children), one in the parent.
    let crc: Vec<u32> = record_support::call_names(&r.trace(), &ev)
        .into_iter()
        .zip(ev.iter().filter_map(|e| match *e {
            Event::Call { tid, .. } => Some(tid),
            _ => None,
        }))
        .filter(|(n, _)| n == "crc32")
        .map(|(_, tid)| tid)
        .collect();
    assert_eq!(crc.len(), 5, "{crc:?}");
    assert_eq!(crc.iter().filter(|&&t| t == parent).count(), 1, "{crc:?}");
    let workers: BTreeSet<u32> = crc.iter().copied().filter(|&t| t != parent).collect();
    assert!(!workers.is_empty() && workers.len() <= 2 && workers.is_subset(&children), "{crc:?} {children:?}");
    // Pool workers terminated by their parent (SIGTERM) did not crash.
    let rep = analyze(&r);
    let kinds: BTreeSet<&str> =
        rep["findings"].as_array().unwrap().iter().map(|f| f["kind"].as_str().unwrap()).collect();
    assert!(!kinds.contains("crash"), "{kinds:?}");
    // subprocess: a child that execs echo.
    let echo = ev
        .iter()
        .any(|e| matches!(e, Event::Exec { pid, path, .. } if children.contains(pid) && path.ends_with("/echo")));
    assert!(echo);
}

#[test]
fn no_follow_library_runs_system_inside_a_call() {
    // --no-follow: the vfork child shares the call's guarded memory, so it
    // is followed silently until it execs (its exec needs its arguments
    // opened), then detached; nothing of it is recorded.
    let prog = common::program("fork_lib_system");
    let r = record("fork_lib_system_no_follow", &prog, &[], &["--lib", "libforkfx.so", "--no-follow"]);
    assert_eq!(r.stdout, "from-lib\nstatus 5\n");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    let parent = root_pid(&r);
    let tids: BTreeSet<u32> = ev.iter().filter_map(Event::tid).collect();
    assert_eq!(tids, BTreeSet::from([parent]));
    assert_eq!(forks(&ev).len(), 1);
    assert!(!ev.iter().any(|e| matches!(e, Event::Exec { .. })));
}

#[test]
fn fork_inside_a_callback_returns_through_the_library_in_both() {
    let prog = common::program("fork_callback");
    let nat = native(&prog, &[]);
    let r = record("fork_callback", &prog, &[], &["--lib", "librecfx.so"]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout));
    assert_eq!(r.stdout, "child 106 5\nparent 206 5\n");
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    let child = forks(&ev)[0].2;
    // The child's view: the call and its callback in progress (inherited),
    // the callback's return, the library's read of p[3], its return.
    let mine: Vec<String> = of_tid(&ev, child)
        .iter()
        .filter_map(|e| match *e {
            Event::Call { .. } => Some("call".to_string()),
            Event::Callback { .. } => Some("callback".into()),
            Event::CallbackReturn { rax, .. } => Some(format!("callback_return {rax}")),
            Event::Access { .. } => Some("access".into()),
            Event::Return { rax, .. } => Some(format!("return {rax}")),
            _ => None,
        })
        .collect();
    assert_eq!(mine, vec!["call", "callback", "callback_return 100", "access", "return 106"]);
    let buf = r.addr("buf");
    assert_eq!(ranges_in(&bytes(&of_tid(&ev, child)).read, buf, 16), vec![(12, 16)]);
    assert_eq!(ranges_in(&bytes(&of_tid(&ev, root_pid(&r))).read, buf, 16), vec![(0, 4), (12, 16)]);
}
