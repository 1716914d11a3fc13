//! Appending events: batches on the caller's thread, compression and I/O on a background thread.
//!
//! The caller's thread only moves events into a `Vec` (Alloc and Free events,
//! which can come by the million, go straight into their compact columns,
//! `batch::MemCols`, a few bytes each). Full batches go through
//! a bounded `sync_channel` to one background thread that encodes, compresses
//! and appends chunks, so memory stays bounded by `queue_depth + 2` batches
//! however long the recording runs. If the writer is dropped without
//! [`TraceWriter::finish`], everything pushed so far is still written and the
//! `.partial` file reads back as a truncated trace.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread::JoinHandle;

use crate::batch::{self, PlainMem};
use crate::layout::{self, ChunkHeader, ChunkKind, Trailer, MAX_RAW_LEN};
use crate::wire::{self, WChunkEntry, WCounter, WFooter};
use crate::{AccessRef, Domain, Error, Event, Header, Module, Summary, EVENT_KINDS};

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

/// A batch is also cut when its events hold roughly this many bytes, so a
/// stream of large events cannot exceed the reader's raw chunk limit.
const BATCH_BYTES: usize = 64 << 20;

enum Msg {
    Events { first: u64, kinds: Vec<u8>, events: Vec<Event>, mem: Box<batch::MemCols>, acc: Box<batch::AccessCols> },
    Module { at_event: u64, module: Box<Module> },
    Finish { summary: Summary },
}

/// Writes `PATH.partial`, renamed to `PATH` by [`TraceWriter::finish`].
pub struct TraceWriter {
    path: PathBuf,
    partial: PathBuf,
    options: WriterOptions,
    /// Kind of every event of the current batch.
    kinds: Vec<u8>,
    /// Its events other than Alloc/Free, in order.
    batch: Vec<Event>,
    /// Its Alloc/Free events, encoded.
    mem: batch::MemCols,
    /// Its Access events, as fixed-size records.
    acc: batch::AccessCols,
    batch_bytes: usize,
    batch_first: u64,
    next_event: u64,
    modules: u32,
    kind_counts: [u64; EVENT_KINDS.len()],
    tx: Option<SyncSender<Msg>>,
    thread: Option<JoinHandle<Result<u64, Error>>>,
}

impl TraceWriter {
    pub fn create(path: impl AsRef<Path>, header: Header) -> Result<Self, Error> {
        Self::with_options(path, header, WriterOptions::default())
    }

    pub fn with_options(path: impl AsRef<Path>, header: Header, options: WriterOptions) -> Result<Self, Error> {
        let path = path.as_ref().to_path_buf();
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let io = |source| Error::Io { path: partial.clone(), source };
        let file = File::create(&partial).map_err(io)?;
        let mut sink = Sink::new(BufWriter::with_capacity(1 << 20, file), partial.clone(), options.level)?;
        sink.write_raw(&layout::preamble())?;
        let raw = to_rkyv(&wire::header_to(&header))?;
        sink.write_chunk(ChunkKind::Header, &raw, 0, 0)?;
        sink.flush()?;
        let (tx, rx) = sync_channel(options.queue_depth.max(1));
        let thread = std::thread::Builder::new()
            .name("ffirec-writer".into())
            .spawn(move || sink.run(rx))
            .map_err(|e| Error::Writer(format!("cannot start writer thread: {e}")))?;
        Ok(TraceWriter {
            path,
            partial,
            kinds: Vec::with_capacity(options.events_per_chunk.clamp(1, 1 << 20)),
            batch: Vec::new(),
            mem: batch::MemCols::default(),
            acc: batch::AccessCols::default(),
            options,
            batch_bytes: 0,
            batch_first: 0,
            next_event: 0,
            modules: 0,
            kind_counts: [0; EVENT_KINDS.len()],
            tx: Some(tx),
            thread: Some(thread),
        })
    }

    /// Appends one event and returns its event number. Never compresses on
    /// the caller's thread; blocks only when `queue_depth` batches are pending.
    pub fn push(&mut self, event: Event) -> Result<u64, Error> {
        let n = self.next_event;
        if self.encode(&event) {
            self.batch.push(event);
        }
        self.end_push(n)
    }

