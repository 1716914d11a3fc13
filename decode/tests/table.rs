//! Table-driven decode tests: `ranges.txt` (instruction bytes + registers →
//! exact ranges) and `emulation.txt` (bytes → emulation, and load results).
//! Formats are described at the top of each file.

#![allow(clippy::unwrap_used)] // test code: a bad table line should panic with its location

use ffirec_decode::{Decoded, MemAccess, Rw};
use ffirec_format::{Regs, VecReg, VecRegKind};

const DEFAULT_IP: u64 = 0x40_0000;

fn parse_u64(s: &str) -> u64 {
    let s = s.replace('_', "");
    if let Some(h) = s.strip_prefix("0x") {
        u64::from_str_radix(h, 16).unwrap()
    } else if let Some(b) = s.strip_prefix("0b") {
        u64::from_str_radix(b, 2).unwrap()
    } else if let Some(n) = s.strip_prefix('-') {
        (n.parse::<i64>().unwrap()).wrapping_neg() as u64
    } else {
        s.parse().unwrap()
    }
}

fn parse_hex_bytes(s: &str) -> Vec<u8> {
    s.split_whitespace().map(|h| u8::from_str_radix(h, 16).unwrap()).collect()
}

const GPR_NAMES: [&str; 16] = ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

/// `rax=0x10 rflags=0x400 fs=0x7000 rip=0x1000 k1=0b101 ymm2=d:1,2,3 zmm3=q:… xmm1=x:00ff…`.
/// Vector values: `d:`/`q:` comma-separated dword/qword elements (element 0
/// first), `x:` raw little-endian bytes in hex; zero-padded to the register size.
fn parse_regs(s: &str) -> (u64, Regs, Vec<VecReg>) {
    let mut ip = DEFAULT_IP;
    let mut regs = Regs::default();
    let mut vregs = Vec::new();
    for tok in s.split_whitespace() {
        let (name, val) = tok.split_once('=').unwrap_or_else(|| panic!("bad register assignment {tok:?}"));
        if let Some(i) = GPR_NAMES.iter().position(|n| *n == name) {
            regs.gpr[i] = parse_u64(val);
            continue;
        }
        match name {
            "rip" => ip = parse_u64(val),
            "rflags" => regs.rflags = parse_u64(val),
            "fs" => regs.fs_base = parse_u64(val),
            "gs" => regs.gs_base = parse_u64(val),
            _ => {
                let (kind, len, num) = if let Some(n) = name.strip_prefix("xmm") {
                    (VecRegKind::Xmm, 16, n)
                } else if let Some(n) = name.strip_prefix("ymm") {
                    (VecRegKind::Ymm, 32, n)
                } else if let Some(n) = name.strip_prefix("zmm") {
                    (VecRegKind::Zmm, 64, n)
                } else if let Some(n) = name.strip_prefix('k') {
                    (VecRegKind::K, 8, n)
                } else {
                    panic!("unknown register {name}")
                };
                let mut bytes = Vec::new();
                if kind == VecRegKind::K {
                    bytes.extend_from_slice(&parse_u64(val).to_le_bytes());
                } else if let Some(d) = val.strip_prefix("d:") {
                    for e in d.split(',') {
                        bytes.extend_from_slice(&(parse_u64(e) as u32).to_le_bytes());
                    }
                } else if let Some(q) = val.strip_prefix("q:") {
                    for e in q.split(',') {
                        bytes.extend_from_slice(&parse_u64(e).to_le_bytes());
                    }
                } else if let Some(x) = val.strip_prefix("x:") {
                    bytes = (0..x.len()).step_by(2).map(|i| u8::from_str_radix(&x[i..i + 2], 16).unwrap()).collect();
                } else {
                    panic!("bad vector value {val}");
                }
                assert!(bytes.len() <= len, "{name}: too many bytes");
                bytes.resize(len, 0);
                vregs.push(VecReg { kind, index: num.parse().unwrap(), bytes });
            }
        }
    }
    (ip, regs, vregs)
}

fn fmt_access(a: &MemAccess) -> String {
    let rw = match a.rw {
        Rw::Read => "r",
        Rw::Write => "w",
        Rw::ReadWrite => "rw",
    };
    format!("{rw}{} {:#x} {}", if a.certain { "" } else { "?" }, a.addr, a.size)
}

fn fmt_vreg(v: &(VecRegKind, u8)) -> String {
    let k = match v.0 {
        VecRegKind::Xmm => "xmm",
        VecRegKind::Ymm => "ymm",
        VecRegKind::Zmm => "zmm",
        VecRegKind::K => "k",
    };
    format!("{k}{}", v.1)
}

/// Normalises an expected list: `r 0x10 4; w? 0x20 8` (or `-` for none).
fn normalise_expected(s: &str) -> Vec<String> {
    let s = s.trim();
    if s == "-" {
        return Vec::new();
    }
    s.split(';')
        .map(|e| {
            let parts: Vec<&str> = e.split_whitespace().collect();
            assert_eq!(parts.len(), 3, "bad expected access {e:?}");
            format!("{} {:#x} {}", parts[0], parse_u64(parts[1]), parse_u64(parts[2]))
        })
        .collect()
}

fn table_lines(text: &str) -> impl Iterator<Item = (usize, Vec<&str>)> {
    text.lines().enumerate().filter_map(|(n, l)| {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            None
        } else {
            Some((n + 1, l.split('|').map(str::trim).collect()))
        }
    })
}

#[test]
fn ranges_table() {
    let text = include_str!("ranges.txt");
    let mut failures = Vec::new();
    let mut cases = 0;
    for (line, cols) in table_lines(text) {
        assert!(cols.len() == 3 || cols.len() == 4, "ranges.txt:{line}: expected 3 or 4 columns");
        cases += 1;
        let bytes = parse_hex_bytes(cols[0]);
        let (ip, regs, vregs) = parse_regs(cols[1]);
        let d = match Decoded::new(ip, &bytes) {
            Ok(d) => d,
            Err(e) => {
                failures.push(format!("ranges.txt:{line}: {}: decode error {e}", cols[0]));
                continue;
            }
        };
        assert_eq!(d.len(), bytes.len(), "ranges.txt:{line}: {} decodes as {} bytes, not all of them", cols[0], d.len());
        let got: Vec<String> = match d.accesses(&regs, &vregs) {
            Ok(v) => v.iter().map(fmt_access).collect(),
            Err(e) => vec![format!("error: {e}")],
        };
        let want = if let Some(err) = cols[2].strip_prefix("error:") { vec![format!("error: {}", err.trim())] } else { normalise_expected(cols[2]) };
        if got != want {
            failures.push(format!("ranges.txt:{line}: {} ({}): got [{}], want [{}]", cols[0], d.instruction(), got.join("; "), want.join("; ")));
        }
        if let Some(needs) = cols.get(3) {
            let got_needs: Vec<String> = d.needed_vregs().iter().map(fmt_vreg).collect();
            let want_needs: Vec<String> = needs.strip_prefix("needs:").unwrap_or(needs).split_whitespace().map(String::from).collect();
            if got_needs != want_needs {
                failures.push(format!("ranges.txt:{line}: {}: needed_vregs {got_needs:?}, want {want_needs:?}", cols[0]));
            }
        } else if !d.needed_vregs().is_empty() {
            failures.push(format!("ranges.txt:{line}: {}: unexpected needed_vregs {:?}", cols[0], d.needed_vregs()));
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cases >= 140, "only {cases} cases");
}
