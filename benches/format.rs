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

/// CPU time of the calling thread (`/proc/thread-self/schedstat`, ns).
fn thread_cpu() -> Duration {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .map_or(Duration::ZERO, Duration::from_nanos)
}

/// CPU time of the whole process, exited threads included (`/proc/self/stat`
/// utime+stime, in the kernel's USER_HZ ticks of 10 ms).
fn process_cpu() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect(); // f[0] is field 3 (state)
    let field = |i: usize| f.get(i).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let ticks = field(11) + field(12);
    Duration::from_millis(ticks * 10)
}

struct Row {
    level: i32,
    push: Duration,
    write: Duration,
    write_cpu: Duration,
    read1_cpu: Duration,
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
    let c0 = process_cpu();
    let t0 = Instant::now();
    let mut w = TraceWriter::with_options(&path, header(), opts).expect("create trace");
    for e in input {
        w.push(e).expect("push");
    }
    let push = t0.elapsed();
    w.finish(Summary::default()).expect("finish");
    let write = t0.elapsed();
    let write_cpu = process_cpu() - c0;

    let t0 = Instant::now();
    let trace = Trace::open(&path).expect("open");
    let open = t0.elapsed();
    let c0 = thread_cpu();
    let t0 = Instant::now();
    let mut n = 0u64;
    for e in trace.events() {
        e.expect("decode");
        n += 1;
    }
    let read1 = t0.elapsed();
    let read1_cpu = thread_cpu() - c0;
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
    Row { level, push, write, write_cpu, read1_cpu, open, read1, read_all, threads, chunk_bytes, file_bytes }
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
        "{:>4} {:>10} {:>10} {:>10} {:>8} {:>10} {:>10} {:>14} {:>9} {:>10}",
        "zstd", "push", "write", "write/cpu", "open", "read", "read/cpu", "read threads", "B/access", "file B/ev"
    );
    for level in [1, 3, 9] {
        let r = measure(&dir, &events, level);
        println!(
            "{:>4} {:>10} {:>10} {:>10} {:>6.1}ms {:>10} {:>10} {:>14} {:>9.3} {:>10.3}",
            r.level,
            rate(n, r.push),
            rate(n, r.write),
            rate(n, r.write_cpu),
            r.open.as_secs_f64() * 1e3,
            rate(n, r.read1),
            rate(n, r.read1_cpu),
            format!("{} ({})", rate(n, r.read_all), r.threads),
            r.chunk_bytes as f64 / n as f64,
            r.file_bytes as f64 / n as f64,
        );
    }
    println!("events per second of wall time, and per CPU-second (/cpu: all threads for write, the reading thread");
    println!("for read) which is what to compare on a busy machine. push = the caller's thread only; write = push +");
    println!("compress + write + finish; read = open's index + decode of every event on one thread; B/access = event");
    println!("chunk bytes (headers included) per access event; the format's target is <= 8 (DESIGN.md section 6).");
    let _ = std::fs::remove_dir_all(&dir);
}
