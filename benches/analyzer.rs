//! Analyzer throughput: events analysed per second on a synthetic trace of
//! ≥ 10 M access events (fixed seed), with 1 thread and with all threads.
//! Stages measured separately: reading chunks (decompress + validate) alone,
//! then the whole analysis. Run: `cargo bench --bench analyzer`
//! (`FFIREC_BENCH_EVENTS=N` to change the size, `FFIREC_BENCH_TRACE=PATH` to
//! keep the trace for `ffirec analyze`).
#![allow(clippy::unwrap_used)]

use std::time::Instant;

use ffirec_analyzer::{analyze, Options};
use ffirec_format::*;

/// `mov rax, [rdi]`, `mov [rdi], rax`, `movdqu xmm0, [rdi]`, `movzx eax, byte [rdi]`
/// (bytes from GNU as + objdump).
const CODES: [(&[u8], u64, bool); 4] = [
    (&[0x48, 0x8b, 0x07], 8, false),
    (&[0x48, 0x89, 0x07], 8, true),
    (&[0xf3, 0x0f, 0x6f, 0x07], 16, false),
    (&[0x0f, 0xb6, 0x07], 1, false),
];
const LIB: u64 = 0x7f00_0000_0000;
const TID: u32 = 7;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

fn generate(path: &std::path::Path, accesses: u64) -> u64 {
    let header = Header {
        recorder_version: "bench".into(),
        uuid: [9; 16],
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
    w.add_module(Module {
        pid: 1,
        path: "/nonexistent/libbench.so".into(),
        build_id: vec![],
        base: LIB,
        segments: vec![Segment { start: LIB, len: 0x10000, prot: 5, file_offset: 0 }],
        domain: Domain::Foreign,
        symbols: vec![Symbol { name: "work".into(), addr: 0x1000, size: 0x1000 }],
    })
    .unwrap();
    let mut rng = Rng(0x5eed);
    // 256 live host buffers of 64 KiB, host-initialised.
    let bufs: Vec<u64> = (0..256u64).map(|i| 0x5555_0000_0000 + i * 0x2_0000).collect();
    for &b in &bufs {
        w.push(Event::Alloc {
            tid: TID,
            func: AllocFn::Malloc,
            ptr: b,
            size: 0x1_0000,
            old_ptr: 0,
            caller: 0x40_1000,
            domain: Domain::Host,
            zeroed: false,
        })
        .unwrap();
        w.push(Event::HostWrite { tid: TID, addr: b, len: 0x8000 }).unwrap();
    }
    let per_call = 10_000;
    let mut n = 0u64;
    let mut call = 0u64;
    while n < accesses {
        let buf = bufs[(rng.next() % 256) as usize];
        w.push(Event::Call {
            tid: TID,
            call,
            target: LIB + 0x1000,
            module: 0,
            symbol: Some(0),
            args: [buf, 0x1_0000, 0, 0, 0, 0],
            rsp: 0x7ffd_0000_0000,
            return_addr: 0x40_1234,
        })
        .unwrap();
        // Streaming passes over a few buffers, as a codec would do: each run
        // of 2000 accesses uses one instruction form and walks its buffer.
        let mut cur = buf;
        let mut form = 0usize;
        for i in 0..per_call {
            let r = rng.next();
            if i % 2000 == 0 {
                cur = bufs[(r % 256) as usize];
                form = ((r >> 8) % 4) as usize;
            }
            let (code, size, _) = CODES[form];
            let addr = cur + ((i % 2000) * size) % (0x1_0000 - 16);
            // The same instruction always sits at the same address (16 sites per form).
            let rip = LIB + 0x1000 + form as u64 * 0x100 + (r >> 16) % 16 * 8;
            let mut regs = Regs { rip, rflags: 0x246, ..Regs::default() };
            regs.gpr[Regs::RDI] = addr;
            let data = if code[1] == 0x89 { vec![] } else { vec![0u8; size as usize] };
            w.push(Event::Access { tid: TID, code: code.to_vec(), regs, fault_addr: addr, data, vregs: vec![] })
                .unwrap();
        }
        n += per_call;
        w.push(Event::Return { tid: TID, call, rax: 0, rdx: 0 }).unwrap();
        call += 1;
    }
    w.finish(Summary::default()).unwrap();
    n
}

/// CPU time (user + system) of this process so far, in seconds.
fn cpu_seconds() -> f64 {
    let mut ru = std::mem::MaybeUninit::<libc::rusage>::zeroed();
    // SAFETY: getrusage writes a complete `rusage` into the pointed-to memory,
    // which is valid, aligned and zero-initialised; RUSAGE_SELF is always valid.
    let ok = unsafe { libc::getrusage(libc::RUSAGE_SELF, ru.as_mut_ptr()) } == 0;
    if !ok {
        return 0.0;
    }
    // SAFETY: zero-initialised and, on success, filled by the kernel.
    let ru = unsafe { ru.assume_init() };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    let accesses: u64 = std::env::var("FFIREC_BENCH_EVENTS").ok().and_then(|v| v.parse().ok()).unwrap_or(10_000_000);
    // `FFIREC_BENCH_TRACE=PATH` keeps the trace there (and reuses it when
    // it exists), so `ffirec analyze` can be measured on the same input.
    let keep = std::env::var_os("FFIREC_BENCH_TRACE").map(std::path::PathBuf::from);
    let dir = std::env::temp_dir().join(format!("ffirec-bench-analyzer-{}", std::process::id()));
    let path = match &keep {
        Some(p) => p.clone(),
        None => {
            std::fs::create_dir_all(&dir).unwrap();
            dir.join("bench.ffr")
        }
    };
    if keep.is_none() || !path.exists() {
        let t = Instant::now();
        let n = generate(&path, accesses);
        let size = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        println!(
            "generated {n} access events in {:.1}s ({size} bytes, {:.2} B/event)",
            t.elapsed().as_secs_f64(),
            size as f64 / n as f64
        );
    }
    let trace = Trace::open(&path).unwrap();
    let events = trace.event_count();
    let all = std::thread::available_parallelism().map_or(1, |n| n.get());

    // Stage: read chunks only (decompress, validate, decode events), 1 thread.
    let t = Instant::now();
    let mut count = 0usize;
    for i in 0..trace.chunks().len() {
        count += trace.read_chunk(i).unwrap().len();
    }
    let read_rate = count as f64 / t.elapsed().as_secs_f64();
    println!("read_chunk only, 1 thread: {:.2} M events/s", read_rate / 1e6);

    let mut rates = Vec::new();
    let mut cpus = Vec::new();
    let mut json = Vec::new();
    for threads in [1, all] {
        let opts = Options { threads: Some(threads), dwarf: false, ..Options::default() };
        let (t, c) = (Instant::now(), cpu_seconds());
        let report = analyze(&trace, &opts).unwrap();
        let (secs, cpu) = (t.elapsed().as_secs_f64(), cpu_seconds() - c);
        let rate = events as f64 / secs;
        // CPU utilisation shows how much of the machine we actually got
        // (other processes on a shared machine make wall-clock rates noisy).
        println!(
            "analyze, {threads} thread(s): {events} events in {secs:.2}s = {:.2} M events/s; {cpu:.2} CPU-s = {:.2} M events/CPU-s, {:.2} CPUs busy ({} findings)",
            rate / 1e6,
            events as f64 / cpu.max(1e-9) / 1e6,
            cpu / secs,
            report.summary.findings
        );
        rates.push(rate);
        cpus.push(cpu);
        json.push(report.to_json());
    }
    println!("speed-up 1 -> {all} threads: {:.2}x", rates[1] / rates[0]);
    // Independent of how much of a shared machine we got: 1.00 means the
    // threads do no more work per event than one thread alone.
    println!("CPU time {all} threads / 1 thread: {:.2}", cpus[1] / cpus[0].max(1e-9));
    println!("identical JSON: {}", json[0] == json[1]);
    if keep.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
