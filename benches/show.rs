//! `ffirec show` jump cost: listing 20 events from event 5 000 000 of a
//! synthetic 10 M-event trace (chunk-index binary search + bounded backward
//! scan), next to what a linear pass over the chunks before it would cost,
//! and the bounded worst case (a call entered far before the jump target).
//! Also `--at` (which does replay the prefix, decoding only what can touch
//! the range). Run: `cargo bench --bench show` (`FFIREC_BENCH_EVENTS=N`).
#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use ffirec_analyzer::{show, MemAddr, MemSpec, ShowMode, ShowOptions};
use ffirec_format::*;

const HOST: u64 = 0x5555_5555_0000;
const LIB: u64 = 0x7f00_0000_0000;
const BUF: u64 = 0x5555_6000_0010;
const TID: u32 = 7;
/// `mov rax, [rdi]` (GNU as).
const LOAD: [u8; 3] = [0x48, 0x8b, 0x07];

/// One host buffer, then calls of `per_call` loads each until `events`.
fn generate(path: &std::path::Path, events: u64, per_call: u64) {
    let header = Header {
        recorder_version: "bench".into(),
        uuid: [3; 16],
        command: vec!["bench".into()],
        start_time_ns: 0,
        page_size: 4096,
        policy: Policy {
            foreign: vec!["libbench.so".into()],
            neutral: vec![],
            track_host_init: true,
            guard_foreign: false,
        },
    };
    let mut w = TraceWriter::create(path, header).unwrap();
    for (name, base, domain) in
        [("/nonexistent/host", HOST, Domain::Host), ("/nonexistent/libbench.so", LIB, Domain::Foreign)]
    {
        w.add_module(Module {
            pid: 1,
            path: name.into(),
            build_id: vec![],
            base,
            segments: vec![Segment { start: base, len: 0x4000, prot: 5, file_offset: 0 }],
            domain,
            symbols: vec![Symbol {
                name: if domain == Domain::Host { "main".into() } else { "work".into() },
                addr: 0x1000,
                size: 0x1000,
            }],
        })
        .unwrap();
    }
    w.push(Event::Alloc {
        tid: TID,
        func: AllocFn::Malloc,
        ptr: BUF,
        size: 1 << 16,
        old_ptr: 0,
        caller: HOST + 0x1020,
        domain: Domain::Host,
        zeroed: true,
    })
    .unwrap();
    let mut n = 1u64;
    let mut call = 0u64;
    let mut regs = Regs { rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RSP] = 0x7ffc_0000_0ff0;
    while n < events {
        w.push(Event::Call {
            tid: TID,
            call,
            target: LIB + 0x1000,
            module: 1,
            symbol: Some(0),
            args: [BUF, per_call, 0, 0, 0, 0],
            rsp: 0x7ffc_0000_1000,
            return_addr: HOST + 0x1040,
        })
        .unwrap();
        n += 1;
        let mut k = 0;
        while k < per_call && n + 1 < events {
            regs.rip = LIB + 0x1010;
            regs.gpr[Regs::RDI] = BUF + 8 * (k % 8000);
            regs.gpr[Regs::RCX] = k;
            w.push(Event::Access {
                tid: TID,
                code: LOAD.to_vec(),
                regs,
                fault_addr: regs.gpr[Regs::RDI],
                data: vec![1; 8],
                vregs: vec![],
            })
            .unwrap();
            n += 1;
            k += 1;
        }
        w.push(Event::Return { tid: TID, call, rax: 0, rdx: 0 }).unwrap();
        n += 1;
        call += 1;
    }
    w.finish(Summary::default()).unwrap();
}

fn time<T>(reps: usize, mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut best = Duration::MAX;
    let mut last = None;
    for _ in 0..reps {
        let t = Instant::now();
        let r = f();
        best = best.min(t.elapsed());
        last = Some(r);
    }
    (best, last.unwrap())
}

fn show_to_vec(trace: &Trace, mode: ShowMode, count: usize) -> Vec<u8> {
    let opts = ShowOptions { mode, count: Some(count), tid: None, color: false, dwarf: false, full_replay: false };
    let mut out = Vec::new();
    show(trace, &opts, &mut out).unwrap();
    out
}

fn main() {
    let events: u64 = std::env::var("FFIREC_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    let target = events / 2;
    let dir = std::env::temp_dir().join(format!("ffirec-bench-show-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("jump.ffr");
    let t = Instant::now();
    generate(&path, events, 998);
    println!("generated {events} events (calls of 1000 events) in {:.1}s", t.elapsed().as_secs_f64());

    let (open, trace) = time(1, || Trace::open(&path).unwrap());
    println!(
        "open: {:.2} ms, {} chunks of ≤{} events",
        open.as_secs_f64() * 1e3,
        trace.chunks().len(),
        trace.chunks()[0].events
    );

    let (jump, out) = time(5, || show_to_vec(&trace, ShowMode::From(target), 20));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains(&format!("{target:>8}  tid {TID}  #")), "{text}");
    println!("jump: show --from {target} --count 20: {:.2} ms (best of 5)", jump.as_secs_f64() * 1e3);

    // What a linear pass over the chunks before the target would cost.
    let before = trace.chunks().iter().filter(|c| c.first_event + u64::from(c.events) <= target).count();
    let (linear, _) = time(1, || (0..before).map(|i| trace.read_chunk(i).unwrap().len()).sum::<usize>());
    println!(
        "  vs reading the {before} chunks before it: {:.0} ms ({:.0}x the jump)",
        linear.as_secs_f64() * 1e3,
        linear.as_secs_f64() / jump.as_secs_f64()
    );

    let (at, _) = time(1, || {
        show_to_vec(
            &trace,
            ShowMode::Memory { at: target, range: MemSpec { addr: MemAddr::Alloc { id: 0, offset: 0 }, len: 64 } },
            20,
        )
    });
    println!("--at {target} --memory alloc0+0:64 (replays the prefix): {:.0} ms", at.as_secs_f64() * 1e3);

    // Bounded worst case: one call spanning the trace, so the backward scan
    // runs its full budget without finding the call's entry.
    let long = dir.join("onecall.ffr");
    let long_events = (events / 5).max(2_000_000);
    generate(&long, long_events, u64::MAX);
    let lt = Trace::open(&long).unwrap();
    let (worst, out) = time(5, || show_to_vec(&lt, ShowMode::From(long_events - 100), 20));
    let text = String::from_utf8(out).unwrap();
    assert!(text.contains("in a call entered before event"), "{text}");
    println!(
        "jump worst case (call entered {} events earlier, scan budget spent): {:.2} ms (best of 5)",
        long_events - 101,
        worst.as_secs_f64() * 1e3
    );
    std::fs::remove_dir_all(&dir).ok();
}
