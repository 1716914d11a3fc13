//! The reader against damaged files: more than 10 000 mutations of valid
//! traces (bit flips everywhere, truncation at every chunk boundary and at
//! random points inside chunks, lying length fields, swapped chunks, zeroed
//! regions). Every mutation runs inside `catch_unwind`; each must give exactly
//! the outcome an independent model of the format predicts: the error kind
//! (and chunk number), or the exact events of the chunks left intact.
#![allow(clippy::unwrap_used)] // test code: a failed step should panic where it happened

#[path = "support/arb.rs"]
mod arb;

use std::ops::Range;
use std::panic::{catch_unwind, AssertUnwindSafe};

use ffirec_format::*;
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::TestRunner;

const CHUNK_HEADER: usize = 40;
const TRAILER: usize = 32;
const KIND_EVENTS: u16 = 2;
const KIND_MODULE: u16 = 3;
const KIND_FOOTER: u16 = 4;

/// A chunk as the test's own model of the layout sees it.
#[derive(Debug, Clone)]
struct Region {
    start: usize,
    end: usize,
    kind: u16,
    /// Ordinal among event chunks.
    event_index: Option<usize>,
    events: Vec<Event>,
}

impl Region {
    fn header(&self) -> Range<usize> {
        self.start..self.start + CHUNK_HEADER
    }
    fn payload(&self) -> Range<usize> {
        self.start + CHUNK_HEADER..self.end
    }
}

struct Sample {
    name: &'static str,
    bytes: Vec<u8>,
    finished: bool,
    header_end: usize,
    /// Every chunk after the header chunk (events, modules, footer), in file order.
    body: Vec<Region>,
    modules: usize,
}

impl Sample {
    fn event_chunks(&self) -> impl Iterator<Item = &Region> {
        self.body.iter().filter(|r| r.kind == KIND_EVENTS)
    }
}

fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}

