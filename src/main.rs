//! The `ffirec` binary: argument parsing and dispatch only.

use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod cmd;
mod exit;

const AFTER_HELP: &str = "\
Exit codes:
  record            the program's own exit status (128+N when signal N killed it);
                    125 ffirec itself failed, 126 program not executable, 127 program not found
  other commands    0 success, 1 findings (analyze) or differences (diff), 2 usage error or
                    unreadable/corrupt trace, 3 (diff) NEW has findings OLD had not,
                    4 (dump) trace truncated: everything recovered was printed
                    (analyze and show process a truncated trace's recovered part and say so)";

#[derive(Parser)]
#[command(name = "ffirec", version, about = "What did that library do to my memory?", after_help = AFTER_HELP)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a program and record what the foreign library does to its memory.
    Record(cmd::record::RecordArgs),
    /// Analyse a trace: findings and what each foreign call read and wrote.
    Analyze(cmd::analyze::AnalyzeArgs),
    /// Print every event of a trace, one per line (text or JSONL).
    Dump(cmd::dump::DumpArgs),
    /// Step through a trace like a debugger: events, one call, the crash, memory at an event.
    Show(cmd::show::ShowArgs),
    /// Compare two recordings (library v1 vs v2): changed footprints, new and fixed findings.
    Diff(cmd::diff::DiffArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Record(a) => cmd::record::run(a),
        Command::Analyze(a) => cmd::analyze::run(a),
        Command::Dump(a) => cmd::dump::run(a),
        Command::Show(a) => cmd::show::run(a),
        Command::Diff(a) => cmd::diff::run(a),
    }
}
