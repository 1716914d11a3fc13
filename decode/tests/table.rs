//! Table-driven decode tests: `ranges.txt` (instruction bytes + registers →
//! exact ranges) and `emulation.txt` (bytes → emulation, and load results).
//! Formats are described at the top of each file.

#![allow(clippy::unwrap_used)] // test code: a bad table line should panic with its location

use ffirec_decode::{Decoded, Emulation, Extend, MemAccess, Rw, StoreSrc};
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

const GPR_NAMES: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

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
        assert_eq!(
            d.len(),
            bytes.len(),
            "ranges.txt:{line}: {} decodes as {} bytes, not all of them",
            cols[0],
            d.len()
        );
        let got: Vec<String> = match d.accesses(&regs, &vregs) {
            Ok(v) => v.iter().map(fmt_access).collect(),
            Err(e) => vec![format!("error: {e}")],
        };
        let want = if let Some(err) = cols[2].strip_prefix("error:") {
            vec![format!("error: {}", err.trim())]
        } else {
            normalise_expected(cols[2])
        };
        if got != want {
            failures.push(format!(
                "ranges.txt:{line}: {} ({}): got [{}], want [{}]",
                cols[0],
                d.instruction(),
                got.join("; "),
                want.join("; ")
            ));
        }
        if let Some(needs) = cols.get(3) {
            let got_needs: Vec<String> = d.needed_vregs().iter().map(fmt_vreg).collect();
            let want_needs: Vec<String> =
                needs.strip_prefix("needs:").unwrap_or(needs).split_whitespace().map(String::from).collect();
            if got_needs != want_needs {
                failures
                    .push(format!("ranges.txt:{line}: {}: needed_vregs {got_needs:?}, want {want_needs:?}", cols[0]));
            }
        } else if !d.needed_vregs().is_empty() {
            failures.push(format!("ranges.txt:{line}: {}: unexpected needed_vregs {:?}", cols[0], d.needed_vregs()));
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cases >= 140, "only {cases} cases");
}

const GPR8: [&str; 16] =
    ["al", "cl", "dl", "bl", "spl", "bpl", "sil", "dil", "r8b", "r9b", "r10b", "r11b", "r12b", "r13b", "r14b", "r15b"];
const GPR16: [&str; 16] =
    ["ax", "cx", "dx", "bx", "sp", "bp", "si", "di", "r8w", "r9w", "r10w", "r11w", "r12w", "r13w", "r14w", "r15w"];
const GPR32: [&str; 16] = [
    "eax", "ecx", "edx", "ebx", "esp", "ebp", "esi", "edi", "r8d", "r9d", "r10d", "r11d", "r12d", "r13d", "r14d",
    "r15d",
];
const HIGH8: [&str; 4] = ["ah", "ch", "dh", "bh"];

fn gpr_name(reg: u8, width: u8, high: bool) -> String {
    let r = usize::from(reg);
    match (width, high) {
        (1, true) => HIGH8[r].into(),
        (1, false) => GPR8[r].into(),
        (2, _) => GPR16[r].into(),
        (4, _) => GPR32[r].into(),
        _ => GPR_NAMES[r].into(),
    }
}

fn vec_name(kind: VecRegKind, reg: u8) -> String {
    fmt_vreg(&(kind, reg))
}

fn fmt_emulation(e: Option<&Emulation>, regs: &Regs) -> String {
    let Some(e) = e else { return "none".into() };
    let addr = e.address(regs);
    match *e {
        Emulation::Load { dst, extend, size, .. } => {
            let ext = match extend {
                Extend::Zero => "zero",
                Extend::Sign => "sign",
            };
            format!("load {} {ext} {size} @{addr:#x}", gpr_name(dst.reg, dst.width, dst.high_byte))
        }
        Emulation::Store { src, size, .. } => {
            let s = match src {
                StoreSrc::Gpr { reg, width, high_byte } => gpr_name(reg, width, high_byte),
                StoreSrc::Imm(_) => "imm".into(),
            };
            format!("store {s} {size} @{addr:#x} value={:#x}", e.store_value(regs).unwrap())
        }
        Emulation::VecLoad { reg, kind, size, zero_upper, .. } => {
            format!(
                "vload {} {size} {} @{addr:#x}",
                vec_name(kind, reg),
                if zero_upper { "zero-upper" } else { "legacy" }
            )
        }
        Emulation::VecStore { reg, kind, size, .. } => format!("vstore {} {size} @{addr:#x}", vec_name(kind, reg)),
    }
}

