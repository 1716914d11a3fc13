//! Finding things in a trace without reading all of it: the chunk holding an
//! event (binary search on `first_event`), the start of the replay a listing
//! needs (a bounded backward scan to each shown thread's foreign call), and
//! the crash (a backward scan from the end).

use std::collections::{HashMap, HashSet};
use std::rc::Rc;

use ffirec_format::{Event, Tid, Trace};

use super::ShowError;

/// Chunks a listing scans backwards, at most, to find the foreign call each
/// shown thread is in. Beyond it, the thread's context is reported as
/// entered before the scanned part.
pub(crate) const MAX_BACK_CHUNKS: usize = 8;
/// When the scan ends this close to the start, replay from event 0 instead,
/// so allocations get their `analyze` ordinals (`alloc#N`).
pub(crate) const EXACT_PREFIX_CHUNKS: usize = 4;

/// The chunk holding event `seq`.
pub(crate) fn chunk_of(trace: &Trace, seq: u64) -> Result<usize, ShowError> {
    let chunks = trace.chunks();
    let i = chunks.partition_point(|c| c.first_event <= seq);
    match i.checked_sub(1).and_then(|i| chunks.get(i).map(|c| (i, c))) {
        Some((i, c)) if seq < c.first_event + u64::from(c.events) => Ok(i),
        _ => Err(ShowError::NoEvent { event: seq, events: trace.event_count() }),
    }
}

/// Decoded chunks, kept while one view runs (each is read once).
pub(crate) struct Chunks<'t> {
    pub trace: &'t Trace,
    cache: HashMap<usize, Rc<Vec<Event>>>,
}

impl<'t> Chunks<'t> {
    pub fn new(trace: &'t Trace) -> Self {
        Chunks { trace, cache: HashMap::new() }
    }

    pub fn get(&mut self, i: usize) -> Result<Rc<Vec<Event>>, ShowError> {
        if let Some(c) = self.cache.get(&i) {
            return Ok(c.clone());
        }
        let ev = Rc::new(self.trace.read_chunk(i)?);
        if self.cache.len() >= 2 * MAX_BACK_CHUNKS + 4 {
            self.cache.clear();
        }
        self.cache.insert(i, ev.clone());
        Ok(ev)
    }

    pub fn first_event(&self, i: usize) -> u64 {
        self.trace.chunks().get(i).map_or(0, |c| c.first_event)
    }
}

/// Where a listing's replay starts.
pub(crate) struct Start {
    /// First event fed to the timeline.
    pub event: u64,
    /// Threads whose foreign call began before `event` (not found in the scan).
    pub unresolved: HashSet<Tid>,
}

/// Scans backwards from event `from` until, for every thread in `tids`, the
/// event that fixes its call context is found: its `Call` (it is inside
/// that call), its last `Return` or `ThreadStart` (host mode), or — after a
/// `Callback`/`CallbackReturn` — the `Call` of the call it names.
pub(crate) fn replay_start(chunks: &mut Chunks, from: u64, tids: &HashSet<Tid>) -> Result<Start, ShowError> {
    let trace = chunks.trace;
    if trace.chunks().is_empty() || from == 0 {
        return Ok(Start { event: 0, unresolved: HashSet::new() });
    }
    let last = chunk_of(trace, from.min(trace.event_count().saturating_sub(1)))?;
    let mut pending: HashSet<Tid> = tids.clone();
    // Threads waiting for the Call of a named call number.
    let mut want: HashMap<Tid, u64> = HashMap::new();
    let mut ci = last;
    let mut scanned = 0;
    loop {
        let first = chunks.first_event(ci);
        let events = chunks.get(ci)?;
        for (i, ev) in events.iter().enumerate().rev() {
            let seq = first + i as u64;
            if seq >= from {
                continue;
            }
            let Some(tid) = ev.tid() else { continue };
            if !pending.contains(&tid) {
                continue;
            }
            match *ev {
                Event::Call { call, .. } if want.get(&tid).is_none_or(|&w| w == call) => {
                    pending.remove(&tid);
                    want.remove(&tid);
                }
                Event::Return { .. } | Event::ThreadStart { .. } if !want.contains_key(&tid) => {
                    pending.remove(&tid);
                }
                Event::Callback { call, .. } | Event::CallbackReturn { call, .. } => {
                    want.entry(tid).or_insert(call);
                }
                _ => {}
            }
        }
        scanned += 1;
        if pending.is_empty() || ci == 0 || scanned >= MAX_BACK_CHUNKS {
            break;
        }
        ci -= 1;
    }
    if ci <= EXACT_PREFIX_CHUNKS {
        return Ok(Start { event: 0, unresolved: HashSet::new() });
    }
    Ok(Start { event: chunks.first_event(ci), unresolved: pending })
}

/// The crash: the last fatal signal, else the last fault signal (SIGSEGV,
/// SIGBUS, SIGILL, SIGFPE, SIGABRT). Scans chunks from the end.
pub(crate) fn find_crash(chunks: &mut Chunks) -> Result<Option<(u64, Tid)>, ShowError> {
    let n = chunks.trace.chunks().len();
    let mut fallback = None;
    for ci in (0..n).rev() {
        let first = chunks.first_event(ci);
        let events = chunks.get(ci)?;
        for (i, ev) in events.iter().enumerate().rev() {
            let seq = first + i as u64;
            if let Event::Signal { tid, signo, fatal, .. } = *ev {
                if fatal {
                    return Ok(Some((seq, tid)));
                }
                if fallback.is_none() && matches!(signo, 4 | 6 | 7 | 8 | 11) {
                    fallback = Some((seq, tid));
                }
            }
        }
        if fallback.is_some() {
            // Fatal signals come last; a fault signal with none after it is the crash.
            return Ok(fallback);
        }
    }
    Ok(fallback)
}

/// Event number of the `k`-th event of `tid` before `before` (or of its
/// earliest one, when it has fewer).
pub(crate) fn back_events_of(chunks: &mut Chunks, before: u64, tid: Tid, k: usize) -> Result<u64, ShowError> {
    let mut found = 0;
    let mut earliest = before;
    if k == 0 || before == 0 {
        return Ok(before);
    }
    let mut ci = chunk_of(chunks.trace, before - 1)?;
    loop {
        let first = chunks.first_event(ci);
        let events = chunks.get(ci)?;
        for (i, ev) in events.iter().enumerate().rev() {
            let seq = first + i as u64;
            if seq < before && ev.tid() == Some(tid) {
                earliest = seq;
                found += 1;
                if found == k {
                    return Ok(earliest);
                }
            }
        }
        if ci == 0 {
            return Ok(earliest);
        }
        ci -= 1;
    }
}
