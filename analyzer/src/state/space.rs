//! Address spaces: a trace of a program that forks holds several processes
//! whose addresses coincide (a child starts as a copy of its parent). Each
//! forked process gets its own space, numbered in order of `Fork` events
//! (the first process is space 0); every data address a thread of space
//! `s > 0` uses is tagged with `s` in bits 48.. (user addresses are below
//! 2^47), so the allocation map, shadow and exposures — keyed by address —
//! never mix processes, and a single-process trace is analysed unchanged.
//! Addresses are untagged for display ([`untag`]).

use std::collections::HashMap;

use ffirec_format::Tid;

const SHIFT: u32 = 48;
/// At most this many spaces are told apart; later forks share the last one.
const MAX_SPACES: u16 = 0xff;

/// `addr` as seen in space `space` (values that are no user address stay as they are).
#[inline]
pub(crate) fn tag(space: u16, addr: u64) -> u64 {
    if space == 0 || addr >> SHIFT != 0 {
        addr
    } else {
        addr | (u64::from(space) << SHIFT)
    }
}

/// The address a tagged value stands for.
#[inline]
pub(crate) fn untag(v: u64) -> u64 {
    let s = v >> SHIFT;
    if s != 0 && s <= u64::from(MAX_SPACES) {
        v & ((1 << SHIFT) - 1)
    } else {
        v
    }
}

/// The space a (tagged) address belongs to.
#[inline]
pub(crate) fn space_of(v: u64) -> u16 {
    let s = v >> SHIFT;
    if s <= u64::from(MAX_SPACES) {
        s as u16
    } else {
        0
    }
}

/// Which space each thread is in, from `Fork` and `ThreadStart` events.
#[derive(Debug, Default)]
pub(crate) struct Spaces {
    /// tid → (first event in that space, space), in event order. Threads of
    /// the first process are absent (space 0).
    tids: HashMap<Tid, Vec<(u64, u16)>>,
    /// pid → its space.
    pids: HashMap<u32, u16>,
    /// space → pid (index 0: the first process, 0 until a fork names it).
    pub owners: Vec<u32>,
}

impl Spaces {
    /// More than one process: addresses need tagging.
    #[inline]
    pub(crate) fn multi(&self) -> bool {
        self.owners.len() > 1
    }

    /// The space of thread `tid` at event `seq`.
    #[inline]
    pub(crate) fn at(&self, tid: Tid, seq: u64) -> u16 {
        if !self.multi() {
            return 0;
        }
        let Some(v) = self.tids.get(&tid) else { return 0 };
        v.iter().rev().find(|&&(from, _)| from <= seq).map_or(0, |&(_, s)| s)
    }

    /// The pid of space `space` (None for the first process before any fork).
    pub(crate) fn pid(&self, space: u16) -> Option<u32> {
        self.owners.get(usize::from(space)).copied().filter(|&p| p != 0)
    }

    /// Process `parent_pid` forked `child_pid` at event `seq`.
    pub(crate) fn fork(&mut self, seq: u64, parent_pid: u32, child_pid: u32) {
        if self.owners.is_empty() {
            self.owners.push(0);
        }
        if self.owners[0] == 0 && !self.pids.contains_key(&parent_pid) {
            self.owners[0] = parent_pid;
        }
        let space = (self.owners.len() as u16).min(MAX_SPACES);
        if usize::from(space) == self.owners.len() {
            self.owners.push(child_pid);
        }
        self.pids.insert(child_pid, space);
        self.tids.entry(child_pid).or_default().push((seq, space));
    }

    /// Thread `tid` of process `pid` started at event `seq`.
    pub(crate) fn thread(&mut self, seq: u64, tid: Tid, pid: u32) {
        if let Some(&space) = self.pids.get(&pid) {
            self.tids.entry(tid).or_default().push((seq, space));
        } else if self.tids.contains_key(&tid) {
            // A reused tid back in the first process.
            self.tids.entry(tid).or_default().push((seq, 0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forks_get_their_own_spaces() {
        let mut s = Spaces::default();
        assert!(!s.multi());
        assert_eq!(s.at(100, 5), 0);
        s.fork(10, 100, 200);
        s.thread(12, 201, 200);
        s.thread(13, 101, 100);
        assert_eq!((s.at(100, 11), s.at(101, 14), s.at(200, 11), s.at(201, 14)), (0, 0, 1, 1));
        assert_eq!(s.at(200, 9), 0);
        assert_eq!((s.pid(0), s.pid(1)), (Some(100), Some(200)));
        let a = tag(1, 0x5555_0000_1000);
        assert_ne!(a, 0x5555_0000_1000);
        assert_eq!((untag(a), space_of(a)), (0x5555_0000_1000, 1));
        assert_eq!(tag(0, 0x10), 0x10);
        assert_eq!(tag(1, u64::MAX), u64::MAX);
        assert_eq!(untag(u64::MAX), u64::MAX);
        // Page and shard of a tagged address are those of the address.
        assert_eq!(crate::decode::shard_of(a), crate::decode::shard_of(0x5555_0000_1000));
    }
}
