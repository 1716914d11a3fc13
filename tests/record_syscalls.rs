//! Foreign-mode syscalls on guarded host memory: exact SyscallAccess ranges
//! relative to the host's buffers, no Gap, output identical to a native run;
//! executable anonymous memory is never guarded.

mod common;
mod record_support;

use ffirec_format::Event;
use record_support::{bytes, native, ranges_in, record, Recorded};

fn host() -> std::path::PathBuf {
    static HOST: std::sync::OnceLock<std::path::PathBuf> = std::sync::OnceLock::new();
    HOST.get_or_init(|| common::program("sys_host")).clone()
}

fn scenario(test: &str, name: &str) -> Recorded {
    let prog = host();
    let r = record(test, &prog, &[name], &["--lib", "libsysfx.so"]);
    let nat = native(&prog, &[name]);
    assert_eq!(r.stdout, String::from_utf8_lossy(&nat.stdout), "stdout differs under ffirec; stderr:\n{}", r.stderr);
    assert_eq!(r.out.status.code(), nat.status.code(), "exit status differs; stderr:\n{}", r.stderr);
    r
}

type Sys = (u64, i64, Vec<(u64, u64, bool)>);

fn syscalls(ev: &[Event]) -> Vec<Sys> {
    ev.iter()
        .filter_map(|e| match e {
            Event::SyscallAccess { nr, ret, ranges, .. } => {
                Some((*nr, *ret, ranges.iter().map(|x| (x.addr, x.len, x.write)).collect()))
            }
            _ => None,
        })
        .collect()
}

#[test]
fn record_stat_getcwd_clock_openat_futex_on_host_buffers() {
    let r = scenario("sys_calls", "calls");
    let ev = r.events();
    let (path, st, cwd, ts, word) = (r.addr("path"), r.addr("st"), r.addr("cwd"), r.addr("ts"), r.addr("word"));
    let cwd_len = r
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("getcwd "))
        .and_then(|l| l.split_once(' '))
        .map(|(n, _)| n.parse::<i64>().unwrap())
        .unwrap();
    let fd = 3; // the first free descriptor
    let path_len = "/tmp/../usr".len() as u64 + 1;
    assert_eq!(
        syscalls(&ev),
        vec![
            (libc::SYS_newfstatat as u64, 0, vec![(path, path_len, false), (st, 144, true)]),
            (libc::SYS_getcwd as u64, cwd_len, vec![(cwd, cwd_len as u64, true)]),
            (libc::SYS_clock_gettime as u64, 0, vec![(ts, 16, true)]),
            (libc::SYS_openat as u64, fd, vec![(path, path_len, false)]),
            (libc::SYS_futex as u64, 0, vec![(word, 4, false)]),
        ],
        "stderr:\n{}",
        r.stderr
    );
    let gaps = ev.iter().filter(|e| matches!(e, Event::Gap { .. })).count();
    assert_eq!(gaps, 0, "stderr:\n{}", r.stderr);
    assert!(!r.stderr.contains("warning"), "stderr:\n{}", r.stderr);
}

#[test]
fn record_sendmsg_recvmsg_ioctl_nanosleep_futex_wake_op_on_host_buffers() {
    let r = scenario("sys_msg", "msg");
    assert_eq!(r.stdout, "sendmsg 11\nfionread 0 11\nrecvmsg 11 hello world flags=0\nnanosleep 0\nwake_op 0 1\n");
    let ev = r.events();
    let a = |n: &str| r.addr(n);
    assert_eq!(
        syscalls(&ev),
        vec![
            (
                libc::SYS_sendmsg as u64,
                11,
                vec![(a("hdr"), 56, false), (a("iov"), 32, false), (a("a"), 5, false), (a("b"), 6, false)]
            ),
            (libc::SYS_ioctl as u64, 0, vec![(a("avail"), 4, true)]),
            (
                libc::SYS_recvmsg as u64,
                11,
                vec![
                    (a("hdr2"), 56, false),
                    (a("iov2"), 32, false),
                    (a("r1"), 4, true),
                    (a("r2"), 7, true),
                    (a("hdr2") + 8, 4, true),
                    (a("hdr2") + 40, 12, true),
                ]
            ),
            (libc::SYS_nanosleep as u64, 0, vec![(a("req"), 16, false)]),
            (libc::SYS_futex as u64, 0, vec![(a("w1"), 4, false), (a("w2"), 4, false), (a("w2"), 4, true)]),
        ],
        "stderr:\n{}",
        r.stderr
    );
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Gap { .. })).count(), 0, "stderr:\n{}", r.stderr);
}

