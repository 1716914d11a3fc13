//! Random bytes and random registers never panic, and the cache re-decodes
//! when the code at an address changes.

use ffirec_decode::{DecodeCache, DecodeError, Decoded};
use ffirec_format::{Regs, VecReg};

/// xorshift64*: a fixed-seed generator, so failures reproduce.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
}

#[test]
fn random_instructions_never_panic() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let mut decoded = 0;
    let mut out = Vec::new();
    for _ in 0..200_000 {
        let mut code = [0u8; 15];
        for b in code.iter_mut() {
            *b = rng.next() as u8;
        }
        // Bias towards prefixes and 0x0f/VEX/EVEX escapes, where the interesting forms live.
        match rng.next() % 4 {
            0 => code[0] = [0x0f, 0xc4, 0xc5, 0x62, 0xf3, 0xf2, 0x66, 0x67][(rng.next() % 8) as usize],
            1 => code[0] = 0x40 | (rng.next() as u8 & 0xf),
            _ => {}
        }
        let ip = rng.next();
        let Ok(d) = Decoded::new(ip, &code) else { continue };
        decoded += 1;
        let mut regs = Regs::default();
        for g in regs.gpr.iter_mut() {
            *g = match rng.next() % 3 {
                0 => rng.next(),
                1 => rng.next() % 64,
                _ => u64::MAX - rng.next() % 64,
            };
        }
        regs.rflags = rng.next();
        regs.fs_base = rng.next();
        regs.gs_base = rng.next();
        let vregs: Vec<VecReg> = d
            .needed_vregs()
            .iter()
            .map(|&(kind, index)| VecReg { kind, index, bytes: (0..64).map(|_| rng.next() as u8).collect() })
            .collect();
        out.clear();
        d.accesses_into(&regs, &vregs, &mut out).unwrap();
        for a in &out {
            assert!(a.size > 0, "{}: empty access", d.instruction());
        }
        if !d.needed_vregs().is_empty() {
            out.clear();
            assert!(matches!(d.accesses_into(&regs, &[], &mut out), Err(DecodeError::MissingRegister { .. })));
        }
        if let Some(e) = d.emulation() {
            let _ = e.address(&regs);
        }
    }
    assert!(decoded > 100_000, "only {decoded} decoded");
}

#[test]
fn invalid_and_truncated_bytes_are_errors() {
    assert_eq!(Decoded::new(0x1000, &[]).unwrap_err(), DecodeError::Invalid { ip: 0x1000 });
    // mov eax, [rdi+rcx*4+8] cut short
    assert_eq!(Decoded::new(0x1000, &[0x8b, 0x44, 0x8f]).unwrap_err(), DecodeError::Invalid { ip: 0x1000 });
    // 0x06 (push es) is invalid in 64-bit mode
    assert_eq!(Decoded::new(0x1000, &[0x06]).unwrap_err(), DecodeError::Invalid { ip: 0x1000 });
}

#[test]
fn cache_hits_and_redecodes_changed_code() {
    let mut cache = DecodeCache::default();
    let load = [0x8b, 0x07, 0x90, 0x90]; // mov eax, [rdi]; trailing bytes ignored
    let store = [0x89, 0x07]; // mov [rdi], eax
    let regs = Regs { gpr: [0x1000; 16], ..Regs::default() };
    let d = cache.get_or_decode(0x40_0000, &load).unwrap();
    assert_eq!((d.len(), d.code()), (2, &load[..2]));
    assert_eq!(d.accesses(&regs, &[]).unwrap()[0].rw, ffirec_decode::Rw::Read);
    // A hit: same bytes (different trailing bytes).
    let d = cache.get_or_decode(0x40_0000, &[0x8b, 0x07, 0xcc]).unwrap();
    assert_eq!(d.accesses(&regs, &[]).unwrap()[0].rw, ffirec_decode::Rw::Read);
    assert_eq!(cache.len(), 1);
    // JIT rewrote the address: re-decoded, not served stale.
    let d = cache.get_or_decode(0x40_0000, &store).unwrap();
    assert_eq!(d.accesses(&regs, &[]).unwrap()[0].rw, ffirec_decode::Rw::Write);
    assert_eq!(cache.len(), 1);
    // Shorter bytes than the cached instruction: a mismatch, decoded afresh (and invalid here).
    assert!(cache.get_or_decode(0x40_0000, &[0x8b]).is_err());
    // Another address is another entry.
    cache.get_or_decode(0x40_0010, &load).unwrap();
    assert_eq!(cache.len(), 2);
}

#[test]
fn xsave_uses_this_machines_area_size() {
    // xsave [rax]: the area size depends on the enabled features (CPUID 0xD).
    let d = Decoded::new(0x1000, &[0x0f, 0xae, 0x20]).unwrap();
    let regs = Regs { gpr: [0x10000; 16], ..Regs::default() };
    let acc = d.accesses(&regs, &[]).unwrap();
    assert_eq!(acc.len(), 1);
    assert_eq!(acc[0].addr, 0x10000);
    assert!(acc[0].size >= 576, "legacy area + header is 576 bytes, got {}", acc[0].size);
}

