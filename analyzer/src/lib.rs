//! Trace analysis: which bytes of which allocations each foreign call read
//! and wrote, and what was wrong with that.
//!
//! Principal items: [`analyze`] (a [`Trace`] and [`Options`] → [`Report`]),
//! [`Report`] with its [`CallFootprint`]s (the normalised per-call footprint
//! that `diff` compares) and [`Finding`]s, [`Suppressions`].
//!
//! Pipeline (hidden): chunks are decoded in parallel into compact access
//! records bucketed by address shard (`decode`); the few non-access events
//! are walked once in order (`state::Timeline`); then every address shard
//! replays its accesses against the allocation map and initialisation shadow
//! in parallel (`state::Shard`); pieces become findings (`findings`), get
//! symbols and `file:line` (`symbols`), and are rendered (`report`). The
//! shard layout is fixed, so the output does not depend on `--threads`.
//! `FFIREC_ANALYZE_TIMING=1` prints each stage's CPU time on stderr.

mod decode;
mod diff;
mod dump;
mod findings;
mod report;
mod show;
mod state;
mod suppress;
mod symbols;
mod timing;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::Mutex;

use ffirec_format::{Completeness, Trace};
use rayon::prelude::*;

pub use diff::{
    diff, CallDiff, CallSummary, CodeChange, CountChange, Diff, DiffError, DiffInput, DiffOptions, DiffSummary,
    FindingView, SideInfo, TargetDiff, ValueChange, DIFF_SCHEMA,
};
pub use dump::dump_accesses;
pub use findings::{AllocRef, CallRef, Finding, Kind, Relation, Verdict};
pub use report::{Allocation, CallFootprint, Exposure, ModuleInfo, Report, Summary, Touched, TraceInfo, SCHEMA};
pub use show::{show, MemAddr, MemSpec, ShowError, ShowMode, ShowOptions, DEFAULT_COUNT};
pub use state::RangeSet;
pub use suppress::Suppressions;
pub use symbols::Location;

/// Everything that can stop an analysis.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Trace(#[from] ffirec_format::Error),
    #[error("cannot start {threads} analysis threads: {reason}")]
    ThreadPool { threads: usize, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("suppressions file {path}, line {line}: {reason}")]
    Suppressions { path: String, line: usize, reason: String },
}

/// How to analyse.
#[derive(Debug, Clone)]
pub struct Options {
    /// Worker threads; `None`: one per core.
    pub threads: Option<usize>,
    pub suppressions: Suppressions,
    /// Look up `file:line` in the modules' DWARF when their files are present.
    pub dwarf: bool,
    /// Draw a progress bar on stderr (the caller checks it is a terminal).
    pub progress: bool,
    /// The trace's name as the report should show it.
    pub trace_name: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            threads: None,
            suppressions: Suppressions::default(),
            dwarf: true,
            progress: false,
            trace_name: String::new(),
        }
    }
}

/// Keeps `T` alone on its cache lines (128 bytes: the adjacent-line
/// prefetcher pairs lines).
#[repr(align(128))]
struct CachePadded<T>(T);

/// Chunks replayed per round (the shards replay a round in parallel).
const BATCH: usize = 8;
/// Chunks decoded ahead of the round being replayed.
const AHEAD: usize = 2 * BATCH;

/// Analyses `trace`.
pub fn analyze(trace: &Trace, opts: &Options) -> Result<Report, Error> {
    let threads = opts.threads.unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get())).max(1);
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("ffirec-analyze-{i}"))
        .build()
        .map_err(|e| Error::ThreadPool { threads, reason: e.to_string() })?;
    pool.install(|| run(trace, opts))
}

fn progress_bar(opts: &Options, chunks: usize) -> Option<indicatif::ProgressBar> {
    if !opts.progress || chunks < 2 {
        return None;
    }
    let pb = indicatif::ProgressBar::with_draw_target(Some(chunks as u64), indicatif::ProgressDrawTarget::stderr());
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("{spinner} analysing [{bar:40}] {pos}/{len} chunks {elapsed}")
    {
        pb.set_style(style);
    }
    Some(pb)
}

