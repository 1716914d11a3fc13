//! proptest strategies for every event kind, modules, headers and summaries.
#![allow(dead_code)]

use ffirec_format::*;
use proptest::collection::vec;
use proptest::prelude::*;

pub fn tid() -> impl Strategy<Value = Tid> {
    // A few threads, so per-thread prediction state interleaves.
    prop_oneof![Just(1000u32), Just(1001), Just(1002), Just(u32::MAX), any::<u32>()]
}

pub fn domain() -> impl Strategy<Value = Domain> {
    prop_oneof![Just(Domain::Host), Just(Domain::Foreign), Just(Domain::Neutral)]
}

pub fn addr() -> impl Strategy<Value = u64> {
    prop_oneof![any::<u64>(), 0x7f00_0000_0000u64..0x7f00_0000_1000, Just(0), Just(u64::MAX)]
}

pub fn regs() -> BoxedStrategy<Regs> {
    (proptest::array::uniform16(addr()), addr(), any::<u64>(), any::<u64>(), any::<u64>())
        .prop_map(|(gpr, rip, rflags, fs_base, gs_base)| Regs { gpr, rip, rflags, fs_base, gs_base })
        .boxed()
}

pub fn vreg() -> impl Strategy<Value = VecReg> {
    (
        prop_oneof![Just(VecRegKind::Xmm), Just(VecRegKind::Ymm), Just(VecRegKind::Zmm), Just(VecRegKind::K)],
        0u8..32,
        vec(any::<u8>(), 0..64),
    )
        .prop_map(|(kind, index, bytes)| VecReg { kind, index, bytes })
}

pub fn exit_status() -> impl Strategy<Value = ExitStatus> {
    prop_oneof![any::<i32>().prop_map(ExitStatus::Code), any::<i32>().prop_map(ExitStatus::Signal)]
}

pub fn alloc_fn() -> impl Strategy<Value = AllocFn> {
    prop_oneof![
        Just(AllocFn::Malloc),
        Just(AllocFn::Calloc),
        Just(AllocFn::Realloc),
        Just(AllocFn::Reallocarray),
        Just(AllocFn::PosixMemalign),
        Just(AllocFn::AlignedAlloc),
        Just(AllocFn::Memalign),
        Just(AllocFn::Valloc),
        Just(AllocFn::Pvalloc),
        Just(AllocFn::Mmap),
        Just(AllocFn::Mremap),
    ]
}

pub fn gap_reason() -> impl Strategy<Value = GapReason> {
    prop_oneof![
        Just(GapReason::UnknownSyscall),
        Just(GapReason::Blocked),
        Just(GapReason::Lost),
        Just(GapReason::Undecodable)
    ]
}

/// Instruction bytes from a small pool (so the per-batch table deduplicates)
/// or arbitrary.
pub fn code() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![Just(vec![0x48, 0x8b, 0x04, 0xce]), Just(vec![0x48, 0x89, 0x14, 0xcf]), vec(any::<u8>(), 0..16),]
}

pub fn access() -> impl Strategy<Value = Event> {
    (tid(), code(), regs(), addr(), vec(any::<u8>(), 0..65), prop_oneof![4 => Just(vec![]), 1 => vec(vreg(), 0..3)])
        .prop_map(|(tid, code, regs, fault_addr, data, vregs)| Event::Access {
            tid,
            code,
            regs,
            fault_addr,
            data,
            vregs,
        })
}

