//! Appending events: batches on the caller's thread, compression and I/O on a background thread.

use std::path::{Path, PathBuf};

use crate::{Error, Event, Header, Module, Summary};

/// Tuning for [`TraceWriter`].
#[derive(Debug, Clone)]
pub struct WriterOptions {
    /// Events per chunk.
    pub events_per_chunk: usize,
    /// zstd level.
    pub level: i32,
    /// Batches queued for the background thread before `push` blocks (bounds memory).
    pub queue_depth: usize,
}

impl Default for WriterOptions {
    fn default() -> Self {
        WriterOptions { events_per_chunk: 1 << 16, level: 3, queue_depth: 4 }
    }
}

/// What `finish` produced.
#[derive(Debug, Clone)]
pub struct Written {
    pub path: PathBuf,
    pub bytes: u64,
    pub events: u64,
}

/// Writes `PATH.partial`, renamed to `PATH` by [`TraceWriter::finish`].
pub struct TraceWriter {
    _private: (),
}

impl TraceWriter {
    pub fn create(path: impl AsRef<Path>, header: Header) -> Result<Self, Error> {
        Self::with_options(path, header, WriterOptions::default())
    }

    pub fn with_options(
        _path: impl AsRef<Path>,
        _header: Header,
        _options: WriterOptions,
    ) -> Result<Self, Error> {
        todo!("format: writer")
    }

    /// Appends one event and returns its event number. Never compresses on
    /// the caller's thread; blocks only when `queue_depth` batches are pending.
    pub fn push(&mut self, _event: Event) -> Result<u64, Error> {
        todo!("format: writer")
    }

    /// Adds a module to the module table and returns its index (what
    /// `Event::Call::module` refers to). Written to the file at once, so a
    /// truncated trace keeps the modules it saw.
    pub fn add_module(&mut self, _module: Module) -> Result<u32, Error> {
        todo!("format: writer")
    }

    /// Number of events pushed so far (the next event's number).
    pub fn events(&self) -> u64 {
        todo!("format: writer")
    }

    /// Flushes, writes footer and trailer, renames `PATH.partial` to `PATH`.
    pub fn finish(self, _summary: Summary) -> Result<Written, Error> {
        todo!("format: writer")
    }
}
