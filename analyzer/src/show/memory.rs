//! Views that need the state at a point of the replay: `--at EVENT --memory`
//! (per-byte state of a range as a hex view) and `--call N` (the call's
//! events and its footprint per argument allocation).
//!
//! Both replay the analyzer's own state machine — `Timeline` for calls and
//! allocations, `Shard`s for the shadow, footprints and exposure — over the
//! events up to their point, feeding the shards only the accesses that can
//! matter (those touching the range; those made during the call), and
//! decoding instructions only in chunks where such accesses can be.

use std::collections::BTreeMap;
use std::io::Write;

use rayon::prelude::*;

use ffirec_decode::{MemAccess, Rw};
use ffirec_format::{Event, Trace};

use super::listing::Lister;
use super::scan::{self, Chunks};
use super::{Env, MemAddr, MemSpec, ShowError};
use crate::decode::{self, AccessRec, ChunkRecs, Decoder, PtrLoad, SHARDS};
use crate::state::{replay_round, ByteInit, Ctx, RangeSet, Shard, Target, Timeline};
use crate::symbols::ModuleMap;

/// The analyzer's state after a replay.
struct Replay {
    tl: Timeline,
    shards: Vec<Shard>,
}

/// A chunk's non-access events only (no instruction decoding).
fn control_only(first: u64, events: &[Event]) -> ChunkRecs {
    ChunkRecs {
        accesses: vec![Vec::new(); SHARDS],
        ptr_loads: vec![Vec::new(); SHARDS],
        control: (first..)
            .zip(events.iter())
            .filter(|(_, e)| !matches!(e, Event::Access { .. }))
            .map(|(s, e)| (s, e.clone()))
            .collect(),
        access_events: 0,
        decode_errors: Vec::new(),
    }
}

/// A chunk read by a worker: first event, events, filtered records.
type ReadChunk = (u64, Vec<Event>, ChunkRecs);

/// What a replay keeps.
trait Filter {
    /// Decode this chunk's accesses at all?
    fn decode(&self, first: u64, last: u64) -> bool;
    /// Keep this access (called on worker threads).
    fn access(&self, r: &AccessRec) -> bool;
    fn ptr_load(&mut self, p: &PtrLoad, tl: &Timeline) -> bool;
    /// Sees each chunk's events after the filter ran.
    fn chunk(&mut self, _first: u64, _events: &[Event], _recs: &ChunkRecs) {}
}

/// Replays events `0..=upto`. Chunks are read and their accesses decoded
/// and filtered in parallel, a few at a time (bounded memory); the timeline
/// and the shards then consume them in order.
fn replay<F: Filter + Sync>(trace: &Trace, mm: &ModuleMap, upto: u64, f: &mut F) -> Result<Replay, ShowError> {
    let mut tl = Timeline::new(trace.header().policy.track_host_init);
    let mut shards: Vec<Shard> = (0..SHARDS).map(Shard::new).collect();
    let mut ops = Vec::new();
    if trace.event_count() == 0 {
        return Ok(Replay { tl, shards });
    }
    let last_chunk = scan::chunk_of(trace, upto.min(trace.event_count() - 1))?;
    let batch = (2 * rayon::current_num_threads()).clamp(2, 8);
    let mut next = 0;
    while next <= last_chunk {
        let end = (next + batch).min(last_chunk + 1);
        let filter: &F = f;
        let decoded: Vec<Result<ReadChunk, ShowError>> = (next..end)
            .into_par_iter()
            .map(|ci| {
                let info = trace.chunks()[ci];
                let events = trace.read_chunk(ci)?;
                let last = info.first_event + u64::from(info.events).saturating_sub(1);
                let mut recs = if filter.decode(info.first_event, last) {
                    Decoder::default().records(info.first_event, &events)
                } else {
                    control_only(info.first_event, &events)
                };
                for v in &mut recs.accesses {
                    v.retain(|r| r.seq <= upto && filter.access(r));
                }
                recs.control.retain(|(s, _)| *s <= upto);
                Ok((info.first_event, events, recs))
            })
            .collect();
        for d in decoded {
            let (first, events, mut recs) = d?;
            ops.clear();
            let first_copy = tl.copies.len();
            tl.feed(&recs.control, &mut ops);
            for v in &mut recs.ptr_loads {
                v.retain(|p| p.seq <= upto && f.ptr_load(p, &tl));
            }
            f.chunk(first, &events, &recs);
            drop(events);
            replay_round(&mut shards, &ops, std::slice::from_ref(&recs), &mut tl, mm, first_copy);
        }
        next = end;
    }
    Ok(Replay { tl, shards })
}

