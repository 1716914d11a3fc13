//! Decoded instructions by address, with the code bytes checked on every hit
//! (JIT and self-modifying code reuse addresses).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use crate::{DecodeError, Decoded};

/// FxHash-style hasher for `u64` keys: one multiply, no allocation.
#[derive(Default, Clone, Copy)]
struct AddrHasher(u64);

impl Hasher for AddrHasher {
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.write_u64(u64::from(*b));
        }
    }
    #[inline]
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    #[inline]
    fn finish(&self) -> u64 {
        // High bits are the well-mixed ones; hashbrown uses the top 7 as tags.
        self.0
    }
}

/// Decoded instructions by address (code bytes checked on every hit), each
/// with a caller-defined stamp (see [`DecodeCache::get_stamped`]).
#[derive(Debug, Default)]
pub struct DecodeCache {
    map: HashMap<u64, (Decoded, u64), BuildHasherDefault<AddrHasher>>,
}

impl std::fmt::Debug for AddrHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AddrHasher")
    }
}

impl DecodeCache {
    pub fn new() -> DecodeCache {
        DecodeCache::default()
    }

    /// The instruction at `ip` whose bytes begin `code` (`code` may extend
    /// past the instruction). Decodes on a miss or when the bytes changed.
    /// The stamp of the entry is kept when the bytes match, reset to 0 when
    /// the instruction is decoded anew.
    pub fn get_or_decode(&mut self, ip: u64, code: &[u8]) -> Result<&Decoded, DecodeError> {
        match self.map.entry(ip) {
            Entry::Occupied(e) => {
                if code.starts_with(e.get().0.code()) {
                    return Ok(&e.into_mut().0);
                }
                let d = Decoded::new(ip, code)?;
                let slot = e.into_mut();
                *slot = (d, 0);
                Ok(&slot.0)
            }
            Entry::Vacant(v) => Ok(&v.insert((Decoded::new(ip, code)?, 0)).0),
        }
    }

    /// The instruction at `ip` without looking at the code bytes, only if its
    /// entry carries `stamp` (nonzero): the caller stamped it after checking
    /// the bytes and vouches that they cannot have changed since (a recorder
    /// uses an epoch it advances whenever code may have changed).
    #[inline]
    pub fn get_stamped(&self, ip: u64, stamp: u64) -> Option<&Decoded> {
        match self.map.get(&ip) {
            Some((d, s)) if *s == stamp && stamp != 0 => Some(d),
            _ => None,
        }
    }

    /// Sets the stamp of the entry at `ip` (no-op when there is none).
    #[inline]
    pub fn stamp(&mut self, ip: u64, stamp: u64) {
        if let Some(e) = self.map.get_mut(&ip) {
            e.1 = stamp;
        }
    }

    /// Number of cached instructions.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }
}
