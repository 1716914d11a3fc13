//! Exact findings on synthetic traces.
#![allow(clippy::unwrap_used)]

mod support;

use ffirec_analyzer::{Kind, Relation};
use ffirec_format::{Domain, Event, Regs, SyscallRange};
use support::*;

const HEAP: u64 = 0x5555_5555_a000;

#[test]
fn uninit_read_of_foreign_malloc_is_exactly_bytes_16_to_32() {
    let p = write(
        "uninit",
        false,
        vec![
            call(0, [0; 6]),
            alloc(HEAP, 64, Domain::Foreign),
            access(LIB_FOO + 0x10, STORE16, HEAP, &[]),
            access(LIB_FOO + 0x20, LOAD32, HEAP, &[0; 32]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    let f: Vec<_> = r.findings.iter().filter(|f| f.kind != Kind::ForeignLeak).collect();
    assert_eq!(f.len(), 1, "{:#?}", r.findings);
    let f = f[0];
    assert_eq!((f.kind, f.addr.as_str(), f.size), (Kind::Uninit, "0x55555555a010", 16));
    let a = f.allocation.as_ref().unwrap();
    assert_eq!((a.id, a.relation, a.distance, a.size), (0, Relation::Inside, 16, 64));
    assert_eq!(f.at.symbol.as_deref(), Some("foo"));
    assert_eq!(f.at.offset, Some(0x20));
    assert_eq!(f.call.as_ref().unwrap().call, 0);
    assert_eq!(f.call.as_ref().unwrap().symbol, "foo");
    assert_eq!(f.call.as_ref().unwrap().call_site.short(), "main+0x50");
    assert_eq!(a.label, "alloc#0 (malloc 64 at foo+0x8)");
    // Never freed: also a foreign leak.
    assert_eq!(r.summary.by_kind["foreign_leak"], 1);
    // The footprint.
    let t = &r.calls[0].touched;
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].alloc, t[0].read.clone(), t[0].written.clone()), (Some(0), vec![[0, 32]], vec![[0, 16]]));
}

