//! Support for the allocation-shim tests: C fixtures from `tests/fixtures/`
//! built at test time, runs with a timeout, and a concurrent drainer.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ffirec_format::Event;
use ffirec_recorder::alloc::AllocTracker;

pub const TIMEOUT: Duration = Duration::from_secs(120);

/// Compiles `tests/fixtures/NAME.c` (`cc -O0 -g -pthread`, plus the flags of
/// a first line `// cflags: ...`) once per test process; the output name
/// carries the pid so test binaries never race.
pub fn fixture(name: &str) -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(format!("{name}.c"));
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("alloc-fixtures");
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join(format!("{name}-{}", std::process::id()));
    static BUILD: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = BUILD.lock().unwrap_or_else(|e| e.into_inner());
    if !out.exists() {
        let tmp = dir.join(format!("{name}-{}.tmp", std::process::id()));
        let text = std::fs::read_to_string(&src).unwrap();
        let extra: Vec<&str> = text
            .lines()
            .next()
            .and_then(|l| l.strip_prefix("// cflags:"))
            .map(|f| f.split_whitespace().collect())
            .unwrap_or_default();
        let st = Command::new("cc")
            .args(["-O0", "-g", "-pthread", "-o"])
            .arg(&tmp)
            .arg(&src)
            .args(&extra)
            .status()
            .expect("run cc");
        assert!(st.success(), "cc {} failed", src.display());
        std::fs::rename(&tmp, &out).unwrap();
    }
    out
}

/// Waits for `child` with [`TIMEOUT`], killing it on expiry, and collects its output.
pub fn wait(mut child: Child) -> Output {
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out_t = std::thread::spawn(move || {
        let mut v = vec![];
        stdout.read_to_end(&mut v).unwrap();
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = vec![];
        stderr.read_to_end(&mut v).unwrap();
        v
    });
    let deadline = Instant::now() + TIMEOUT;
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if Instant::now() > deadline {
            child.kill().unwrap();
            panic!("fixture timed out after {TIMEOUT:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    Output { status, stdout: out_t.join().unwrap(), stderr: err_t.join().unwrap() }
}

/// Spawns `exe` with the tracker's environment (or none), piped stdio.
pub fn spawn(exe: &Path, args: &[&str], env: &[(std::ffi::OsString, std::ffi::OsString)]) -> Child {
    Command::new(exe)
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Drains `tracker` as the recorder does at a ptrace stop of process `pid`
/// (single-threaded): the process is stopped (SIGSTOP) while the ring and
/// the malloc its shim holds back for a free (see "Held malloc" in
/// `ffirec_shim.h`) are taken, then continued.
pub fn drain_at_stop(tracker: &mut AllocTracker, pid: u32, events: &mut Vec<Event>) {
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGSTOP) }, 0);
    let stat = format!("/proc/{pid}/stat");
    let deadline = Instant::now() + TIMEOUT;
    // State is the field after the parenthesised command name.
    let state = || std::fs::read_to_string(&stat).ok().and_then(|s| s.rsplit(')').next()?.trim_start().chars().next());
    while !matches!(state(), Some('T' | 'Z') | None) {
        assert!(Instant::now() < deadline, "pid {pid} did not stop");
        std::thread::sleep(Duration::from_micros(100));
    }
    tracker.drain(|e| events.push(e));
    tracker.take_held(pid, |e| events.push(e.clone()));
    // SAFETY: as above.
    unsafe { libc::kill(pid as i32, libc::SIGCONT) };
}

/// Drains the tracker on its own thread until stopped.
pub struct Drainer {
    stop: Arc<AtomicBool>,
    handle: JoinHandle<(AllocTracker, Vec<Event>)>,
}

impl Drainer {
    pub fn start(mut tracker: AllocTracker, pause: Duration) -> Drainer {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::spawn(move || {
            let mut events = vec![];
            while !flag.load(Ordering::Acquire) {
                if tracker.drain(|e| events.push(e)) == 0 || !pause.is_zero() {
                    std::thread::sleep(if pause.is_zero() { Duration::from_micros(50) } else { pause });
                }
            }
            tracker.drain_final(|e| events.push(e));
            (tracker, events)
        });
        Drainer { stop, handle }
    }

    /// Stops the thread (call after every producer exited) and returns everything.
    pub fn finish(self) -> (AllocTracker, Vec<Event>) {
        self.stop.store(true, Ordering::Release);
        self.handle.join().unwrap()
    }
}

/// Parses `text=0xA-0xB` from the fixture's output.
pub fn text_range(s: &str) -> (u64, u64) {
    let t = s.split_whitespace().find_map(|w| w.strip_prefix("text=")).expect("text= in output");
    let (a, b) = t.split_once('-').unwrap();
    (hex(a), hex(b))
}

pub fn hex(s: &str) -> u64 {
    if s == "(nil)" {
        return 0;
    }
    u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap()
}

/// The caller of an `Alloc`/`Free` event (None for other kinds).
pub fn caller(e: &Event) -> Option<u64> {
    match *e {
        Event::Alloc { caller, .. } | Event::Free { caller, .. } => Some(caller),
        _ => None,
    }
}
