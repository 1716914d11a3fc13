//! Reading a trace: memory-mapped, every byte treated as untrusted.
//!
//! `open` checks the preamble, decodes the header, then either follows the
//! trailer to the footer's chunk index (cross-checking every chunk header
//! against it) or, without a valid trailer, scans chunk headers from the
//! start and reports the trace as truncated after its last complete chunk.
//! Modules are decoded at open; event chunks only on `read_chunk`, each on
//! its own (checksum, bounded decompression, rkyv validation, batch decode).

use std::fs::File;
use std::path::Path;

use crate::batch::{self, ArchivedBatch, ArchivedBatchV1};
use crate::layout::{
    self, ChunkHeader, ChunkKind, Trailer, CHUNK_HEADER_LEN, MAGIC, MAX_RAW_LEN, MIN_VERSION, PREAMBLE_LEN,
    TRAILER_LEN, VERSION,
};
use crate::wire::{self, WFooter, WHeader, WModule};
use crate::{Error, Event, EventRef, Header, Module, Summary};

/// Where one chunk of events lies and what it holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkInfo {
    /// File offset of the chunk header.
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

enum Bytes {
    Map(memmap2::Mmap),
    Owned(Vec<u8>),
}

impl Bytes {
    fn as_slice(&self) -> &[u8] {
        match self {
            Bytes::Map(m) => m,
            Bytes::Owned(v) => v,
        }
    }
}

/// An opened trace. Cheap to share between threads (`Sync`).
pub struct Trace {
    bytes: Bytes,
    header: Header,
    modules: Vec<Module>,
    /// For each module, the number of events pushed before it was added.
    module_events: Vec<u64>,
    chunks: Vec<ChunkInfo>,
    /// Payload checksums of `chunks`, same order.
    crcs: Vec<u32>,
    summary: Option<Summary>,
    completeness: Completeness,
    event_count: u64,
}

/// Maps `file` read-only.
///
/// # Safety
/// The caller must ensure no process truncates or rewrites the file while
/// the mapping lives: a shrinking file turns reads into SIGBUS, a rewrite
/// changes bytes under `&[u8]`. ffirec's writer never modifies a finished
/// trace (it writes `NAME.partial` and renames), so this only fails if
/// someone else edits the file while we read it — the same contract ripgrep
/// and every mmap-based reader accept.
unsafe fn map_file(file: &File) -> std::io::Result<memmap2::Mmap> {
    // SAFETY: forwarded to the caller (see the function's contract).
    unsafe { memmap2::Mmap::map(file) }
}

impl Trace {
    /// Memory-maps and indexes `path` (footer, or a scan when there is none).
    pub fn open(path: impl AsRef<Path>) -> Result<Trace, Error> {
        let path = path.as_ref();
        let io = |source| Error::Io { path: path.to_path_buf(), source };
        let file = File::open(path).map_err(io)?;
        let meta = file.metadata().map_err(io)?;
        if meta.is_dir() {
            return Err(io(std::io::Error::other("is a directory, not a trace file")));
        }
        let len = meta.len();
        if len == 0 {
            // mmap of an empty file fails; an empty file is simply no trace.
            return Err(Error::NotATrace);
        }
        // SAFETY: traces are written once and renamed into place, never
        // modified afterwards; see `map_file`.
        let map = unsafe { map_file(&file) }.map_err(io)?;
        Trace::index(Bytes::Map(map))
    }

