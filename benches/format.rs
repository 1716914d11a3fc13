//! Trace format throughput and size on the synthetic tight-loop access stream
//! (fixed seed): write (push on the caller's thread, then compression and I/O
//! on the writer thread until `finish`), open, read+decode on one thread and
//! on all cores, and compressed bytes per access event — per zstd level, all
//! in one run so the ratios are comparable.
//!
//! Run: `cargo bench --bench format` (add `-- N` for N events; default 1 000 000).

#[path = "../format/tests/support/synthetic.rs"]
mod synthetic;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use ffirec_format::{Header, Policy, Summary, Trace, TraceWriter, WriterOptions};

struct Row {
    level: i32,
    push: Duration,
    write: Duration,
    open: Duration,
    read1: Duration,
    read_all: Duration,
    threads: usize,
    chunk_bytes: u64,
    file_bytes: u64,
}

fn header() -> Header {
    Header {
        recorder_version: env!("CARGO_PKG_VERSION").into(),
        uuid: [0; 16],
        command: vec!["bench".into()],
        start_time_ns: 0,
        page_size: 4096,
        policy: Policy::default(),
    }
}

fn measure(dir: &std::path::Path, events: &[ffirec_format::Event], level: i32) -> Row {
    let path: PathBuf = dir.join(format!("loop-{level}.ffr"));
    let input = events.to_vec(); // cloned outside the timed region
    let opts = WriterOptions { level, ..WriterOptions::default() };
    let t0 = Instant::now();
    let mut w = TraceWriter::with_options(&path, header(), opts).expect("create trace");
    for e in input {
        w.push(e).expect("push");
    }
    let push = t0.elapsed();
    w.finish(Summary::default()).expect("finish");
    let write = t0.elapsed();

    let t0 = Instant::now();
    let trace = Trace::open(&path).expect("open");
    let open = t0.elapsed();
    let t0 = Instant::now();
    let mut n = 0u64;
    for e in trace.events() {
        e.expect("decode");
        n += 1;
    }
    let read1 = t0.elapsed();
    assert_eq!(n, events.len() as u64);

    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let t0 = Instant::now();
    let chunks = trace.chunks().len();
    let total: usize = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|w| {
                let trace = &trace;
                s.spawn(move || {
                    (w..chunks).step_by(threads).map(|c| trace.read_chunk(c).expect("decode").len()).sum::<usize>()
                })
            })
            .collect();
        workers.into_iter().map(|h| h.join().expect("worker")).sum()
    });
    let read_all = t0.elapsed();
    assert_eq!(total, events.len());

    let chunk_bytes = trace.chunks().iter().map(|c| 40 + u64::from(c.compressed_len)).sum();
    let file_bytes = std::fs::metadata(&path).expect("stat").len();
    Row { level, push, write, open, read1, read_all, threads, chunk_bytes, file_bytes }
}

fn rate(n: usize, d: Duration) -> String {
    format!("{:.2} M/s", n as f64 / d.as_secs_f64() / 1e6)
}

fn main() {
    let n: usize = std::env::args().skip(1).find_map(|a| a.parse().ok()).unwrap_or(1_000_000);
    let dir = std::env::temp_dir().join(format!("ffirec-bench-format-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let events = synthetic::tight_loop(42, n);

    println!("ffirec-format: tight-loop access stream, seed 42, {n} events, 65536 events/chunk");
    println!(
        "{:>5} {:>12} {:>12} {:>9} {:>14} {:>16} {:>13} {:>12}",
        "zstd", "push", "write", "open", "read 1 thread", "read N threads", "B/access", "file B/ev"
    );
    for level in [1, 3, 9] {
        let r = measure(&dir, &events, level);
        println!(
            "{:>5} {:>12} {:>12} {:>7.1}ms {:>14} {:>16} {:>13.3} {:>12.3}",
            r.level,
            rate(n, r.push),
            rate(n, r.write),
            r.open.as_secs_f64() * 1e3,
            rate(n, r.read1),
            format!("{} ({})", rate(n, r.read_all), r.threads),
            r.chunk_bytes as f64 / n as f64,
            r.file_bytes as f64 / n as f64,
        );
    }
    println!("push = caller's thread only; write = push + compress + write + finish; B/access = event chunk bytes");
    println!("(headers included) per access event; the format's target is <= 8 (DESIGN.md section 6).");
    let _ = std::fs::remove_dir_all(&dir);
}
