//! Stage 2 and 3: state reconstruction in event order.
//!
//! [`Timeline`] walks the (few) non-access events sequentially: it numbers
//! calls and allocations, keeps each thread's foreign-call stack, records
//! arguments that point into host allocations, crashes and gaps, and turns
//! every state change into a compact [`Op`]. Each [`Shard`] then replays all
//! ops plus the accesses to its own pages — allocation map, per-byte
//! initialisation shadow, region map, provenance — in parallel with the
//! other shards.

mod intervals;
mod shadow;
mod shard;
pub(crate) mod space;

use std::collections::{BTreeMap, HashMap};

use ffirec_format::{AllocFn, Domain, Event, ExitStatus, GapReason, Tid};

pub use intervals::RangeSet;
pub(crate) use shard::{ByteInit, Ctx, LoadExposure, Piece, Shard, Stats, Target};

/// "No foreign call open".
pub(crate) const NO_CALL: u32 = u32::MAX;
/// "No allocation".
pub(crate) const NO_ALLOC: u32 = u32::MAX;

/// One allocation, numbered in order of birth (`alloc#N`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AllocInfo {
    pub base: u64,
    pub size: u64,
    pub func: AllocFn,
    pub domain: Domain,
    /// Return address of the allocation call.
    pub caller: u64,
    pub tid: Tid,
    pub born: u64,
    pub freed: Option<u64>,
    pub free_caller: u64,
    pub zeroed: bool,
    /// The bytes' whole life is traced (foreign allocations, or host ones
    /// when the recorder tracked host writes).
    pub exact: bool,
    /// Foreign-resume epoch at birth: a host allocation whose epoch is older
    /// than the current one may have been written by untraced host code.
    pub birth_epoch: u32,
    /// Gaps (untraced stretches) seen before birth: a gap after birth makes
    /// the never-written bytes unknown.
    pub birth_gap: u32,
    /// Leading bytes whose state is unknown (a forked child's copy of its
    /// parent's block).
    pub unknown_prefix: u64,
    /// The foreign call open on the allocating thread (NO_CALL when none).
    pub call: u32,
}

impl AllocInfo {
    pub fn end(&self) -> u64 {
        self.base.saturating_add(self.size)
    }
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.base && addr < self.end()
    }
}

/// One foreign call, numbered as the recorder numbered it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CallInfo {
    pub call: u64,
    pub tid: Tid,
    pub target: u64,
    pub module: u32,
    pub symbol: Option<u32>,
    pub args: [u64; 6],
    pub return_addr: u64,
    pub ret: Option<(u64, u64)>,
    pub enter_seq: u64,
    pub exit_seq: Option<u64>,
    /// The call this one is nested in (through a callback), or NO_CALL.
    pub parent: u32,
}

/// A state change every shard replays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Thread `tid` now runs inside foreign call `call` (or none). `resume`:
    /// foreign code resumes after host code ran (a new epoch).
    SetCall {
        tid: Tid,
        call: u32,
        resume: bool,
    },
    /// Foreign code resumes after a callback returned (a new epoch).
    Resume,
    Alloc {
        id: u32,
    },
    Free {
        id: u32,
    },
    /// Bytes became initialised (untraced host write).
    Init {
        addr: u64,
        len: u64,
    },
    /// Bytes' state became unknown.
    Unknown {
        addr: u64,
        len: u64,
    },
    Map {
        addr: u64,
        len: u64,
        prot: u32,
        flags: u32,
        host: bool,
    },
    Protect {
        addr: u64,
        len: u64,
        prot: u32,
    },
    Unmap {
        addr: u64,
        len: u64,
    },
    /// A reallocation copied bytes into a new block: `copies[idx]` of the
    /// timeline. Replay stops before the event to take the old bytes'
    /// states from their shards (see [`replay_round`]).
    Copy {
        idx: u32,
    },
    /// Execution went untraced (a Gap event): every byte's state is unknown.
    Gap,
    /// A foreign allocation's address reached host code (returned, or
    /// passed to a callback): host code may write it untraced from now on.
    Escape {
        id: u32,
    },
}

/// A reallocation that copied `len` bytes of block `from` into block `to`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct CopyPlan {
    pub seq: u64,
    pub from: u32,
    pub to: u32,
    pub len: u64,
    /// The copied bytes' states just before `seq`, taken during replay
    /// and dropped after the batch.
    pub data: Option<Vec<CopyRun>>,
}