/// Feeds only the timeline with the control events that come before the
/// first one `stop` accepts; returns it and that event (`None`: no such event).
#[allow(clippy::type_complexity)]
fn timeline_before(
    trace: &Trace,
    mut stop: impl FnMut(&Timeline, &Event) -> bool,
) -> Result<(Timeline, Option<(u64, Event)>), ShowError> {
    let mut tl = Timeline::new(trace.header().policy.track_host_init);
    let mut ops = Vec::new();
    for ci in 0..trace.chunks().len() {
        let first = trace.chunks()[ci].first_event;
        let events = trace.read_chunk(ci)?;
        let recs = control_only(first, &events);
        for c in recs.control.chunks(1) {
            if stop(&tl, &c[0].1) {
                return Ok((tl, Some(c[0].clone())));
            }
            ops.clear();
            tl.feed(c, &mut ops);
        }
    }
    Ok((tl, None))
}

/// Last write and last known value of each byte of the range.
struct RangeWatch {
    start: u64,
    end: u64,
    /// Allocations overlapping the range so far: (base, end).
    allocs: Vec<(u64, u64)>,
    seen_allocs: usize,
    /// Per byte: (event, ip or syscall number, how) of the last write.
    writer: Vec<Option<(u64, u64, Writer)>>,
    /// Per byte: the value a recorded read saw after the last write.
    value: Vec<Option<u8>>,
    decoder: Decoder,
    scratch: Vec<MemAccess>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Writer {
    Instruction,
    Syscall,
    Host,
}

impl RangeWatch {
    fn overlaps(&self, s: u64, e: u64) -> bool {
        s < self.end && e > self.start
    }
    fn bytes(&self, s: u64, e: u64) -> std::ops::Range<usize> {
        let a = s.max(self.start).min(self.end);
        let b = e.min(self.end).max(a);
        (a - self.start) as usize..(b - self.start) as usize
    }
    fn wrote(&mut self, s: u64, e: u64, seq: u64, ip: u64, how: Writer) {
        for i in self.bytes(s, e) {
            self.writer[i] = Some((seq, ip, how));
            self.value[i] = None;
        }
    }
}

impl Filter for RangeWatch {
    fn decode(&self, _first: u64, _last: u64) -> bool {
        true
    }
    fn access(&self, r: &AccessRec) -> bool {
        self.overlaps(r.addr, r.addr + u64::from(r.size))
    }
    fn ptr_load(&mut self, p: &PtrLoad, tl: &Timeline) -> bool {
        // Exposure of the allocations the range touches: keep loads of
        // pointers into any of them (the shard decides liveness).
        for a in tl.allocs.get(self.seen_allocs..).unwrap_or(&[]) {
            if self.overlaps(a.base, a.end().max(a.base + 1)) {
                self.allocs.push((a.base, a.end()));
            }
        }
        self.seen_allocs = tl.allocs.len();
        self.allocs.iter().any(|&(b, e)| p.value >= b && p.value < e)
    }
    fn chunk(&mut self, first: u64, events: &[Event], recs: &ChunkRecs) {
        // Events touching the range, in order: instruction accesses (from the
        // kept records), syscalls and host writes (from the control events).
        let mut seqs: Vec<u64> = recs.accesses.iter().flatten().map(|r| r.seq).collect();
        seqs.extend(recs.control.iter().map(|(s, _)| *s));
        seqs.sort_unstable();
        seqs.dedup();
        for seq in seqs {
            let Some(ev) = events.get((seq - first) as usize) else { continue };
            match ev {
                Event::Access { code, regs, data, vregs, .. } => {
                    self.scratch.clear();
                    let mut accs = std::mem::take(&mut self.scratch);
                    if self
                        .decoder
                        .decoded(regs.rip, code)
                        .and_then(|d| d.accesses_into(regs, vregs, &mut accs))
                        .is_ok()
                    {
                        let mut off = 0usize;
                        for a in &accs {
                            let (s, e) = (a.addr, a.addr.saturating_add(a.size));
                            if a.rw != Rw::Write {
                                let n = usize::try_from(a.size).unwrap_or(usize::MAX);
                                if let Some(d) = data.get(off..off.saturating_add(n)) {
                                    for i in self.bytes(s, e) {
                                        let k = (self.start + i as u64 - s) as usize;
                                        self.value[i] = d.get(k).copied();
                                    }
                                }
                                off = off.saturating_add(n);
                            }
                            if a.rw != Rw::Read && a.certain {
                                self.wrote(s, e, seq, regs.rip, Writer::Instruction);
                            }
                        }
                        // GPR/immediate stores: the written value is known.
                        let stored = self.decoder.decoded(regs.rip, code).ok().and_then(|d| d.emulation().copied());
                        if let Some((addr, v)) =
                            stored.and_then(|em| Some((em.address(regs), em.store_value(regs)?.to_le_bytes())))
                        {
                            let n = stored.map_or(0, |em| em.size()).min(8);
                            for i in self.bytes(addr, addr.saturating_add(n as u64)) {
                                self.value[i] = v.get((self.start + i as u64 - addr) as usize).copied();
                            }
                        }
                    }
                    self.scratch = accs;
                }
                Event::SyscallAccess { nr, ranges, .. } => {
                    for r in ranges.iter().filter(|r| r.write) {
                        self.wrote(r.addr, r.addr.saturating_add(r.len), seq, *nr, Writer::Syscall);
                    }
                }
                Event::HostWrite { addr, len, .. } => {
                    self.wrote(*addr, addr.saturating_add(*len), seq, 0, Writer::Host)
                }
                _ => {}
            }
        }
    }
}

/// `--at EVENT --memory RANGE`: the state of each byte after event `at`.
pub(crate) fn at(env: &Env, at: u64, spec: MemSpec, out: &mut dyn Write) -> Result<(), ShowError> {
    let trace = env.trace;
    if at >= trace.event_count() {
        return Err(ShowError::NoEvent { event: at, events: trace.event_count() });
    }
    let start = match spec.addr {
        MemAddr::Abs(a) => a,
        MemAddr::Alloc { id, offset } => {
            let (tl, _) = timeline_before(trace, |tl, _| tl.allocs.len() > id as usize)?;
            match tl.allocs.get(id as usize) {
                Some(a) if a.born <= at => a.base.saturating_add(offset),
                _ => {
                    let born = tl.allocs.iter().filter(|a| a.born <= at).count();
                    return Err(ShowError::NoAlloc { id, at, born });
                }
            }
        }
    };
    let end = start.saturating_add(spec.len);
    let len = (end - start) as usize;
    let mm = ModuleMap::new(trace.modules());
    let mut w = RangeWatch {
        start,
        end,
        allocs: Vec::new(),
        seen_allocs: 0,
        writer: vec![None; len],
        value: vec![None; len],
        decoder: Decoder::default(),
        scratch: Vec::new(),
    };
    let mut r = replay(trace, &mm, at, &mut w)?;
    let ctx = Ctx { allocs: &r.tl.allocs, modules: &mm, copies: &r.tl.copies };
    let tl = &r.tl;
    let st = env.style;

    // Per byte: allocation and state, from the owning shard.
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum B {
        Outside,
        Freed(u32),
        In(u32, ByteInit),
    }
    // Freed blocks overlapping the range, latest first.
    let freed: Vec<(u32, u64, u64)> = tl
        .allocs
        .iter()
        .enumerate()
        .rev()
        .filter(|(_, a)| a.freed.is_some() && a.base < end && a.end() > start)
        .map(|(id, a)| (id as u32, a.base, a.end()))
        .collect();
    let mut state = Vec::with_capacity(len);
    for addr in start..end {
        let s = &mut r.shards[decode::shard_of(addr)];
        state.push(match s.byte_state(addr, &ctx) {
            Some((id, b)) => B::In(id, b),
            None => match freed.iter().find(|&&(_, b, e)| addr >= b && addr < e) {
                Some(&(id, _, _)) => B::Freed(id),
                None => B::Outside,
            },
        });
    }

    writeln!(out, "# memory [{start:#x},{end:#x}) ({len} bytes) after event {at}")?;
    writeln!(
        out,
        "# state: I initialised, U never written (uninitialised), ? unknown, F freed, . outside every live allocation"
    )?;
    writeln!(out, "# values: hex where a recorded read saw the byte, or a store's register/immediate wrote it, after its last write; -- otherwise")?;
    let mut line = 0usize;
    while line < len {
        let n = (len - line).min(16);
        let mut hex = String::new();
        let mut marks = String::new();
        for (value, byte) in w.value[line..line + n].iter().zip(&state[line..line + n]) {
            let v = value.map_or("--".to_string(), |b| format!("{b:02x}"));
            let (m, bad) = match byte {
                B::In(_, ByteInit::Init) => ('I', false),
                B::In(_, ByteInit::Uninit) => ('U', true),
                B::In(_, ByteInit::Unknown) => ('?', false),
                B::Freed(_) => ('F', true),
                B::Outside => ('.', false),
            };
            let cell = format!("{v} ");
            hex.push_str(&if bad { st.bad(&cell) } else { cell });
            marks.push_str(&if bad { st.bad(&m.to_string()) } else { m.to_string() });
        }
        for _ in n..16 {
            hex.push_str("   ");
        }
        writeln!(out, "{}  +{line:<5} {hex} {marks}", st.dim(&format!("{:#014x}", start + line as u64)))?;
        line += 16;
    }

    // Runs of bytes with the same allocation, state and last writer.
    writeln!(out, "# runs:")?;
    let mut i = 0usize;
    let mut allocs_seen: Vec<u32> = Vec::new();
    while i < len {
        let key = (state[i], w.writer[i]);
        let mut j = i + 1;
        while j < len && (state[j], w.writer[j]) == key {
            j += 1;
        }
        let (s, e) = (start + i as u64, start + j as u64);
        let (what, alloc_text) = match state[i] {
            B::In(id, b) => {
                if !allocs_seen.contains(&id) {
                    allocs_seen.push(id);
                }
                let base = tl.allocs.get(id as usize).map_or(s, |a| a.base);
                let name = env.alloc_name(tl, id, true);
                let what = match b {
                    ByteInit::Init => "initialised".to_string(),
                    ByteInit::Uninit => st.bad("uninitialised"),
                    ByteInit::Unknown => "unknown".to_string(),
                };
                (what, format!("{name}[{},{})", s - base, e - base))
            }
            B::Freed(id) => {
                let base = tl.allocs.get(id as usize).map_or(s, |a| a.base);
                (st.bad("freed"), format!("{}[{},{})", env.alloc_name(tl, id, true), s - base, e - base))
            }
            B::Outside => {
                let l = env.syms.locate(s);
                let place = match (&l.module, l.module_offset) {
                    (Some(m), Some(off)) if l.symbol.is_some() => format!("{} ({m}+{off:#x})", l.short()),
                    (Some(m), Some(off)) => format!("{m}+{off:#x}"),
                    _ => "no live allocation".to_string(),
                };
                ("outside".to_string(), place)
            }
        };
        let born = match state[i] {
            B::In(id, _) | B::Freed(id) => tl.allocs.get(id as usize).map(|a| (a.born, a.zeroed)),
            B::Outside => None,
        };
        let writer = match (w.writer[i], born) {
            (Some((seq, _, _)), Some((b, z))) if seq < b => {
                if z {
                    format!("zero-filled at birth (event {b})")
                } else {
                    format!("no recorded write since birth (event {b})")
                }
            }
            (Some((seq, ip, Writer::Instruction)), _) => format!("last written by event {seq} at {}", env.loc(ip)),
            (Some((seq, nr, Writer::Syscall)), _) => format!("last written by the kernel, event {seq} (syscall {nr})"),
            (Some((seq, _, Writer::Host)), _) => format!("last written by host code, event {seq}"),
            (None, Some((b, true))) => format!("zero-filled at birth (event {b})"),
            (None, Some((b, false))) => format!("no recorded write since birth (event {b})"),
            (None, None) => "no recorded write".to_string(),
        };
        writeln!(out, "  +{}..+{}  {what}  {alloc_text}  {writer}", i, j)?;
        i = j;
    }

    // Allocations: what they are and whether the library could reach them.
    let mut load_exposures: Vec<_> = r.shards.iter().flat_map(|s| s.out.exposures.iter().copied()).collect();
    load_exposures.sort_by_key(|e| e.seq);
    for id in allocs_seen {
        let Some(a) = tl.allocs.get(id as usize) else { continue };
        let mut via: Vec<String> = tl
            .arg_exposures
            .iter()
            .filter(|e| e.alloc == id)
            .map(|e| format!("argument {} of {}", e.arg, short_call(env, tl, e.call)))
            .collect();
        via.extend(load_exposures.iter().filter(|e| e.alloc == id).map(|e| {
            format!("pointer loaded at event {} by {} in {}", e.seq, env.loc(e.ip), short_call(env, tl, e.call))
        }));
        let exposure = if via.is_empty() {
            "not exposed to the library".to_string()
        } else {
            format!("exposed: {}", via.join("; "))
        };
        writeln!(
            out,
            "# {} [{:#x},{:#x}), {}, born at event {}: {exposure}",
            env.alloc_label(tl, id, true),
            a.base,
            a.end(),
            format!("{:?}", a.domain).to_lowercase(),
            a.born
        )?;
    }
    Ok(())
}

fn short_call(env: &Env, tl: &Timeline, idx: u32) -> String {
    match tl.calls.get(idx as usize) {
        Some(c) => {
            let sym = env.syms.symbol_name(c.module, c.symbol).unwrap_or_else(|| format!("{:#x}", c.target));
            format!("#{} {sym}()", c.call)
        }
        None => "?".into(),
    }
}

/// Keeps the accesses of events `[enter, exit]`.
struct CallWindow {
    enter: u64,
    exit: u64,
}

impl Filter for CallWindow {
    fn decode(&self, first: u64, last: u64) -> bool {
        last >= self.enter && first <= self.exit
    }
    fn access(&self, r: &AccessRec) -> bool {
        r.seq >= self.enter && r.seq <= self.exit
    }
    fn ptr_load(&mut self, p: &PtrLoad, _tl: &Timeline) -> bool {
        p.seq >= self.enter && p.seq <= self.exit
    }
}

/// `--call N`: the call's header, its thread's events during it, and its
/// footprint per argument allocation.
pub(crate) fn call(env: &Env, n: u64, count: Option<usize>, out: &mut dyn Write) -> Result<(), ShowError> {
    let trace = env.trace;
    // The timeline up to the call's entry (control events only), so
    // allocations keep the ordinals analyze gives them.
    let (tl, found) = timeline_before(trace, |_, ev| matches!(*ev, Event::Call { call, .. } if call == n))?;
    let Some((enter, Event::Call { tid, target, module, symbol, args, return_addr, .. })) = found else {
        return Err(ShowError::NoCall { call: n, calls: tl.calls.len() as u64 });
    };
    let sym = env.syms.symbol_name(module, symbol).unwrap_or_else(|| env.syms.locate(target).short());
    let shown_args: Vec<String> = args.iter().map(|a| format!("{a:#x}")).collect();
    writeln!(
        out,
        "# call #{n} {sym}({}) called from {}, thread {tid}, entered at event {enter}",
        shown_args.join(", "),
        env.loc(return_addr),
    )?;

    // The thread's events until the call returns.
    let mut chunks = Chunks::new(trace);
    let mut l = Lister::with_timeline(env, tl);
    let mut shown = 0usize;
    let mut exit = None;
    'chunks: for ci in scan::chunk_of(trace, enter)?..trace.chunks().len() {
        let first = chunks.first_event(ci);
        let events = chunks.get(ci)?;
        for (seq, ev) in (first..).zip(events.iter()) {
            if seq < enter {
                continue;
            }
            if ev.tid() == Some(tid) && count.is_none_or(|k| shown < k) {
                l.render(seq, ev, out)?;
                shown += 1;
            } else {
                l.feed(seq, ev);
            }
            if matches!(*ev, Event::Return { call, .. } if call == n) {
                exit = Some(seq);
                break 'chunks;
            }
        }
    }
    if count.is_some_and(|k| shown >= k) {
        writeln!(out, "# (first {shown} events of the call's thread shown; --count to change)")?;
    }
    let Some(idx) = l.tl.calls.iter().position(|c| c.call == n) else {
        return Err(ShowError::NoCall { call: n, calls: l.tl.calls.len() as u64 });
    };
    match (l.tl.calls[idx].ret, exit) {
        (Some((rax, rdx)), Some(e)) => writeln!(out, "# returned rax={rax:#x} rdx={rdx:#x} at event {e}")?,
        _ => writeln!(out, "# did not return in the trace")?,
    }
    let exit = exit.unwrap_or(trace.event_count().saturating_sub(1));
    let c = l.tl.calls[idx].clone();
    drop(l);

