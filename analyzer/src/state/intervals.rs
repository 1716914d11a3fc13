//! Interval helpers: merged byte-range sets (footprints) and the map of
//! address-space regions (from `Map`/`Protect`/`Unmap` events).

use std::collections::BTreeMap;

/// A set of disjoint, non-adjacent half-open ranges, kept sorted.
/// Appending or extending at the end — the common case — is O(1).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeSet {
    ranges: Vec<(u64, u64)>,
}

impl RangeSet {
    pub fn new() -> Self {
        RangeSet::default()
    }

    pub fn is_empty(&self) -> bool {
        self.ranges.is_empty()
    }

    /// The ranges, sorted, merged.
    pub fn ranges(&self) -> &[(u64, u64)] {
        &self.ranges
    }

    /// Total bytes covered.
    pub fn len(&self) -> u64 {
        self.ranges.iter().map(|&(s, e)| e - s).sum()
    }

    pub fn insert(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        if let Some(last) = self.ranges.last_mut() {
            if start >= last.0 && start <= last.1 {
                last.1 = last.1.max(end);
                return;
            }
            if start > last.1 {
                self.ranges.push((start, end));
                return;
            }
        } else {
            self.ranges.push((start, end));
            return;
        }
        // General case: first range whose end reaches `start`.
        let i = self.ranges.partition_point(|&(_, e)| e < start);
        let mut j = i;
        let (mut s, mut e) = (start, end);
        while j < self.ranges.len() && self.ranges[j].0 <= e {
            s = s.min(self.ranges[j].0);
            e = e.max(self.ranges[j].1);
            j += 1;
        }
        self.ranges.splice(i..j, std::iter::once((s, e)));
    }

    /// Adds every range of `other` (a linear merge of the two sorted lists).
    pub fn union(&mut self, other: &RangeSet) {
        if other.ranges.is_empty() {
            return;
        }
        if self.ranges.is_empty() {
            self.ranges = other.ranges.clone();
            return;
        }
        let mut merged: Vec<(u64, u64)> = Vec::with_capacity(self.ranges.len() + other.ranges.len());
        let (mut i, mut j) = (0, 0);
        while i < self.ranges.len() || j < other.ranges.len() {
            let next = match (self.ranges.get(i), other.ranges.get(j)) {
                (Some(&a), Some(&b)) if a.0 <= b.0 => {
                    i += 1;
                    a
                }
                (_, Some(&b)) => {
                    j += 1;
                    b
                }
                (Some(&a), None) => {
                    i += 1;
                    a
                }
                (None, None) => break,
            };
            match merged.last_mut() {
                Some(last) if next.0 <= last.1 => last.1 = last.1.max(next.1),
                _ => merged.push(next),
            }
        }
        self.ranges = merged;
    }

    pub fn contains(&self, addr: u64) -> bool {
        let i = self.ranges.partition_point(|&(_, e)| e <= addr);
        self.ranges.get(i).is_some_and(|&(s, _)| s <= addr)
    }
}

/// What the program mapped at an address range, as the trace saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    pub end: u64,
    pub prot: u32,
    pub flags: u32,
    pub host: bool,
}

/// Disjoint regions keyed by start address.
#[derive(Debug, Clone, Default)]
pub(crate) struct RegionMap {
    map: BTreeMap<u64, Region>,
}

impl RegionMap {
    pub fn get(&self, addr: u64) -> Option<(u64, Region)> {
        let (&s, &r) = self.map.range(..=addr).next_back()?;
        (addr < r.end).then_some((s, r))
    }

    /// Removes `[start, end)`, splitting regions that straddle its edges.
    pub fn remove(&mut self, start: u64, end: u64) {
        if start >= end {
            return;
        }
        let mut keep = Vec::new();
        let overlapping: Vec<u64> =
            self.map.range(..end).rev().take_while(|(_, r)| r.end > start).map(|(&s, _)| s).collect();
        for s in overlapping {
            if let Some(r) = self.map.remove(&s) {
                if s < start {
                    keep.push((s, Region { end: start, ..r }));
                }
                if r.end > end {
                    keep.push((end, r));
                }
            }
        }
        for (s, r) in keep {
            self.map.insert(s, r);
        }
    }

