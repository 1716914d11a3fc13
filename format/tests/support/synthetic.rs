//! The synthetic access stream of a tight foreign loop, shared by the size
//! test (`format/tests/size.rs`) and the benchmark (`benches/format.rs`).
//!
//! It models `for (i = 0; i < n; i++) { sum += buf[i]; out[i] = sum; }` run
//! under ffirec: per iteration one read fault (`mov rax, [rsi+rcx*8]`) and
//! one write fault (`mov [rdi+rcx*8], rdx`) at two fixed instructions, the
//! fault addresses striding by 8 through two buffers, rcx counting up, and
//! the loaded values small pseudo-random numbers from a fixed seed.
#![allow(dead_code)]

use ffirec_format::{Event, Regs};

pub const LOAD_IP: u64 = 0x7f3a_1c20_1130;
pub const STORE_IP: u64 = 0x7f3a_1c20_113b;
const BUF: u64 = 0x5612_34a0_02a0;
const OUT: u64 = 0x5612_34b0_0010;

/// `n` access events (n/2 iterations) from a fixed-seed xorshift generator.
pub fn tight_loop(seed: u64, n: usize) -> Vec<Event> {
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut regs = Regs { rflags: 0x246, fs_base: 0x7f3a_1c00_0740, ..Regs::default() };
    regs.gpr[Regs::RSP] = 0x7ffd_5e1f_0a38;
    regs.gpr[Regs::RBP] = 0x7ffd_5e1f_0a60;
    regs.gpr[Regs::RSI] = BUF;
    regs.gpr[Regs::RDI] = OUT;
    regs.gpr[Regs::R8] = 0x5612_34a0_0000;
    let mut sum: u64 = 0;
    let mut out = Vec::with_capacity(n);
    let mut i: u64 = 0;
    while out.len() < n {
        let value = next() % 200;
        regs.gpr[Regs::RCX] = i;
        regs.rip = LOAD_IP;
        out.push(Event::Access {
            tid: 41_877,
            code: vec![0x48, 0x8b, 0x04, 0xce],
            regs,
            fault_addr: BUF + 8 * i,
            data: value.to_le_bytes().to_vec(),
            vregs: vec![],
        });
        regs.gpr[Regs::RAX] = value;
        sum += value;
        regs.gpr[Regs::RDX] = sum;
        regs.rip = STORE_IP;
        regs.rflags = 0x206;
        if out.len() < n {
            out.push(Event::Access {
                tid: 41_877,
                code: vec![0x48, 0x89, 0x14, 0xcf],
                regs,
                fault_addr: OUT + 8 * i,
                data: vec![],
                vregs: vec![],
            });
        }
        regs.rflags = if i % 7 == 0 { 0x297 } else { 0x293 };
        i += 1;
    }
    out
}
