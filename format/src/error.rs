use std::path::PathBuf;

/// Everything that can go wrong reading or writing a trace.
///
/// A file cut short *after* its header is not an error: [`crate::Trace`]
/// opens it and reports [`crate::Completeness::Truncated`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    /// The file does not start with the trace magic.
    #[error("not an ffirec trace (bad magic)")]
    NotATrace,
    /// A format version this build cannot read.
    #[error("trace format version {found} is not supported (this ffirec reads versions {min}..={max})")]
    Incompatible { found: u16, min: u16, max: u16 },
    /// The rkyv layout flags differ from this build's (endianness, pointer width, alignment).
    #[error(
        "trace written with an incompatible data layout (layout flags {found:#06x}, this ffirec uses {expected:#06x})"
    )]
    IncompatibleLayout { found: u16, expected: u16 },
    /// The file ends before its header is complete: nothing is recoverable.
    #[error("trace truncated: {0}")]
    Truncated(String),
    /// Event chunk `chunk` (the index of [`crate::Trace::read_chunk`]) is damaged.
    #[error("corrupt trace: chunk {chunk}: {reason}")]
    Corrupt { chunk: usize, reason: String },
    /// The header, a module, the footer or the trailer is damaged.
    #[error("corrupt trace: {0}")]
    CorruptMeta(String),
    #[error("trace writer failed: {0}")]
    Writer(String),
}
