//! Shim records → trace events.
//!
//! Owns the model of each process's anonymous mappings, because the shim
//! cannot tell at `munmap`/`mremap` time whether a range was anonymous: only
//! ranges that an anonymous `mmap` record created become `Free`/`Alloc(Mremap)`
//! events; unmapping part of one becomes an `Unmap` of exactly that part.

use std::collections::{BTreeMap, HashMap};

use ffirec_format::{AllocFn, Domain, Event};

use super::ring::{kind, Rec, F_FOREIGN};

const PAGE: u64 = 4096;

fn page_up(len: u64) -> u64 {
    len.saturating_add(PAGE - 1) & !(PAGE - 1)
}

/// Anonymous mappings per process: start → end (page-rounded).
#[derive(Debug, Default)]
pub(crate) struct Model {
    anon: HashMap<u32, BTreeMap<u64, u64>>,
}

fn alloc_fn(kind: u16) -> Option<AllocFn> {
    Some(match kind {
        kind::MALLOC => AllocFn::Malloc,
        kind::CALLOC => AllocFn::Calloc,
        kind::REALLOC => AllocFn::Realloc,
        kind::REALLOCARRAY => AllocFn::Reallocarray,
        kind::POSIX_MEMALIGN => AllocFn::PosixMemalign,
        kind::ALIGNED_ALLOC => AllocFn::AlignedAlloc,
        kind::MEMALIGN => AllocFn::Memalign,
        kind::VALLOC => AllocFn::Valloc,
        kind::PVALLOC => AllocFn::Pvalloc,
        kind::MMAP => AllocFn::Mmap,
        kind::MREMAP => AllocFn::Mremap,
        _ => return None,
    })
}

impl Model {
    /// Turns one record into zero or more events, in order.
    pub(crate) fn convert(&mut self, r: &Rec, out: &mut impl FnMut(&Event)) -> usize {
        let domain = if r.flags & F_FOREIGN != 0 { Domain::Foreign } else { Domain::Host };
        let free = |ptr| Event::Free { tid: r.tid, ptr, caller: r.caller, domain };
        let alloc = |func, zeroed| Event::Alloc {
            tid: r.tid,
            func,
            ptr: r.ptr,
            size: r.size,
            old_ptr: r.old_ptr,
            caller: r.caller,
            domain,
            zeroed,
        };
        match r.kind {
            kind::PROC_START => {
                // A new image (exec): whatever the pid mapped before is gone.
                self.anon.remove(&r.pid);
                0
            }
            kind::FORKED => {
                // The parent's mark at the exact point of fork(): the child
                // inherits its mappings as of here, unless the child's FORK
                // record came first (it does not wait for this mark; nothing
                // of the parent's lies between the fork point and it).
                let inherited = self.anon.get(&r.pid).cloned().unwrap_or_default();
                self.anon.entry(r.aux as u32).or_insert(inherited);
                0
            }
            kind::FORK => {
                // The child's first record. Without a FORKED mark (a fork the
                // shim did not see), inherit the parent's mappings as of now.
                if !self.anon.contains_key(&r.pid) {
                    let inherited = self.anon.get(&(r.aux as u32)).cloned().unwrap_or_default();
                    self.anon.insert(r.pid, inherited);
                }
                0
            }
            kind::NOP => 0, // the call failed after reserving its slot
            kind::FREE => {
                out(&free(r.ptr));
                1
            }
            kind::MALLOC_FREE => {
                out(&alloc(AllocFn::Malloc, false));
                out(&Event::Free { tid: r.tid, ptr: r.ptr, caller: r.aux, domain });
                2
            }
            kind::REALLOC | kind::REALLOCARRAY if r.ptr == 0 => {
                // realloc(p, 0) freed p.
                out(&free(r.old_ptr));
                1
            }
            kind::MMAP => {
                let n = self.unmap(r, r.ptr, r.size, out);
                self.anon.entry(r.pid).or_default().insert(r.ptr, r.ptr.saturating_add(page_up(r.size)));
                out(&alloc(AllocFn::Mmap, true));
                n + 1
            }
            kind::MUNMAP => self.unmap(r, r.ptr, r.size, out),
            kind::MREMAP => {
                let Some(map) = self.anon.get_mut(&r.pid) else {
                    return 0;
                };
                let known = map.range(..=r.old_ptr).next_back().is_some_and(|(_, &end)| r.old_ptr < end);
                if !known {
                    return 0; // a file mapping
                }
                remove_range(map, r.old_ptr, r.old_ptr.saturating_add(page_up(r.aux)));
                let mut n = 0;
                if r.ptr != r.old_ptr {
                    n += self.unmap(r, r.ptr, r.size, out); // MREMAP_FIXED replaced these
                }
                let end = r.ptr.saturating_add(page_up(r.size));
                let map = self.anon.entry(r.pid).or_default();
                remove_range(map, r.ptr, end);
                map.insert(r.ptr, end);
                out(&alloc(AllocFn::Mremap, false));
                n + 1
            }
            k => match alloc_fn(k) {
                Some(func) => {
                    out(&alloc(func, func == AllocFn::Calloc));
                    1
                }
                None => 0, // a kind this version does not know
            },
        }
    }

