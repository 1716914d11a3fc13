//! The ffirec trace file: the only interface between recorder and analyzer.
//!
//! Principal types: [`Event`] (what happened), [`TraceWriter`] (append events
//! from the recorder's hot path; compression and I/O run on a background
//! thread), [`Trace`] (memory-mapped, validating reader whose chunks decode
//! independently, so analysis can run them in parallel).
//!
//! Hidden: the on-disk layout (chunk headers, the columnar batch encoding with
//! deduplicated instruction bytes and XOR-delta registers, footer, trailer).
//! This crate is a leaf: no libc, no ptrace, no disassembler.

mod error;
mod event;
mod meta;
mod reader;
mod writer;

pub use error::Error;
pub use event::{
    AllocFn, Domain, Event, ExitStatus, GapReason, Regs, SyscallRange, Tid, VecReg, VecRegKind,
    EVENT_KINDS,
};
pub use meta::{Header, Module, Policy, Segment, Summary, Symbol};
pub use reader::{ChunkInfo, Completeness, Events, Trace};
pub use writer::{TraceWriter, WriterOptions, Written};