#[test]
fn off_by_one_after_malloc_10_is_out_of_bounds_0_past_the_end() {
    let p = write(
        "oob",
        true,
        vec![
            alloc(HEAP, 10, Domain::Host),
            Event::HostWrite { tid: TID, addr: HEAP, len: 10 },
            call(0, [HEAP, 10, 0, 0, 0, 0]),
            access(LIB_FOO + 0x30, LOAD1, HEAP + 9, &[1]),
            access(LIB_FOO + 0x30, LOAD1, HEAP + 10, &[0]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 2);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    let f = &r.findings[0];
    assert_eq!((f.kind, f.addr.as_str(), f.size, f.count), (Kind::OutOfBounds, "0x55555555a00a", 1, 1));
    let a = f.allocation.as_ref().unwrap();
    assert_eq!((a.id, a.relation, a.distance), (0, Relation::After, 0));
    assert_eq!(r.calls[0].touched[0].read, vec![[9, 11]]);
    assert_eq!(r.calls[0].touched[0].args, vec![0]);
}

#[test]
fn read_after_free_is_use_after_free() {
    let p = write(
        "uaf",
        true,
        vec![
            alloc(HEAP, 32, Domain::Host),
            Event::HostWrite { tid: TID, addr: HEAP, len: 32 },
            free(HEAP),
            call(0, [HEAP, 0, 0, 0, 0, 0]),
            access(LIB_FOO + 0x40, LOAD8, HEAP + 8, &[0; 8]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    let f = &r.findings[0];
    assert_eq!((f.kind, f.addr.as_str(), f.size), (Kind::UseAfterFree, "0x55555555a008", 8));
    let a = f.allocation.as_ref().unwrap();
    assert_eq!((a.id, a.relation, a.distance), (0, Relation::Freed, 8));
    assert_eq!(r.allocations[0].freed_event, Some(2));
}

#[test]
fn pointer_loaded_from_host_memory_is_exposed() {
    let node_a = HEAP;
    let node_b = HEAP + 0x100;
    let p = write(
        "exposed",
        true,
        vec![
            alloc(node_a, 16, Domain::Host),
            alloc(node_b, 16, Domain::Host),
            Event::HostWrite { tid: TID, addr: node_a, len: 16 },
            Event::HostWrite { tid: TID, addr: node_b, len: 16 },
            call(0, [node_a, 0, 0, 0, 0, 0]),
            // node_a->next (at offset 8) == node_b
            access(LIB_FOO + 0x50, LOAD8, node_a + 8, &node_b.to_le_bytes()),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    let f = &r.findings[0];
    assert_eq!((f.kind, f.addr.as_str()), (Kind::ExposedPointer, "0x55555555a008"));
    let a = f.allocation.as_ref().unwrap();
    assert_eq!((a.id, a.distance), (1, 0));
    let ex = &r.calls[0].exposed;
    assert_eq!(ex.len(), 2);
    assert_eq!((ex[0].alloc, ex[0].via.as_str(), ex[0].arg), (0, "argument", Some(0)));
    assert_eq!((ex[1].alloc, ex[1].via.as_str(), ex[1].from_alloc), (1, "load", Some(0)));
}

#[test]
fn clean_call_has_no_findings() {
    let p = write(
        "clean",
        true,
        vec![
            alloc(HEAP, 64, Domain::Host),
            Event::HostWrite { tid: TID, addr: HEAP, len: 64 },
            call(0, [HEAP, 64, 0, 0, 0, 0]),
            access(LIB_FOO + 0x10, LOAD32, HEAP, &[0; 32]),
            access(LIB_FOO + 0x10, LOAD32, HEAP + 32, &[0; 32]),
            access(LIB_FOO + 0x18, STORE8, HEAP + 8, &[]),
            ret(0),
            free(HEAP),
        ],
        1000,
    );
    let r = run(&p, 2);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!(r.summary.findings, 0);
    assert_eq!(r.summary.accesses, 3);
    assert_eq!((r.summary.bytes_read, r.summary.bytes_written), (64, 8));
    assert_eq!(r.calls[0].touched[0].read, vec![[0, 64]]);
    assert_eq!(r.calls[0].touched[0].written, vec![[8, 16]]);
}

#[test]
fn host_memory_before_the_call_is_unknown_without_host_tracking() {
    let p = write(
        "unknown",
        false,
        vec![
            alloc(HEAP, 64, Domain::Host),
            call(0, [HEAP, 0, 0, 0, 0, 0]),
            access(LIB_FOO + 0x10, LOAD32, HEAP, &[0; 32]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!(r.summary.unknown_bytes, 32);
}

#[test]
fn init_unknown_silences_and_host_write_initialises() {
    let p = write(
        "initunknown",
        true,
        vec![
            alloc(HEAP, 64, Domain::Host),
            Event::HostWrite { tid: TID, addr: HEAP, len: 8 },
            Event::InitUnknown { addr: HEAP + 8, len: 8 },
            call(0, [HEAP, 0, 0, 0, 0, 0]),
            access(LIB_FOO + 0x10, LOAD32, HEAP, &[0; 32]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!(
        (r.findings[0].kind, r.findings[0].addr.as_str(), r.findings[0].size),
        (Kind::Uninit, "0x55555555a010", 16)
    );
    assert_eq!(r.summary.unknown_bytes, 8);
}

#[test]
fn vectorised_strlen_overread_is_not_a_finding() {
    let p = write(
        "strlen",
        true,
        vec![
            alloc(HEAP, 6, Domain::Host),
            Event::HostWrite { tid: TID, addr: HEAP, len: 6 },
            call(0, [HEAP, 0, 0, 0, 0, 0]),
            access(LIBC_STRLEN + 0x10, LOAD32, HEAP, &[0; 32]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!(r.summary.overreads, 1);
}

#[test]
fn write_to_host_rodata_and_globals() {
    let p = write(
        "rodata",
        true,
        vec![
            alloc(HEAP, 8, Domain::Host),
            call(0, [0; 6]),
            access(LIB_FOO + 0x60, STORE8, PROG_RODATA + 0x10, &[]),
            access(LIB_FOO + 0x60, STORE8, PROG_DATA + 0x10, &[]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    assert_eq!((r.findings[0].kind, r.findings[0].addr.as_str()), (Kind::ReadOnlyWrite, "0x500010"));
    let t = &r.calls[0].touched;
    assert_eq!(t.len(), 1);
    assert_eq!((t[0].target.as_str(), t[0].module.as_deref()), ("module", Some("prog")));
    assert_eq!(t[0].written, vec![[PROG_RODATA + 0x10, PROG_RODATA + 0x18], [PROG_DATA + 0x10, PROG_DATA + 0x18]]);
}

#[test]
fn syscall_kernel_write_initialises_and_crash_is_reported() {
    let mut regs = Regs { rip: LIB_FOO + 0x70, ..Regs::default() };
    regs.gpr[Regs::RDI] = 0;
    let p = write(
        "syscall",
        true,
        vec![
            call(0, [0; 6]),
            alloc(HEAP, 32, Domain::Foreign),
            Event::SyscallAccess {
                tid: TID,
                nr: 0,
                args: [3, HEAP, 32, 0, 0, 0],
                ret: 16,
                ranges: vec![SyscallRange { addr: HEAP, len: 16, write: true }],
            },
            access(LIB_FOO + 0x10, LOAD16, HEAP, &[0; 16]),
            Event::Free { tid: TID, ptr: HEAP, caller: LIB_FOO + 0x80, domain: Domain::Foreign },
            Event::Signal { tid: TID, signo: 11, code: 1, addr: 0, regs, code_bytes: vec![], fatal: true },
        ],
        1000,
    );
    let r = run(&p, 1);
    assert_eq!(r.findings.len(), 1, "{:#?}", r.findings);
    let f = &r.findings[0];
    assert_eq!(f.kind, Kind::Crash);
    assert_eq!(f.at.short(), "foo+0x70");
    assert_eq!(f.call.as_ref().map(|c| c.call), Some(0));
    assert_eq!(r.calls[0].touched[0].written, vec![[0, 16]]);
}

#[test]
fn suppressions_silence_matching_findings() {
    let p = write(
        "suppress",
        false,
        vec![
            call(0, [0; 6]),
            alloc(HEAP, 64, Domain::Foreign),
            access(LIB_FOO + 0x20, LOAD32, HEAP, &[0; 32]),
            Event::Free { tid: TID, ptr: HEAP, caller: LIB_FOO, domain: Domain::Foreign },
            ret(0),
        ],
        1000,
    );
    let trace = ffirec_format::Trace::open(&p).unwrap();
    let mut opts = ffirec_analyzer::Options { threads: Some(1), ..Default::default() };
    assert_eq!(ffirec_analyzer::analyze(&trace, &opts).unwrap().summary.findings, 1);
    opts.suppressions = ffirec_analyzer::Suppressions::parse("kind=uninit symbol=fo* module=libfoo*\n").unwrap();
    let r = ffirec_analyzer::analyze(&trace, &opts).unwrap();
    assert_eq!((r.summary.findings, r.summary.suppressed), (0, 1));
    opts.suppressions = ffirec_analyzer::Suppressions::parse("kind=uninit module=libz*\n").unwrap();
    assert_eq!(ffirec_analyzer::analyze(&trace, &opts).unwrap().summary.findings, 1);
}

fn realloc_event(ptr: u64, size: u64, old_ptr: u64, func: ffirec_format::AllocFn, zeroed: bool) -> Event {
    Event::Alloc { tid: TID, func, ptr, size, old_ptr, caller: LIB_FOO + 0x8, domain: Domain::Foreign, zeroed }
}

/// Uninitialised-read findings as (offset in allocation `id`, size).
fn uninit_ranges(r: &ffirec_analyzer::Report, id: u32) -> Vec<(u64, u64)> {
    let mut v: Vec<(u64, u64)> = r
        .findings
        .iter()
        .filter(|f| f.kind == Kind::Uninit)
        .filter_map(|f| f.allocation.as_ref().filter(|a| a.id == id).map(|a| (a.distance, f.size)))
        .collect();
    v.sort_unstable();
    v
}

#[test]
fn realloc_carries_each_copied_bytes_state_and_only_the_tail_is_new() {
    use ffirec_format::AllocFn::Realloc;
    // The new block straddles a page boundary 16 bytes in, so its bytes and
    // the old block's live on three different shards.
    let new = HEAP + 0x2ff0;
    let p = write(
        "realloc",
        true,
        vec![
            call(0, [0; 6]),
            alloc(HEAP, 40, Domain::Foreign),
            access(LIB_FOO + 0x10, STORE8, HEAP, &[]),
            access(LIB_FOO + 0x18, STORE1, HEAP + 20, &[]),
            alloc(HEAP + 0x100, 8, Domain::Foreign),
            Event::InitUnknown { addr: HEAP + 30, len: 4 },
            realloc_event(new, 64, HEAP, Realloc, false),
            // The old block's shard has more to do after the realloc: it
            // must still apply every op before it (the InitUnknown) first.
            access(LIB_FOO + 0x18, STORE8, HEAP + 0x100, &[]),
            access(LIB_FOO + 0x20, LOAD32, new, &[0; 32]),
            access(LIB_FOO + 0x28, LOAD32, new + 32, &[0; 32]),
            Event::Free { tid: TID, ptr: new, caller: LIB_FOO, domain: Domain::Foreign },
            Event::Free { tid: TID, ptr: HEAP + 0x100, caller: LIB_FOO, domain: Domain::Foreign },
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 2);
    // Written before the move: [0,8) and 20; unknown: [30,34); never
    // written: [8,20), [21,30), [34,40); the grown tail [40,64).
    assert_eq!(uninit_ranges(&r, 2), vec![(8, 12), (21, 9), (34, 30)], "{:#?}", r.findings);
    assert_eq!(r.findings.len(), 3);
    assert_eq!(r.summary.unknown_bytes, 4);
    assert!(run(&p, 1).to_json() == r.to_json() && run(&p, 3).to_json() == r.to_json());
}

#[test]
fn realloc_in_place_shrinking_and_mremap_keep_the_old_state() {
    use ffirec_format::AllocFn::{Mmap, Mremap, Realloc};
    let map = HEAP + 0x10_0000;
    let p = write(
        "realloc_more",
        true,
        vec![
            call(0, [0; 6]),
            // Grown in place: the written first 8 bytes stay written.
            alloc(HEAP, 16, Domain::Foreign),
            access(LIB_FOO + 0x10, STORE8, HEAP, &[]),
            realloc_event(HEAP, 32, HEAP, Realloc, false),
            access(LIB_FOO + 0x20, LOAD32, HEAP, &[0; 32]),
            // Shrunk and moved: byte 0 written, the rest of the 8 kept never written.
            alloc(HEAP + 0x1000, 64, Domain::Foreign),
            access(LIB_FOO + 0x18, STORE1, HEAP + 0x1000, &[]),
            realloc_event(HEAP + 0x5000, 8, HEAP + 0x1000, Realloc, false),
            access(LIB_FOO + 0x10, LOAD8, HEAP + 0x5000, &[0; 8]),
            // A zero-filled mapping moved and grown by mremap (which the
            // recorder reports as not zeroed): the old pages stay initialised,
            // the kernel zero-fills the grown tail. Reads across the old end
            // and at the new end.
            realloc_event(map, 0x2000, 0, Mmap, true),
            realloc_event(map + 0x10_0000, 0x4000, map, Mremap, false),
            access(LIB_FOO + 0x20, LOAD32, map + 0x10_0000 + 0x1ff0, &[0; 32]),
            access(LIB_FOO + 0x20, LOAD32, map + 0x10_0000 + 0x3fe0, &[0; 32]),
            Event::Free { tid: TID, ptr: HEAP, caller: LIB_FOO, domain: Domain::Foreign },
            Event::Free { tid: TID, ptr: HEAP + 0x5000, caller: LIB_FOO, domain: Domain::Foreign },
            Event::Unmap { tid: TID, addr: map + 0x10_0000, len: 0x4000 },
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 2);
    assert_eq!(uninit_ranges(&r, 1), vec![(8, 24)], "{:#?}", r.findings);
    assert_eq!(uninit_ranges(&r, 3), vec![(1, 7)], "{:#?}", r.findings);
    assert_eq!(r.findings.len(), 2, "{:#?}", r.findings);
    assert_eq!(r.summary.unknown_bytes, 0);
    assert!(run(&p, 1).to_json() == r.to_json());
}

#[test]
fn mapped_regions_classify_heap_stack_and_readonly() {
    let anon = 0x7e00_0000_0000u64;
    let stack = 0x7e10_0000_0000u64;
    let ro = 0x7e20_0000_0000u64;
    let p = write(
        "regions",
        true,
        vec![
            Event::Map { tid: TID, addr: anon, len: 0x10000, prot: 3, flags: 0x22, domain: Domain::Host },
            Event::Map { tid: TID, addr: stack, len: 0x10000, prot: 3, flags: 0x20122, domain: Domain::Host },
            Event::Map { tid: TID, addr: ro, len: 0x1000, prot: 3, flags: 0x22, domain: Domain::Host },
            Event::Protect { tid: TID, addr: ro, len: 0x1000, prot: 1 },
            alloc(anon + 0x100, 32, Domain::Host),
            call(0, [0; 6]),
            // Far from the allocation but in a host anonymous mapping: heap.
            access(LIB_FOO + 0x10, LOAD8, anon + 0x8000, &[0; 8]),
            // A thread stack: not heap.
            access(LIB_FOO + 0x18, LOAD8, stack + 0x100, &[0; 8]),
            access(LIB_FOO + 0x20, STORE8, ro + 0x10, &[]),
            // Unmapped and far from everything: unclassified.
            access(LIB_FOO + 0x28, LOAD8, 0x1234_0000_0000, &[0; 8]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    let got: Vec<_> = r.findings.iter().map(|f| (f.kind, f.addr.as_str())).collect();
    assert_eq!(got, vec![(Kind::OutOfBounds, "0x7e0000008000"), (Kind::ReadOnlyWrite, "0x7e2000000010")]);
    let oob = &r.findings[0];
    assert_eq!(
        oob.allocation.as_ref().map(|a| (a.id, a.relation, a.distance)),
        Some((0, Relation::After, 0x8000 - 0x120))
    );
    assert_eq!(r.summary.unclassified_accesses, 1);
}

#[test]
fn host_block_born_in_callback_is_unknown_after_it_returns() {
    let p = write(
        "callback",
        false,
        vec![
            call(0, [0; 6]),
            Event::Callback {
                tid: TID,
                call: 0,
                target: PROG_TEXT + 0x180,
                args: [0; 6],
                rsp: 0,
                return_addr: LIB_FOO + 0x40,
            },
            alloc(HEAP, 32, Domain::Host),
            Event::CallbackReturn { tid: TID, call: 0, rax: HEAP },
            access(LIB_FOO + 0x44, LOAD16, HEAP, &[0; 16]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!((r.summary.unknown_bytes, r.summary.callbacks), (16, 1));
}

#[test]
fn accesses_belong_to_their_threads_call() {
    let other = 200;
    let mut a2 = access(LIB_FOO + 0x10, STORE8, HEAP + 8, &[]);
    if let Event::Access { tid, .. } = &mut a2 {
        *tid = other;
    }
    let p = write(
        "threads",
        true,
        vec![
            alloc(HEAP, 16, Domain::Host),
            call(0, [HEAP, 0, 0, 0, 0, 0]),
            Event::Call {
                tid: other,
                call: 1,
                target: LIB_FOO,
                module: 1,
                symbol: Some(0),
                args: [0; 6],
                rsp: 0,
                return_addr: PROG_TEXT + 0x160,
            },
            access(LIB_FOO + 0x10, STORE8, HEAP, &[]),
            a2,
            Event::Return { tid: other, call: 1, rax: 0, rdx: 0 },
            ret(0),
        ],
        2,
    );
    let r = run(&p, 2);
    assert_eq!(r.calls[0].touched[0].written, vec![[0, 8]]);
    assert_eq!(r.calls[1].touched[0].written, vec![[8, 16]]);
    assert_eq!((r.calls[0].tid, r.calls[1].tid), (TID, other));
}

#[test]
fn gap_makes_earlier_blocks_unknown() {
    let p = write(
        "gap",
        false,
        vec![
            call(0, [0; 6]),
            alloc(HEAP, 32, Domain::Foreign),
            Event::Gap { tid: TID, reason: ffirec_format::GapReason::UnknownSyscall, detail: 0 },
            access(LIB_FOO + 0x10, LOAD16, HEAP, &[0; 16]),
            Event::Free { tid: TID, ptr: HEAP, caller: LIB_FOO, domain: Domain::Foreign },
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert!(r.findings.is_empty(), "{:#?}", r.findings);
    assert_eq!((r.summary.unknown_bytes, r.summary.gaps), (16, 1));
}

#[test]
fn foreign_block_returned_to_the_host_is_unknown_later_kept_one_stays_exact() {
    let kept = HEAP;
    let returned = HEAP + 0x1000;
    let p = write(
        "escape",
        false,
        vec![
            call(0, [0; 6]),
            alloc(kept, 32, Domain::Foreign),
            alloc(returned, 32, Domain::Foreign),
            Event::Return { tid: TID, call: 0, rax: returned, rdx: 0 },
            call(1, [0; 6]),
            access(LIB_FOO + 0x10, LOAD16, kept, &[0; 16]),
            access(LIB_FOO + 0x10, LOAD16, returned, &[0; 16]),
            Event::Free { tid: TID, ptr: kept, caller: LIB_FOO, domain: Domain::Foreign },
            Event::Free { tid: TID, ptr: returned, caller: LIB_FOO, domain: Domain::Foreign },
            ret(1),
        ],
        1000,
    );
    let r = run(&p, 1);
    let got: Vec<_> = r.findings.iter().map(|f| (f.kind, f.addr.as_str(), f.size)).collect();
    assert_eq!(got, vec![(Kind::Uninit, "0x55555555a000", 16)]);
    assert_eq!(r.summary.unknown_bytes, 16);
}

#[test]
fn text_prints_a_repeated_context_once() {
    let p = write(
        "contexts",
        false,
        vec![
            call(0, [0; 6]),
            alloc(HEAP, 32, Domain::Foreign),
            access(LIB_FOO + 0x10, LOAD16, HEAP, &[0; 16]),
            ret(0),
            call(1, [0; 6]),
            access(LIB_FOO + 0x10, LOAD16, HEAP, &[0; 16]),
            Event::Free { tid: TID, ptr: HEAP, caller: LIB_FOO, domain: Domain::Foreign },
            ret(1),
        ],
        1000,
    );
    let r = run(&p, 1);
    assert_eq!(r.findings.len(), 2);
    let text = r.to_text();
    assert_eq!(text.matches("Read of uninitialised bytes").count(), 1, "{text}");
    assert!(text.contains("==ffirec==  (and 1 more like it, in call #1)\n"), "{text}");
    assert!(text.contains("==ffirec== ERROR SUMMARY: 2 findings from 1 contexts\n"), "{text}");
}

#[test]
fn handled_host_fault_is_not_a_crash_but_one_in_a_call_is() {
    let sig = |rip: u64| Event::Signal {
        tid: TID,
        signo: 11,
        code: 1,
        addr: 0x10,
        regs: ffirec_format::Regs { rip, ..Default::default() },
        code_bytes: vec![],
        fatal: false,
    };
    let p = write("signals", true, vec![sig(PROG_TEXT + 0x120), call(0, [0; 6]), sig(LIB_FOO + 0x30), ret(0)], 1000);
    let r = run(&p, 1);
    let got: Vec<_> = r.findings.iter().map(|f| (f.kind, f.at.short(), f.first_event)).collect();
    assert_eq!(got, vec![(Kind::Crash, "foo+0x30".to_string(), 2)]);
}

#[test]
fn odd_events_do_not_panic() {
    let top = u64::MAX - 0x800;
    let mut regs = ffirec_format::Regs { rip: LIB_FOO, ..Default::default() };
    regs.gpr[ffirec_format::Regs::RDI] = top;
    let p = write(
        "odd",
        false,
        vec![
            ret(7),
            free(0x1234),
            Event::Alloc {
                tid: TID,
                func: ffirec_format::AllocFn::Mmap,
                ptr: top,
                size: u64::MAX,
                old_ptr: 0,
                caller: 0,
                domain: Domain::Host,
                zeroed: true,
            },
            alloc(HEAP, 0, Domain::Host),
            Event::Map { tid: TID, addr: top, len: u64::MAX, prot: 0, flags: 0, domain: Domain::Host },
            Event::Protect { tid: TID, addr: 0, len: 0, prot: 0 },
            Event::Unmap { tid: TID, addr: 0, len: u64::MAX },
            Event::HostWrite { tid: TID, addr: top, len: u64::MAX },
            Event::InitUnknown { addr: 0, len: 0 },
            call(0, [top, HEAP, 0, 0, 0, 0]),
            access(LIB_FOO + 0x10, STORE16, top, &[]),
            access(LIB_FOO + 0x10, LOAD32, u64::MAX - 8, &[0xff; 32]),
            access(LIB_FOO + 0x10, LOAD8, HEAP, &top.to_le_bytes()),
            // Not an instruction.
            Event::Access { tid: TID, code: vec![0x0f, 0x0b], regs, fault_addr: 0, data: vec![], vregs: vec![] },
            Event::SyscallAccess {
                tid: TID,
                nr: 0,
                args: [0; 6],
                ret: 0,
                ranges: vec![ffirec_format::SyscallRange { addr: top, len: u64::MAX, write: true }],
            },
            ret(0),
            ret(0),
        ],
        3,
    );
    let r = run(&p, 2);
    assert_eq!(r.calls.len(), 1);
}

#[test]
fn write_to_relro_made_read_only_by_mprotect() {
    let p = write(
        "relro",
        true,
        vec![
            Event::Protect { tid: TID, addr: PROG_DATA, len: 0x800, prot: 1 },
            alloc(HEAP, 8, Domain::Host),
            call(0, [0; 6]),
            access(LIB_FOO + 0x60, STORE8, PROG_DATA + 0x10, &[]),
            access(LIB_FOO + 0x60, STORE8, PROG_DATA + 0x810, &[]),
            ret(0),
        ],
        1000,
    );
    let r = run(&p, 1);
    let got: Vec<_> = r.findings.iter().map(|f| (f.kind, f.addr.as_str())).collect();
    assert_eq!(got, vec![(Kind::ReadOnlyWrite, "0x600010")]);
}

#[test]
fn crash_carries_the_faulting_access_decoded_from_the_instruction() {
    let sig = |code: &[u8], rdi: u64, addr: u64| {
        let mut regs = Regs { rip: LIB_FOO + 0x40, ..Regs::default() };
        regs.gpr[Regs::RDI] = rdi;
        Event::Signal { tid: TID, signo: 11, code: 1, addr, regs, code_bytes: code.to_vec(), fatal: false }
    };
    let cases: Vec<(Event, (u64, bool, bool), &str)> = vec![
        // `mov [rdi], rax` at 0x10: an 8-byte write.
        (sig(STORE8, 0x10, 0x10), (8, false, true), "0x10"),
        // `movdqu xmm0, [rdi]` straddling into an unmapped page: the fault
        // address is the page, the access the whole 16 bytes before it.
        (sig(LOAD16, 0x7ff8, 0x8000), (16, true, false), "0x8000"),
        // A general-protection fault (non-canonical address) reports address
        // 0: the instruction's only access is the one.
        (sig(LOAD1, 0x8000_0000_0000_0000, 0), (1, true, false), "0x0"),
        // No instruction bytes: unknown.
        (sig(&[], 0x10, 0x10), (0, false, false), "0x10"),
        // `add qword ptr [rdi], 1` (48 83 07 01): read-modify-write.
        (sig(&[0x48, 0x83, 0x07, 0x01], 0x20, 0x20), (8, true, true), "0x20"),
    ];
    for (i, (ev, want, addr)) in cases.into_iter().enumerate() {
        let p = write(&format!("crash_access{i}"), true, vec![call(0, [0; 6]), ev, ret(0)], 1000);
        let r = run(&p, 1);
        assert_eq!(r.findings.len(), 1, "case {i}: {:#?}", r.findings);
        let f = &r.findings[0];
        assert_eq!((f.kind, f.addr.as_str()), (Kind::Crash, addr), "case {i}");
        assert_eq!((f.size, f.read, f.write), want, "case {i}");
    }
    let p = write("crash_access_text", true, vec![call(0, [0; 6]), sig(LOAD16, 0x7ff8, 0x8000), ret(0)], 1000);
    assert_eq!(
        run(&p, 1).findings[0].detail,
        "signal 11 (SIGSEGV, code 1) at foo+0x40, fault address 0x8000 (read of 16 bytes at 0x7ff8)"
    );
}
