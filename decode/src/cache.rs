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

/// Decoded instructions by address (code bytes checked on every hit).
#[derive(Debug, Default)]
pub struct DecodeCache {
    map: HashMap<u64, Decoded, BuildHasherDefault<AddrHasher>>,
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
    pub fn get_or_decode(&mut self, ip: u64, code: &[u8]) -> Result<&Decoded, DecodeError> {
        match self.map.entry(ip) {
            Entry::Occupied(e) => {
                if code.starts_with(e.get().code()) {
                    return Ok(e.into_mut());
                }
                let d = Decoded::new(ip, code)?;
                let slot = e.into_mut();
                *slot = d;
                Ok(slot)
            }
            Entry::Vacant(v) => Ok(v.insert(Decoded::new(ip, code)?)),
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
