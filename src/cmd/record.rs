//! `ffirec record`: run a program under the recorder.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit;

/// Run PROG and record every access the foreign library makes to the program's memory.
#[derive(clap::Args, Debug)]
pub struct RecordArgs {
    /// Foreign library: soname, file name or path glob (repeatable). Default:
    /// every shared object except the C runtime.
    #[arg(long = "lib", value_name = "PATTERN")]
    pub libs: Vec<String>,
    /// Additional neutral code (runs in its caller's mode), like the C runtime.
    #[arg(long = "neutral", value_name = "PATTERN")]
    pub neutral: Vec<String>,
    /// Trace file to write [default: ffirec-PROGNAME.ffr].
    #[arg(short = 'o', long = "output", value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Do not pin the recorder and the traced thread to one CPU during foreign
    /// calls and bursts of host-init stops.
    #[arg(long)]
    pub no_pin: bool,
    /// Also guard the memory the library allocates for itself (its internal
    /// state): every access to it is recorded, at a fault each. By default
    /// such allocations come from a separate arena that is never guarded.
    #[arg(long)]
    pub guard_foreign: bool,
    /// Record only the program's own process: children it forks run
    /// untraced, with their real memory protections. By default forked
    /// children are recorded too, in the same trace.
    #[arg(long)]
    pub no_follow: bool,
    /// Track which bytes of host allocations the program wrote before the
    /// library read them (the default; kept for old command lines): host heap
    /// pages are write-protected while host code runs, nothing is poisoned,
    /// and reads of bytes the host never wrote become exact
    /// uninitialised-read findings instead of `unknown`.
    #[arg(long, conflicts_with = "no_host_init")]
    pub host_init: bool,
    /// Do not track host initialisation: no write faults or syscall stops in
    /// host code (python3 startup: about half the recording time), host
    /// bytes are `unknown` to the analyzer. Also with FFIREC_HOST_INIT=0.
    #[arg(long)]
    pub no_host_init: bool,
    /// Only print warnings and the summary line.
    #[arg(short, long)]
    pub quiet: bool,
    /// The program and its arguments.
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true, value_name = "PROG [ARGS]...")]
    pub command: Vec<OsString>,
}

/// Host-init tracking when neither flag nor FFIREC_HOST_INIT says.
const HOST_INIT_DEFAULT: bool = true;

pub fn run(args: RecordArgs) -> ExitCode {
    let mut cmd = args.command.into_iter();
    let Some(program) = cmd.next() else {
        eprintln!("ffirec: error: no program given");
        return ExitCode::from(exit::RECORD_FAILED);
    };
    let mut opts = ffirec_recorder::Options::new(program, cmd.collect());
    opts.libs = args.libs;
    opts.neutral = args.neutral;
    if let Some(o) = args.output {
        opts.output = o;
    }
    opts.pin_cpu = !args.no_pin;
    opts.quiet = args.quiet;
    opts.guard_foreign = args.guard_foreign;
    opts.follow = !args.no_follow;
    // FFIREC_HOST_INIT=1/0 without the flags (whole test suites, scripts).
    opts.host_init = match (args.host_init, args.no_host_init) {
        (true, _) => true,
        (_, true) => false,
        _ => match std::env::var_os("FFIREC_HOST_INIT") {
            Some(v) if v == "1" => true,
            Some(v) if v == "0" => false,
            _ => HOST_INIT_DEFAULT,
        },
    };
    match ffirec_recorder::record(opts) {
        Ok(outcome) => ExitCode::from(outcome.status.shell_code().clamp(0, 255) as u8),
        Err(e) => {
            let mut msg = format!("ffirec: error: {e}");
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(match e {
                ffirec_recorder::Error::NotFound { .. } => exit::NOT_FOUND,
                ffirec_recorder::Error::NotExecutable { .. } => exit::NOT_EXECUTABLE,
                _ => exit::RECORD_FAILED,
            })
        }
    }
}