/// Writes a trace of every event kind and returns it with its layout.
fn sample(name: &'static str, finished: bool, seed_events: usize) -> Sample {
    let mut runner = TestRunner::deterministic();
    let events: Vec<Event> = (0..seed_events).map(|_| arb::event().new_tree(&mut runner).unwrap().current()).collect();
    let modules: Vec<Module> = (0..3).map(|_| arb::module().new_tree(&mut runner).unwrap().current()).collect();
    let header = arb::header().new_tree(&mut runner).unwrap().current();
    let dir = std::env::temp_dir().join(format!("ffirec-corruption-{}-{name}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.ffr");
    let mut w =
        TraceWriter::with_options(&path, header, WriterOptions { events_per_chunk: 9, level: 3, queue_depth: 2 })
            .unwrap();
    for (i, e) in events.iter().enumerate() {
        if i % 70 == 5 {
            w.add_module(modules[i / 70].clone()).unwrap();
        }
        w.push(e.clone()).unwrap();
    }
    let file = if finished {
        w.finish(Summary { exit: Some(ExitStatus::Code(0)), counters: vec![("stops".into(), 9)] }).unwrap();
        path.clone()
    } else {
        drop(w);
        dir.join("t.ffr.partial")
    };
    let bytes = std::fs::read(&file).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();

    // Walk the layout independently of the reader.
    let header_end = 12 + CHUNK_HEADER + u32_at(&bytes, 12 + 8) as usize;
    let mut body = vec![];
    let mut pos = header_end;
    let mut n_events = 0usize;
    let mut first = 0usize;
    let limit = if finished { bytes.len() - TRAILER } else { bytes.len() };
    while pos < limit {
        let kind = u16::from_le_bytes([bytes[pos + 4], bytes[pos + 5]]);
        let end = pos + CHUNK_HEADER + u32_at(&bytes, pos + 8) as usize;
        let count = u32_at(&bytes, pos + 24) as usize;
        let (event_index, evs) = if kind == KIND_EVENTS {
            n_events += 1;
            first += count;
            (Some(n_events - 1), events[first - count..first].to_vec())
        } else {
            (None, vec![])
        };
        body.push(Region { start: pos, end, kind, event_index, events: evs });
        pos = end;
    }
    assert_eq!(pos, limit);
    assert_eq!(first, events.len());
    let m = body.iter().filter(|r| r.kind == KIND_MODULE).count();
    assert_eq!(m, (0..events.len()).filter(|i| i % 70 == 5).count());
    Sample { name, bytes, finished, header_end, body, modules: m }
}

/// What reading a (damaged) file must give.
#[derive(Debug, Clone, PartialEq)]
enum Expect {
    NotATrace,
    Incompatible,
    IncompatibleLayout,
    Truncated,
    CorruptMeta,
    Corrupt(usize),
    /// Opens; `chunks` event chunks (those listed in `bad` fail with
    /// `Corrupt{chunk}`, all others decode to exactly the original events).
    Ok {
        complete: bool,
        chunks: usize,
        modules: usize,
        bad: Vec<usize>,
    },
}

fn kind_of(e: &Error) -> Expect {
    match e {
        Error::NotATrace => Expect::NotATrace,
        Error::Incompatible { .. } => Expect::Incompatible,
        Error::IncompatibleLayout { .. } => Expect::IncompatibleLayout,
        Error::Truncated(_) => Expect::Truncated,
        Error::CorruptMeta(_) => Expect::CorruptMeta,
        Error::Corrupt { chunk, .. } => Expect::Corrupt(*chunk),
        other => panic!("unexpected error kind: {other}"),
    }
}

/// The model: which check fails first for a same-length mutation `m` of `s`.
fn predict_same_len(s: &Sample, m: &[u8]) -> Expect {
    let o = &s.bytes;
    let diff = |r: Range<usize>| o[r.clone()] != m[r];
    if diff(0..8) {
        return Expect::NotATrace;
    }
    if diff(8..10) {
        return Expect::Incompatible;
    }
    if diff(10..12) {
        return Expect::IncompatibleLayout;
    }
    if diff(12..s.header_end) {
        return Expect::CorruptMeta;
    }
    let len = o.len();
    let mut bad = vec![];
    let mut modules = 0;
    if s.finished && !diff(len - 8..len) {
        // Footer mode: trailer, footer, then the index walk; payloads lazily.
        if diff(len - TRAILER..len) {
            return Expect::CorruptMeta;
        }
        for r in &s.body {
            if r.kind == KIND_FOOTER && diff(r.start..r.end) {
                return Expect::CorruptMeta;
            }
        }
        for r in &s.body {
            match r.kind {
                KIND_EVENTS if diff(r.header()) => return Expect::Corrupt(r.event_index.unwrap()),
                KIND_EVENTS if diff(r.payload()) => bad.push(r.event_index.unwrap()),
                KIND_MODULE if diff(r.start..r.end) => return Expect::CorruptMeta,
                KIND_MODULE => modules += 1,
                _ => {}
            }
        }
        return Expect::Ok { complete: true, chunks: s.event_chunks().count(), modules, bad };
    }
    // Scan mode.
    let mut chunks = 0;
    for r in &s.body {
        if diff(r.header()) {
            if m[r.start..].iter().all(|&b| b == 0) {
                break;
            }
            return Expect::Corrupt(chunks);
        }
        match r.kind {
            KIND_EVENTS => {
                if diff(r.payload()) {
                    bad.push(chunks);
                }
                chunks += 1;
            }
            KIND_MODULE if diff(r.payload()) => return Expect::CorruptMeta,
            KIND_MODULE => modules += 1,
            KIND_FOOTER => return Expect::CorruptMeta, // the trailer after it is damaged
            _ => unreachable!(),
        }
    }
    Expect::Ok { complete: false, chunks, modules, bad }
}

/// The model for the file cut to `len` bytes.
fn predict_truncated(s: &Sample, len: usize) -> Expect {
    if len < 8 {
        return Expect::NotATrace;
    }
    if len < s.header_end {
        return Expect::Truncated;
    }
    if len == s.bytes.len() && s.finished {
        return Expect::Ok { complete: true, chunks: s.event_chunks().count(), modules: s.modules, bad: vec![] };
    }
    let whole = s.body.iter().take_while(|r| r.end <= len && r.kind != KIND_FOOTER);
    let chunks = whole.clone().filter(|r| r.kind == KIND_EVENTS).count();
    let modules = whole.filter(|r| r.kind == KIND_MODULE).count();
    Expect::Ok { complete: false, chunks, modules, bad: vec![] }
}

/// Opens `m` and checks it against `want`; panics (test failure) on mismatch.
/// `check_all` decodes every chunk; otherwise only chunks whose bytes changed.
fn check(s: &Sample, m: Vec<u8>, want: &Expect, what: &str, check_all: bool) {
    let changed: Vec<bool> = s
        .event_chunks()
        .map(|r| check_all || r.end > m.len() || s.bytes[r.start..r.end] != m[r.start..r.end])
        .collect();
    let result = catch_unwind(AssertUnwindSafe(|| {
        let t = match Trace::from_bytes(m) {
            Err(e) => return Err(kind_of(&e)),
            Ok(t) => t,
        };
        let complete = *t.completeness() == Completeness::Complete;
        let mut bad = vec![];
        for (i, r) in s.event_chunks().enumerate().take(t.chunks().len()) {
            if !changed[i] {
                continue;
            }
            match t.read_chunk(i) {
                Ok(evs) => assert_eq!(evs, r.events, "{}: {what}: chunk {i} decoded to other events", s.name),
                Err(Error::Corrupt { chunk, .. }) if chunk == i => bad.push(i),
                Err(e) => panic!("{}: {what}: chunk {i}: wrong error {e}", s.name),
            }
        }
        if let Completeness::Truncated { chunks, events } = t.completeness() {
            assert_eq!(*chunks, t.chunks().len());
            assert_eq!(*events, t.event_count());
        }
        Ok(Expect::Ok { complete, chunks: t.chunks().len(), modules: t.modules().len(), bad })
    }));
    match result {
        Err(_) => panic!("{}: {what}: the reader panicked", s.name),
        Ok(got) => {
            let got = got.unwrap_or_else(|e| e);
            assert_eq!(&got, want, "{}: {what}", s.name);
        }
    }
}

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

fn rewrite_header(m: &mut [u8], at: usize, field: usize, value: &[u8]) {
    m[at + field..at + field + value.len()].copy_from_slice(value);
    let crc = crc32fast::hash(&m[at..at + 36]);
    m[at + 36..at + 40].copy_from_slice(&crc.to_le_bytes());
}

fn run_all(s: &Sample, rng: &mut Rng) -> usize {
    let mut n = 0;
    let o = &s.bytes;

    // Bit flips: every byte outside chunk payloads (preamble, chunk headers,
    // trailer), every byte of the header and footer chunks, and 2500 random
    // positions anywhere.
    let mut structural: Vec<usize> = (0..s.header_end).collect();
    for r in &s.body {
        structural.extend(if r.kind == KIND_FOOTER { r.start..r.end } else { r.header() });
    }
    structural.extend(s.body.last().unwrap().end..o.len());
    let random: Vec<usize> = (0..2500).map(|_| rng.below(o.len())).collect();
    for p in structural.into_iter().chain(random) {
        let mut m = o.clone();
        m[p] ^= 1 << rng.below(8);
        let want = predict_same_len(s, &m);
        check(s, m, &want, &format!("bit flip at byte {p}"), false);
        n += 1;
    }

    // Truncation at every chunk boundary (and one byte either side), then at random points.
    let mut cuts: Vec<usize> = vec![0, 1, 7, 8, 11, 12, s.header_end - 1, s.header_end];
    for r in &s.body {
        cuts.extend([r.start - 1, r.start, r.start + 1, r.start + CHUNK_HEADER - 1, r.end - 1, r.end]);
    }
    cuts.extend((0..800).map(|_| s.header_end + rng.below(o.len() - s.header_end)));
    cuts.push(o.len());
    for len in cuts {
        let want = predict_truncated(s, len);
        check(s, o[..len].to_vec(), &want, &format!("truncated to {len} bytes"), true);
        n += 1;
    }

    // Zeroed regions.
    for _ in 0..600 {
        let a = rng.below(o.len());
        let b = (a + 1 + rng.below(200)).min(o.len());
        let mut m = o.clone();
        m[a..b].fill(0);
        let want = predict_same_len(s, &m);
        check(s, m, &want, &format!("zeroed {a}..{b}"), false);
        n += 1;
    }

    // Lying length and count fields (header checksum recomputed, so only the
    // cross-checks can catch them).
    for r in s.body.iter().filter(|r| r.kind != KIND_FOOTER) {
        let clen = u32_at(o, r.start + 8);
        let raw = u32_at(o, r.start + 12);
        let count = u32_at(o, r.start + 24);
        let first = u64::from_le_bytes(o[r.start + 16..r.start + 24].try_into().unwrap());
        let lies: Vec<(usize, Vec<u8>, &str)> = vec![
            (8, (clen + 1).to_le_bytes().to_vec(), "compressed_len+1"),
            (8, (clen - 1).to_le_bytes().to_vec(), "compressed_len-1"),
            (8, u32::MAX.to_le_bytes().to_vec(), "compressed_len=MAX"),
            (8, ((o.len() - r.end) as u32 + clen).to_le_bytes().to_vec(), "compressed_len to EOF"),
            (12, (raw + 1).to_le_bytes().to_vec(), "raw_len+1"),
            (12, (raw - 1).to_le_bytes().to_vec(), "raw_len-1"),
            (12, u32::MAX.to_le_bytes().to_vec(), "raw_len=MAX"),
            (16, (first + 1).to_le_bytes().to_vec(), "first_event+1"),
            (24, (count + 1).to_le_bytes().to_vec(), "event_count+1"),
            (24, count.wrapping_sub(1).to_le_bytes().to_vec(), "event_count-1"),
        ];
        for (field, value, name) in lies {
            let mut m = o.clone();
            rewrite_header(&mut m, r.start, field, &value);
            if m == *o {
                continue; // the "lie" is the truth (e.g. the last chunk already ends at EOF)
            }
            let want = predict_lie(s, r, field, &value);
            check(s, m, &want, &format!("chunk at {}: {name}", r.start), false);
            n += 1;
        }
    }

    // Swapped event chunks.
    let evs: Vec<&Region> = s.event_chunks().collect();
    for i in 0..evs.len() {
        for j in i + 1..evs.len() {
            let (a, b) = (evs[i], evs[j]);
            let mut m = o[..a.start].to_vec();
            m.extend_from_slice(&o[b.start..b.end]);
            m.extend_from_slice(&o[a.end..b.start]);
            m.extend_from_slice(&o[a.start..a.end]);
            m.extend_from_slice(&o[b.end..]);
            check(s, m, &Expect::Corrupt(i), &format!("swapped event chunks {i} and {j}"), false);
            n += 1;
        }
    }
    n
}

/// The model for a lying field with a valid header checksum.
fn predict_lie(s: &Sample, r: &Region, field: usize, value: &[u8]) -> Expect {
    let all = s.event_chunks().count();
    let idx = r.event_index;
    if s.finished {
        // The footer's index disagrees with the chunk header.
        return idx.map_or(Expect::CorruptMeta, Expect::Corrupt);
    }
    let Some(i) = idx else {
        // A module chunk in scan mode.
        let before = s.body.iter().take_while(|x| x.start < r.start);
        let ev_before = before.clone().filter(|x| x.kind == KIND_EVENTS).count();
        let mod_before = before.filter(|x| x.kind == KIND_MODULE).count();
        return match field {
            8 => {
                let clen = u32::from_le_bytes(value.try_into().unwrap()) as usize;
                let end = r.start + CHUNK_HEADER + clen;
                if end > s.bytes.len() {
                    Expect::Ok { complete: false, chunks: ev_before, modules: mod_before, bad: vec![] }
                } else {
                    Expect::CorruptMeta
                }
            }
            12 | 24 => Expect::CorruptMeta,
            // `first_event` of a module is the event count when it was added;
            // it may run ahead of the chunks already written, so it is not checked.
            _ => Expect::Ok { complete: false, chunks: all, modules: s.modules, bad: vec![] },
        };
    };
    let last = i + 1 == all;
    match field {
        8 => {
            let clen = u32::from_le_bytes(value.try_into().unwrap()) as usize;
            let end = r.start + CHUNK_HEADER + clen;
            let mods_before = s.body.iter().take_while(|x| x.start < r.start).filter(|x| x.kind == KIND_MODULE).count();
            if end > s.bytes.len() {
                Expect::Ok { complete: false, chunks: i, modules: mods_before, bad: vec![] }
            } else if s.bytes.len() - end < CHUNK_HEADER {
                // What follows is too short for a chunk header: looks like a cut.
                Expect::Ok { complete: false, chunks: i + 1, modules: mods_before, bad: vec![i] }
            } else if end == s.bytes.len() {
                Expect::Ok { complete: false, chunks: i + 1, modules: mods_before, bad: vec![i] }
            } else {
                Expect::Corrupt(i + 1)
            }
        }
        12 => {
            if u32::from_le_bytes(value.try_into().unwrap()) > 1 << 30 {
                Expect::Corrupt(i)
            } else {
                Expect::Ok { complete: false, chunks: all, modules: s.modules, bad: vec![i] }
            }
        }
        16 => Expect::Corrupt(i),
        24 if last => Expect::Ok { complete: false, chunks: all, modules: s.modules, bad: vec![i] },
        24 => Expect::Corrupt(i + 1),
        _ => unreachable!(),
    }
}

#[test]
fn ten_thousand_mutations_never_panic_and_give_the_right_error() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let finished = sample("finished", true, 150);
    let partial = sample("partial", false, 150);
    assert!(finished.event_chunks().count() >= 15);
    let mut n = run_all(&finished, &mut rng);
    n += run_all(&partial, &mut rng);
    eprintln!("{n} mutations ({} + {} byte traces)", finished.bytes.len(), partial.bytes.len());
    assert!(n >= 10_000, "only {n} mutations");
}

