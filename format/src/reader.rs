//! Reading a trace: memory-mapped, every byte treated as untrusted.

use std::path::Path;

use crate::{Error, Event, Header, Module, Summary};

/// Where one chunk of events lies and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    pub offset: u64,
    pub compressed_len: u32,
    pub raw_len: u32,
    pub first_event: u64,
    pub events: u32,
}

/// Whether the file ended the way the writer meant it to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Completeness {
    Complete,
    /// No valid footer: the chunks were found by scanning.
    Truncated {
        /// Complete event chunks recovered.
        chunks: usize,
        /// Events in them.
        events: u64,
    },
}

/// An opened trace. Cheap to share between threads (`Sync`).
pub struct Trace {
    _private: (),
}

impl Trace {
    /// Memory-maps and indexes `path` (footer, or a scan when there is none).
    pub fn open(_path: impl AsRef<Path>) -> Result<Trace, Error> {
        todo!("format: reader")
    }

    /// Same as [`Trace::open`] on bytes already in memory.
    pub fn from_bytes(_bytes: Vec<u8>) -> Result<Trace, Error> {
        todo!("format: reader")
    }

    pub fn header(&self) -> &Header {
        todo!("format: reader")
    }

    /// All modules, in the order the recorder added them.
    pub fn modules(&self) -> &[Module] {
        todo!("format: reader")
    }

    pub fn chunks(&self) -> &[ChunkInfo] {
        todo!("format: reader")
    }

    /// Footer summary (None when truncated).
    pub fn summary(&self) -> Option<&Summary> {
        todo!("format: reader")
    }

    pub fn completeness(&self) -> &Completeness {
        todo!("format: reader")
    }

    /// Total events in the readable chunks.
    pub fn event_count(&self) -> u64 {
        todo!("format: reader")
    }

    /// Decompresses, checks and decodes chunk `index`. Independent of every
    /// other chunk, so callers may run these in parallel.
    pub fn read_chunk(&self, _index: usize) -> Result<Vec<Event>, Error> {
        todo!("format: reader")
    }

    /// Every event with its number, in order.
    pub fn events(&self) -> Events<'_> {
        todo!("format: reader")
    }
}

/// Iterator over `(event number, event)`; stops after the first error.
pub struct Events<'a> {
    _trace: &'a Trace,
}

impl Iterator for Events<'_> {
    type Item = Result<(u64, Event), Error>;
    fn next(&mut self) -> Option<Self::Item> {
        todo!("format: reader")
    }
}
