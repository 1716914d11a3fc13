//! The ffirec trace file: the only interface between recorder and analyzer.
//!
//! Principal types: [`Event`] (what happened), [`TraceWriter`] (append events
//! from the recorder's hot path; compression and I/O run on a background
//! thread), [`Trace`] (memory-mapped, validating reader whose chunks decode
//! independently, so analysis can run them in parallel; `Trace::visit_chunk`
//! hands out accesses borrowed in place, `Trace::read_chunk` owned events).
//!
//! Hidden: the on-disk layout (chunk headers, the columnar batch encoding with
//! deduplicated instruction bytes and per-thread register deltas, footer,
//! trailer). This crate is a leaf: no libc, no ptrace, no disassembler.
//!
//! ```
//! use ffirec_format::{Completeness, Event, Header, Policy, Summary, Trace, TraceWriter};
//!
//! # fn main() -> Result<(), ffirec_format::Error> {
//! let path = std::env::temp_dir().join(format!("ffirec-doc-{}.ffr", std::process::id()));
//! let header = Header {
//!     recorder_version: "0.1.0".into(),
//!     uuid: [0; 16],
//!     command: vec!["./prog".into()],
//!     start_time_ns: 0,
//!     page_size: 4096,
//!     policy: Policy::default(),
//! };
//! let mut w = TraceWriter::create(&path, header)?; // writes `<path>.partial`
//! w.push(Event::InitUnknown { addr: 0x1000, len: 64 })?;
//! w.finish(Summary::default())?; // footer, trailer, rename to `<path>`
//!
//! let trace = Trace::open(&path)?;
//! assert_eq!(trace.completeness(), &Completeness::Complete);
//! for chunk in 0..trace.chunks().len() {
//!     // Independent per chunk: fine to run these on a thread pool.
//!     for event in trace.read_chunk(chunk)? {
//!         assert_eq!(event.kind(), "init_unknown");
//!     }
//! }
//! assert_eq!(trace.summary().and_then(|s| s.counter("events.init_unknown")), Some(1));
//! # std::fs::remove_file(&path).ok();
//! # Ok(())
//! # }
//! ```
//!
//! # File layout (version 2)
//!
//! A 12-byte preamble (magic `FFIRECtr`, format version `u16`, layout flags
//! `u16`), then self-delimiting chunks — the header chunk, event and module
//! chunks in write order, a footer chunk — and a 32-byte trailer that points
//! at the footer and ends in `FFIRECnd`. Every chunk has a fixed 40-byte
//! header (magic, kind, compressed and raw length, first event number, event
//! count, payload crc32, header crc32) and a zstd-compressed rkyv archive.
//! A module chunk is written the moment the module is added, so a file cut
//! short keeps every module it saw. All integers are little-endian.
//!
//! Layout flags record what the rkyv archives assume: bit 0 little-endian,
//! bit 1 32-bit relative pointers and lengths, bit 2 aligned primitives
//! (rkyv 0.8 defaults: all three set, `0x0007`). A file with other flags is
//! rejected as [`Error::IncompatibleLayout`].
//!
//! # Versioning
//!
//! - This crate writes version 2 and reads versions 1..=2
//!   ([`Error::Incompatible`] otherwise).
//! - Event kinds, fields and chunk kinds are only ever *added*. Because an
//!   rkyv archive's shape is its layout, any addition bumps the format
//!   version: the old version's private `wire`/`batch` types stay frozen and
//!   keep decoding old files into the (grown) public types, with the new
//!   fields given neutral defaults. Kind numbers (the order of
//!   [`EVENT_KINDS`]) never change.
//! - History: **v1** — initial format. **v2** — Alloc/Free events get
//!   columns of their own in event batches (`m_*`, ~3 bytes per event before
//!   compression) instead of one stored `WEvent` each; v1 batches still decode.

mod batch;
mod error;
mod event;
mod layout;
mod meta;
mod reader;
mod wire;
mod writer;

pub use batch::PlainMem;
pub use error::Error;
pub use event::{
    AccessRef, AllocFn, Domain, Event, EventRef, ExitStatus, GapReason, Regs, SyscallRange, Tid, VecReg, VecRegKind,
    EVENT_KINDS,
};
pub use meta::{Header, Module, Policy, Segment, Summary, Symbol};
pub use reader::{ChunkInfo, Completeness, Events, Trace};
pub use writer::{TraceWriter, WriterOptions, Written};