    /// [`Self::push`] of an Access from borrowed parts: nothing is moved,
    /// cloned or allocated per event (the recorder's stop path).
    #[inline]
    pub fn push_access(&mut self, a: &AccessRef<'_>) -> Result<u64, Error> {
        let n = self.next_event;
        self.kind_counts[0] += 1;
        self.kinds.push(0);
        self.batch_bytes +=
            64 + a.code.len() + a.data.len() + a.vregs.iter().map(|v| 16 + v.bytes.len()).sum::<usize>();
        self.acc.push(a);
        self.end_push(n)
    }

    /// [`Self::push`] by reference: an Alloc or Free (the events that come by
    /// the million) is encoded without being moved or cloned; any other
    /// event is cloned.
    #[inline]
    pub fn push_ref(&mut self, event: &Event) -> Result<u64, Error> {
        let n = self.next_event;
        if self.encode(event) {
            self.batch.push(event.clone());
        }
        self.end_push(n)
    }

    /// Counts `event` and appends it to its columns (Alloc/Free, Access);
    /// true when it is none of those and must be kept whole in `batch`.
    #[inline]
    fn encode(&mut self, event: &Event) -> bool {
        let kind = batch::kind_id(event);
        self.kind_counts[usize::from(kind)] += 1;
        self.kinds.push(kind);
        if self.mem.push(event) {
            self.batch_bytes += 24;
            return false;
        }
        self.batch_bytes += approx_size(event);
        !self.acc.push_event(event)
    }

    /// [`Self::push`] of the `Event::Alloc` or `Event::Free` of each of a run
    /// of plain mallocs and frees in `domain` (see [`PlainMem`]; a malloc
    /// with its free is both), `get` giving each one's fields: the same
    /// events and bytes, at a fraction of the cost per event (the recorder
    /// drains them by the million).
    #[inline]
    pub fn push_plain_mem<T>(
        &mut self,
        domain: Domain,
        mut recs: &[T],
        get: impl Fn(&T) -> PlainMem,
    ) -> Result<(), Error> {
        let per_chunk = self.options.events_per_chunk.max(1);
        while !recs.is_empty() {
            // As many events as the one-at-a-time path puts in before it cuts the batch.
            let room = per_chunk.saturating_sub(self.kinds.len()).max(1);
            let room_bytes = BATCH_BYTES.saturating_sub(self.batch_bytes).div_ceil(24).max(1);
            let room = room.min(room_bytes);
            let mut take = recs.len();
            if 2 * take > room {
                // Near the end of the batch: the records whose events fit.
                let (mut i, mut events) = (0, 0);
                while i < recs.len() {
                    events += 1 + usize::from(get(&recs[i]).free_caller.is_some());
                    if events > room {
                        break;
                    }
                    i += 1;
                }
                take = i;
            }
            if take == 0 {
                // A malloc with its free and room for one event: the batch
                // ends between the two, as when they are pushed one by one.
                let m = get(&recs[0]);
                let free = m.free_caller.map(|caller| PlainMem { free: true, caller, free_caller: None, ..m });
                self.push_plain_now(domain, &[PlainMem { free_caller: None, ..m }], |m| *m)?;
                self.push_plain_now(domain, free.as_slice(), |m| *m)?;
                recs = &recs[1..];
                continue;
            }
            let (now, rest) = recs.split_at(take);
            self.push_plain_now(domain, now, &get)?;
            recs = rest;
        }
        Ok(())
    }

    /// [`Self::push_plain_mem`] of records whose events fit in the batch.
    #[inline]
    fn push_plain_now<T>(&mut self, domain: Domain, recs: &[T], get: impl Fn(&T) -> PlainMem) -> Result<(), Error> {
        let (allocs, frees) = self.mem.push_plain(&mut self.kinds, domain, recs, get);
        self.kind_counts[usize::from(batch::KIND_FREE)] += frees as u64;
        self.kind_counts[usize::from(batch::KIND_ALLOC)] += allocs as u64;
        self.batch_bytes += 24 * (allocs + frees);
        self.next_event += (allocs + frees) as u64;
        self.flush_if_full()
    }

    /// Hands the batch over once it holds a chunk's events or bytes.
    #[inline]
    fn flush_if_full(&mut self) -> Result<(), Error> {
        if self.kinds.len() >= self.options.events_per_chunk.max(1) || self.batch_bytes >= BATCH_BYTES {
            self.flush_batch()?;
        }
        Ok(())
    }

    #[inline]
    fn end_push(&mut self, n: u64) -> Result<u64, Error> {
        self.next_event += 1;
        self.flush_if_full()?;
        Ok(n)
    }

