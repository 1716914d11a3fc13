//! Shared support for the end-to-end benches (`e2e`, `calls`, `alloc`): the
//! release `ffirec` binary, C fixtures from `benches/fixtures/` compiled at
//! bench time with `cc -O2 -g`, timed runs with a timeout, and the machine
//! line (CPUs, model, kernel, load) printed next to every table.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `ffirec` binary of this build. Cargo sets `CARGO_BIN_EXE_ffirec` for
/// benches and builds it (in the bench profile, `target/release/ffirec`)
/// before running them. Without it (a bench executable run by hand), take
/// `ffirec` next to the bench's own directory (`target/release/deps/X` →
/// `target/release/ffirec`), building it with `cargo build --release` first
/// if it is missing.
pub fn ffirec_bin() -> PathBuf {
    if let Some(p) = option_env!("CARGO_BIN_EXE_ffirec") {
        return PathBuf::from(p);
    }
    let exe = std::env::current_exe().expect("bench executable path");
    let release = exe.parent().and_then(Path::parent).expect("bench executable lives in target/<profile>/deps");
    let bin = release.join("ffirec");
    if !bin.exists() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args(["build", "--release", "--bin", "ffirec"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build --release");
        assert!(status.success() && bin.exists(), "could not build {}", bin.display());
    }
    bin
}

pub fn ffirec() -> Command {
    Command::new(ffirec_bin())
}

/// Where fixtures and traces go (`$CARGO_TARGET_TMPDIR/bench-e2e`).
pub fn out_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("bench-e2e");
    std::fs::create_dir_all(&dir).expect("create bench output dir");
    dir
}

fn fixture_src(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/fixtures").join(name)
}

fn cc(args: &[String], out: &Path) {
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    let status = Command::new(&cc)
        .args(args)
        .arg("-o")
        .arg(&tmp)
        .status()
        .unwrap_or_else(|e| panic!("run `{cc}` ({e}): the benches build C fixtures; install gcc or set CC"));
    assert!(status.success(), "fixture build failed: {cc} {}", args.join(" "));
    std::fs::rename(&tmp, out).expect("install fixture");
}

/// Builds `benches/fixtures/libNAME.c` into `libNAME.so` (`-O2 -g -fPIC -shared`).
pub fn library(name: &str) -> PathBuf {
    let out = out_dir().join(format!("lib{name}.so"));
    let args: Vec<String> = ["-O2", "-g", "-fPIC", "-shared", "-Wall"]
        .iter()
        .map(|s| s.to_string())
        .chain([format!("-Wl,-soname,lib{name}.so"), fixture_src(&format!("lib{name}.c")).display().to_string()])
        .collect();
    cc(&args, &out);
    out
}

/// Builds host program `benches/fixtures/NAME.c` (`-O2 -g`), linked with
/// `-lLIB` for each of `libs` (fixture libraries found through an rpath, or
/// system libraries such as `z`).
pub fn program(name: &str, libs: &[&str]) -> PathBuf {
    let dir = out_dir();
    let out = dir.join(name);
    let mut args: Vec<String> = ["-O2", "-g", "-Wall"].iter().map(|s| s.to_string()).collect();
    args.push(fixture_src(&format!("{name}.c")).display().to_string());
    args.push(format!("-L{}", dir.display()));
    args.extend(libs.iter().map(|l| format!("-l{l}")));
    args.push(format!("-Wl,-rpath,{}", dir.display()));
    cc(&args, &out);
    out
}

/// Builds `benches/fixtures/NAME.c` together with the fixture sources
/// `extra` (e.g. `libbnop.c`) into one statically linked program
/// (`-O2 -g -static`); None when the static C library is missing.
pub fn static_program(name: &str, extra: &[&str]) -> Option<PathBuf> {
    let out = out_dir().join(format!("{name}-static"));
    let mut args: Vec<String> = ["-O2", "-g", "-Wall", "-static"].iter().map(|s| s.to_string()).collect();
    args.push(fixture_src(&format!("{name}.c")).display().to_string());
    args.extend(extra.iter().map(|e| fixture_src(e).display().to_string()));
    let cc = std::env::var("CC").unwrap_or_else(|_| "cc".into());
    let ok = Command::new(&cc).args(&args).arg("-o").arg(&out).status().is_ok_and(|s| s.success());
    ok.then_some(out)
}

/// Runs `cmd` to completion (stdin empty, stdout and stderr captured) and
/// returns its output and wall time; panics after `timeout`.
pub fn run_timed(cmd: &mut Command, timeout: Duration) -> (Output, Duration) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let start = Instant::now();
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
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            panic!("timed out after {timeout:?}: {cmd:?}");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    let wall = start.elapsed();
    (Output { status, stdout: out_t.join().unwrap_or_default(), stderr: err_t.join().unwrap_or_default() }, wall)
}

/// Like [`run_timed`], and asserts the command succeeded.
pub fn run_ok(cmd: &mut Command, timeout: Duration) -> (Output, Duration) {
    let (out, wall) = run_timed(cmd, timeout);
    assert!(out.status.success(), "{cmd:?} failed ({}):\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    (out, wall)
}

/// The value of a `KEY N` line the fixture printed on stderr (e.g. `loop_ns`).
pub fn stderr_value(out: &Output, key: &str) -> u64 {
    let text = String::from_utf8_lossy(&out.stderr);
    text.lines()
        .find_map(|l| l.strip_prefix(key).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no `{key}` line on stderr:\n{text}"))
}

/// `/proc/loadavg`'s first three fields.
pub fn load() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_else(|_| "?".into())
}

/// One line: CPUs, CPU model, kernel.
pub fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        })
        .unwrap_or_else(|| "?".into());
    let kernel =
        std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default();
    format!("{cpus} CPUs, {model}, Linux {kernel}")
}

/// Rounds per measurement: `FFIREC_BENCH_ROUNDS`, else `default`.
pub fn rounds(default: usize) -> usize {
    std::env::var("FFIREC_BENCH_ROUNDS").ok().and_then(|v| v.parse().ok()).unwrap_or(default).max(1)
}

pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