#[test]
fn non_traces_are_not_traces() {
    for bytes in [&b""[..], b"\x7fELF\x02\x01\x01", b"hello world, this is text and not a trace at all", &[0u8; 4096]] {
        assert!(matches!(Trace::from_bytes(bytes.to_vec()), Err(Error::NotATrace)));
    }
}

#[test]
fn newer_versions_are_incompatible_with_the_range_named() {
    let s = sample("version", true, 10);
    let mut m = s.bytes.clone();
    m[8..10].copy_from_slice(&3u16.to_le_bytes());
    match Trace::from_bytes(m) {
        Err(Error::Incompatible { found: 3, min: 1, max: 2 }) => {}
        other => panic!("{:?}", other.map(|_| ())),
    }
}

/// Rebuilds event chunk `r` of a scan-mode (unfinished) trace around a new
/// decompressed payload, with every checksum and length made consistent, so
/// only rkyv validation and the batch decoder stand between it and the reader.
fn with_raw_payload(s: &Sample, r: &Region, raw: &[u8]) -> Vec<u8> {
    let payload = zstd::bulk::compress(raw, 3).unwrap();
    let mut header: [u8; CHUNK_HEADER] = s.bytes[r.start..r.start + CHUNK_HEADER].try_into().unwrap();
    header[8..12].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[12..16].copy_from_slice(&(raw.len() as u32).to_le_bytes());
    header[28..32].copy_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    let crc = crc32fast::hash(&header[..36]);
    header[36..40].copy_from_slice(&crc.to_le_bytes());
    let mut m = s.bytes[..r.start].to_vec();
    m.extend_from_slice(&header);
    m.extend_from_slice(&payload);
    m.extend_from_slice(&s.bytes[r.end..]);
    m
}