    /// Same as [`Trace::open`] on bytes already in memory.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<Trace, Error> {
        Trace::index(Bytes::Owned(bytes))
    }

    pub fn header(&self) -> &Header {
        &self.header
    }

    /// All modules, in the order the recorder added them.
    pub fn modules(&self) -> &[Module] {
        &self.modules
    }

    /// The event number from which module `index` was known: how many events
    /// had been pushed when the recorder added it (`None` for no such module).
    /// Lets a reader tell apart two objects mapped at the same address over time.
    pub fn module_first_event(&self, index: usize) -> Option<u64> {
        self.module_events.get(index).copied()
    }

    pub fn chunks(&self) -> &[ChunkInfo] {
        &self.chunks
    }

    /// Footer summary (None when truncated).
    pub fn summary(&self) -> Option<&Summary> {
        self.summary.as_ref()
    }

    pub fn completeness(&self) -> &Completeness {
        &self.completeness
    }

    /// Total events in the readable chunks.
    pub fn event_count(&self) -> u64 {
        self.event_count
    }

    /// The format version of the file.
    pub fn version(&self) -> u16 {
        // Checked at open: only readable versions get here.
        let b = self.bytes.as_slice();
        b.get(8..10).map_or(VERSION, |v| u16::from_le_bytes([v[0], v[1]]))
    }

    /// Decompresses, checks and decodes chunk `index`. Independent of every
    /// other chunk, so callers may run these in parallel. A thin wrapper over
    /// [`Trace::visit_chunk`] that collects owned events.
    pub fn read_chunk(&self, index: usize) -> Result<Vec<Event>, Error> {
        // Capacity from an untrusted count: capped, the vector grows as events decode.
        let cap = self.chunks.get(index).map_or(0, |c| c.events as usize).min(1 << 16);
        let mut out = Vec::with_capacity(cap);
        self.visit_chunk(index, |_, e| out.push(e.into_event()))?;
        Ok(out)
    }

    /// Decompresses and checks chunk `index` exactly as [`Trace::read_chunk`]
    /// does, then hands every event to `f` with its event number, in order,
    /// without building owned events: an access borrows its bytes from the
    /// decompressed chunk ([`EventRef::Access`]), so nothing is allocated per
    /// access (only for its rare extended registers); the other kinds come
    /// owned ([`EventRef::Other`]).
    ///
    /// Some damage (e.g. bytes left over in a column) is only detectable
    /// after the last event, so `f` may have seen events of a chunk for which
    /// this then returns `Err`: discard whatever it gathered in that case.
    pub fn visit_chunk(&self, index: usize, mut f: impl FnMut(u64, EventRef<'_>)) -> Result<(), Error> {
        let corrupt = |reason: String| Error::Corrupt { chunk: index, reason };
        let (Some(info), Some(&crc)) = (self.chunks.get(index), self.crcs.get(index)) else {
            return Err(corrupt(format!("no such chunk (the trace has {})", self.chunks.len())));
        };
        let start = usize::try_from(info.offset).unwrap_or(usize::MAX).saturating_add(CHUNK_HEADER_LEN);
        let payload = self
            .bytes
            .as_slice()
            .get(start..start.saturating_add(info.compressed_len as usize))
            .ok_or_else(|| corrupt("payload beyond the end of the file".into()))?;
        let version = self.version();
        // The thread's buffer (a fresh one if `f` reads chunks itself).
        let mut raw = CHUNK_BUF.with(|c| c.take()).unwrap_or_default();
        let res = unpack_into(payload, info.raw_len, crc, &mut raw).and_then(|()| {
            let invalid = |e: rkyv::rancor::Error| format!("invalid archive: {e}");
            let view = if version == 1 {
                rkyv::access::<ArchivedBatchV1, rkyv::rancor::Error>(&raw).map_err(invalid)?.view()
            } else {
                rkyv::access::<ArchivedBatch, rkyv::rancor::Error>(&raw).map_err(invalid)?.view()
            };
            if view.kinds.len() != info.events as usize {
                return Err(format!("chunk header says {} events, payload holds {}", info.events, view.kinds.len()));
            }
            let first = info.first_event;
            batch::visit(&view, |n, e| f(first.wrapping_add(n as u64), e))
        });
        if raw.capacity() <= KEEP_BUF {
            CHUNK_BUF.with(|c| c.set(Some(raw)));
        }
        res.map_err(corrupt)
    }

    /// Every event with its number, in order.
    pub fn events(&self) -> Events<'_> {
        Events { trace: self, chunk: 0, current: Vec::new().into_iter(), next_number: 0, done: false }
    }

    fn index(bytes: Bytes) -> Result<Trace, Error> {
        let data = bytes.as_slice();
        if data.len() < MAGIC.len() || data[..MAGIC.len()] != MAGIC {
            return Err(Error::NotATrace);
        }
        if data.len() < PREAMBLE_LEN {
            return Err(Error::Truncated("the file ends inside the preamble".into()));
        }
        let version = u16::from_le_bytes([data[8], data[9]]);
        if !(MIN_VERSION..=VERSION).contains(&version) {
            return Err(Error::Incompatible { found: version, min: MIN_VERSION, max: VERSION });
        }
        let flags = u16::from_le_bytes([data[10], data[11]]);
        if flags != layout::layout_flags() {
            return Err(Error::IncompatibleLayout { found: flags, expected: layout::layout_flags() });
        }

        let meta = |what: &str, why: String| Error::CorruptMeta(format!("{what}: {why}"));
        let hdr = match chunk_header_at(data, PREAMBLE_LEN) {
            Some(Ok(h)) if h.kind == ChunkKind::Header => h,
            Some(Ok(h)) => return Err(meta("header", format!("first chunk is {:?}, not the header", h.kind))),
            Some(Err(f)) => return Err(meta("header", f.to_string())),
            None => return Err(Error::Truncated("the file ends inside the trace header".into())),
        };
        let body_start = PREAMBLE_LEN + CHUNK_HEADER_LEN + hdr.compressed_len as usize;
        let Some(payload) = data.get(PREAMBLE_LEN + CHUNK_HEADER_LEN..body_start) else {
            return Err(Error::Truncated("the file ends inside the trace header".into()));
        };
        let header = unpack(payload, hdr.raw_len, hdr.payload_crc)
            .and_then(|raw| from_rkyv::<WHeader>(&raw))
            .map_err(|e| meta("header", e))?;
        let header = wire::header_from(header);

        let mut t = Trace {
            header,
            modules: Vec::new(),
            module_events: Vec::new(),
            chunks: Vec::new(),
            crcs: Vec::new(),
            summary: None,
            completeness: Completeness::Complete,
            event_count: 0,
            bytes: Bytes::Owned(Vec::new()),
        };
        let has_end_magic =
            data.len() >= body_start + CHUNK_HEADER_LEN + TRAILER_LEN && data.ends_with(&layout::END_MAGIC);
        if has_end_magic {
            t.index_from_footer(data, body_start)?;
        } else {
            t.index_by_scan(data, body_start)?;
        }
        t.bytes = bytes;
        Ok(t)
    }

    fn add_event_chunk(&mut self, offset: usize, h: &ChunkHeader) -> Result<(), Error> {
        let index = self.chunks.len();
        if h.first_event != self.event_count {
            return Err(Error::Corrupt {
                chunk: index,
                reason: format!("starts at event {}, expected {}", h.first_event, self.event_count),
            });
        }
        if h.raw_len > MAX_RAW_LEN {
            return Err(Error::Corrupt { chunk: index, reason: format!("raw length {} exceeds the limit", h.raw_len) });
        }
        self.chunks.push(ChunkInfo {
            offset: offset as u64,
            compressed_len: h.compressed_len,
            raw_len: h.raw_len,
            first_event: h.first_event,
            events: h.event_count,
        });
        self.crcs.push(h.payload_crc);
        self.event_count += u64::from(h.event_count);
        Ok(())
    }

    fn add_module(&mut self, data: &[u8], offset: usize, h: &ChunkHeader) -> Result<(), Error> {
        let n = self.modules.len();
        if h.event_count != 0 {
            return Err(Error::CorruptMeta(format!("module {n}: chunk header claims {} events", h.event_count)));
        }
        let start = offset + CHUNK_HEADER_LEN;
        let payload = data
            .get(start..start + h.compressed_len as usize)
            .ok_or_else(|| Error::CorruptMeta(format!("module {n}: payload beyond the end of the file")))?;
        let m = unpack(payload, h.raw_len, h.payload_crc)
            .and_then(|raw| from_rkyv::<WModule>(&raw))
            .and_then(wire::module_from)
            .map_err(|e| Error::CorruptMeta(format!("module {n}: {e}")))?;
        self.modules.push(m);
        self.module_events.push(h.first_event);
        Ok(())
    }

    fn index_from_footer(&mut self, data: &[u8], body_start: usize) -> Result<(), Error> {
        let meta = |why: String| Error::CorruptMeta(why);
        let trailer_at = data.len() - TRAILER_LEN;
        let mut tb = [0u8; TRAILER_LEN];
        tb.copy_from_slice(&data[trailer_at..]);
        let tr = Trailer::decode(&tb).ok_or_else(|| meta("trailer checksum mismatch".into()))?;
        let footer_at = usize::try_from(tr.footer_offset).unwrap_or(usize::MAX);
        if footer_at < body_start
            || usize::try_from(tr.footer_len).ok().and_then(|l| footer_at.checked_add(l)) != Some(trailer_at)
        {
            return Err(meta(format!(
                "trailer points at a footer at {}+{} that does not end where the trailer starts ({trailer_at})",
                tr.footer_offset, tr.footer_len
            )));
        }
        let footer_bytes = &data[footer_at..trailer_at];
        if crc32fast::hash(footer_bytes) != tr.footer_crc {
            return Err(meta("footer checksum mismatch".into()));
        }
        let fh = match chunk_header_at(data, footer_at) {
            Some(Ok(h)) if h.kind == ChunkKind::Footer && h.total_len() == tr.footer_len => h,
            Some(Ok(_)) => return Err(meta("the trailer does not point at a footer chunk".into())),
            Some(Err(f)) => return Err(meta(format!("footer: {f}"))),
            None => return Err(meta("footer beyond the end of the file".into())),
        };
        let footer: WFooter = unpack(&footer_bytes[CHUNK_HEADER_LEN..], fh.raw_len, fh.payload_crc)
            .and_then(|raw| from_rkyv(&raw))
            .map_err(|e| meta(format!("footer: {e}")))?;

        let mut expect = body_start;
        for (i, e) in footer.chunks.iter().enumerate() {
            let is_events = e.kind == ChunkKind::Events as u16;
            let fail = |why: String| {
                if is_events {
                    Error::Corrupt { chunk: self.chunks.len(), reason: why }
                } else {
                    meta(format!("chunk index entry {i}: {why}"))
                }
            };
            if e.offset != expect as u64 {
                return Err(fail(format!("index says offset {}, chunks are contiguous up to {expect}", e.offset)));
            }
            let h = match chunk_header_at(data, expect) {
                Some(Ok(h)) => h,
                Some(Err(f)) => return Err(fail(format!("at offset {expect}: {f}"))),
                None => return Err(fail("beyond the end of the file".into())),
            };
            if h.kind as u16 != e.kind
                || h.compressed_len != e.compressed_len
                || h.raw_len != e.raw_len
                || h.first_event != e.first_event
                || h.event_count != e.event_count
            {
                return Err(fail(format!("chunk header at offset {expect} disagrees with the footer's index")));
            }
            let end = expect.saturating_add(h.total_len() as usize);
            if end > footer_at {
                return Err(fail("chunk runs into the footer".into()));
            }
            match h.kind {
                ChunkKind::Events => self.add_event_chunk(expect, &h)?,
                ChunkKind::Module => self.add_module(data, expect, &h)?,
                ChunkKind::Header | ChunkKind::Footer => {
                    return Err(meta(format!("chunk index entry {i}: unexpected {:?} chunk", h.kind)))
                }
            }
            expect = end;
        }
        if expect != footer_at {
            return Err(meta(format!("{} bytes between the last indexed chunk and the footer", footer_at - expect)));
        }
        self.summary = Some(wire::summary_from(footer.exit, footer.counters));
        self.completeness = Completeness::Complete;
        Ok(())
    }

    fn index_by_scan(&mut self, data: &[u8], body_start: usize) -> Result<(), Error> {
        let mut pos = body_start;
        while pos < data.len() {
            let h = match chunk_header_at(data, pos) {
                None => break, // the file ends inside a chunk header
                Some(Ok(h)) => h,
                Some(Err(_)) if data[pos..].iter().all(|&b| b == 0) => break, // zero-filled tail of a crash
                Some(Err(f)) => {
                    return Err(Error::Corrupt { chunk: self.chunks.len(), reason: format!("at offset {pos}: {f}") })
                }
            };
            let end = pos.saturating_add(h.total_len() as usize);
            if end > data.len() {
                break; // the file ends inside this chunk's payload
            }
            match h.kind {
                ChunkKind::Events => self.add_event_chunk(pos, &h)?,
                ChunkKind::Module => self.add_module(data, pos, &h)?,
                ChunkKind::Header => {
                    return Err(Error::CorruptMeta(format!("a second header chunk at offset {pos}")));
                }
                ChunkKind::Footer => {
                    if data.len() - end >= TRAILER_LEN {
                        return Err(Error::CorruptMeta("the trailer after the footer is damaged".into()));
                    }
                    break; // the file ends inside the trailer
                }
            }
            pos = end;
        }
        self.completeness = Completeness::Truncated { chunks: self.chunks.len(), events: self.event_count };
        Ok(())
    }
}