    /// Adds a module to the module table and returns its index (what
    /// `Event::Call::module` refers to). Written to the file at once, so a
    /// truncated trace keeps the modules it saw.
    pub fn add_module(&mut self, module: Module) -> Result<u32, Error> {
        let index = self.modules;
        self.send(Msg::Module { at_event: self.next_event, module: Box::new(module) })?;
        self.modules += 1;
        Ok(index)
    }

    /// Number of events pushed so far (the next event's number).
    pub fn events(&self) -> u64 {
        self.next_event
    }

    /// Hands the current batch to the background thread now (normally it
    /// goes when full). Events stay in order; chunk sizes just get smaller.
    pub fn flush(&mut self) -> Result<(), Error> {
        self.flush_batch()
    }

    /// Flushes, writes footer and trailer, renames `PATH.partial` to `PATH`.
    pub fn finish(mut self, summary: Summary) -> Result<Written, Error> {
        self.flush_batch()?;
        let mut counters: Vec<(String, u64)> =
            EVENT_KINDS.iter().zip(self.kind_counts).map(|(k, n)| (format!("events.{k}"), n)).collect();
        counters.extend(summary.counters.into_iter().filter(|(name, _)| !name.starts_with("events.")));
        self.send(Msg::Finish { summary: Summary { exit: summary.exit, counters } })?;
        self.tx = None;
        let bytes = self.join()?;
        std::fs::rename(&self.partial, &self.path).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        Ok(Written { path: self.path.clone(), bytes, events: self.next_event })
    }

    fn flush_batch(&mut self) -> Result<(), Error> {
        if self.kinds.is_empty() {
            return Ok(());
        }
        let cap = self.options.events_per_chunk.clamp(1, 1 << 20);
        let kinds = std::mem::replace(&mut self.kinds, Vec::with_capacity(cap));
        let events = std::mem::take(&mut self.batch);
        let next = batch::MemCols::with_capacity_like(&self.mem);
        let mem = Box::new(std::mem::replace(&mut self.mem, next));
        // The next batch's accesses get room for as many as this one had.
        let room = self.acc.empty_like();
        let acc = Box::new(std::mem::replace(&mut self.acc, room));
        let first = self.batch_first;
        self.batch_first = self.next_event;
        self.batch_bytes = 0;
        self.send(Msg::Events { first, kinds, events, mem, acc })
    }

    fn send(&mut self, msg: Msg) -> Result<(), Error> {
        let Some(tx) = &self.tx else {
            return Err(Error::Writer("writer already failed".into()));
        };
        if tx.send(msg).is_ok() {
            return Ok(());
        }
        // The background thread is gone: it stopped on an error. Report it.
        self.tx = None;
        match self.join() {
            Err(e) => Err(e),
            Ok(_) => Err(Error::Writer("writer thread stopped early".into())),
        }
    }

    fn join(&mut self) -> Result<u64, Error> {
        match self.thread.take() {
            None => Err(Error::Writer("writer already failed".into())),
            Some(t) => t.join().unwrap_or_else(|_| Err(Error::Writer("writer thread panicked".into()))),
        }
    }
}

impl Drop for TraceWriter {
    /// Without `finish`: write what was pushed and leave a readable `.partial`.
    fn drop(&mut self) {
        if self.tx.is_some() {
            let _ = self.flush_batch();
            self.tx = None;
            let _ = self.join();
        }
    }
}

fn approx_size(e: &Event) -> usize {
    64 + match e {
        Event::Access { code, data, vregs, .. } => {
            code.len() + data.len() + vregs.iter().map(|v| 16 + v.bytes.len()).sum::<usize>()
        }
        Event::SyscallAccess { ranges, .. } => 24 * ranges.len(),
        Event::Signal { code_bytes, .. } => 160 + code_bytes.len(),
        Event::Exec { path, .. } => path.len(),
        _ => 0,
    }
}

fn to_rkyv<T>(value: &T) -> Result<rkyv::util::AlignedVec, Error>
where
    T: for<'a> rkyv::Serialize<
        rkyv::api::high::HighSerializer<
            rkyv::util::AlignedVec,
            rkyv::ser::allocator::ArenaHandle<'a>,
            rkyv::rancor::Error,
        >,
    >,
{
    rkyv::to_bytes::<rkyv::rancor::Error>(value).map_err(|e| Error::Writer(format!("serialize: {e}")))
}

