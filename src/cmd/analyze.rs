//! `ffirec analyze`: findings and per-call footprints of a trace.

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use crate::exit;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// Valgrind-shaped blocks, per-call table, totals.
    Text,
    /// `ffirec.report/1` (see analyzer/REPORT_SCHEMA.md).
    Json,
}

/// Analyse a trace: uninitialised reads, out-of-bounds, use-after-free,
/// exposed pointers, and what every foreign call read and wrote.
#[derive(clap::Args, Debug)]
#[command(after_help = "Exit codes: 0 no findings; 1 findings (or --error-exitcode N); 2 usage error or \
unreadable/corrupt trace. A truncated trace is analysed as far as it was recovered (the report \
and stderr say so) and exits by its findings.")]
pub struct AnalyzeArgs {
    /// The trace (.ffr) to analyse.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Worker threads [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Suppressions file: lines of `kind=… symbol=… module=… call=… file=…` globs.
    #[arg(long, value_name = "FILE")]
    pub suppressions: Option<PathBuf>,
    /// Exit code when there are findings (as in Valgrind).
    #[arg(long, value_name = "N", default_value_t = exit::FINDINGS)]
    pub error_exitcode: u8,
    /// Do not look up file:line in the modules' debug information.
    #[arg(long)]
    pub no_dwarf: bool,
}

pub fn run(args: AnalyzeArgs) -> ExitCode {
    match analyze(&args) {
        Ok(findings) if findings > 0 => ExitCode::from(args.error_exitcode),
        Ok(_) => ExitCode::from(exit::SUCCESS),
        // `ffirec analyze T | head`: the reader went away; not an error.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            ExitCode::from(exit::SUCCESS)
        }
        Err(e) => {
            let mut msg = format!("ffirec: error: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                msg.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn analyze(args: &AnalyzeArgs) -> anyhow::Result<usize> {
    let trace = ffirec_format::Trace::open(&args.trace)?;
    let suppressions = match &args.suppressions {
        Some(p) => ffirec_analyzer::Suppressions::load(p)?,
        None => ffirec_analyzer::Suppressions::default(),
    };
    let opts = ffirec_analyzer::Options {
        threads: args.threads.map(usize::from),
        suppressions,
        dwarf: !args.no_dwarf,
        progress: std::io::stderr().is_terminal(),
        trace_name: args.trace.display().to_string(),
    };
    let report = ffirec_analyzer::analyze(&trace, &opts)?;
    let text = match args.format {
        Format::Text => report.to_text(),
        Format::Json => report.to_json() + "\n",
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    if report.summary.truncated {
        eprintln!(
            "ffirec: warning: {} is truncated; analysed the {} events recovered",
            args.trace.display(),
            report.trace.events
        );
    }
    Ok(report.summary.findings)
}