#[test]
fn hostile_payloads_with_valid_checksums_never_panic_the_decoder() {
    let s = sample("payload", false, 150);
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let mut n = 0;
    let mut rejected = 0;
    for (i, r) in s.event_chunks().enumerate() {
        let raw = zstd::bulk::decompress(&s.bytes[r.payload()], 1 << 20).unwrap();
        let mut variants: Vec<(String, Vec<u8>)> = vec![];
        for _ in 0..120 {
            let mut m = raw.clone();
            let p = rng.below(m.len());
            match rng.below(4) {
                0 => m[p] ^= 1 << rng.below(8),
                1 => m[p] = 0xff,
                2 => m[p] = 0,
                _ => m[p] = rng.next() as u8,
            }
            variants.push((format!("raw byte {p} changed"), m));
        }
        for cut in [0, 1, raw.len() / 2, raw.len() - 1] {
            variants.push((format!("raw payload cut to {cut}"), raw[..cut].to_vec()));
        }
        for (what, m) in variants {
            let file = with_raw_payload(&s, r, &m);
            let outcome = catch_unwind(AssertUnwindSafe(|| {
                let t = Trace::from_bytes(file).expect("the framing is valid");
                t.read_chunk(i)
            }));
            match outcome {
                Err(_) => panic!("chunk {i}: {what}: the reader panicked"),
                Ok(Ok(_)) => {} // a change inside a value can still decode (to other events)
                Ok(Err(Error::Corrupt { chunk, .. })) if chunk == i => rejected += 1,
                Ok(Err(e)) => panic!("chunk {i}: {what}: wrong error {e}"),
            }
            n += 1;
        }
    }
    eprintln!("{n} hostile payloads, {rejected} rejected as corrupt");
    assert!(n >= 2000);
    assert!(rejected > n / 4, "only {rejected} of {n} rejected");
}
