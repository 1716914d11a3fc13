//! Several traced processes (a program that forks): memory, protections,
//! modules, breakpoints and the foreign-call owner are per process.
//!
//! The tracer's own fields always describe the *active* process; the others
//! wait in a [`ProcState`] each. When a stop comes from a thread of another
//! process, [`Tracer::activate`] swaps that process's state in (field by
//! field, so the rest of the recorder never knows). Threads map to their
//! process by tid (tids are unique across processes).
//!
//! A forked child starts as a copy of its parent's state at the fork: it
//! inherits the parent's memory with its protections (guards of a call in
//! progress included), its breakpoints and injected pages; a vfork child
//! shares the parent's memory until it execs. A foreign call in progress on
//! the forking thread continues in the child as a new call (its own `Call`
//! event, numbered after every call so far).

use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

use ffirec_format::Event;

use crate::domain::{Frame, FrameKind};
use crate::guard::{ArenaBlocks, GuardRange, Injected};
use crate::modules::Loaded;
use crate::process::Stop;
use crate::sys::{self, Mem, Pid};
use crate::tracer::{Thread, Tracer};
use crate::Error;

/// A process that is not the active one: the per-process fields of [`Tracer`].
pub(crate) struct ProcState {
    pub pid: Pid,
    pub mem: Mem,
    pub threads: BTreeMap<Pid, Thread>,
    pub modules: Vec<Loaded>,
    pub main_exe: String,
    pub inject: Option<Injected>,
    pub owner: Option<Pid>,
    pub foreign_mode: bool,
    pub guards: Vec<GuardRange>,
    pub entry_bp: Option<(u64, u8)>,
    pub rbrk_bp: Option<u64>,
    pub ret_bps: HashMap<u64, (u8, u32)>,
    pub allocbp: Option<crate::allocbp::AllocBps>,
    pub last_owner_stop: Instant,
    pub foreign_since: Option<Instant>,
    pub arena_blocks: ArenaBlocks,
    pub shim_trap: Option<u64>,
    pub protect_nr: u32,
    pub moved: Vec<(u64, u64)>,
    pub none_at_entry: Option<Vec<(u64, u64)>>,
    pub tramp: crate::fault::Trampolines,
    pub until_exec: bool,
}

/// Swaps the per-process fields of `t` with `s`.
fn swap(t: &mut Tracer, s: &mut ProcState) {
    use std::mem::swap;
    swap(&mut t.pid, &mut s.pid);
    swap(&mut t.mem, &mut s.mem);
    swap(&mut t.threads, &mut s.threads);
    swap(&mut t.modules, &mut s.modules);
    swap(&mut t.main_exe, &mut s.main_exe);
    swap(&mut t.inject, &mut s.inject);
    swap(&mut t.owner, &mut s.owner);
    swap(&mut t.foreign_mode, &mut s.foreign_mode);
    swap(&mut t.guards, &mut s.guards);
    swap(&mut t.entry_bp, &mut s.entry_bp);
    swap(&mut t.rbrk_bp, &mut s.rbrk_bp);
    swap(&mut t.ret_bps, &mut s.ret_bps);
    swap(&mut t.allocbp, &mut s.allocbp);
    swap(&mut t.last_owner_stop, &mut s.last_owner_stop);
    swap(&mut t.foreign_since, &mut s.foreign_since);
    swap(&mut t.arena_blocks, &mut s.arena_blocks);
    swap(&mut t.shim_trap, &mut s.shim_trap);
    swap(&mut t.protect_nr, &mut s.protect_nr);
    swap(&mut t.moved, &mut s.moved);
    swap(&mut t.none_at_entry, &mut s.none_at_entry);
    swap(&mut t.tramp, &mut s.tramp);
    swap(&mut t.until_exec, &mut s.until_exec);
}

impl Tracer {
    /// Makes process `tgid` the active one (no-op when it is, or unknown).
    /// A process left with no thread is dropped.
    pub(crate) fn activate(&mut self, tgid: Pid) {
        if tgid == self.pid {
            return;
        }
        let Some(mut st) = self.procs.remove(&tgid) else { return };
        swap(self, &mut st);
        if !st.threads.is_empty() {
            self.procs.insert(st.pid, st);
        }
    }

    /// The active process has no thread left: activate another one.
    /// False when none is left.
    pub(crate) fn next_process(&mut self) -> bool {
        match self.procs.keys().next().copied() {
            Some(g) => {
                self.activate(g);
                true
            }
            None => false,
        }
    }

