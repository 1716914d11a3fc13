//! `ffirec diff OLD NEW`: what changed between two recordings.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use crate::exit;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// `+`/`-` lines per call, for a code review.
    Text,
    /// `ffirec.diff/1` (see analyzer/DIFF_SCHEMA.md).
    Json,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailOn {
    /// Exit 3 when NEW has findings OLD had not (otherwise 1 on differences, 0 without).
    Findings,
    /// Exit 3 on any difference.
    Any,
    /// Never exit 3 (1 on differences, 0 without).
    Never,
}

/// Compare two recordings of one program (two library versions, or two
/// inputs): calls only in one trace, bytes newly read or written per
/// argument, new and fixed findings, changed return values.
///
/// Exit codes: 0 no behavioural difference, 1 differences, 3 NEW has findings
/// OLD had not (see --fail-on), 2 error (unreadable trace, or traces of
/// different programs or foreign libraries without --force).
#[derive(clap::Args, Debug)]
#[command(after_help = "\
Exit codes:
  0  no behavioural difference (changes shown with ~ are noise and do not count)
  1  differences
  2  error: unreadable trace, or traces of different programs or foreign libraries (see --force)
  3  NEW has findings OLD had not (--fail-on findings, the default); any difference with --fail-on any")]
pub struct DiffArgs {
    /// The trace of the old version.
    #[arg(value_name = "OLD")]
    pub old: PathBuf,
    /// The trace of the new version.
    #[arg(value_name = "NEW")]
    pub new: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// When to exit 3.
    #[arg(long, value_enum, default_value = "findings")]
    pub fail_on: FailOn,
    /// Diff traces of different programs or foreign libraries anyway.
    #[arg(long)]
    pub force: bool,
    /// Worker threads per analysis [default: all cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
}

pub fn run(args: DiffArgs) -> ExitCode {
    match diff(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            let mut msg = format!("ffirec: error: {e}");
            let mut src = e.source();
            while let Some(s) = src {
                let s_text = s.to_string();
                if !msg.contains(&s_text) {
                    msg.push_str(&format!(": {s_text}"));
                }
                src = s.source();
            }
            eprintln!("{msg}");
            ExitCode::from(exit::ERROR)
        }
    }
}

fn analyse(path: &Path, threads: Option<u16>) -> anyhow::Result<(ffirec_format::Trace, ffirec_analyzer::Report)> {
    let trace = ffirec_format::Trace::open(path)?;
    let opts = ffirec_analyzer::Options {
        threads: threads.map(usize::from),
        // Locations are compared as symbol+offset; file:line is not needed.
        dwarf: false,
        trace_name: path.display().to_string(),
        ..ffirec_analyzer::Options::default()
    };
    let report = ffirec_analyzer::analyze(&trace, &opts)?;
    if report.summary.truncated {
        eprintln!(
            "ffirec: warning: {} is truncated; diffing the {} events recovered",
            path.display(),
            report.trace.events
        );
    }
    Ok((trace, report))
}

fn diff(args: &DiffArgs) -> anyhow::Result<u8> {
    let (old_trace, old_report) = analyse(&args.old, args.threads)?;
    let (new_trace, new_report) = analyse(&args.new, args.threads)?;
    let d = ffirec_analyzer::diff(
        ffirec_analyzer::DiffInput { trace: &old_trace, report: &old_report },
        ffirec_analyzer::DiffInput { trace: &new_trace, report: &new_report },
        &ffirec_analyzer::DiffOptions { force: args.force },
    )?;
    let text = match args.format {
        Format::Text => d.to_text(),
        Format::Json => d.to_json() + "\n",
    };
    let mut out = std::io::stdout().lock();
    out.write_all(text.as_bytes())?;
    out.flush()?;
    for w in &d.warnings {
        eprintln!("ffirec: warning: {w} (diffed because of --force)");
    }
    let s = &d.summary;
    Ok(match args.fail_on {
        FailOn::Findings if s.new_findings > 0 => exit::NEW_FINDINGS,
        FailOn::Any if s.differences > 0 => exit::NEW_FINDINGS,
        _ if s.differences > 0 => exit::FINDINGS,
        _ => exit::SUCCESS,
    })
}
