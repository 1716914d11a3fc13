//! `ffirec show`: step through a trace like a debugger.

use std::io::{self, BufWriter, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use ffirec_analyzer::{MemSpec, ShowError, ShowMode, ShowOptions};

use crate::exit;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Color {
    /// Colour when stdout is a terminal.
    Auto,
    Always,
    Never,
}

const EXAMPLES: &str = "\
Examples:
  ffirec show t.ffr --from 1200 --count 10       events 1200..1209 (jumps via the chunk index)
  ffirec show t.ffr --call 3                     foreign call #3: its events, return value, footprint
  ffirec show t.ffr --crash --count 30           the crash and the 30 events of its thread before it
  ffirec show t.ffr --at 1234 --memory alloc5+16:32
                                                 bytes 16..48 of alloc#5 after event 1234

In the --at view each byte is I (initialised), U (never written: a read is an
uninitialised read), ? (unknown: untracked host writes), F (freed) or . (outside
every live allocation), as `ffirec analyze` judges it at that point.";

/// Replay a trace event by event: the instruction, the access and the
/// allocation it hit, changed registers, call context; one call with its
/// footprint; the crash; or the reconstructed state of memory at an event.
#[derive(clap::Args, Debug)]
#[command(after_help = EXAMPLES)]
pub struct ShowArgs {
    /// The trace (.ffr).
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// List everything foreign call N did (its thread's events), with its
    /// arguments, return value and footprint per argument allocation.
    #[arg(long, value_name = "N", conflicts_with_all = ["from", "crash", "at"])]
    pub call: Option<u64>,
    /// List events from this event number on [default: 0].
    #[arg(long, value_name = "EVENT", conflicts_with_all = ["crash", "at"])]
    pub from: Option<u64>,
    /// Number of events to list [default: 20; --call: all of the call].
    #[arg(long, value_name = "K")]
    pub count: Option<usize>,
    /// Only list this thread's events.
    #[arg(long, value_name = "T")]
    pub tid: Option<u32>,
    /// Show the reconstructed state of --memory after this event.
    #[arg(long, value_name = "EVENT", requires = "memory", conflicts_with = "crash")]
    pub at: Option<u64>,
    /// ADDR[:LEN] for --at: hex address or allocN+OFF (allocation number as
    /// `analyze` prints it, offset decimal or 0x-hex); LEN defaults to 64.
    #[arg(long, value_name = "ADDR[:LEN]", requires = "at")]
    pub memory: Option<MemSpec>,
    /// Jump to the crash (the fatal or last fault signal) and list the K
    /// events of its thread before it.
    #[arg(long)]
    pub crash: bool,
    /// Colour output.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: Color,
    /// Listings: replay from event 0 instead of jumping, so allocations born
    /// long before EVENT keep their analyze numbers (reads every chunk before it).
    #[arg(long)]
    pub full_replay: bool,
    /// Do not look up file:line in the modules' debug information.
    #[arg(long)]
    pub no_dwarf: bool,
    /// Write straight to the terminal instead of through $PAGER (default
    /// `less -FRX`; a pager is only used when stdout is a terminal).
    #[arg(long)]
    pub no_pager: bool,
}

pub fn run(args: ShowArgs) -> ExitCode {
    match show(&args) {
        Ok(()) => ExitCode::from(exit::SUCCESS),
        Err(ShowError::Io(e)) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(exit::SUCCESS),
        Err(e) => {
            eprintln!("ffirec: error: {}: {e}", args.trace.display());
            ExitCode::from(exit::ERROR)
        }
    }
}

fn show(args: &ShowArgs) -> Result<(), ShowError> {
    let trace = ffirec_format::Trace::open(&args.trace)?;
    let mode = match (args.call, args.at, args.memory, args.crash) {
        (Some(n), ..) => ShowMode::Call(n),
        (None, Some(at), Some(range), _) => ShowMode::Memory { at, range },
        (None, _, _, true) => ShowMode::Crash,
        _ => ShowMode::From(args.from.unwrap_or(0)),
    };
    let stdout = io::stdout();
    let tty = stdout.is_terminal();
    let color = match args.color {
        Color::Always => true,
        Color::Never => false,
        Color::Auto => tty && std::env::var_os("NO_COLOR").is_none(),
    };
    let opts = ShowOptions {
        mode,
        count: args.count,
        tid: args.tid,
        color,
        dwarf: !args.no_dwarf,
        full_replay: args.full_replay,
    };
    let mut pager = if tty && !args.no_pager { Pager::spawn() } else { None };
    let result = match pager.as_mut().and_then(|p| p.child.stdin.take()) {
        Some(stdin) => {
            let mut out = BufWriter::new(stdin);
            ffirec_analyzer::show(&trace, &opts, &mut out).and_then(|()| Ok(out.flush()?))
        }
        None => {
            let mut out = BufWriter::new(stdout.lock());
            ffirec_analyzer::show(&trace, &opts, &mut out).and_then(|()| Ok(out.flush()?))
        }
    };
    if let Some(mut p) = pager {
        // The user quitting the pager early is not an error.
        let _ = p.child.wait();
    }
    result?;
    if let ffirec_format::Completeness::Truncated { events, .. } = trace.completeness() {
        eprintln!("ffirec: warning: {} is truncated; showing the {events} events recovered", args.trace.display());
    }
    Ok(())
}

/// `$PAGER` (default `less` with `LESS=FRX`: quit if one screen, keep
/// colours, no screen clearing) reading our output.
struct Pager {
    child: std::process::Child,
}

impl Pager {
    fn spawn() -> Option<Pager> {
        let pager = std::env::var("PAGER").unwrap_or_else(|_| "less".into());
        let mut words = pager.split_whitespace();
        let prog = words.next()?;
        if prog == "cat" {
            return None;
        }
        let mut cmd = std::process::Command::new(prog);
        cmd.args(words).stdin(std::process::Stdio::piped());
        if std::env::var_os("LESS").is_none() {
            cmd.env("LESS", "FRX");
        }
        // No pager installed: write to the terminal directly.
        cmd.spawn().ok().map(|child| Pager { child })
    }
}
