//! Hardware oracle: runs each case of `hardware.txt` natively in a forked
//! child, with the operand placed against PROT_NONE pages, and checks that
//! the CPU faults exactly when the decoder says the instruction touches a
//! guarded byte. This pins down the judgement calls (AVX-512 fault
//! suppression per instruction family, rep direction, VSIB, bit strings)
//! against this machine's CPU. Cases needing features the CPU lacks (SIGILL)
//! are skipped and counted; without AVX-512F/BW or AVX2 the test does nothing.
//! An uncertain range outside the page allows either outcome.
//!
//! Layout: [guard page][P: readable, zero-filled][guard page]; the program
//! is `movabs rdi, P+OFF; setup; INSTRUCTION; exit_group(0)`. `OFF = end`
//! puts the decoder's last byte at the page's last byte (must not fault),
//! `end+N` N bytes further (must fault): this checks operand sizes.

#![cfg(all(target_os = "linux", target_arch = "x86_64"))]
#![allow(clippy::unwrap_used)] // test code: a bad table line should panic with its location

mod native;

use ffirec_decode::Decoded;
use ffirec_format::{Regs, VecReg, VecRegKind};
use native::{mmap, run, syscall6, Outcome, PAGE, PROT_NONE, PROT_RW, PROT_RWX, SIGILL, SYS_MPROTECT};

fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|h| u8::from_str_radix(h, 16).unwrap()).collect()
}

fn num(s: &str, p: u64) -> u64 {
    if let Some(off) = s.strip_prefix('@') {
        return p.wrapping_add(off.parse::<i64>().unwrap() as u64);
    }
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else if let Some(b) = s.strip_prefix("0b") {
        u64::from_str_radix(b, 2).unwrap()
    } else {
        s.parse::<i64>().unwrap() as u64
    }
}

/// The decoder's view: `rcx=16 rsi=@16 k1=1 ymm1=d:… xmm1=x:…`.
fn regs_for(spec: &str, p: u64, rdi: u64) -> (Regs, Vec<VecReg>) {
    const NAMES: [&str; 16] =
        ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];
    let mut regs = Regs::default();
    regs.gpr[Regs::RDI] = rdi;
    // The child's real stack is valid memory: keep stack slots inside P for the check.
    regs.gpr[Regs::RSP] = p + 2048;
    let mut vregs = Vec::new();
    for tok in spec.split_whitespace() {
        let (name, val) = tok.split_once('=').unwrap();
        if let Some(i) = NAMES.iter().position(|n| *n == name) {
            regs.gpr[i] = num(val, p);
        } else if name == "rflags" {
            regs.rflags = num(val, p);
        } else {
            let (kind, len, n) = match &name[..1] {
                "k" => (VecRegKind::K, 8, &name[1..]),
                "x" => (VecRegKind::Xmm, 16, &name[3..]),
                "y" => (VecRegKind::Ymm, 32, &name[3..]),
                _ => (VecRegKind::Zmm, 64, &name[3..]),
            };
            let mut bytes = Vec::new();
            if kind == VecRegKind::K {
                bytes.extend_from_slice(&num(val, p).to_le_bytes());
            } else if let Some(d) = val.strip_prefix("d:") {
                for e in d.split(',') {
                    bytes.extend_from_slice(&(num(e, p) as u32).to_le_bytes());
                }
            } else if let Some(x) = val.strip_prefix("x:") {
                bytes = (0..x.len()).step_by(2).map(|i| u8::from_str_radix(&x[i..i + 2], 16).unwrap()).collect();
            }
            bytes.resize(len, 0);
            vregs.push(VecReg { kind, index: n.parse().unwrap(), bytes });
        }
    }
    (regs, vregs)
}