/// For ordinary operands the precomputed address arithmetic must agree with
/// iced-x86's own `UsedMemory::virtual_address` (segments, 0x67, xlat's AL
/// index, RIP-relative, negative displacements).
#[test]
fn plain_operands_agree_with_iced_virtual_address() {
    use iced_x86::{InstructionInfoFactory, OpAccess, Register};
    let mut rng = Rng(0x0123_4567_89ab_cdef);
    let mut factory = InstructionInfoFactory::new();
    let mut compared = 0;
    for _ in 0..200_000 {
        let mut code = [0u8; 15];
        for b in code.iter_mut() {
            *b = rng.next() as u8;
        }
        if rng.next().is_multiple_of(2) {
            code[0] = [0x64, 0x65, 0x67, 0x48, 0x4c, 0x8b, 0x89, 0x0f][(rng.next() % 8) as usize];
        }
        let ip = rng.next();
        let Ok(d) = Decoded::new(ip, &code) else { continue };
        let ins = *d.instruction();
        if ins.is_string_instruction()
            || ins.op_mask() != Register::None
            || ins.is_vsib()
            || !d.needed_vregs().is_empty()
        {
            continue;
        }
        let name = format!("{:?}", ins.mnemonic()).to_lowercase();
        if ["bt", "cmpxchg", "maskmov", "xsave", "xrstor", "clflush", "clwb", "cldemote"]
            .iter()
            .any(|p| name.starts_with(p))
        {
            continue;
        }
        let mut regs = Regs::default();
        for g in regs.gpr.iter_mut() {
            *g = rng.next();
        }
        regs.fs_base = rng.next();
        regs.gs_base = rng.next();
        let mine = d.accesses(&regs, &[]).unwrap();
        let mut theirs = Vec::new();
        for um in factory.info(&ins).used_memory() {
            let addr = um
                .virtual_address(0, |reg, _, _| {
                    Some(match reg {
                        Register::FS => regs.fs_base,
                        Register::GS => regs.gs_base,
                        r if r.is_segment_register() => 0,
                        r => {
                            let full = r.full_register() as usize - Register::RAX as usize;
                            let v = regs.gpr[full];
                            match r {
                                Register::AH | Register::CH | Register::DH | Register::BH => (v >> 8) & 0xff,
                                _ if r.size() == 1 => v & 0xff,
                                _ if r.size() == 2 => v & 0xffff,
                                _ if r.size() == 4 => v & 0xffff_ffff,
                                _ => v,
                            }
                        }
                    })
                })
                .unwrap();
            let size = um.memory_size().size() as u64;
            match um.access() {
                OpAccess::ReadCondWrite => {
                    theirs.push((addr, size));
                    theirs.push((addr, size));
                }
                OpAccess::None | OpAccess::NoMemAccess => {}
                _ => theirs.push((addr, size)),
            }
        }
        let mine: Vec<(u64, u64)> = mine.iter().map(|a| (a.addr, a.size)).collect();
        assert_eq!(mine, theirs, "{} ({:02x?})", ins, &code[..d.len()]);
        compared += mine.len();
    }
    assert!(compared > 30_000, "only {compared} operands compared");
}

#[test]
fn indirect_branches_through_memory() {
    let regs = Regs { gpr: [0x7000, 0x1000, 0, 0, 0x7000, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0], ..Regs::default() };
    // call qword ptr [rax]
    let d = Decoded::new(0x40_0000, &[0xff, 0x10]).unwrap();
    let b = d.indirect_branch().unwrap();
    assert!(b.call);
    assert_eq!((b.target_addr(&regs), b.return_addr), (0x7000, 0x40_0002));
    // call qword ptr [rsp+8]: the slot is addressed with rsp before the push
    let d = Decoded::new(0x40_0000, &[0xff, 0x54, 0x24, 0x08]).unwrap();
    assert_eq!(d.indirect_branch().unwrap().target_addr(&regs), 0x7008);
    // jmp qword ptr [rip+0x10]
    let d = Decoded::new(0x40_0000, &[0xff, 0x25, 0x10, 0x00, 0x00, 0x00]).unwrap();
    let b = d.indirect_branch().unwrap();
    assert!(!b.call);
    assert_eq!(b.target_addr(&regs), 0x40_0016);
    // jmp qword ptr [rcx+8]
    let d = Decoded::new(0x40_0000, &[0xff, 0x61, 0x08]).unwrap();
    assert_eq!(d.indirect_branch().unwrap().target_addr(&regs), 0x1008);
    // Not indirect-through-memory: call rax, call rel32, ret, mov.
    for code in [&[0xff, 0xd0][..], &[0xe8, 0, 0, 0, 0], &[0xc3], &[0x8b, 0x07]] {
        assert!(Decoded::new(0x40_0000, code).unwrap().indirect_branch().is_none(), "{code:02x?}");
    }
}

#[test]
fn decoded_and_cache_can_cross_threads() {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Decoded>();
    send_sync::<DecodeCache>();
    send_sync::<ffirec_decode::Emulation>();
}

#[test]
fn cache_stamps_kept_on_hit_and_reset_on_new_bytes() {
    let mut cache = DecodeCache::default();
    let load = [0x8b, 0x07]; // mov eax, [rdi]
    let store = [0x89, 0x07]; // mov [rdi], eax
    assert!(cache.get_stamped(0x40_0000, 1).is_none(), "no entry");
    cache.stamp(0x40_0000, 1); // no entry: nothing happens
    assert!(cache.get_stamped(0x40_0000, 1).is_none());
    cache.get_or_decode(0x40_0000, &load).unwrap();
    assert!(cache.get_stamped(0x40_0000, 1).is_none(), "fresh entries are unstamped");
    assert!(cache.get_stamped(0x40_0000, 0).is_none(), "stamp 0 never matches");
    cache.stamp(0x40_0000, 1);
    assert_eq!(cache.get_stamped(0x40_0000, 1).map(|d| d.code().to_vec()), Some(load.to_vec()));
    assert!(cache.get_stamped(0x40_0000, 2).is_none(), "another epoch");
    // Same bytes: still stamped. New bytes: re-decoded and unstamped.
    cache.get_or_decode(0x40_0000, &load).unwrap();
    assert!(cache.get_stamped(0x40_0000, 1).is_some());
    cache.get_or_decode(0x40_0000, &store).unwrap();
    assert!(cache.get_stamped(0x40_0000, 1).is_none());
}
