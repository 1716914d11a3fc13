//! Random, often nonsensical event streams: the analyzer must never panic,
//! and must give the same report with 1 and 2 threads.
#![allow(clippy::unwrap_used)]

mod support;

use ffirec_format::{AllocFn, Domain, Event, GapReason, Regs, SyscallRange, Trace};
use support::*;

fn addr(rng: &mut Rng) -> u64 {
    match rng.below(6) {
        0 => rng.next(),
        1 => u64::MAX - rng.below(0x3000),
        2 => rng.below(0x2000),
        _ => 0x5555_5555_0000 + rng.below(0x8000),
    }
}

fn event(rng: &mut Rng) -> Event {
    let codes: [&[u8]; 8] = [LOAD8, STORE8, LOAD16, STORE16, LOAD1, LOAD32, STORE1, &[0xf3, 0xa4]];
    let tid = 1 + rng.below(3) as u32;
    match rng.below(14) {
        0..=5 => {
            let mut regs = Regs { rip: LIB_FOO + rng.below(0x100), rflags: rng.below(2) << 10, ..Regs::default() };
            regs.gpr[Regs::RDI] = addr(rng);
            regs.gpr[Regs::RSI] = addr(rng);
            regs.gpr[Regs::RCX] = rng.below(0x3000);
            let data: Vec<u8> = (0..rng.below(40)).map(|_| rng.next() as u8).collect();
            let code = codes[rng.below(8) as usize].to_vec();
            Event::Access { tid, code, regs, fault_addr: 0, data, vregs: vec![] }
        }
        6 => Event::Alloc {
            tid,
            func: [AllocFn::Malloc, AllocFn::Realloc, AllocFn::Calloc, AllocFn::Mmap][rng.below(4) as usize],
            ptr: addr(rng),
            size: if rng.below(10) == 0 { rng.next() } else { rng.below(0x3000) },
            old_ptr: if rng.below(2) == 0 { 0 } else { addr(rng) },
            caller: LIB_FOO,
            domain: if rng.below(2) == 0 { Domain::Host } else { Domain::Foreign },
            zeroed: rng.below(2) == 0,
        },
        7 => Event::Free { tid, ptr: addr(rng), caller: 0, domain: Domain::Host },
        8 => Event::Call {
            tid,
            call: rng.below(8),
            target: LIB_FOO,
            module: rng.below(5) as u32,
            symbol: Some(rng.below(3) as u32),
            args: [addr(rng), addr(rng), 0, 0, 0, 0],
            rsp: 0,
            return_addr: PROG_TEXT,
        },
        9 => Event::Return { tid, call: rng.below(8), rax: addr(rng), rdx: 0 },
        10 => Event::HostWrite { tid, addr: addr(rng), len: rng.below(0x2000) },
        11 => Event::Map {
            tid,
            addr: addr(rng),
            len: rng.next(),
            prot: rng.below(8) as u32,
            flags: rng.next() as u32,
            domain: Domain::Host,
        },
        12 => Event::SyscallAccess {
            tid,
            nr: 0,
            args: [0; 6],
            ret: 0,
            ranges: vec![SyscallRange { addr: addr(rng), len: rng.below(0x3000), write: rng.below(2) == 0 }],
        },
        _ => Event::Gap { tid, reason: GapReason::Lost, detail: 0 },
    }
}

#[test]
fn random_event_streams_never_panic_and_are_deterministic() {
    for seed in 1..=12u64 {
        let mut rng = Rng(seed * 0x9E37_79B9);
        let events: Vec<Event> = (0..400).map(|_| event(&mut rng)).collect();
        let p = write(&format!("robust{seed}"), seed % 2 == 0, events, 37);
        let one = run(&p, 1).to_json();
        let two = run(&p, 2).to_json();
        assert!(one == two, "seed {seed}: JSON differs between 1 and 2 threads");
    }
}

#[test]
fn a_damaged_chunk_in_the_middle_is_an_error_naming_it_with_any_thread_count() {
    let p = write("robust-damaged", true, random_events(7, 40, 300), 500);
    let trace = Trace::open(&p).unwrap();
    let chunks = trace.chunks().to_vec();
    assert!(chunks.len() > 20, "{} chunks", chunks.len());
    drop(trace);
    // The last payload byte of chunk 13 (a later round than the first).
    let mut bytes = std::fs::read(&p).unwrap();
    let at = (chunks[14].offset - 1) as usize;
    bytes[at] ^= 0x55;
    std::fs::write(&p, &bytes).unwrap();
    let trace = Trace::open(&p).unwrap();
    for threads in [1, 2, 3] {
        let opts = ffirec_analyzer::Options { threads: Some(threads), dwarf: false, ..Default::default() };
        match ffirec_analyzer::analyze(&trace, &opts) {
            Err(ffirec_analyzer::Error::Trace(ffirec_format::Error::Corrupt { chunk, .. })) => assert_eq!(chunk, 13),
            Err(e) => panic!("{threads} threads: unexpected error {e}"),
            Ok(_) => panic!("{threads} threads: a damaged chunk was analysed"),
        }
    }
}