    pub fn map(&mut self, start: u64, end: u64, prot: u32, flags: u32, host: bool) {
        self.remove(start, end);
        if start < end {
            self.map.insert(start, Region { end, prot, flags, host });
        }
    }

    /// Changes the protection of `[start, end)`. Parts no Map event
    /// described (module segments, memory mapped before tracing) become
    /// host regions with no known flags.
    pub fn protect(&mut self, start: u64, end: u64, prot: u32) {
        if start >= end {
            return;
        }
        let mut parts: Vec<(u64, Region)> =
            self.map.range(..end).rev().take_while(|(_, r)| r.end > start).map(|(&s, &r)| (s, r)).collect();
        parts.reverse();
        let mut cur = start;
        let mut new = Vec::new();
        for (s, r) in parts {
            let (ps, pe) = (s.max(start), r.end.min(end));
            if ps > cur {
                new.push((cur, Region { end: ps, prot, flags: 0, host: true }));
            }
            new.push((ps, Region { end: pe, prot, ..r }));
            cur = pe;
        }
        if cur < end {
            new.push((cur, Region { end, prot, flags: 0, host: true }));
        }
        self.remove(start, end);
        for (s, r) in new {
            self.map.insert(s, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rangeset_merges_adjacent_and_overlapping() {
        let mut r = RangeSet::new();
        r.insert(16, 32);
        r.insert(0, 8);
        r.insert(8, 16);
        r.insert(40, 48);
        assert_eq!(r.ranges(), &[(0, 32), (40, 48)]);
        r.insert(30, 41);
        assert_eq!(r.ranges(), &[(0, 48)]);
        assert_eq!(r.len(), 48);
        assert!(r.contains(47) && !r.contains(48));
    }

    #[test]
    fn union_merges_sorted_lists() {
        let mut a = RangeSet::new();
        let mut b = RangeSet::new();
        for (s, e) in [(0, 4), (10, 12), (20, 30)] {
            a.insert(s, e);
        }
        for (s, e) in [(4, 6), (11, 15), (40, 41)] {
            b.insert(s, e);
        }
        a.union(&b);
        assert_eq!(a.ranges(), &[(0, 6), (10, 15), (20, 30), (40, 41)]);
    }

    #[test]
    fn regions_split_on_protect_and_unmap() {
        let mut m = RegionMap::default();
        m.map(0x1000, 0x5000, 3, 0x22, true);
        m.protect(0x2000, 0x3000, 1);
        assert_eq!(m.get(0x1fff).map(|(s, r)| (s, r.end, r.prot)), Some((0x1000, 0x2000, 3)));
        assert_eq!(m.get(0x2000).map(|(s, r)| (s, r.end, r.prot)), Some((0x2000, 0x3000, 1)));
        assert_eq!(m.get(0x3000).map(|(s, r)| (s, r.end, r.prot)), Some((0x3000, 0x5000, 3)));
        m.protect(0x4800, 0x6000, 0);
        assert_eq!(m.get(0x47ff).map(|(s, r)| (s, r.end, r.prot, r.flags)), Some((0x3000, 0x4800, 3, 0x22)));
        assert_eq!(m.get(0x4800).map(|(s, r)| (s, r.end, r.prot, r.flags)), Some((0x4800, 0x5000, 0, 0x22)));
        assert_eq!(m.get(0x5000).map(|(s, r)| (s, r.end, r.prot, r.flags)), Some((0x5000, 0x6000, 0, 0)));
        m.remove(0x2800, 0x3800);
        assert!(m.get(0x2800).is_none() && m.get(0x37ff).is_none());
        assert_eq!(m.get(0x3800).map(|(s, r)| (s, r.end)), Some((0x3800, 0x4800)));
    }
}