/// The chunk header at `at`: `None` when the file ends before 40 bytes.
fn chunk_header_at(data: &[u8], at: usize) -> Option<Result<ChunkHeader, layout::HeaderFault>> {
    let b: &[u8; CHUNK_HEADER_LEN] = data.get(at..at.checked_add(CHUNK_HEADER_LEN)?)?.try_into().ok()?;
    Some(ChunkHeader::decode(b))
}

/// Checks the payload checksum and decompresses into an aligned buffer of
/// exactly `raw_len` bytes (more is rejected by zstd — the buffer is the
/// bound — and less by us).
fn unpack(payload: &[u8], raw_len: u32, crc: u32) -> Result<rkyv::util::AlignedVec, String> {
    let mut out = rkyv::util::AlignedVec::<16>::new();
    unpack_into(payload, raw_len, crc, &mut out)?;
    Ok(out)
}

/// As [`unpack`], into `out` (emptied first; its memory is reused).
fn unpack_into(payload: &[u8], raw_len: u32, crc: u32, out: &mut rkyv::util::AlignedVec) -> Result<(), String> {
    if crc32fast::hash(payload) != crc {
        return Err("payload checksum mismatch".into());
    }
    if raw_len > MAX_RAW_LEN {
        return Err(format!("raw length {raw_len} exceeds the limit"));
    }
    // The writer's frames declare their size; checking it first means a
    // lying header cannot make us allocate for a size the frame disowns.
    match zstd::zstd_safe::get_frame_content_size(payload) {
        Ok(Some(n)) if n == u64::from(raw_len) => {}
        Ok(Some(n)) => return Err(format!("zstd frame holds {n} bytes, header says {raw_len}")),
        Ok(None) | Err(_) => return Err("not a zstd frame with a declared size".into()),
    }
    out.clear();
    out.resize(raw_len as usize, 0);
    let n = zstd::bulk::decompress_to_buffer(payload, &mut out[..]).map_err(|e| format!("zstd: {e}"))?;
    if n != raw_len as usize {
        return Err(format!("decompressed to {n} bytes, header says {raw_len}"));
    }
    Ok(())
}