#[test]
fn emulation_table() {
    let text = include_str!("emulation.txt");
    let mut failures = Vec::new();
    let mut cases = 0;
    for (line, cols) in table_lines(text) {
        assert!(cols.len() == 3 || cols.len() == 4, "emulation.txt:{line}: expected 3 or 4 columns");
        cases += 1;
        let bytes = parse_hex_bytes(cols[0]);
        let (ip, regs, _) = parse_regs(cols[1]);
        let d = Decoded::new(ip, &bytes).unwrap_or_else(|e| panic!("emulation.txt:{line}: {e}"));
        assert_eq!(d.len(), bytes.len(), "emulation.txt:{line}: not all bytes decoded");
        let got = fmt_emulation(d.emulation(), &regs);
        let want = cols[2].split_whitespace().collect::<Vec<_>>().join(" ");
        if got != want {
            failures.push(format!(
                "emulation.txt:{line}: {} ({}): got `{got}`, want `{want}`",
                cols[0],
                d.instruction()
            ));
            continue;
        }
        // The emulated access must be exactly the range accesses_into reports.
        if let Some(e) = d.emulation() {
            let acc = d.accesses(&regs, &[]).unwrap();
            let rw = if matches!(e, Emulation::Load { .. } | Emulation::VecLoad { .. }) { Rw::Read } else { Rw::Write };
            let want_acc = vec![MemAccess { addr: e.address(&regs), size: e.size() as u64, rw, certain: true }];
            if acc != want_acc {
                failures
                    .push(format!("emulation.txt:{line}: accesses {acc:?} differ from the emulation's {want_acc:?}"));
            }
        }
        if let Some(apply) = cols.get(3) {
            let (data, result) = apply.split_once("->").unwrap();
            let data = data.trim().strip_prefix("data=").unwrap();
            let data: Vec<u8> =
                (0..data.len()).step_by(2).map(|i| u8::from_str_radix(&data[i..i + 2], 16).unwrap()).collect();
            let (reg, value) = result.trim().split_once('=').unwrap();
            let mut after = regs;
            d.emulation().unwrap().apply_load(&mut after, &data).unwrap();
            let i = GPR_NAMES.iter().position(|n| *n == reg).unwrap();
            let mut want_regs = regs;
            want_regs.gpr[i] = parse_u64(value);
            if after != want_regs {
                failures.push(format!(
                    "emulation.txt:{line}: after apply_load {reg}={:#x}, want {value} (others unchanged)",
                    after.gpr[i]
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{} of {cases} cases failed:\n{}", failures.len(), failures.join("\n"));
    assert!(cases >= 70, "only {cases} cases");
}

#[test]
fn apply_load_rejects_short_data_and_non_loads() {
    let d = Decoded::new(DEFAULT_IP, &[0x48, 0x8b, 0x47, 0xf8]).unwrap();
    let mut regs = Regs::default();
    assert!(d.emulation().unwrap().apply_load(&mut regs, &[1, 2, 3]).is_err());
    assert_eq!(regs, Regs::default());
    let store = Decoded::new(DEFAULT_IP, &[0x88, 0x1f]).unwrap();
    assert!(store.emulation().unwrap().apply_load(&mut regs, &[1]).is_err());
    assert_eq!(store.emulation().unwrap().store_value(&Regs { gpr: [0x1234; 16], ..Regs::default() }), Some(0x34));
}