#[test]
fn record_uname_pipe2_poll_sigprocmask_sysinfo_epoll_getdents_on_host_buffers() {
    let r = scenario("sys_misc", "misc");
    let dents: i64 = r.stdout.lines().find_map(|l| l.strip_prefix("getdents64 ")).unwrap().parse().unwrap();
    assert!(dents > 0 && dents <= 4096, "{}", r.stdout);
    assert_eq!(
        r.stdout,
        format!(
            "uname 0 1\npipe2 0\npoll 2 1 4\nsigprocmask 0\nsysinfo 0\nepoll_ctl 0\nepoll_wait 1 77\ngetdents64 {dents}\n"
        )
    );
    let ev = r.events();
    let a = |n: &str| r.addr(n);
    let nr = |x: i64| x as u64;
    assert_eq!(
        syscalls(&ev),
        vec![
            (nr(libc::SYS_uname), 0, vec![(a("uts"), 390, true)]),
            (nr(libc::SYS_pipe2), 0, vec![(a("fds"), 8, true)]),
            (nr(libc::SYS_poll), 2, vec![(a("pfd"), 16, false), (a("pfd") + 6, 2, true), (a("pfd") + 14, 2, true)]),
            (nr(libc::SYS_rt_sigprocmask), 0, vec![(a("set"), 8, false), (a("old"), 8, true)]),
            (nr(libc::SYS_sysinfo), 0, vec![(a("si"), 112, true)]),
            (nr(libc::SYS_epoll_ctl), 0, vec![(a("ev"), 12, false)]),
            (nr(libc::SYS_epoll_wait), 1, vec![(a("evs"), 12, true)]),
            (nr(libc::SYS_getdents64), dents, vec![(a("dents"), dents as u64, true)]),
        ],
        "stderr:\n{}",
        r.stderr
    );
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Gap { .. })).count(), 0, "stderr:\n{}", r.stderr);
}

#[test]
fn record_stat_lstat_statx_fstat_clock_nanosleep_tcgets_tiocgwinsz_on_host_buffers() {
    let r = scenario("sys_files", "files");
    assert_eq!(
        r.stdout, "stat 0\nlstat 0\nstatx 0\nfstat 0\nclock_nanosleep 0\ntcgets 0 tail=1\ntiocgwinsz 0\n",
        "stderr:\n{}",
        r.stderr
    );
    let ev = r.events();
    let a = |n: &str| r.addr(n);
    let nr = |x: i64| x as u64;
    let path = (a("path"), "/tmp/../usr".len() as u64 + 1, false);
    assert_eq!(
        syscalls(&ev),
        vec![
            (nr(libc::SYS_stat), 0, vec![path, (a("st"), 144, true)]),
            (nr(libc::SYS_lstat), 0, vec![path, (a("st2"), 144, true)]),
            (nr(libc::SYS_statx), 0, vec![path, (a("sx"), 256, true)]),
            (nr(libc::SYS_fstat), 0, vec![(a("st3"), 144, true)]),
            (nr(libc::SYS_clock_nanosleep), 0, vec![(a("req"), 16, false)]),
            // The kernel's struct termios is 36 bytes (glibc's 60-byte one is filled from it).
            (nr(libc::SYS_ioctl), 0, vec![(a("tio"), 36, true)]),
            (nr(libc::SYS_ioctl), 0, vec![(a("ws"), 8, true)]),
        ],
        "stderr:\n{}",
        r.stderr
    );
    assert_eq!(ev.iter().filter(|e| matches!(e, Event::Gap { .. })).count(), 0, "stderr:\n{}", r.stderr);
}

#[test]
fn record_executable_anonymous_page_is_not_guarded() {
    let r = scenario("sys_exec", "exec");
    assert_eq!(r.stdout, "1276\n47\n");
    let ev = r.events();
    let page = r.addr("page");
    let at_rip: Vec<u64> = ev
        .iter()
        .filter_map(|e| match e {
            Event::Access { fault_addr, regs, .. } if *fault_addr == regs.rip => Some(*fault_addr),
            _ => None,
        })
        .collect();
    assert_eq!(at_rip, Vec::<u64>::new());
    let faults_in_page = ev
        .iter()
        .filter(|e| matches!(e, Event::Access { fault_addr, .. } if (page..page + 4096).contains(fault_addr)))
        .count();
    assert_eq!(faults_in_page, 0);
    let b = bytes(&ev);
    assert_eq!(ranges_in(&b.read, page, 4096), vec![]);
    assert_eq!(ranges_in(&b.written, page, 4096), vec![]);
    // The heap buffer next to it is guarded as usual: the int read is recorded.
    assert_eq!(ranges_in(&b.read, r.addr("heap"), 16), vec![(0, 4)]);
}