    /// Removes `[addr, addr+len)` from the pid's anonymous mappings: a mapping
    /// wholly inside becomes `Free`, a partly covered one an `Unmap` of the part.
    fn unmap(&mut self, r: &Rec, addr: u64, len: u64, out: &mut impl FnMut(&Event)) -> usize {
        let Some(map) = self.anon.get_mut(&r.pid) else {
            return 0;
        };
        let end = addr.saturating_add(page_up(len));
        let domain = if r.flags & F_FOREIGN != 0 { Domain::Foreign } else { Domain::Host };
        let hit: Vec<(u64, u64)> = overlapping(map, addr, end);
        for &(s, e) in &hit {
            if addr <= s && e <= end {
                out(&Event::Free { tid: r.tid, ptr: s, caller: r.caller, domain });
            } else {
                let (a, b) = (s.max(addr), e.min(end));
                out(&Event::Unmap { tid: r.tid, addr: a, len: b - a });
            }
        }
        remove_range(map, addr, end);
        hit.len()
    }
}

fn overlapping(map: &BTreeMap<u64, u64>, start: u64, end: u64) -> Vec<(u64, u64)> {
    let first = map.range(..start).next_back().filter(|(_, &e)| e > start).map(|(&s, &e)| (s, e));
    first.into_iter().chain(map.range(start..end).map(|(&s, &e)| (s, e))).collect()
}

/// Cuts `[start, end)` out of the set of ranges, keeping the parts outside.
fn remove_range(map: &mut BTreeMap<u64, u64>, start: u64, end: u64) {
    for (s, e) in overlapping(map, start, end) {
        map.remove(&s);
        if s < start {
            map.insert(s, start);
        }
        if e > end {
            map.insert(end, e);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(kind: u16, ptr: u64, size: u64, old_ptr: u64, aux: u64) -> Rec {
        Rec { kind, flags: 0, tid: 7, pid: 7, ptr, size, old_ptr, caller: 0x1234, aux, hi_epoch: 0, slots: 1 }
    }

    fn run(model: &mut Model, r: Rec) -> Vec<Event> {
        let mut v = vec![];
        model.convert(&r, &mut |e| v.push(e.clone()));
        v
    }

    #[test]
    fn partial_munmap_is_an_unmap_of_the_part_and_the_rest_frees_whole() {
        let mut m = Model::default();
        run(&mut m, rec(kind::MMAP, 0x10000, 3 * PAGE, 0, 0));
        let ev = run(&mut m, rec(kind::MUNMAP, 0x10000, PAGE, 0, 0));
        assert_eq!(ev, vec![Event::Unmap { tid: 7, addr: 0x10000, len: PAGE }]);
        let ev = run(&mut m, rec(kind::MUNMAP, 0x11000, 2 * PAGE, 0, 0));
        assert_eq!(ev, vec![Event::Free { tid: 7, ptr: 0x11000, caller: 0x1234, domain: Domain::Host }]);
        // A file mapping (never seen as anonymous) produces nothing.
        assert_eq!(run(&mut m, rec(kind::MUNMAP, 0x50000, PAGE, 0, 0)), vec![]);
        assert_eq!(run(&mut m, rec(kind::MREMAP, 0x60000, PAGE, 0x50000, PAGE)), vec![]);
    }

    #[test]
    fn mremap_moves_the_model_and_fork_copies_it() {
        let mut m = Model::default();
        run(&mut m, rec(kind::MMAP, 0x10000, PAGE, 0, 0));
        let ev = run(&mut m, rec(kind::MREMAP, 0x40000, 2 * PAGE, 0x10000, PAGE));
        assert_eq!(ev.len(), 1);
        run(&mut m, rec(kind::FORKED, 0, 0, 0, 8));
        // Changes after the fork point stay the parent's.
        run(&mut m, rec(kind::MMAP, 0x90000, PAGE, 0, 0));
        let mut fork = rec(kind::FORK, 0, 0, 0, 7);
        fork.pid = 8;
        run(&mut m, fork);
        let mut unmap = rec(kind::MUNMAP, 0x90000, PAGE, 0, 0);
        unmap.pid = 8;
        assert_eq!(run(&mut m, unmap), vec![]);
        let mut unmap = rec(kind::MUNMAP, 0x40000, 2 * PAGE, 0, 0);
        unmap.pid = 8;
        assert_eq!(run(&mut m, unmap).len(), 1);
        assert_eq!(run(&mut m, rec(kind::MUNMAP, 0x10000, PAGE, 0, 0)), vec![]);
        run(&mut m, rec(kind::PROC_START, 0, 0, 0, 0));
        assert_eq!(run(&mut m, rec(kind::MUNMAP, 0x40000, 2 * PAGE, 0, 0)), vec![]);
    }
}