    /// Every traced process (the active one first).
    pub(crate) fn all_pids(&self) -> Vec<Pid> {
        std::iter::once(self.pid).chain(self.procs.keys().copied()).collect()
    }

    /// Routes a stop to its process. Returns true when the stop was
    /// consumed here: a not-followed child, or a child whose fork event has
    /// not been seen yet (kept until it is).
    pub(crate) fn route_stop(&mut self, stop: Stop) -> Result<bool, Error> {
        let tid = stop.tid();
        if let Some(&g) = self.tgids.get(&tid) {
            self.activate(g);
            return Ok(false);
        }
        if let Stop::Exited { .. } | Stop::Killed { .. } = stop {
            // A child we had not seen stopped yet (not followed, or not yet announced).
            if self.forks.remove(&tid).is_some() || self.early_children.remove(&tid).is_some() {
                return Ok(true);
            }
            return Ok(false);
        }
        if let Some(vfork) = self.forks.remove(&tid) {
            self.release_child(tid, vfork, stop)?;
            return Ok(true);
        }
        match sys::tgid_of(tid) {
            Some(g) if self.tgids.get(&g) == Some(&g) || g == self.pid || self.procs.contains_key(&g) => {
                // A new thread of a known process, stopped before its clone event.
                self.tgids.insert(tid, g);
                self.activate(g);
                Ok(false)
            }
            Some(g) if g == tid => {
                // A new process stopped before its parent's fork event.
                self.early_children.insert(tid, stop);
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    /// The forking thread `tid` of the active process made `child`: follow
    /// it. Its first stop is handled when it comes (or now, if it came first).
    /// With `--no-follow` only a vfork child made during a foreign call is
    /// followed, silently and until it execs: it shares the call's guarded
    /// memory, so its exec needs its arguments opened like any foreign syscall.
    pub(crate) fn follow_child(&mut self, tid: Pid, child: Pid) -> Result<(), Error> {
        let record = self.opts.follow;
        let parent = self.threads.get(&tid);
        let mut frames: Vec<Frame> = parent.map(|t| t.frames.clone()).unwrap_or_default();
        let altstack = parent.and_then(|t| t.altstack);
        // A call in progress continues in the child as a call of its own.
        let mut call = 0;
        for f in frames.iter_mut().filter(|_| record) {
            if f.kind == FrameKind::Foreign {
                call = self.next_call;
                self.next_call += 1;
                self.sink.counters.calls += 1;
                let (module, symbol) = match self.module_text(f.target) {
                    Some(l) => (l.index, l.symbol_index(f.target)),
                    None => (u32::MAX, None),
                };
                self.sink.push(Event::Call {
                    tid: child as u32,
                    call,
                    target: f.target,
                    module,
                    symbol,
                    args: [0; 6],
                    rsp: f.entry_rsp,
                    return_addr: f.return_addr,
                })?;
            } else {
                self.sink.push(Event::Callback {
                    tid: child as u32,
                    call,
                    target: f.target,
                    args: [0; 6],
                    rsp: f.entry_rsp,
                    return_addr: f.return_addr,
                })?;
            }
            f.call = call;
        }
        let mut threads = BTreeMap::new();
        threads.insert(child, Thread { frames, altstack, running: true, ..Thread::default() });
        let st = ProcState {
            pid: child,
            mem: Mem::open(child)?,
            threads,
            modules: self.modules.clone(),
            main_exe: self.main_exe.clone(),
            inject: self.inject,
            owner: (self.owner == Some(tid)).then_some(child),
            foreign_mode: self.foreign_mode,
            guards: self.guards.clone(),
            entry_bp: self.entry_bp,
            rbrk_bp: self.rbrk_bp,
            ret_bps: self.ret_bps.clone(),
            allocbp: self.allocbp.as_ref().map(crate::allocbp::AllocBps::forked),
            last_owner_stop: Instant::now(),
            foreign_since: self.foreign_since.map(|_| Instant::now()),
            arena_blocks: self.arena_blocks.clone(),
            shim_trap: self.shim_trap,
            protect_nr: self.protect_nr,
            moved: self.moved.clone(),
            none_at_entry: self.none_at_entry.clone(),
            // The child's code area holds the same slots (a vfork child's is
            // ours: it must not write over our slots, only after them).
            tramp: self.tramp.clone(),
            until_exec: !record,
        };
        self.procs.insert(child, st);
        self.tgids.insert(child, child);
        if let Some(stop) = self.early_children.remove(&child) {
            self.deferred.push(stop);
        }
        Ok(())
    }
}
