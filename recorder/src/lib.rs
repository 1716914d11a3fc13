//! The ffirec ptrace supervisor: runs an unmodified program, and while code
//! of the foreign library runs, keeps the program's own memory `PROT_NONE`
//! and records every fault as an [`ffirec_format::Event::Access`].
//!
//! Principal items: [`Options`] (what to run and which libraries are
//! foreign), [`record`] (run it, write the trace), [`Outcome`] and [`Error`].
//! Hidden: raw ptrace (`sys`), the wait loop (`process`, `tracer`), the
//! memory-map model (`maps`), ELF symbols (`modules`), domains and call
//! frames (`domain`), the injected protection stub and guard set (`guard`),
//! the one-stop fault path (`fault`), and the event sink (`sink`).

use std::ffi::OsString;
use std::path::PathBuf;

pub use ffirec_format::ExitStatus;

pub mod alloc;

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod allocbp;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod domain;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod fault;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod guard;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod hostinit;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod maps;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod modules;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod process;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod procs;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod signals;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sink;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod sys;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod syscalls;
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
mod tracer;

/// What to record.
#[derive(Debug, Clone)]
pub struct Options {
    /// The program, as given (looked up in `PATH` when it has no `/`).
    pub program: OsString,
    pub args: Vec<OsString>,
    /// `--lib` patterns (soname, file name or path glob). Empty: every shared
    /// object except the C runtime is foreign.
    pub libs: Vec<String>,
    /// `--neutral` patterns, in addition to the built-in C runtime list.
    pub neutral: Vec<String>,
    /// Trace file to write (`.partial` until finished).
    pub output: PathBuf,
    /// Pin the recorder and the thread it serves to one CPU during foreign calls.
    pub pin_cpu: bool,
    /// Suppress ffirec's informational stderr lines (warnings still print).
    pub quiet: bool,
    /// Guard the library's own allocations too (`--guard-foreign`): the
    /// foreign arena is turned off, so foreign-mode allocations come from the
    /// program's heap and every access the library makes to them is recorded.
    /// Default: they come from the arena, which is never guarded.
    pub guard_foreign: bool,
    /// Follow forked children (default); `--no-follow`: record only the
    /// first process, children run untraced with their real protections.
    pub follow: bool,
    /// Track which bytes of host allocations the host wrote (`--host-init`):
    /// host blocks' pages are write-protected while host code runs and each
    /// first write is recorded, so reads of never-written host bytes become
    /// exact uninitialised-read findings. Needs the allocation shim.
    pub host_init: bool,
}

impl Options {
    pub fn new(program: impl Into<OsString>, args: Vec<OsString>) -> Options {
        let program = program.into();
        let name = std::path::Path::new(&program)
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "prog".into());
        Options {
            program,
            args,
            libs: Vec::new(),
            neutral: Vec::new(),
            output: PathBuf::from(format!("ffirec-{name}.ffr")),
            pin_cpu: true,
            quiet: false,
            guard_foreign: false,
            follow: true,
            host_init: false,
        }
    }
}

/// How a recording ended.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// The program's exit status (None if it was killed by ffirec on request).
    pub status: ExitStatus,
    pub trace: PathBuf,
    pub trace_bytes: u64,
    pub accesses: u64,
    pub calls: u64,
    /// Footer counters, by name.
    pub counters: Vec<(String, u64)>,
}

/// Everything that can stop a recording.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("ffirec record needs x86-64 Linux (ptrace, PROT_NONE guards and x86-64 decoding); this is {os}/{arch}")]
    Unsupported { os: &'static str, arch: &'static str },
    #[error("{program}: program not found")]
    NotFound { program: String },
    #[error("{path}: cannot execute: {reason}")]
    NotExecutable { path: String, reason: String },
    #[error("ptrace is not permitted: {advice}")]
    PtraceDenied { advice: String },
    #[error("tracee {pid} died unexpectedly")]
    TraceeDied { pid: i32 },
    #[error("no traced process left")]
    NoTracees,
    #[error("cannot access tracee {pid} memory at {addr:#x} ({len} bytes)")]
    Memory { pid: i32, addr: u64, len: usize },
    #[error("{what}: {source}")]
    Sys {
        what: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("bad argument: {0}")]
    BadArgument(String),
    #[error("unexpected tracee state: {0}")]
    Protocol(String),
    #[error("trace file: {0}")]
    Format(#[from] ffirec_format::Error),
}

/// Runs the program under the recorder and writes the trace.
#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
pub fn record(options: Options) -> Result<Outcome, Error> {
    tracer::record(options)
}

/// Runs the program under the recorder and writes the trace.
#[cfg(not(all(target_os = "linux", target_arch = "x86_64")))]
pub fn record(_options: Options) -> Result<Outcome, Error> {
    Err(Error::Unsupported { os: std::env::consts::OS, arch: std::env::consts::ARCH })
}