pub fn other_event() -> BoxedStrategy<Event> {
    let args = proptest::array::uniform6(any::<u64>());
    proptest::strategy::Union::new(vec![
        (tid(), any::<u64>(), addr(), any::<u32>(), proptest::option::of(any::<u32>()), args, addr(), addr())
            .prop_map(|(tid, call, target, module, symbol, args, rsp, return_addr)| Event::Call {
                tid,
                call,
                target,
                module,
                symbol,
                args,
                rsp,
                return_addr,
            })
            .boxed(),
        (tid(), any::<u64>(), any::<u64>(), any::<u64>())
            .prop_map(|(tid, call, rax, rdx)| Event::Return { tid, call, rax, rdx })
            .boxed(),
        (tid(), any::<u64>(), addr(), args, addr(), addr())
            .prop_map(|(tid, call, target, args, rsp, return_addr)| Event::Callback {
                tid,
                call,
                target,
                args,
                rsp,
                return_addr,
            })
            .boxed(),
        (tid(), any::<u64>(), any::<u64>())
            .prop_map(|(tid, call, rax)| Event::CallbackReturn { tid, call, rax })
            .boxed(),
        (tid(), alloc_fn(), addr(), any::<u64>(), addr(), addr(), domain(), any::<bool>())
            .prop_map(|(tid, func, ptr, size, old_ptr, caller, domain, zeroed)| Event::Alloc {
                tid,
                func,
                ptr,
                size,
                old_ptr,
                caller,
                domain,
                zeroed,
            })
            .boxed(),
        (tid(), addr(), addr(), domain())
            .prop_map(|(tid, ptr, caller, domain)| Event::Free { tid, ptr, caller, domain })
            .boxed(),
        (tid(), addr(), any::<u64>(), any::<u32>(), any::<u32>(), domain())
            .prop_map(|(tid, addr, len, prot, flags, domain)| Event::Map { tid, addr, len, prot, flags, domain })
            .boxed(),
        (tid(), addr(), any::<u64>()).prop_map(|(tid, addr, len)| Event::Unmap { tid, addr, len }).boxed(),
        (tid(), addr(), any::<u64>(), any::<u32>())
            .prop_map(|(tid, addr, len, prot)| Event::Protect { tid, addr, len, prot })
            .boxed(),
        (
            tid(),
            any::<u64>(),
            args,
            any::<i64>(),
            vec(
                (addr(), any::<u64>(), any::<bool>()).prop_map(|(addr, len, write)| SyscallRange { addr, len, write }),
                0..4,
            ),
        )
            .prop_map(|(tid, nr, args, ret, ranges)| Event::SyscallAccess { tid, nr, args, ret, ranges })
            .boxed(),
        (tid(), any::<i32>(), any::<i32>(), addr(), regs(), vec(any::<u8>(), 0..16), any::<bool>())
            .prop_map(|(tid, signo, code, addr, regs, code_bytes, fatal)| Event::Signal {
                tid,
                signo,
                code,
                addr,
                regs,
                code_bytes,
                fatal,
            })
            .boxed(),
        (tid(), gap_reason(), any::<u64>())
            .prop_map(|(tid, reason, detail)| Event::Gap { tid, reason, detail })
            .boxed(),
        (tid(), any::<u32>(), tid()).prop_map(|(tid, pid, parent)| Event::ThreadStart { tid, pid, parent }).boxed(),
        (tid(), any::<i32>()).prop_map(|(tid, code)| Event::ThreadExit { tid, code }).boxed(),
        (tid(), any::<u32>(), any::<u32>())
            .prop_map(|(tid, parent_pid, child_pid)| Event::Fork { tid, parent_pid, child_pid })
            .boxed(),
        (tid(), any::<u32>(), ".{0,40}").prop_map(|(tid, pid, path)| Event::Exec { tid, pid, path }).boxed(),
        (any::<u32>(), exit_status()).prop_map(|(pid, status)| Event::Exit { pid, status }).boxed(),
        (tid(), addr(), any::<u64>()).prop_map(|(tid, addr, len)| Event::HostWrite { tid, addr, len }).boxed(),
        (addr(), any::<u64>()).prop_map(|(addr, len)| Event::InitUnknown { addr, len }).boxed(),
    ])
    .boxed()
}

/// Mostly accesses (as in real traces), every other kind mixed in.
pub fn event() -> BoxedStrategy<Event> {
    prop_oneof![3 => access().boxed(), 2 => other_event()].boxed()
}

pub fn module() -> impl Strategy<Value = Module> {
    (
        any::<u32>(),
        ".{0,60}",
        vec(any::<u8>(), 0..20),
        addr(),
        vec(
            (addr(), any::<u64>(), any::<u32>(), any::<u64>()).prop_map(|(start, len, prot, file_offset)| Segment {
                start,
                len,
                prot,
                file_offset,
            }),
            0..4,
        ),
        domain(),
        vec((".{0,30}", any::<u64>(), any::<u64>()).prop_map(|(name, addr, size)| Symbol { name, addr, size }), 0..8),
    )
        .prop_map(|(pid, path, build_id, base, segments, domain, symbols)| Module {
            pid,
            path,
            build_id,
            base,
            segments,
            domain,
            symbols,
        })
}

pub fn header() -> impl Strategy<Value = Header> {
    (
        ".{0,12}",
        any::<[u8; 16]>(),
        vec(".{0,20}", 0..5),
        any::<u64>(),
        any::<u64>(),
        vec(".{0,20}", 0..3),
        vec(".{0,20}", 0..3),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(
                recorder_version,
                uuid,
                command,
                start_time_ns,
                page_size,
                foreign,
                neutral,
                track_host_init,
                guard_foreign,
            )| {
                Header {
                    recorder_version,
                    uuid,
                    command,
                    start_time_ns,
                    page_size,
                    policy: Policy { foreign, neutral, track_host_init, guard_foreign },
                }
            },
        )
}

pub fn summary() -> impl Strategy<Value = Summary> {
    (proptest::option::of(exit_status()), vec(("[a-z_]{1,12}", any::<u64>()), 0..5))
        .prop_map(|(exit, counters)| Summary { exit, counters })
}