/// The states of a run of copied bytes (offsets relative to the block).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum CopyRun {
    Same { off: u64, len: u64, state: ByteInit },
    Bytes { off: u64, bytes: Vec<ByteInit> },
}

/// Replays one batch — `ops` made by `tl` from the control events of
/// `recs`, whose copies start at `tl.copies[first_copy]` — on every shard.
/// Before each reallocation that copies bytes, the shards owning the old
/// bytes are brought up to that event and the bytes' states read from them;
/// the other shards apply the copy when they get there, in the parallel
/// pass over the whole batch at the end. So the new block gets the states
/// exactly whichever shards own either block.
pub(crate) fn replay_round(
    shards: &mut [Shard],
    ops: &[(u64, Op)],
    recs: &[crate::decode::ChunkRecs],
    tl: &mut Timeline,
    modules: &crate::symbols::ModuleMap,
    first_copy: usize,
) {
    use crate::decode::{shard_of, PAGE, SHARDS};
    use rayon::prelude::*;
    let task = |s: &mut Shard, ctx: &Ctx, until: u64| {
        crate::timing::task(crate::timing::Stage::Replay, || s.run(ops, recs, ctx, until))
    };
    for i in first_copy..tl.copies.len() {
        let (seq, from, len) = (tl.copies[i].seq, tl.copies[i].from, tl.copies[i].len);
        let Some(old) = tl.allocs.get(from as usize) else { continue };
        let (s, e) = (old.base, old.base.saturating_add(len));
        let pages = (e - 1) / PAGE - s / PAGE + 1;
        let mut owners = [false; SHARDS];
        if pages >= SHARDS as u64 {
            owners = [true; SHARDS];
        } else {
            (0..pages).for_each(|k| owners[shard_of(s + k * PAGE)] = true);
        }
        {
            let ctx = Ctx { allocs: &tl.allocs, modules, copies: &tl.copies };
            let mut behind: Vec<&mut Shard> =
                shards.iter_mut().enumerate().filter(|(k, _)| owners[*k]).map(|(_, s)| s).collect();
            if behind.len() > 1 {
                behind.par_iter_mut().for_each(|s| task(s, &ctx, seq));
            } else {
                behind.into_iter().for_each(|s| task(s, &ctx, seq));
            }
        }
        let mut runs = Vec::new();
        let mut cur = s;
        while cur < e {
            let pe = e.min((cur / PAGE + 1).saturating_mul(PAGE));
            runs.push(shards[shard_of(cur)].copy_out(from, old, cur, pe));
            cur = pe;
        }
        tl.copies[i].data = Some(runs);
    }
    let ctx = Ctx { allocs: &tl.allocs, modules, copies: &tl.copies };
    shards.par_iter_mut().for_each(|s| task(s, &ctx, u64::MAX));
    for c in &mut tl.copies[first_copy..] {
        c.data = None;
    }
}

/// A foreign call received a pointer into a live host allocation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ArgExposure {
    pub call: u32,
    pub arg: u8,
    pub alloc: u32,
    pub offset: u64,
}

/// A program signal (a fault the program did not ask for is a crash).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Crash {
    pub seq: u64,
    pub tid: Tid,
    pub call: u32,
    pub signo: i32,
    pub code: i32,
    pub addr: u64,
    pub rip: u64,
    pub fatal: bool,
    /// The faulting instruction's memory access, decoded from the recorded
    /// instruction bytes and registers (`None` when it cannot be told).
    pub access: Option<CrashAccess>,
}

/// The memory access a fault signal came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CrashAccess {
    /// Where the access starts (untagged: as the program saw it).
    pub addr: u64,
    pub size: u64,
    pub read: bool,
    pub write: bool,
}

