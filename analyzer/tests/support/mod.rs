//! Synthetic traces for analyzer tests: a host program, a foreign library
//! and libc at fixed addresses, and events built from real instruction bytes
//! (assembled with GNU as, bytes copied from `objdump -d -M intel`).
#![allow(dead_code, clippy::unwrap_used)]

use std::path::PathBuf;

use ffirec_analyzer::{analyze, Options, Report};
use ffirec_format::*;

/// `mov rax, QWORD PTR [rdi]`
pub const LOAD8: &[u8] = &[0x48, 0x8b, 0x07];
/// `mov QWORD PTR [rdi], rax`
pub const STORE8: &[u8] = &[0x48, 0x89, 0x07];
/// `movdqu xmm0, XMMWORD PTR [rdi]`
pub const LOAD16: &[u8] = &[0xf3, 0x0f, 0x6f, 0x07];
/// `movdqu XMMWORD PTR [rdi], xmm0`
pub const STORE16: &[u8] = &[0xf3, 0x0f, 0x7f, 0x07];
/// `movzx eax, BYTE PTR [rdi]`
pub const LOAD1: &[u8] = &[0x0f, 0xb6, 0x07];
/// `vmovdqu ymm0, YMMWORD PTR [rdi]`
pub const LOAD32: &[u8] = &[0xc5, 0xfe, 0x6f, 0x07];
/// `mov BYTE PTR [rdi], al`
pub const STORE1: &[u8] = &[0x88, 0x07];

pub const PROG_TEXT: u64 = 0x40_0000;
pub const PROG_DATA: u64 = 0x60_0000;
pub const PROG_RODATA: u64 = 0x50_0000;
pub const LIB_BASE: u64 = 0x7f00_0000_0000;
/// `foo` in libfoo.so: [LIB_FOO, LIB_FOO+0x100).
pub const LIB_FOO: u64 = LIB_BASE + 0x1000;
pub const LIBC_BASE: u64 = 0x7f10_0000_0000;
/// `__strlen_avx2` in libc.so.6.
pub const LIBC_STRLEN: u64 = LIBC_BASE + 0x2000;
pub const TID: u32 = 100;

pub fn header(track_host_init: bool) -> Header {
    Header {
        recorder_version: "test".into(),
        uuid: [1; 16],
        command: vec!["./prog".into()],
        start_time_ns: 0,
        page_size: 4096,
        policy: Policy {
            foreign: vec!["libfoo.so".into()],
            neutral: vec!["libc.so*".into()],
            track_host_init,
            guard_foreign: true,
        },
    }
}

pub fn modules() -> Vec<Module> {
    vec![
        Module {
            pid: 1,
            path: "/nonexistent/prog".into(),
            build_id: vec![],
            base: 0,
            segments: vec![
                Segment { start: PROG_TEXT, len: 0x1000, prot: 5, file_offset: 0 },
                Segment { start: PROG_RODATA, len: 0x1000, prot: 1, file_offset: 0x1000 },
                Segment { start: PROG_DATA, len: 0x1000, prot: 3, file_offset: 0x2000 },
            ],
            domain: Domain::Host,
            symbols: vec![Symbol { name: "main".into(), addr: PROG_TEXT + 0x100, size: 0x200 }],
        },
        Module {
            pid: 1,
            path: "/nonexistent/libfoo.so".into(),
            build_id: vec![],
            base: LIB_BASE,
            segments: vec![Segment { start: LIB_BASE, len: 0x10000, prot: 5, file_offset: 0 }],
            domain: Domain::Foreign,
            symbols: vec![Symbol { name: "foo".into(), addr: 0x1000, size: 0x100 }],
        },
        Module {
            pid: 1,
            path: "/nonexistent/libc.so.6".into(),
            build_id: vec![],
            base: LIBC_BASE,
            segments: vec![Segment { start: LIBC_BASE, len: 0x10000, prot: 5, file_offset: 0 }],
            domain: Domain::Neutral,
            symbols: vec![Symbol { name: "__strlen_avx2".into(), addr: 0x2000, size: 0x100 }],
        },
    ]
}

pub fn access(ip: u64, code: &[u8], rdi: u64, data: &[u8]) -> Event {
    let mut regs = Regs { rip: ip, rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RDI] = rdi;
    regs.gpr[Regs::RSP] = 0x7ffd_0000_0000;
    Event::Access { tid: TID, code: code.to_vec(), regs, fault_addr: rdi, data: data.to_vec(), vregs: vec![] }
}

