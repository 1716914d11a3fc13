//! Rough cost of the analyzer's hot path: a cache hit plus `accesses_into` on
//! an ordinary `mov`. Ignored by default (timing is meaningless in debug
//! builds); run with `cargo test -p ffirec-decode --release --test speed -- --ignored --nocapture`.
//! Reports the best of several rounds: the machine is shared and noisy.

use std::hint::black_box;
use std::time::Instant;

use ffirec_decode::{DecodeCache, Decoded};
use ffirec_format::Regs;

const N: u64 = 2_000_000;
const ROUNDS: usize = 9;

fn best_ns(mut f: impl FnMut(u64)) -> f64 {
    (0..ROUNDS)
        .map(|_| {
            let t = Instant::now();
            for i in 0..N {
                f(i);
            }
            t.elapsed().as_nanos() as f64 / N as f64
        })
        .fold(f64::INFINITY, f64::min)
}

#[test]
#[ignore = "timing; run in release"]
fn accesses_into_cost() {
    let code = [0x8b, 0x44, 0x8f, 0x08, 0x90, 0x90, 0x90, 0x90]; // mov eax, [rdi+rcx*4+8]
    let d = Decoded::new(0x40_0000, &code).unwrap();
    let mut regs = Regs { gpr: [0x1000; 16], ..Regs::default() };
    let mut out = Vec::with_capacity(16);
    let mut sum = 0u64;

    let ns = best_ns(|i| {
        regs.gpr[Regs::RCX] = i & 0xff;
        out.clear();
        black_box(&d).accesses_into(black_box(&regs), &[], &mut out).unwrap();
        sum = sum.wrapping_add(out[0].addr);
    });
    println!("accesses_into (mov, decoded): {ns:.1} ns/call");

    let mut cache = DecodeCache::default();
    for k in 0..1000u64 {
        cache.get_or_decode(0x40_0000 + k * 16, &code).unwrap();
    }
    let ns = best_ns(|i| {
        regs.gpr[Regs::RCX] = i & 0xff;
        out.clear();
        let ip = 0x40_0000 + (i % 1000) * 16;
        let d = cache.get_or_decode(ip, black_box(&code)).unwrap();
        d.accesses_into(&regs, &[], &mut out).unwrap();
        sum = sum.wrapping_add(out[0].addr);
    });
    println!("get_or_decode hit + accesses_into (1000 ips): {ns:.1} ns/call");

    let t = Instant::now();
    for i in 0..N / 20 {
        black_box(Decoded::new(0x40_0000 + i, black_box(&code)).unwrap());
    }
    let ns = t.elapsed().as_nanos() as f64 / (N / 20) as f64;
    println!("Decoded::new (miss): {ns:.1} ns (checksum {sum:#x})");
}