/// The background thread's side: owns the file.
struct Sink {
    out: BufWriter<File>,
    path: PathBuf,
    offset: u64,
    compressor: zstd::bulk::Compressor<'static>,
    index: Vec<WChunkEntry>,
}

impl Sink {
    fn new(out: BufWriter<File>, path: PathBuf, level: i32) -> Result<Sink, Error> {
        let compressor = zstd::bulk::Compressor::new(level).map_err(|e| Error::Writer(format!("zstd: {e}")))?;
        Ok(Sink { out, path, offset: 0, compressor, index: Vec::new() })
    }

    fn run(mut self, rx: Receiver<Msg>) -> Result<u64, Error> {
        for msg in rx {
            match msg {
                Msg::Events { first, kinds, events, mem, acc } => {
                    let count = kinds.len();
                    let raw = to_rkyv(&batch::encode_parts(kinds, &events, *mem, &acc))?;
                    drop(acc);
                    let count =
                        u32::try_from(count).map_err(|_| Error::Writer("more than 2^32 events in one chunk".into()))?;
                    drop(events);
                    self.write_chunk(ChunkKind::Events, &raw, first, count)?;
                }
                Msg::Module { at_event, module } => {
                    let raw = to_rkyv(&wire::module_to(&module))?;
                    self.write_chunk(ChunkKind::Module, &raw, at_event, 0)?;
                    // Modules matter most when the recorder dies soon after.
                    self.flush()?;
                }
                Msg::Finish { summary } => {
                    let footer = WFooter {
                        chunks: std::mem::take(&mut self.index),
                        exit: summary.exit.map(wire::exit_to),
                        counters: summary.counters.into_iter().map(|(name, value)| WCounter { name, value }).collect(),
                    };
                    let raw = to_rkyv(&footer)?;
                    let footer_offset = self.offset;
                    let chunk = self.chunk_bytes(ChunkKind::Footer, &raw, 0, 0)?;
                    self.write_raw(&chunk)?;
                    let trailer =
                        Trailer { footer_offset, footer_len: chunk.len() as u64, footer_crc: crc32fast::hash(&chunk) };
                    self.write_raw(&trailer.encode())?;
                    self.flush()?;
                    self.out.get_ref().sync_all().map_err(|source| Error::Io { path: self.path.clone(), source })?;
                    return Ok(self.offset);
                }
            }
        }
        // Channel closed without Finish: the writer was dropped.
        self.flush()?;
        Ok(self.offset)
    }

    fn chunk_bytes(
        &mut self,
        kind: ChunkKind,
        raw: &[u8],
        first_event: u64,
        event_count: u32,
    ) -> Result<Vec<u8>, Error> {
        let raw_len = u32::try_from(raw.len())
            .ok()
            .filter(|&l| l <= MAX_RAW_LEN)
            .ok_or_else(|| Error::Writer(format!("chunk of {} bytes exceeds the format's limit", raw.len())))?;
        let payload = self.compressor.compress(raw).map_err(|e| Error::Writer(format!("zstd: {e}")))?;
        let compressed_len =
            u32::try_from(payload.len()).map_err(|_| Error::Writer("compressed chunk exceeds 4 GiB".into()))?;
        let header = ChunkHeader {
            kind,
            compressed_len,
            raw_len,
            first_event,
            event_count,
            payload_crc: crc32fast::hash(&payload),
        };
        let mut out = Vec::with_capacity(layout::CHUNK_HEADER_LEN + payload.len());
        out.extend_from_slice(&header.encode());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    fn write_chunk(&mut self, kind: ChunkKind, raw: &[u8], first_event: u64, event_count: u32) -> Result<(), Error> {
        let bytes = self.chunk_bytes(kind, raw, first_event, event_count)?;
        if kind != ChunkKind::Header {
            self.index.push(WChunkEntry {
                offset: self.offset,
                kind: kind as u16,
                compressed_len: (bytes.len() - layout::CHUNK_HEADER_LEN) as u32,
                raw_len: raw.len() as u32,
                first_event,
                event_count,
            });
        }
        self.write_raw(&bytes)
    }

    fn write_raw(&mut self, bytes: &[u8]) -> Result<(), Error> {
        self.out.write_all(bytes).map_err(|source| Error::Io { path: self.path.clone(), source })?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn flush(&mut self) -> Result<(), Error> {
        self.out.flush().map_err(|source| Error::Io { path: self.path.clone(), source })
    }
}