#[test]
fn decoder_agrees_with_cpu_faults() {
    if !(std::is_x86_feature_detected!("avx512f")
        && std::is_x86_feature_detected!("avx512bw")
        && std::is_x86_feature_detected!("avx2"))
    {
        eprintln!("skipped: this CPU lacks AVX-512F/BW or AVX2");
        return;
    }
    let text = include_str!("hardware.txt");
    let mut lines = text.lines();
    let suffix = hex(lines.clone().find_map(|l| l.strip_prefix("# exit suffix:")).unwrap());
    let data = mmap(3 * PAGE, PROT_RW, false);
    // SAFETY: our own mapping; make the outer pages PROT_NONE.
    unsafe {
        assert_eq!(syscall6(SYS_MPROTECT, [data, PAGE, PROT_NONE, 0, 0, 0]), 0);
        assert_eq!(syscall6(SYS_MPROTECT, [data + 2 * PAGE, PAGE, PROT_NONE, 0, 0, 0]), 0);
    }
    let p = data + PAGE;
    let code_page = mmap(PAGE, PROT_RWX, false);
    let mut failures = Vec::new();
    let (mut checked, mut undetermined, mut skipped) = (0, 0, 0);
    for (n, line) in lines.by_ref().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (fields, comment) = line.split_once('#').unwrap_or((line, ""));
        let cols: Vec<&str> = fields.split('|').map(str::trim).collect();
        let mut prefix = hex(cols[1]);
        let insn = hex(cols[2]);
        let ip = code_page + prefix.len() as u64;
        let d = Decoded::new(ip, &insn).unwrap();
        // OFF is a number, or `end[+N]`: place the operand so that the
        // decoder's last byte is the page's last byte (then N bytes further).
        let off: i64 = match cols[0].strip_prefix("end") {
            Some(extra) => {
                let (regs, vregs) = regs_for(cols.get(3).copied().unwrap_or(""), p, p);
                let acc = d.accesses(&regs, &vregs).unwrap();
                let end = acc.iter().map(|a| a.addr + a.size - p).max().unwrap();
                PAGE as i64 - end as i64 + extra.strip_prefix('+').map_or(0, |n| n.parse().unwrap())
            }
            None => cols[0].parse().unwrap(),
        };
        let rdi = p.wrapping_add(off as u64);
        prefix[2..10].copy_from_slice(&rdi.to_le_bytes());
        let (regs, vregs) = regs_for(cols.get(3).copied().unwrap_or(""), p, rdi);
        let acc = d.accesses(&regs, &vregs).unwrap_or_else(|e| panic!("hardware.txt:{}: {e}", n + 2));
        let outside = |a: &ffirec_decode::MemAccess| a.addr < p || a.addr.wrapping_add(a.size) > p + PAGE;
        let certain_out = acc.iter().any(|a| a.certain && outside(a));
        let any_out = acc.iter().any(outside);
        let mut program = prefix;
        program.extend_from_slice(&insn);
        program.extend_from_slice(&suffix);
        let got = run(code_page, &program);
        if got == Outcome::Other(SIGILL) {
            skipped += 1;
            continue;
        }
        let ranges: Vec<String> = acc
            .iter()
            .map(|a| {
                format!(
                    "{:+}..{:+}{}",
                    a.addr.wrapping_sub(p) as i64,
                    a.addr.wrapping_add(a.size).wrapping_sub(p) as i64,
                    if a.certain { "" } else { "?" }
                )
            })
            .collect();
        let ok = match got {
            Outcome::Segv if certain_out || any_out => true,
            Outcome::Exited if !certain_out => true,
            _ => false,
        };
        if any_out && !certain_out {
            undetermined += 1;
        }
        checked += 1;
        if !ok {
            failures.push(format!("{}: cpu {got:?}, decoder (relative to P) [{}]", comment.trim(), ranges.join(", ")));
        }
    }
    assert!(failures.is_empty(), "{} of {checked} disagree with the CPU:\n{}", failures.len(), failures.join("\n"));
    assert!(checked >= 50, "only {checked} cases ({skipped} skipped: SIGILL)");
    eprintln!("{checked} cases agree with the CPU ({undetermined} with only uncertain ranges outside; {skipped} skipped: SIGILL)");
}
