//! `ffirec record` as a command: exit codes, environment errors, default
//! output name and library selection, dlopen, Ctrl-C.

mod common;
mod record_support;

use std::time::Duration;

use record_support::{bytes, call_names, host_calls, ranges_in, record};

#[test]
fn record_program_not_found_exits_127() {
    let dir = common::scratch("cli_notfound");
    let out = common::run(
        common::ffirec().args(["record", "-o"]).arg(dir.join("t.ffr")).args(["--", "/nonexistent/prog"]),
        common::TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(127));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("ffirec: error: /nonexistent/prog: program not found"), "{err}");
    let out = common::run(
        common::ffirec().args(["record", "-o"]).arg(dir.join("t.ffr")).args(["--", "no-such-command-ffirec"]),
        common::TIMEOUT,
    );
    assert_eq!(out.status.code(), Some(127));
    assert!(!dir.join("t.ffr").exists() && !dir.join("t.ffr.partial").exists());
}

#[test]
fn record_program_not_executable_exits_126() {
    let dir = common::scratch("cli_noexec");
    let f = dir.join("plain.txt");
    std::fs::write(&f, "not a program\n").unwrap();
    let out =
        common::run(common::ffirec().args(["record", "-o"]).arg(dir.join("t.ffr")).arg("--").arg(&f), common::TIMEOUT);
    assert_eq!(out.status.code(), Some(126));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot execute: permission denied"), "{err}");
}

#[test]
fn record_default_output_name_selection_and_exit_status() {
    let prog = common::program("rec_host");
    let dir = common::scratch("cli_default");
    // No --lib: every non-runtime shared object is foreign, and we say which.
    let out =
        common::run(common::ffirec().current_dir(&dir).args(["record", "--"]).arg(&prog).arg("sum"), common::TIMEOUT);
    assert_eq!(out.status.code(), Some(0));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.lines().any(|l| l == "ffirec: foreign: librecfx.so"), "{err}");
    assert!(
        err.lines().any(|l| l.starts_with("ffirec: recorded 10 accesses in ") && l.contains("ffirec-rec_host.ffr")),
        "{err}"
    );
    assert!(dir.join("ffirec-rec_host.ffr").exists());
    // The program's own exit status comes through.
    let out =
        common::run(common::ffirec().current_dir(&dir).args(["record", "--"]).arg(&prog).arg("bogus"), common::TIMEOUT);
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn record_unmatched_lib_pattern_warns() {
    let prog = common::program("rec_host");
    let r = record("cli_unmatched", &prog, &["sum"], &["--lib", "libnever-there.so"]);
    assert_eq!(r.code(), 0);
    assert!(
        r.stderr.contains("ffirec: warning: --lib libnever-there.so never matched a loaded object"),
        "{}",
        r.stderr
    );
    assert_eq!(r.events().iter().filter(|e| matches!(e, ffirec_format::Event::Access { .. })).count(), 0);
}

#[test]
fn record_dlopened_library_is_matched_when_it_appears() {
    let prog = common::program("rec_dlopen");
    let lib = common::library("reclate");
    let r = record("cli_dlopen", &prog, &[lib.to_str().unwrap()], &["--lib", "libreclate.so"]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(r.stdout, "21\n15\n");
    let ev = r.events();
    assert_eq!(host_calls(&r.trace(), &ev), vec!["late_sum", "late_sum"]);
    assert!(
        call_names(&r.trace(), &ev).contains(&"_init".to_string()),
        "the constructor run by dlopen is a foreign call too"
    );
    let b = bytes(&ev);
    assert_eq!(ranges_in(&b.read, r.addr("buf"), 32), vec![(0, 24)]);
}

#[test]
fn record_second_sigint_finishes_a_valid_trace() {
    let dir = common::scratch("cli_sigint");
    let trace = dir.join("t.ffr");
    let mut child = common::ffirec()
        .args(["record", "-o"])
        .arg(&trace)
        .args(["--", "sleep", "30"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(700));
    let pid = child.id() as i32;
    // SAFETY: signalling our own child.
    unsafe { libc::kill(pid, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(300));
    assert!(child.try_wait().unwrap().is_none(), "the first SIGINT must not stop ffirec");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGINT) };
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "ffirec did not finish after the second SIGINT");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(137));
    let t = ffirec_format::Trace::open(&trace).expect("valid trace after Ctrl-C");
    assert_eq!(t.completeness(), &ffirec_format::Completeness::Complete);
}

#[test]
fn record_no_follow_child_runs_untraced_with_real_protections() {
    let prog = common::program("rec_fork");
    let r = record("cli_fork", &prog, &[], &["--lib", "librecfx.so", "--no-follow"]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    assert_eq!(r.stdout, "child 36 1\nchild status 0\nparent 10\n");
    let ev = r.events();
    assert_eq!(host_calls(&r.trace(), &ev), vec!["sum_ints"]);
    assert_eq!(ranges_in(&bytes(&ev).read, r.addr("buf"), 32), vec![(0, 16)]);
    assert_eq!(ev.iter().filter(|e| matches!(e, ffirec_format::Event::Fork { .. })).count(), 1);
}

#[test]
fn record_neutral_pattern_and_path_glob() {
    let prog = common::program("rec_host");
    // --neutral takes the library out of the default foreign set.
    let r = record("cli_neutral", &prog, &["sum"], &["--neutral", "librecfx*"]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    assert_eq!(ev.iter().filter(|e| matches!(e, ffirec_format::Event::Call { .. })).count(), 0);
    assert!(!r.stderr.contains("ffirec: foreign:"), "{}", r.stderr);
    // A pattern with a slash matches the full path.
    let glob = format!("{}/librecfx.*", common::fixtures_out().display());
    let r = record("cli_glob", &prog, &["sum"], &["--lib", &glob]);
    assert_eq!(r.code(), 0, "{}", r.stderr);
    let ev = r.events();
    assert_eq!(host_calls(&r.trace(), &ev), vec!["sum_ints"]);
    assert_eq!(ranges_in(&bytes(&ev).read, r.addr("buf"), 64), vec![(0, 40)]);
}
