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
//! `FFIREC_ANALYZE_TIMING=1` prints each stage's time on stderr.

mod decode;
mod diff;
mod dump;
mod findings;
mod report;
mod show;
mod state;
mod suppress;
mod symbols;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::Ordering::Relaxed;
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

/// Chunks decoded per round; shards replay each round in parallel.
const BATCH: usize = 8;

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
    let modules = trace.modules();
    let mm = symbols::ModuleMap::new(modules);
    let mut tl = state::Timeline::new(header.policy.track_host_init);
    let mut shards: Vec<state::Shard> = (0..decode::SHARDS).map(state::Shard::new).collect();
    let n = trace.chunks().len();
    let pb = progress_bar(opts, n);
    let (mut access_events, mut decode_errors) = (0u64, 0u64);
    let mut ops = Vec::new();
    let timing = std::env::var_os("FFIREC_ANALYZE_TIMING").is_some();
    let t_start = std::time::Instant::now();
    let mut t_feed = 0f64;
    // One decode cache per worker thread, kept across batches.
    let workers = rayon::current_num_threads().max(1);
    // Record sets of replayed batches are reused for the next ones.
    let pool: Mutex<Vec<decode::ChunkRecs>> = Mutex::new(Vec::new());
    let decoders: Vec<Mutex<decode::Decoder>> = (0..workers).map(|_| Mutex::new(decode::Decoder::default())).collect();
    let decode_batch = |start: usize| -> Result<Vec<decode::ChunkRecs>, Error> {
        (start..n.min(start + BATCH))
            .into_par_iter()
            .map(|i| {
                let w = rayon::current_thread_index().unwrap_or(0) % workers;
                let out = pool.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_else(decode::ChunkRecs::empty);
                let mut d = decoders[w].lock().unwrap_or_else(|e| e.into_inner());
                d.chunk(trace, i, out)
            })
            .collect()
    };
    // Pipeline: while the shards replay batch k, the next batch is decoded.
    let mut next = (n > 0).then(|| decode_batch(0));
    let mut start = 0;
    while let Some(cur) = next.take() {
        let mut recs = cur?;
        let t1 = std::time::Instant::now();
        ops.clear();
        for r in &recs {
            tl.feed(&r.control, &mut ops);
            access_events += r.access_events;
            decode_errors += r.decode_errors.len() as u64;
        }
        if tl.spaces.multi() {
            recs.par_iter_mut().for_each(|r| r.tag_spaces(&tl.spaces));
        }
        t_feed += t1.elapsed().as_secs_f64();
        let ctx = state::Ctx { allocs: &tl.allocs, modules: &mm };
        let following = start + BATCH;
        let (decoded, ()) = rayon::join(
            || (following < n).then(|| decode_batch(following)),
            || shards.par_iter_mut().for_each(|s| s.run(&ops, &recs, &ctx)),
        );
        next = decoded;
        start = following;
        if let Some(pb) = &pb {
            pb.inc(recs.len() as u64);
        }
        pool.lock().unwrap_or_else(|e| e.into_inner()).extend(recs);
    }
    if let Some(pb) = pb {
        pb.finish_and_clear();
    }
    let t_loop = t_start.elapsed().as_secs_f64();

    let t_gather = std::time::Instant::now();
    // Gather the shards.
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
    let syms = symbols::Symbolizer::new(modules, &mm, opts.dwarf);
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
    let report = report::build(gathered, &syms, &opts.suppressions);
    if timing {
        eprintln!(
            "ffirec analyze timing: pipeline {t_loop:.3}s wall (thread time: read+records {:.3}s, shards {:.3}s), timeline {t_feed:.3}s, gather+report {:.3}s",
            decode::REC_NS.swap(0, Relaxed) as f64 / 1e9,
            state::SHARD_NS.swap(0, Relaxed) as f64 / 1e9,
            t_gather.elapsed().as_secs_f64()
        );
    }
    Ok(report)
}
