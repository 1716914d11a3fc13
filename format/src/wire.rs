//! The version-1 on-disk shapes of everything except Access columns.
//!
//! These mirror the public types in `event`/`meta` but are frozen: the public
//! types may grow, these never change. A future format version adds new
//! `wire` types and keeps these to read old files. Enums are stored as `u8`
//! codes so an unknown code is a reported corruption, not undefined data.

use rkyv::{Archive, Deserialize, Serialize};

use crate::event::{AllocFn, Domain, Event, ExitStatus, GapReason, Regs, SyscallRange, VecRegKind};
use crate::meta::{Header, Module, Policy, Segment, Summary, Symbol};

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WHeader {
    pub recorder_version: String,
    pub uuid: [u8; 16],
    pub command: Vec<String>,
    pub start_time_ns: u64,
    pub page_size: u64,
    pub foreign: Vec<String>,
    pub neutral: Vec<String>,
    pub track_host_init: bool,
    pub guard_foreign: bool,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WSegment {
    pub start: u64,
    pub len: u64,
    pub prot: u32,
    pub file_offset: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WSymbol {
    pub name: String,
    pub addr: u64,
    pub size: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WModule {
    pub pid: u32,
    pub path: String,
    pub build_id: Vec<u8>,
    pub base: u64,
    pub segments: Vec<WSegment>,
    pub domain: u8,
    pub symbols: Vec<WSymbol>,
}

/// `ExitStatus`: `signal` false = exit code.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy)]
pub struct WExit {
    pub signal: bool,
    pub value: i32,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WCounter {
    pub name: String,
    pub value: u64,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WChunkEntry {
    pub offset: u64,
    pub kind: u16,
    pub compressed_len: u32,
    pub raw_len: u32,
    pub first_event: u64,
    pub event_count: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WFooter {
    /// Every chunk after the header, in file order (events and modules).
    pub chunks: Vec<WChunkEntry>,
    pub exit: Option<WExit>,
    pub counters: Vec<WCounter>,
}

#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WRange {
    pub addr: u64,
    pub len: u64,
    pub write: bool,
}

/// An extended register of the `access`-th Access event of a batch.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct WAccessVReg {
    pub access: u32,
    pub kind: u8,
    pub index: u8,
    pub bytes: Vec<u8>,
}

/// Register file as 20 words: gpr[0..16], rip, rflags, fs_base, gs_base.
pub type WRegs = [u64; 20];

/// Every event kind except Access (which is stored in columns).
#[derive(Archive, Serialize, Deserialize, Debug)]
pub enum WEvent {
    Call {
        tid: u32,
        call: u64,
        target: u64,
        module: u32,
        symbol: Option<u32>,
        args: [u64; 6],
        rsp: u64,
        return_addr: u64,
    },
    Return {
        tid: u32,
        call: u64,
        rax: u64,
        rdx: u64,
    },
    Callback {
        tid: u32,
        call: u64,
        target: u64,
        args: [u64; 6],
        rsp: u64,
        return_addr: u64,
    },
    CallbackReturn {
        tid: u32,
        call: u64,
        rax: u64,
    },
    Alloc {
        tid: u32,
        func: u8,
        ptr: u64,
        size: u64,
        old_ptr: u64,
        caller: u64,
        domain: u8,
        zeroed: bool,
    },
    Free {
        tid: u32,
        ptr: u64,
        caller: u64,
        domain: u8,
    },
    Map {
        tid: u32,
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        domain: u8,
    },
    Unmap {
        tid: u32,
        addr: u64,
        len: u64,
    },
    Protect {
        tid: u32,
        addr: u64,
        len: u64,
        prot: u32,
    },
    SyscallAccess {
        tid: u32,
        nr: u64,
        args: [u64; 6],
        ret: i64,
        ranges: Vec<WRange>,
    },
    Signal {
        tid: u32,
        signo: i32,
        code: i32,
        addr: u64,
        regs: WRegs,
        code_bytes: Vec<u8>,
        fatal: bool,
    },
    Gap {
        tid: u32,
        reason: u8,
        detail: u64,
    },
    ThreadStart {
        tid: u32,
        pid: u32,
        parent: u32,
    },
    ThreadExit {
        tid: u32,
        code: i32,
    },
    Fork {
        tid: u32,
        parent_pid: u32,
        child_pid: u32,
    },
    Exec {
        tid: u32,
        pid: u32,
        path: String,
    },
    Exit {
        pid: u32,
        status: WExit,
    },
    HostWrite {
        tid: u32,
        addr: u64,
        len: u64,
    },
    InitUnknown {
        addr: u64,
        len: u64,
    },
}

// ---- enum codes (frozen) ----

#[inline]
pub fn domain_code(d: Domain) -> u8 {
    match d {
        Domain::Host => 0,
        Domain::Foreign => 1,
        Domain::Neutral => 2,
    }
}

pub fn domain_from(c: u8) -> Result<Domain, String> {
    Ok(match c {
        0 => Domain::Host,
        1 => Domain::Foreign,
        2 => Domain::Neutral,
        _ => return Err(format!("unknown domain code {c}")),
    })
}

const ALLOC_FNS: [AllocFn; 11] = [
    AllocFn::Malloc,
    AllocFn::Calloc,
    AllocFn::Realloc,
    AllocFn::Reallocarray,
    AllocFn::PosixMemalign,
    AllocFn::AlignedAlloc,
    AllocFn::Memalign,
    AllocFn::Valloc,
    AllocFn::Pvalloc,
    AllocFn::Mmap,
    AllocFn::Mremap,
];

#[inline]
pub fn alloc_fn_code(f: AllocFn) -> u8 {
    // The index in ALLOC_FNS (checked by a test), without searching it.
    match f {
        AllocFn::Malloc => 0,
        AllocFn::Calloc => 1,
        AllocFn::Realloc => 2,
        AllocFn::Reallocarray => 3,
        AllocFn::PosixMemalign => 4,
        AllocFn::AlignedAlloc => 5,
        AllocFn::Memalign => 6,
        AllocFn::Valloc => 7,
        AllocFn::Pvalloc => 8,
        AllocFn::Mmap => 9,
        AllocFn::Mremap => 10,
    }
}

pub fn alloc_fn_from(c: u8) -> Result<AllocFn, String> {
    ALLOC_FNS.get(usize::from(c)).copied().ok_or_else(|| format!("unknown allocator function code {c}"))
}

const GAP_REASONS: [GapReason; 4] =
    [GapReason::UnknownSyscall, GapReason::Blocked, GapReason::Lost, GapReason::Undecodable];

pub fn gap_code(r: GapReason) -> u8 {
    GAP_REASONS.iter().position(|&x| x == r).map_or(u8::MAX, |i| i as u8)
}

pub fn gap_from(c: u8) -> Result<GapReason, String> {
    GAP_REASONS.get(usize::from(c)).copied().ok_or_else(|| format!("unknown gap reason code {c}"))
}

const VREG_KINDS: [VecRegKind; 4] = [VecRegKind::Xmm, VecRegKind::Ymm, VecRegKind::Zmm, VecRegKind::K];

pub fn vreg_kind_code(k: VecRegKind) -> u8 {
    VREG_KINDS.iter().position(|&x| x == k).map_or(u8::MAX, |i| i as u8)
}

pub fn vreg_kind_from(c: u8) -> Result<VecRegKind, String> {
    VREG_KINDS.get(usize::from(c)).copied().ok_or_else(|| format!("unknown vector register kind code {c}"))
}

pub fn exit_to(e: ExitStatus) -> WExit {
    match e {
        ExitStatus::Code(c) => WExit { signal: false, value: c },
        ExitStatus::Signal(s) => WExit { signal: true, value: s },
    }
}

pub fn exit_from(e: WExit) -> ExitStatus {
    if e.signal {
        ExitStatus::Signal(e.value)
    } else {
        ExitStatus::Code(e.value)
    }
}

pub fn regs_to(r: &Regs) -> WRegs {
    let mut w = [0u64; 20];
    w[..16].copy_from_slice(&r.gpr);
    w[16] = r.rip;
    w[17] = r.rflags;
    w[18] = r.fs_base;
    w[19] = r.gs_base;
    w
}

pub fn regs_from(w: &WRegs) -> Regs {
    let mut gpr = [0u64; 16];
    gpr.copy_from_slice(&w[..16]);
    Regs { gpr, rip: w[16], rflags: w[17], fs_base: w[18], gs_base: w[19] }
}

// ---- meta conversions ----

pub fn header_to(h: &Header) -> WHeader {
    WHeader {
        recorder_version: h.recorder_version.clone(),
        uuid: h.uuid,
        command: h.command.clone(),
        start_time_ns: h.start_time_ns,
        page_size: h.page_size,
        foreign: h.policy.foreign.clone(),
        neutral: h.policy.neutral.clone(),
        track_host_init: h.policy.track_host_init,
        guard_foreign: h.policy.guard_foreign,
    }
}

pub fn header_from(w: WHeader) -> Header {
    Header {
        recorder_version: w.recorder_version,
        uuid: w.uuid,
        command: w.command,
        start_time_ns: w.start_time_ns,
        page_size: w.page_size,
        policy: Policy {
            foreign: w.foreign,
            neutral: w.neutral,
            track_host_init: w.track_host_init,
            guard_foreign: w.guard_foreign,
        },
    }
}

pub fn module_to(m: &Module) -> WModule {
    WModule {
        pid: m.pid,
        path: m.path.clone(),
        build_id: m.build_id.clone(),
        base: m.base,
        segments: m
            .segments
            .iter()
            .map(|s| WSegment { start: s.start, len: s.len, prot: s.prot, file_offset: s.file_offset })
            .collect(),
        domain: domain_code(m.domain),
        symbols: m.symbols.iter().map(|s| WSymbol { name: s.name.clone(), addr: s.addr, size: s.size }).collect(),
    }
}

pub fn module_from(w: WModule) -> Result<Module, String> {
    Ok(Module {
        pid: w.pid,
        path: w.path,
        build_id: w.build_id,
        base: w.base,
        segments: w
            .segments
            .into_iter()
            .map(|s| Segment { start: s.start, len: s.len, prot: s.prot, file_offset: s.file_offset })
            .collect(),
        domain: domain_from(w.domain)?,
        symbols: w.symbols.into_iter().map(|s| Symbol { name: s.name, addr: s.addr, size: s.size }).collect(),
    })
}

pub fn summary_from(exit: Option<WExit>, counters: Vec<WCounter>) -> Summary {
    Summary { exit: exit.map(exit_from), counters: counters.into_iter().map(|c| (c.name, c.value)).collect() }
}

// ---- event conversions (everything but Access) ----

/// `None` for Access, which the batch stores in columns.
pub fn event_to(e: &Event) -> Option<WEvent> {
    Some(match e {
        Event::Access { .. } => return None,
        &Event::Call { tid, call, target, module, symbol, args, rsp, return_addr } => {
            WEvent::Call { tid, call, target, module, symbol, args, rsp, return_addr }
        }
        &Event::Return { tid, call, rax, rdx } => WEvent::Return { tid, call, rax, rdx },
        &Event::Callback { tid, call, target, args, rsp, return_addr } => {
            WEvent::Callback { tid, call, target, args, rsp, return_addr }
        }
        &Event::CallbackReturn { tid, call, rax } => WEvent::CallbackReturn { tid, call, rax },
        &Event::Alloc { tid, func, ptr, size, old_ptr, caller, domain, zeroed } => WEvent::Alloc {
            tid,
            func: alloc_fn_code(func),
            ptr,
            size,
            old_ptr,
            caller,
            domain: domain_code(domain),
            zeroed,
        },
        &Event::Free { tid, ptr, caller, domain } => WEvent::Free { tid, ptr, caller, domain: domain_code(domain) },
        &Event::Map { tid, addr, len, prot, flags, domain } => {
            WEvent::Map { tid, addr, len, prot, flags, domain: domain_code(domain) }
        }
        &Event::Unmap { tid, addr, len } => WEvent::Unmap { tid, addr, len },
        &Event::Protect { tid, addr, len, prot } => WEvent::Protect { tid, addr, len, prot },
        Event::SyscallAccess { tid, nr, args, ret, ranges } => WEvent::SyscallAccess {
            tid: *tid,
            nr: *nr,
            args: *args,
            ret: *ret,
            ranges: ranges.iter().map(|r| WRange { addr: r.addr, len: r.len, write: r.write }).collect(),
        },
        Event::Signal { tid, signo, code, addr, regs, code_bytes, fatal } => WEvent::Signal {
            tid: *tid,
            signo: *signo,
            code: *code,
            addr: *addr,
            regs: regs_to(regs),
            code_bytes: code_bytes.clone(),
            fatal: *fatal,
        },
        &Event::Gap { tid, reason, detail } => WEvent::Gap { tid, reason: gap_code(reason), detail },
        &Event::ThreadStart { tid, pid, parent } => WEvent::ThreadStart { tid, pid, parent },
        &Event::ThreadExit { tid, code } => WEvent::ThreadExit { tid, code },
        &Event::Fork { tid, parent_pid, child_pid } => WEvent::Fork { tid, parent_pid, child_pid },
        Event::Exec { tid, pid, path } => WEvent::Exec { tid: *tid, pid: *pid, path: path.clone() },
        &Event::Exit { pid, status } => WEvent::Exit { pid, status: exit_to(status) },
        &Event::HostWrite { tid, addr, len } => WEvent::HostWrite { tid, addr, len },
        &Event::InitUnknown { addr, len } => WEvent::InitUnknown { addr, len },
    })
}

pub fn event_from(w: WEvent) -> Result<Event, String> {
    Ok(match w {
        WEvent::Call { tid, call, target, module, symbol, args, rsp, return_addr } => {
            Event::Call { tid, call, target, module, symbol, args, rsp, return_addr }
        }
        WEvent::Return { tid, call, rax, rdx } => Event::Return { tid, call, rax, rdx },
        WEvent::Callback { tid, call, target, args, rsp, return_addr } => {
            Event::Callback { tid, call, target, args, rsp, return_addr }
        }
        WEvent::CallbackReturn { tid, call, rax } => Event::CallbackReturn { tid, call, rax },
        WEvent::Alloc { tid, func, ptr, size, old_ptr, caller, domain, zeroed } => Event::Alloc {
            tid,
            func: alloc_fn_from(func)?,
            ptr,
            size,
            old_ptr,
            caller,
            domain: domain_from(domain)?,
            zeroed,
        },
        WEvent::Free { tid, ptr, caller, domain } => Event::Free { tid, ptr, caller, domain: domain_from(domain)? },
        WEvent::Map { tid, addr, len, prot, flags, domain } => {
            Event::Map { tid, addr, len, prot, flags, domain: domain_from(domain)? }
        }
        WEvent::Unmap { tid, addr, len } => Event::Unmap { tid, addr, len },
        WEvent::Protect { tid, addr, len, prot } => Event::Protect { tid, addr, len, prot },
        WEvent::SyscallAccess { tid, nr, args, ret, ranges } => Event::SyscallAccess {
            tid,
            nr,
            args,
            ret,
            ranges: ranges.into_iter().map(|r| SyscallRange { addr: r.addr, len: r.len, write: r.write }).collect(),
        },
        WEvent::Signal { tid, signo, code, addr, regs, code_bytes, fatal } => {
            Event::Signal { tid, signo, code, addr, regs: regs_from(&regs), code_bytes, fatal }
        }
        WEvent::Gap { tid, reason, detail } => Event::Gap { tid, reason: gap_from(reason)?, detail },
        WEvent::ThreadStart { tid, pid, parent } => Event::ThreadStart { tid, pid, parent },
        WEvent::ThreadExit { tid, code } => Event::ThreadExit { tid, code },
        WEvent::Fork { tid, parent_pid, child_pid } => Event::Fork { tid, parent_pid, child_pid },
        WEvent::Exec { tid, pid, path } => Event::Exec { tid, pid, path },
        WEvent::Exit { pid, status } => Event::Exit { pid, status: exit_from(status) },
        WEvent::HostWrite { tid, addr, len } => Event::HostWrite { tid, addr, len },
        WEvent::InitUnknown { addr, len } => Event::InitUnknown { addr, len },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn alloc_fn_codes_are_indices_into_the_frozen_table() {
        for (i, &f) in ALLOC_FNS.iter().enumerate() {
            assert_eq!(usize::from(alloc_fn_code(f)), i);
            assert_eq!(alloc_fn_from(i as u8), Ok(f));
        }
    }
}
