//! Emulation vs CPU: runs each move of `emulation_hw.txt` natively in a
//! forked child (known register values, a patterned operand), dumps the
//! registers to a shared page, and checks that `Emulation::apply_load`,
//! `store_value` and the `VecLoad` zeroing rules predict exactly what the CPU
//! did — the recorder writes these results into the tracee instead of
//! running the instruction.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test code: a bad table line should panic with its location

mod native;

use ffirec_decode::{Decoded, Emulation};
use ffirec_format::Regs;
use native::{mmap, run, Outcome, PAGE, PROT_RW, PROT_RWX, SIGILL};

const GPRS: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|h| u8::from_str_radix(h, 16).unwrap()).collect()
}

fn pattern(i: usize) -> u8 {
    (i * 37 + 0x81) as u8
}

#[test]
fn emulation_matches_cpu() {
    if !(std::is_x86_feature_detected!("avx512f") && std::is_x86_feature_detected!("avx2")) {
        eprintln!("skipped: this CPU lacks AVX-512F or AVX2");
        return;
    }
    let text = include_str!("emulation_hw.txt");
    let header = |key: &str| text.lines().find_map(|l| l.strip_prefix(key)).unwrap().trim();
    let prefix_template = hex(header("# prefix:"));
    let suffix = hex(header("# suffix:"));
    let mut init = Regs::default();
    for kv in header("# init:").split_whitespace() {
        let (r, v) = kv.split_once('=').unwrap();
        init.gpr[GPRS.iter().position(|n| *n == r).unwrap()] =
            u64::from_str_radix(v.trim_start_matches("0x"), 16).unwrap();
    }
    let dumped: Vec<u8> = header("# vregs:").split_whitespace().map(|n| n.parse().unwrap()).collect();

    let data = mmap(PAGE, PROT_RW, true);
    let result = mmap(PAGE, PROT_RW, true);
    let code_page = mmap(PAGE, PROT_RWX, false);
    // SAFETY: `data` and `result` are our own one-page shared mappings; the
    // child writes them only while the parent waits.
    let (data_mem, result_mem) = unsafe {
        (
            std::slice::from_raw_parts_mut(data as *mut u8, PAGE as usize),
            std::slice::from_raw_parts_mut(result as *mut u8, PAGE as usize),
        )
    };
    let mut failures = Vec::new();
    let (mut checked, mut skipped) = (0, 0);
    for line in text.lines().filter(|l| !l.trim().is_empty() && !l.starts_with('#')) {
        let (bytes, src) = line.split_once('#').unwrap();
        let src = src.trim();
        let insn = hex(bytes);
        let rdi = data + 64;
        let mut program = prefix_template.clone();
        program[2..10].copy_from_slice(&result.to_le_bytes());
        program[12..20].copy_from_slice(&rdi.to_le_bytes());
        let ip = code_page + program.len() as u64;
        program.extend_from_slice(&insn);
        program.extend_from_slice(&suffix);

        let d = Decoded::new(ip, &insn).unwrap();
        let Some(e) = d.emulation().copied() else {
            failures.push(format!("{src}: not emulatable"));
            continue;
        };
        let mut before = init;
        before.gpr[Regs::RDI] = rdi;
        before.gpr[15] = result;
        for (i, b) in data_mem.iter_mut().enumerate() {
            *b = pattern(i);
        }
        result_mem.fill(0);
        match run(code_page, &program) {
            Outcome::Exited => {}
            Outcome::Other(SIGILL) => {
                skipped += 1;
                continue;
            }
            other => {
                failures.push(format!("{src}: child {other:?}"));
                continue;
            }
        }
        checked += 1;
        let mut after = before;
        for (i, g) in after.gpr.iter_mut().enumerate().take(15) {
            *g = u64::from_le_bytes(result_mem[8 * i..8 * i + 8].try_into().unwrap());
        }
        after.gpr[Regs::RSP] = before.gpr[Regs::RSP];
        let vreg = |n: u8| {
            let k = dumped.iter().position(|&d| d == n).unwrap();
            result_mem[128 + 64 * k..192 + 64 * k].to_vec()
        };
        let addr = e.address(&before);
        let off = (addr - data) as usize;
        let size = e.size();
        let original: Vec<u8> = (0..PAGE as usize).map(pattern).collect();
        match e {
            Emulation::Load { .. } => {
                let mut want = before;
                e.apply_load(&mut want, &original[off..off + size]).unwrap();
                if want != after {
                    let diff: Vec<String> = (0..16)
                        .filter(|&i| want.gpr[i] != after.gpr[i])
                        .map(|i| format!("{}: cpu {:#x}, emulation {:#x}", GPRS[i], after.gpr[i], want.gpr[i]))
                        .collect();
                    failures.push(format!("{src}: {}", diff.join(", ")));
                }
            }
            Emulation::Store { .. } => {
                let mut want = original.clone();
                want[off..off + size].copy_from_slice(&e.store_value(&before).unwrap().to_le_bytes()[..size]);
                if want != *data_mem || after != before {
                    failures.push(format!(
                        "{src}: memory {:02x?}, emulation {:02x?}",
                        &data_mem[off..off + 8],
                        &want[off..off + 8]
                    ));
                }
            }
            Emulation::VecLoad { reg, zero_upper, .. } => {
                let mut want = vec![0xffu8; 64];
                want[..size].copy_from_slice(&original[off..off + size]);
                let upto = if zero_upper { 64 } else { 16 };
                want[size.min(upto)..upto].fill(0);
                let got = vreg(reg);
                if got != want {
                    failures.push(format!("{src}: register {got:02x?}, emulation {want:02x?}"));
                }
            }
            Emulation::VecStore { .. } => {
                // Every dumped register was all-ones before.
                let mut want = original.clone();
                want[off..off + size].fill(0xff);
                if want != *data_mem {
                    failures.push(format!("{src}: memory differs from a {size}-byte store of all-ones"));
                }
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} disagree with the CPU:\n{}",
        failures.len(),
        checked + failures.len(),
        failures.join("\n")
    );
    assert!(checked >= 50, "only {checked} cases ({skipped} skipped: SIGILL)");
    eprintln!("{checked} emulations agree with the CPU ({skipped} skipped: SIGILL)");
}