fn run(trace: &Trace, opts: &Options) -> Result<Report, Error> {
    let header = trace.header();
    let mm = symbols::ModuleMap::new(trace.modules());
    let mut tl = state::Timeline::new(header.policy.track_host_init);
    let mut shards: Vec<state::Shard> = (0..decode::SHARDS).map(state::Shard::new).collect();
    let timing = std::env::var_os("FFIREC_ANALYZE_TIMING").is_some();
    timing::enable(timing);
    let t_start = std::time::Instant::now();
    let (access_events, decode_errors) = pipeline(trace, opts, &mm, &mut tl, &mut shards)?;
    let t_loop = t_start.elapsed().as_secs_f64();
    let report =
        timing::task(timing::Stage::Serial, || gather(trace, opts, &mm, tl, shards, access_events, decode_errors));
    if timing {
        let wall = t_start.elapsed().as_secs_f64();
        eprintln!("ffirec analyze timing: {}", timing::summary(rayon::current_num_threads(), wall, t_loop));
    }
    Ok(report)
}

/// A chunk's records, or why it could not be read; filled by a decode task
/// (with its panic, if it panicked: the waiting driver re-raises it).
type Slot = Mutex<Option<std::thread::Result<Result<decode::ChunkRecs, Error>>>>;

/// Decodes every chunk and replays it on the shards; returns the number of
/// access events and of decode failures.
///
/// Chunks are decoded by spawned tasks up to [`AHEAD`] chunks beyond the
/// round being replayed, with no barrier between rounds: a worker that runs
/// out of replay work takes the next decode, so both stages keep every core
/// busy. Only the replay order matters for the result, and that is fixed.
fn pipeline(
    trace: &Trace,
    opts: &Options,
    mm: &symbols::ModuleMap,
    tl: &mut state::Timeline,
    shards: &mut [state::Shard],
) -> Result<(u64, u64), Error> {
    let n = trace.chunks().len();
    let pb = progress_bar(opts, n);
    let workers = rayon::current_num_threads().max(1);
    // One decode cache per worker thread, each on its own cache lines:
    // decoding writes its decoder on every access, and neighbours sharing a
    // line made the workers' caches fight (decode CPU time 2.2x with two
    // threads running at once).
    let decoders: Vec<CachePadded<Mutex<decode::Decoder>>> =
        (0..workers).map(|_| CachePadded(Mutex::new(decode::Decoder::default()))).collect();
    // Record sets of replayed rounds, reused for the next chunks.
    let spare: Mutex<Vec<decode::ChunkRecs>> = Mutex::new(Vec::new());
    let slots: Vec<Slot> = (0..n).map(|_| Mutex::new(None)).collect();
    let stop = AtomicBool::new(false);
    let lock = |m: &'_ Slot| m.lock().unwrap_or_else(|e| e.into_inner()).take();
    let (mut access_events, mut decode_errors) = (0u64, 0u64);
    let mut ops = Vec::new();
    let mut recs: Vec<decode::ChunkRecs> = Vec::with_capacity(BATCH);
    rayon::in_place_scope_fifo(|s| {
        let mut spawned = 0;
        let mut spawn_until = |limit: usize| {
            while spawned < limit.min(n) {
                let i = spawned;
                let (slots, decoders, spare, stop) = (&slots, &decoders, &spare, &stop);
                s.spawn_fifo(move |_| {
                    if stop.load(Relaxed) {
                        return;
                    }
                    let w = rayon::current_thread_index().unwrap_or(0) % workers;
                    let out =
                        spare.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(decode::ChunkRecs::empty);
                    let mut d = decoders[w].0.lock().unwrap_or_else(|e| e.into_inner());
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        timing::task(timing::Stage::Decode, || d.chunk(trace, i, out))
                    }));
                    *slots[i].lock().unwrap_or_else(|e| e.into_inner()) = Some(r);
                });
                spawned += 1;
            }
        };
        spawn_until(BATCH + AHEAD);
        for start in (0..n).step_by(BATCH) {
            for slot in &slots[start..n.min(start + BATCH)] {
                let r = loop {
                    if let Some(r) = lock(slot) {
                        break r;
                    }
                    // Take queued work (a later chunk's decode) while waiting.
                    if !matches!(rayon::yield_now(), Some(rayon::Yield::Executed)) {
                        let t = std::time::Instant::now();
                        std::thread::yield_now();
                        timing::add_wall(timing::Stage::Idle, t.elapsed());
                    }
                };
                match r {
                    Ok(Ok(r)) => recs.push(r),
                    Err(panic) => {
                        stop.store(true, Relaxed);
                        std::panic::resume_unwind(panic);
                    }
                    Ok(Err(e)) => {
                        stop.store(true, Relaxed);
                        return Err(e);
                    }
                }
            }
            spawn_until(start + BATCH + AHEAD);
            ops.clear();
            let first_copy = tl.copies.len();
            timing::task(timing::Stage::Timeline, || {
                for r in &recs {
                    tl.feed(&r.control, &mut ops);
                    access_events += r.access_events;
                    decode_errors += r.decode_errors.len() as u64;
                }
            });
            // Several processes: tag each access with its address space.
            if tl.spaces.multi() {
                recs.par_iter_mut().for_each(|r| r.tag_spaces(&tl.spaces));
            }
            state::replay_round(shards, &ops, &recs, tl, mm, first_copy);
            if let Some(pb) = &pb {
                pb.inc(recs.len() as u64);
            }
            spare.lock().unwrap_or_else(|e| e.into_inner()).extend(recs.drain(..));
        }
        Ok(())
    })?;
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    Ok((access_events, decode_errors))
}