/// Decompressed chunks up to this size keep their buffer for the thread's
/// next chunk (fresh pages for every chunk cost page faults, which two
/// threads decoding at once make contend).
const KEEP_BUF: usize = 16 << 20;

thread_local! {
    static CHUNK_BUF: std::cell::Cell<Option<rkyv::util::AlignedVec>> = const { std::cell::Cell::new(None) };
}

/// Validated rkyv access, then deserialization.
fn from_rkyv<T>(bytes: &[u8]) -> Result<T, String>
where
    T: rkyv::Archive,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::Error>>
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    rkyv::from_bytes::<T, rkyv::rancor::Error>(bytes).map_err(|e| format!("invalid archive: {e}"))
}

/// Iterator over `(event number, event)`; stops after the first error.
pub struct Events<'a> {
    trace: &'a Trace,
    chunk: usize,
    current: std::vec::IntoIter<Event>,
    next_number: u64,
    done: bool,
}

impl Iterator for Events<'_> {
    type Item = Result<(u64, Event), Error>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if self.done {
                return None;
            }
            if let Some(e) = self.current.next() {
                let n = self.next_number;
                self.next_number += 1;
                return Some(Ok((n, e)));
            }
            if self.chunk >= self.trace.chunks.len() {
                self.done = true;
                return None;
            }
            match self.trace.read_chunk(self.chunk) {
                Ok(events) => {
                    self.current = events.into_iter();
                    self.chunk += 1;
                }
                Err(e) => {
                    self.done = true;
                    return Some(Err(e));
                }
            }
        }
    }
}