    // Footprint, from the analyzer's shards over the call's accesses.
    let mm = ModuleMap::new(trace.modules());
    let r = replay(trace, &mm, exit, &mut CallWindow { enter, exit })?;
    let idx = idx as u32;
    let mut fp: BTreeMap<Target, (RangeSet, RangeSet)> = BTreeMap::new();
    for s in &r.shards {
        for (&(call, target), t) in &s.out.footprint {
            if call == idx {
                let e = fp.entry(target).or_default();
                e.0.union(&t.read);
                e.1.union(&t.write);
            }
        }
    }
    let ranges = |rs: &RangeSet, hex: bool| -> String {
        if rs.is_empty() {
            return "nothing".into();
        }
        let v: Vec<String> = rs
            .ranges()
            .iter()
            .map(|&(s, e)| if hex { format!("[{s:#x},{e:#x})") } else { format!("[{s},{e})") })
            .collect();
        format!("{} ({} bytes)", v.join(" "), rs.len())
    };
    writeln!(out, "# footprint of call #{n}:")?;
    let tl = &r.tl;
    let arg_allocs: Vec<(u8, u32, u64)> =
        tl.arg_exposures.iter().filter(|e| e.call == idx).map(|e| (e.arg, e.alloc, e.offset)).collect();
    for &(arg, id, off) in &arg_allocs {
        let (rd, wr) = fp.remove(&Target::Alloc(id)).unwrap_or_default();
        writeln!(
            out,
            "  arg {arg} = {:#x} -> {}+{off}: read {}, wrote {}",
            c.args[arg as usize],
            env.alloc_label(tl, id, true),
            ranges(&rd, false),
            ranges(&wr, false)
        )?;
    }
    if arg_allocs.is_empty() {
        writeln!(out, "  no argument pointed into a live host allocation")?;
    }
    for (target, (rd, wr)) in &fp {
        let label = match *target {
            Target::Alloc(id) => env.alloc_label(tl, id, true),
            Target::Module(m) => env.syms.module_name(m).unwrap_or_else(|| format!("module#{m}")),
            Target::Other => "unattributed memory".into(),
        };
        let hex = !matches!(target, Target::Alloc(_));
        writeln!(out, "  also {label}: read {}, wrote {}", ranges(rd, hex), ranges(wr, hex))?;
    }
    let mut loads: Vec<_> =
        r.shards.iter().flat_map(|s| s.out.exposures.iter().copied()).filter(|e| e.call == idx).collect();
    loads.sort_by_key(|e| e.seq);
    for e in loads {
        if arg_allocs.iter().any(|&(_, id, _)| id == e.alloc) {
            continue;
        }
        writeln!(
            out,
            "  loaded a pointer to {}+{} at event {} ({})",
            env.alloc_label(tl, e.alloc, true),
            e.offset,
            e.seq,
            env.loc(e.ip)
        )?;
    }
    Ok(())
}