/// Gathers the shards' results and builds the report.
fn gather(
    trace: &Trace,
    opts: &Options,
    mm: &symbols::ModuleMap,
    tl: state::Timeline,
    shards: Vec<state::Shard>,
    access_events: u64,
    decode_errors: u64,
) -> Report {
    let header = trace.header();
    let modules = trace.modules();
    let n = trace.chunks().len();
    let mut pieces = Vec::new();
    let mut exposures = Vec::new();
    let mut stats = state::Stats::default();
    let mut footprint: BTreeMap<(u32, state::Target), (RangeSet, RangeSet)> = BTreeMap::new();
    for s in shards {
        let out = s.out;
        pieces.extend(out.pieces);
        exposures.extend(out.exposures);
        stats.add(&out.stats);
        for (k, t) in out.footprint {
            let e = footprint.entry(k).or_default();
            e.0.union(&t.read);
            e.1.union(&t.write);
        }
    }
    let merged = findings::merge(pieces);
    let complete = matches!(trace.completeness(), Completeness::Complete);
    let info = TraceInfo {
        path: opts.trace_name.clone(),
        uuid: header.uuid.iter().map(|b| format!("{b:02x}")).collect(),
        command: header.command.clone(),
        recorder_version: header.recorder_version.clone(),
        events: trace.event_count(),
        chunks: n,
        complete,
        exit: trace.summary().and_then(|s| s.exit).or(tl.exit).map(|e| match e {
            ffirec_format::ExitStatus::Code(c) => format!("code {c}"),
            ffirec_format::ExitStatus::Signal(s) => format!("signal {s}"),
        }),
        track_host_init: header.policy.track_host_init,
        foreign_patterns: header.policy.foreign.clone(),
        modules: modules
            .iter()
            .map(|m| ModuleInfo {
                name: std::path::Path::new(&m.path)
                    .file_name()
                    .map_or_else(|| m.path.clone(), |f| f.to_string_lossy().into_owned()),
                path: m.path.clone(),
                domain: m.domain,
                base: symbols::hex(m.base),
            })
            .collect(),
    };
    let syms = symbols::Symbolizer::new(modules, mm, opts.dwarf);
    let gathered = report::Gathered {
        trace: info,
        timeline: tl,
        merged,
        exposures,
        footprint,
        stats,
        access_events,
        decode_errors,
    };
    report::build(gathered, &syms, &opts.suppressions)
}
