//! Shared support for integration tests: C fixtures built at test time, the
//! `ffirec` binary, and commands with timeouts.
//!
//! Fixture convention (`tests/fixtures/`):
//! - `libNAME.c` is built as a shared library `libNAME.so` (`cc -O0 -g -fPIC -shared`).
//! - any other `NAME.c` is a host program; a first-line comment
//!   `// fixture: libs=a,b cflags=-mavx2` names the libraries it links against
//!   (each built first, found at run time through an rpath) and extra flags.
//!   Library sources may carry the same line for their own extra flags.
//!
//! Outputs go to `$CARGO_TARGET_TMPDIR/fixtures`, built once per test process
//! and replaced atomically, so concurrently running test binaries never see a
//! half-written file.
#![allow(dead_code)]

pub mod synth;

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub fn fixtures_src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn fixtures_out() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("fixtures");
    std::fs::create_dir_all(&dir).expect("create fixture output dir");
    dir
}

/// The `ffirec` binary under test.
pub fn ffirec() -> Command {
    Command::new(env!("CARGO_BIN_EXE_ffirec"))
}

/// A unique scratch directory for one test.
pub fn scratch(test: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("scratch").join(test);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create scratch dir");
    dir
}

struct Spec {
    libs: Vec<String>,
    cflags: Vec<String>,
}

fn spec(src: &Path) -> Spec {
    let text = std::fs::read_to_string(src).unwrap_or_else(|e| panic!("read {}: {e}", src.display()));
    let mut spec = Spec { libs: vec![], cflags: vec![] };
    if let Some(line) = text.lines().next().and_then(|l| l.strip_prefix("// fixture:")) {
        for word in line.split_whitespace() {
            if let Some(v) = word.strip_prefix("libs=") {
                spec.libs.extend(v.split(',').filter(|s| !s.is_empty()).map(String::from));
            } else if let Some(v) = word.strip_prefix("cflags=") {
                spec.cflags.extend(v.split(',').filter(|s| !s.is_empty()).map(String::from));
            }
        }
    }
    spec
}

fn cc() -> String {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    if Command::new(&cc).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_err() {
        panic!("C compiler `{cc}` not found: the integration tests build their C fixtures at test time; install gcc (apt-get install gcc) or set CC");
    }
    cc
}

fn compile(args: &[String], out: &Path) {
    // Unique per process and per call: test threads of one binary may build
    // the same fixture at once, and other test binaries may too.
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = out.with_extension(format!("tmp{}-{n}", std::process::id()));
    let status = Command::new(cc()).args(args).arg("-o").arg(&tmp).status().expect("run cc");
    assert!(status.success(), "fixture build failed: cc {}", args.join(" "));
    std::fs::rename(&tmp, out).expect("install fixture");
}

fn built() -> &'static Mutex<HashMap<String, PathBuf>> {
    static BUILT: OnceLock<Mutex<HashMap<String, PathBuf>>> = OnceLock::new();
    BUILT.get_or_init(|| Mutex::new(HashMap::new()))
}

/// Builds `tests/fixtures/libNAME.c` into `libNAME.so` (once per process).
pub fn library(name: &str) -> PathBuf {
    library_variant(name, "", &[])
}

/// Builds `libNAME.c` with extra flags (e.g. `-DV2`) into `libNAME{suffix}.so`
/// in a directory of its own, so two versions can share a soname.
pub fn library_variant(name: &str, variant: &str, extra: &[&str]) -> PathBuf {
    let key = format!("lib:{name}:{variant}");
    let mut map = built().lock().unwrap_or_else(|e| e.into_inner());
    if let Some(p) = map.get(&key) {
        return p.clone();
    }
    let src = fixtures_src().join(format!("lib{name}.c"));
    let dir = if variant.is_empty() { fixtures_out() } else { fixtures_out().join(variant) };
    std::fs::create_dir_all(&dir).expect("create variant dir");
    let out = dir.join(format!("lib{name}.so"));
    let s = spec(&src);
    let mut args: Vec<String> = ["-O0", "-g", "-fPIC", "-shared", "-Wall"].iter().map(|s| s.to_string()).collect();
    args.extend(s.cflags);
    args.extend(extra.iter().map(|s| s.to_string()));
    args.push(format!("-Wl,-soname,lib{name}.so"));
    args.push(src.display().to_string());
    compile(&args, &out);
    map.insert(key, out.clone());
    out
}

/// Builds host program `tests/fixtures/NAME.c` and the libraries it names.
pub fn program(name: &str) -> PathBuf {
    // One build at a time per process, so two tests asking for the same
    // fixture build it once.
    static BUILDING: Mutex<()> = Mutex::new(());
    let _building = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    {
        let map = built().lock().unwrap_or_else(|e| e.into_inner());
        if let Some(p) = map.get(&format!("exe:{name}")) {
            return p.clone();
        }
    }
    let src = fixtures_src().join(format!("{name}.c"));
    let s = spec(&src);
    let out_dir = fixtures_out();
    for lib in &s.libs {
        library(lib);
    }
    let out = out_dir.join(name);
    let mut args: Vec<String> = ["-O0", "-g", "-Wall"].iter().map(|s| s.to_string()).collect();
    args.extend(s.cflags);
    args.push(src.display().to_string());
    args.push(format!("-L{}", out_dir.display()));
    for lib in &s.libs {
        args.push(format!("-l{lib}"));
    }
    args.push(format!("-Wl,-rpath,{}", out_dir.display()));
    compile(&args, &out);
    built().lock().unwrap_or_else(|e| e.into_inner()).insert(format!("exe:{name}"), out.clone());
    out
}

/// Runs `cmd` to completion, killing it after `timeout`; panics on timeout.
pub fn run(cmd: &mut Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let mut stdout = child.stdout.take().expect("stdout");
    let mut stderr = child.stderr.take().expect("stderr");
    let out_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stdout.read_to_end(&mut v);
        v
    });
    let err_t = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = stderr.read_to_end(&mut v);
        v
    });
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            let err = String::from_utf8_lossy(&err_t.join().unwrap_or_default()).into_owned();
            panic!("timed out after {timeout:?}: {cmd:?}\nstderr:\n{err}");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }
}

pub const TIMEOUT: Duration = Duration::from_secs(60);