/// Decodes the instruction at `regs.rip` and picks the access that holds the
/// fault address `fault`; without one, a SIGSEGV/SIGBUS of an instruction
/// with a single memory access (a general-protection fault on a
/// non-canonical address reports address 0) is that access.
fn faulting_access(signo: i32, fault: u64, regs: &ffirec_format::Regs, code: &[u8]) -> Option<CrashAccess> {
    if !matches!(signo, SIGSEGV | SIGBUS) || code.is_empty() {
        return None;
    }
    let d = ffirec_decode::Decoded::new(regs.rip, code).ok()?;
    let mut accs = Vec::new();
    d.accesses_into(regs, &[], &mut accs).ok()?;
    let hit = accs.iter().find(|a| fault >= a.addr && fault - a.addr < a.size.max(1));
    let a = match (hit, accs.as_slice()) {
        (Some(a), _) => a,
        (None, [only]) => only,
        _ => return None,
    };
    let (read, write) = match a.rw {
        ffirec_decode::Rw::Read => (true, false),
        ffirec_decode::Rw::Write => (false, true),
        ffirec_decode::Rw::ReadWrite => (true, true),
    };
    Some(CrashAccess { addr: a.addr, size: a.size, read, write })
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GapInfo {
    pub seq: u64,
    pub tid: Tid,
    pub call: u32,
    pub reason: GapReason,
    pub detail: u64,
}

/// The sequential pass over non-access events.
#[derive(Debug, Default)]
pub(crate) struct Timeline {
    pub track_host_init: bool,
    pub calls: Vec<CallInfo>,
    call_index: HashMap<u64, u32>,
    pub allocs: Vec<AllocInfo>,
    live: BTreeMap<u64, u32>,
    stacks: HashMap<Tid, Vec<u32>>,
    epoch: u32,
    pub arg_exposures: Vec<ArgExposure>,
    /// Reallocations' copies, in order (see [`Op::Copy`]).
    pub copies: Vec<CopyPlan>,
    pub crashes: Vec<Crash>,
    pub gaps: Vec<GapInfo>,
    pub exit: Option<ExitStatus>,
    pub unmatched_frees: u64,
    pub callbacks: u64,
    /// Which process (address space) each thread is in.
    pub spaces: space::Spaces,
    /// The space of the last event that named a thread (`InitUnknown` names none).
    last_space: u16,
}

const SIGILL: i32 = 4;
const SIGABRT: i32 = 6;
const SIGBUS: i32 = 7;
const SIGFPE: i32 = 8;
const SIGSEGV: i32 = 11;

impl Timeline {
    pub fn new(track_host_init: bool) -> Self {
        Timeline { track_host_init, ..Timeline::default() }
    }

    /// The innermost foreign call thread `tid` is in (NO_CALL when none).
    pub(crate) fn top(&self, tid: Tid) -> u32 {
        self.stacks.get(&tid).and_then(|s| s.last().copied()).unwrap_or(NO_CALL)
    }

    /// Live allocations at the end of the events fed so far.
    pub fn live(&self) -> impl Iterator<Item = u32> + '_ {
        self.live.values().copied()
    }

    /// The live allocation holding `addr`.
    pub(crate) fn live_containing(&self, addr: u64) -> Option<u32> {
        let (_, &id) = self.live.range(..=addr).next_back()?;
        self.allocs.get(id as usize).filter(|a| a.contains(addr)).map(|_| id)
    }

    /// Foreign allocations that `values` point into escape to the host.
    /// With host-init tracking the recorder keeps covering them (their host
    /// writes become `HostWrite`, or it says `InitUnknown`): no escape then.
    fn escape(&mut self, values: &[u64], seq: u64, ops: &mut Vec<(u64, Op)>) {
        if self.track_host_init {
            return;
        }
        for &v in values {
            if let Some(id) = self.live_containing(v) {
                if self.allocs[id as usize].domain == Domain::Foreign {
                    ops.push((seq, Op::Escape { id }));
                }
            }
        }
    }

    fn free(&mut self, id: u32, seq: u64, caller: u64, ops: &mut Vec<(u64, Op)>) {
        if let Some(a) = self.allocs.get_mut(id as usize) {
            self.live.remove(&a.base);
            a.freed = Some(seq);
            a.free_caller = caller;
            ops.push((seq, Op::Free { id }));
        }
    }

    /// A forked child starts with a copy of its parent's live allocations,
    /// in its own space. Their bytes' state in the child is unknown (never
    /// reported): the shadow stays the parent's.
    fn inherit(&mut self, seq: u64, parent: u16, child: u16, ops: &mut Vec<(u64, Op)>) {
        if child == parent {
            return;
        }
        let ids: Vec<u32> = self.live.values().copied().collect();
        for pid in ids {
            let Some(a) = self.allocs.get(pid as usize) else { continue };
            if space::space_of(a.base) != parent {
                continue;
            }
            let id = self.allocs.len() as u32;
            let copy = AllocInfo {
                base: space::tag(child, space::untag(a.base)),
                born: seq,
                freed: None,
                free_caller: 0,
                exact: false,
                birth_epoch: u32::MAX,
                unknown_prefix: a.size,
                call: NO_CALL,
                ..a.clone()
            };
            self.live.insert(copy.base, id);
            self.allocs.push(copy);
            ops.push((seq, Op::Alloc { id }));
        }
    }

    /// Consumes one batch of control events (in order), appending the ops.
    pub fn feed(&mut self, control: &[(u64, Event)], ops: &mut Vec<(u64, Op)>) {
        for (seq, ev) in control {
            let seq = *seq;
            match *ev {
                Event::Fork { parent_pid, child_pid, .. } => self.spaces.fork(seq, parent_pid, child_pid),
                Event::ThreadStart { tid, pid, .. } => self.spaces.thread(seq, tid, pid),
                _ => {}
            }
            // Data addresses of a forked process are tagged with its space.
            let sp = match ev.tid() {
                Some(t) => self.spaces.at(t, seq),
                None => self.last_space,
            };
            self.last_space = sp;
            let t = |a: u64| space::tag(sp, a);
            if let Event::Fork { child_pid, .. } = *ev {
                self.inherit(seq, sp, self.spaces.at(child_pid, seq), ops);
            }
            match *ev {
                Event::Call { tid, call, target, module, symbol, args, return_addr, .. } => {
                    let idx = self.calls.len() as u32;
                    let parent = self.top(tid);
                    self.calls.push(CallInfo {
                        call,
                        tid,
                        target,
                        module,
                        symbol,
                        args,
                        return_addr,
                        ret: None,
                        enter_seq: seq,
                        exit_seq: None,
                        parent,
                    });
                    self.call_index.insert(call, idx);
                    self.stacks.entry(tid).or_default().push(idx);
                    self.epoch += 1;
                    for (i, &a) in args.iter().enumerate() {
                        let a = t(a);
                        if let Some(id) = self.live_containing(a) {
                            let al = &self.allocs[id as usize];
                            if al.domain == Domain::Host {
                                self.arg_exposures.push(ArgExposure {
                                    call: idx,
                                    arg: i as u8,
                                    alloc: id,
                                    offset: a - al.base,
                                });
                            }
                        }
                    }
                    ops.push((seq, Op::SetCall { tid, call: idx, resume: true }));
                }
                Event::Return { tid, call, rax, rdx } => {
                    let Some(&idx) = self.call_index.get(&call) else { continue };
                    if let Some(c) = self.calls.get_mut(idx as usize) {
                        c.ret = Some((rax, rdx));
                        c.exit_seq = Some(seq);
                    }
                    // Pop down to the returning call (a longjmp may skip frames).
                    if let Some(st) = self.stacks.get_mut(&tid) {
                        if let Some(pos) = st.iter().rposition(|&c| c == idx) {
                            st.truncate(pos);
                        }
                    }
                    let top = self.top(tid);
                    ops.push((seq, Op::SetCall { tid, call: top, resume: false }));
                    self.escape(&[t(rax), t(rdx)], seq, ops);
                }
                Event::Callback { ref args, .. } => {
                    self.callbacks += 1;
                    let args = args.map(t);
                    self.escape(&args, seq, ops);
                }
                Event::CallbackReturn { .. } => {
                    self.epoch += 1;
                    ops.push((seq, Op::Resume));
                }
                Event::Alloc { tid, func, ptr, size, old_ptr, caller, domain, zeroed } => {
                    if ptr == 0 {
                        continue;
                    }
                    let (ptr, old_ptr) = (t(ptr), if old_ptr == 0 { 0 } else { t(old_ptr) });
                    // The old block's first min(old, new) bytes move into the new one.
                    let mut copied = None;
                    if old_ptr != 0 && matches!(func, AllocFn::Realloc | AllocFn::Reallocarray | AllocFn::Mremap) {
                        if let Some(&old) = self.live.get(&old_ptr) {
                            copied = Some((old, self.allocs[old as usize].size.min(size)));
                            self.free(old, seq, caller, ops);
                        }
                    }
                    // Anything still live under the new block was freed unseen.
                    let end = ptr.saturating_add(size);
                    let mut stale: Vec<u32> =
                        self.live.range(ptr..end.max(ptr.saturating_add(1))).map(|(_, &id)| id).collect();
                    if let Some((_, &id)) = self.live.range(..ptr).next_back() {
                        if self.allocs[id as usize].end() > ptr {
                            stale.push(id);
                        }
                    }
                    for id in stale {
                        self.free(id, seq, 0, ops);
                    }
                    let id = self.allocs.len() as u32;
                    // Host writes are tracked in the first process only (forked ones: unknown).
                    let exact = domain == Domain::Foreign || (self.track_host_init && sp == 0);
                    // The recorder reports only anonymous mremaps: the kernel
                    // zero-fills the grown part (the old part is copied below).
                    let zeroed = zeroed || func == AllocFn::Mremap;
                    let call = self.top(tid);
                    self.allocs.push(AllocInfo {
                        base: ptr,
                        size,
                        func,
                        domain,
                        caller,
                        tid,
                        born: seq,
                        freed: None,
                        free_caller: 0,
                        zeroed,
                        exact,
                        birth_epoch: self.epoch,
                        birth_gap: self.gaps.len() as u32,
                        unknown_prefix: 0,
                        call,
                    });
                    self.live.insert(ptr, id);
                    ops.push((seq, Op::Alloc { id }));
                    if let Some((from, len)) = copied.filter(|&(_, len)| len > 0) {
                        let idx = self.copies.len() as u32;
                        self.copies.push(CopyPlan { seq, from, to: id, len, data: None });
                        ops.push((seq, Op::Copy { idx }));
                    }
                }
                Event::Free { ptr, caller, .. } => match self.live.get(&t(ptr)) {
                    Some(&id) => self.free(id, seq, caller, ops),
                    None if ptr != 0 => self.unmatched_frees += 1,
                    None => {}
                },
                Event::Map { addr, len, prot, flags, domain, .. } => {
                    ops.push((seq, Op::Map { addr: t(addr), len, prot, flags, host: domain == Domain::Host }))
                }
                Event::Unmap { addr, len, .. } => {
                    let addr = t(addr);
                    let end = addr.saturating_add(len);
                    let gone: Vec<u32> = self
                        .live
                        .range(addr..end)
                        .map(|(_, &id)| id)
                        .filter(|&id| {
                            let a = &self.allocs[id as usize];
                            matches!(a.func, AllocFn::Mmap | AllocFn::Mremap) && a.end() <= end
                        })
                        .collect();
                    for id in gone {
                        self.free(id, seq, 0, ops);
                    }
                    ops.push((seq, Op::Unmap { addr, len }));
                }
                Event::Protect { addr, len, prot, .. } => ops.push((seq, Op::Protect { addr: t(addr), len, prot })),
                Event::HostWrite { addr, len, .. } => ops.push((seq, Op::Init { addr: t(addr), len })),
                Event::InitUnknown { addr, len } => ops.push((seq, Op::Unknown { addr: t(addr), len })),
                // A fault the program handles itself (a JIT's SIGSEGV, say) is
                // ours to report only when it hit inside a foreign call. A
                // process killed by another (SIGTERM from a pool's parent:
                // si_code <= 0) outside any foreign call did not crash.
                Event::Signal { tid, signo, code, addr, ref regs, ref code_bytes, fatal }
                    if (fatal
                        && (matches!(signo, SIGSEGV | SIGBUS | SIGILL | SIGFPE | SIGABRT)
                            || code > 0
                            || self.top(tid) != NO_CALL))
                        || (matches!(signo, SIGSEGV | SIGBUS | SIGILL | SIGFPE | SIGABRT)
                            && self.top(tid) != NO_CALL) =>
                {
                    self.crashes.push(Crash {
                        seq,
                        tid,
                        call: self.top(tid),
                        signo,
                        code,
                        addr: t(addr),
                        rip: regs.rip,
                        fatal,
                        access: faulting_access(signo, addr, regs, code_bytes),
                    });
                }
                Event::Gap { tid, reason, detail } => {
                    self.gaps.push(GapInfo { seq, tid, call: self.top(tid), reason, detail });
                    ops.push((seq, Op::Gap));
                }
                // The program's exit is the first process's (not a forked child's).
                Event::Exit { pid, status }
                    if self.exit.is_none() && (!self.spaces.multi() || self.spaces.pid(0) == Some(pid)) =>
                {
                    self.exit = Some(status)
                }
                _ => {}
            }
        }
    }
}
