use std::path::PathBuf;

/// Everything that can go wrong reading or writing a trace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("not an ffirec trace (bad magic)")]
    NotATrace,
    #[error("trace format version {found} is not supported (this ffirec reads versions {min}..={max})")]
    Incompatible { found: u16, min: u16, max: u16 },
    #[error("trace written with an incompatible data layout (layout flags {found:#06x}, this ffirec uses {expected:#06x})")]
    IncompatibleLayout { found: u16, expected: u16 },
    #[error("trace truncated: {0}")]
    Truncated(String),
    #[error("corrupt trace: chunk {chunk}: {reason}")]
    Corrupt { chunk: usize, reason: String },
    #[error("corrupt trace: {0}")]
    CorruptMeta(String),
    #[error("trace writer failed: {0}")]
    Writer(String),
}
