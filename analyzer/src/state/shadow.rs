//! The per-byte initialisation shadow of one shard: a bitmap page for every
//! page of the shard's address range that was touched. A page is created on
//! first use with the state its live allocations give it (zeroed allocations
//! are initialised, others not), so allocating a gigabyte costs nothing.

use std::collections::{BTreeMap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};

use super::AllocInfo;
use crate::decode::PAGE;

/// Multiplicative hash for page numbers (std's SipHash is the hot spot otherwise).
#[derive(Default)]
pub(crate) struct U64Hasher(u64);

impl Hasher for U64Hasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0 ^ n).wrapping_mul(0x9E37_79B9_7F4A_7C15).rotate_left(29);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }
    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }
}

pub(crate) type FastMap<K, V> = HashMap<K, V, BuildHasherDefault<U64Hasher>>;

const WORDS: usize = (PAGE / 64) as usize;

/// One page: bit set = initialised / unknown.
pub(crate) struct PageShadow {
    pub init: [u64; WORDS],
    pub unknown: [u64; WORDS],
}

#[derive(Default)]
pub(crate) struct Shadow {
    pages: FastMap<u64, Box<PageShadow>>,
}

/// Sets (`on`) or clears bits `[s, e)`.
pub(crate) fn set_bits(bits: &mut [u64; WORDS], s: usize, e: usize, on: bool) {
    let mut i = s;
    while i < e {
        let w = i / 64;
        let lo = i % 64;
        let hi = (e - w * 64).min(64);
        let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
        if on {
            bits[w] |= mask;
        } else {
            bits[w] &= !mask;
        }
        i = w * 64 + hi;
    }
}

/// True when every bit in `[s, e)` is set.
pub(crate) fn all_set(bits: &[u64; WORDS], s: usize, e: usize) -> bool {
    let mut i = s;
    while i < e {
        let w = i / 64;
        let lo = i % 64;
        let hi = (e - w * 64).min(64);
        let mask = if hi - lo == 64 { u64::MAX } else { ((1u64 << (hi - lo)) - 1) << lo };
        if bits[w] & mask != mask {
            return false;
        }
        i = w * 64 + hi;
    }
    true
}

#[inline]
pub(crate) fn bit(bits: &[u64; WORDS], i: usize) -> bool {
    bits[i / 64] >> (i % 64) & 1 == 1
}

impl Shadow {
    /// The page, if it was ever touched.
    pub fn get(&self, page: u64) -> Option<&PageShadow> {
        self.pages.get(&page).map(|p| &**p)
    }

    /// The page holding `addr`, created from the live allocations if new.
    pub fn page(&mut self, page: u64, live: &BTreeMap<u64, u32>, allocs: &[AllocInfo]) -> &mut PageShadow {
        self.pages.entry(page).or_insert_with(|| {
            let mut p = Box::new(PageShadow { init: [0; WORDS], unknown: [0; WORDS] });
            let (ps, pe) = (page * PAGE, (page * PAGE).saturating_add(PAGE));
            // Allocations overlapping the page: the last one starting before
            // it, and every one starting inside it.
            let before = live.range(..ps).next_back().map(|(_, &id)| id);
            for id in before.into_iter().chain(live.range(ps..pe).map(|(_, &id)| id)) {
                if let Some(a) = allocs.get(id as usize) {
                    let (s, e) = (a.base.max(ps), a.end().min(pe));
                    if s < e && a.zeroed {
                        set_bits(&mut p.init, (s - ps) as usize, (e - ps) as usize, true);
                    }
                }
            }
            p
        })
    }

    /// Resets `[start, end)` in the existing pages to a fresh allocation's state.
    pub fn reset(&mut self, start: u64, end: u64, zeroed: bool, owns: impl Fn(u64) -> bool) {
        let (first, last) = (start / PAGE, end.saturating_sub(1) / PAGE);
        if start >= end {
            return;
        }
        let apply = |page: u64, p: &mut PageShadow| {
            let (ps, pe) = (page * PAGE, (page * PAGE).saturating_add(PAGE));
            let (s, e) = ((start.max(ps) - ps) as usize, (end.min(pe) - ps) as usize);
            set_bits(&mut p.init, s, e, zeroed);
            set_bits(&mut p.unknown, s, e, false);
        };
        if last - first < 256 {
            for page in first..=last {
                if owns(page * PAGE) {
                    if let Some(p) = self.pages.get_mut(&page) {
                        apply(page, p);
                    }
                }
            }
        } else {
            for (&page, p) in self.pages.iter_mut() {
                if page >= first && page <= last {
                    apply(page, p);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_ranges_across_words() {
        let mut b = [0u64; WORDS];
        set_bits(&mut b, 60, 130, true);
        assert!(all_set(&b, 60, 130));
        assert!(!all_set(&b, 59, 130));
        assert!(!all_set(&b, 60, 131));
        assert!(bit(&b, 64) && !bit(&b, 130));
        set_bits(&mut b, 0, 4096, false);
        assert_eq!(b, [0; WORDS]);
        set_bits(&mut b, 0, 4096, true);
        assert!(all_set(&b, 0, 4096));
    }
}