pub fn alloc(ptr: u64, size: u64, domain: Domain) -> Event {
    Event::Alloc {
        tid: TID,
        func: AllocFn::Malloc,
        ptr,
        size,
        old_ptr: 0,
        // Foreign blocks are allocated by the library itself.
        caller: if domain == Domain::Foreign { LIB_FOO + 0x8 } else { PROG_TEXT + 0x12a },
        domain,
        zeroed: false,
    }
}

pub fn free(ptr: u64) -> Event {
    Event::Free { tid: TID, ptr, caller: PROG_TEXT + 0x140, domain: Domain::Host }
}

pub fn call(n: u64, args: [u64; 6]) -> Event {
    Event::Call {
        tid: TID,
        call: n,
        target: LIB_FOO,
        module: 1,
        symbol: Some(0),
        args,
        rsp: 0x7ffd_0000_0000,
        return_addr: PROG_TEXT + 0x150,
    }
}

pub fn ret(n: u64) -> Event {
    Event::Return { tid: TID, call: n, rax: 0, rdx: 0 }
}

/// A scratch path unique to this test process and name.
pub fn path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("ffirec-analyzer-tests-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(format!("{name}.ffr"))
}

/// Writes `events` to a finished trace and returns its path.
pub fn write(name: &str, track_host_init: bool, events: Vec<Event>, per_chunk: usize) -> PathBuf {
    let p = path(name);
    let opts = WriterOptions { events_per_chunk: per_chunk, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(&p, header(track_host_init), opts).unwrap();
    for m in modules() {
        w.add_module(m).unwrap();
    }
    for e in events {
        w.push(e).unwrap();
    }
    w.finish(Summary::default()).unwrap();
    p
}

pub fn run(p: &PathBuf, threads: usize) -> Report {
    let trace = Trace::open(p).unwrap();
    let opts = Options { threads: Some(threads), trace_name: "t.ffr".into(), ..Options::default() };
    analyze(&trace, &opts).unwrap()
}

/// xorshift64*: a fixed-seed generator (no dependency, same stream everywhere).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A busy random trace: `calls` foreign calls, each making `per_call`
/// accesses to a pool of live host and foreign allocations spread over many
/// pages, with frees, reallocation, host writes and stray accesses.
pub fn random_events(seed: u64, calls: u64, per_call: u64) -> Vec<Event> {
    let mut rng = Rng(seed);
    let mut ev = Vec::new();
    let mut live: Vec<(u64, u64)> = Vec::new();
    let mut next = 0x5555_0000_0000u64;
    let codes: [(&[u8], u64); 6] = [(LOAD8, 8), (STORE8, 8), (LOAD16, 16), (STORE16, 16), (LOAD1, 1), (LOAD32, 32)];
    for c in 0..calls {
        // Host side between calls: a few allocations, frees and writes.
        for _ in 0..4 {
            let size = 16 + rng.below(6000);
            let domain = if rng.below(4) == 0 { Domain::Foreign } else { Domain::Host };
            ev.push(alloc(next, size, domain));
            if rng.below(2) == 0 {
                ev.push(Event::HostWrite { tid: TID, addr: next, len: size / 2 });
            }
            live.push((next, size));
            next += size.div_ceil(4096) * 4096 + 4096 * rng.below(3);
        }
        if live.len() > 24 {
            let (p, _) = live.remove(rng.below(live.len() as u64) as usize);
            ev.push(free(p));
        }
        ev.push(call(c, [live[0].0, 0, 0, 0, 0, 0]));
        for _ in 0..per_call {
            let (base, size) = live[rng.below(live.len() as u64) as usize];
            let (code, n) = codes[rng.below(codes.len() as u64) as usize];
            // Mostly inside, sometimes just past the end.
            let off = if rng.below(50) == 0 { size } else { rng.below(size.saturating_sub(n).max(1)) };
            let data = if code == STORE8 || code == STORE16 {
                vec![]
            } else if rng.below(8) == 0 && n == 8 {
                live[rng.below(live.len() as u64) as usize].0.to_le_bytes().to_vec()
            } else {
                vec![0; n as usize]
            };
            ev.push(access(LIB_FOO + rng.below(0x100), code, base + off, &data));
        }
        ev.push(ret(c));
    }
    ev
}
