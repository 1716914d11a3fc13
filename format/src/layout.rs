//! The fixed-size, hand-laid-out parts of the file: preamble, chunk headers,
//! trailer. Everything variable-sized lives in rkyv payloads (`wire`, `batch`).
//!
//! ```text
//! preamble   12 bytes  magic "FFIRECtr", version u16, layout flags u16
//! chunk      40-byte ChunkHeader + compressed payload     (Header first,
//! chunk      ...                                           then Events/Module
//! chunk      Footer                                        in write order,
//! trailer    32 bytes  footer offset u64, footer length u64, footer crc u32,
//!                      trailer crc u32, end magic "FFIRECnd"   Footer last)
//! ```
//! All integers little-endian.

/// First 8 bytes of every trace.
pub const MAGIC: [u8; 8] = *b"FFIRECtr";
/// Last 8 bytes of a finished trace.
pub const END_MAGIC: [u8; 8] = *b"FFIRECnd";
/// Every chunk header starts with this.
pub const CHUNK_MAGIC: [u8; 4] = *b"FRCK";

/// The version this crate writes.
pub const VERSION: u16 = 2;
/// The oldest version this crate reads.
pub const MIN_VERSION: u16 = 1;

pub const PREAMBLE_LEN: usize = 12;
pub const CHUNK_HEADER_LEN: usize = 40;
pub const TRAILER_LEN: usize = 32;

/// No chunk payload may decompress to more than this (bounds the allocation a
/// hostile `raw_len` can cause).
pub const MAX_RAW_LEN: u32 = 1 << 30;

/// Layout flag bits: what the rkyv archives in this file assume.
pub const FLAG_LITTLE_ENDIAN: u16 = 1 << 0;
/// rkyv relative pointers and lengths are 32 bits.
pub const FLAG_PTR32: u16 = 1 << 1;
/// rkyv archives are aligned (primitives at their natural alignment).
pub const FLAG_ALIGNED: u16 = 1 << 2;

/// The flags describing how this build of rkyv lays archives out. Computed
/// from the archived types themselves, so a feature-unified rkyv with a
/// different layout cannot silently misread a file.
pub fn layout_flags() -> u16 {
    let mut f = 0;
    if archived_is_le() {
        f |= FLAG_LITTLE_ENDIAN;
    }
    if std::mem::size_of::<rkyv::Archived<usize>>() == 4 {
        f |= FLAG_PTR32;
    }
    if std::mem::align_of::<rkyv::Archived<u64>>() == 8 {
        f |= FLAG_ALIGNED;
    }
    f
}

fn archived_is_le() -> bool {
    match rkyv::to_bytes::<rkyv::rancor::Error>(&0x0102_u16) {
        Ok(b) => b.as_slice() == [0x02, 0x01],
        Err(_) => false,
    }
}

/// What a chunk holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u16)]
pub enum ChunkKind {
    /// The file header (`wire::Header`); exactly one, first.
    Header = 1,
    /// A batch of events (`batch::Batch`).
    Events = 2,
    /// One module table entry (`wire::Module`); `first_event` = events written before it.
    Module = 3,
    /// The footer (`wire::Footer`); exactly one, last, only in finished traces.
    Footer = 4,
}

impl ChunkKind {
    pub fn from_u16(v: u16) -> Option<ChunkKind> {
        Some(match v {
            1 => ChunkKind::Header,
            2 => ChunkKind::Events,
            3 => ChunkKind::Module,
            4 => ChunkKind::Footer,
            _ => return None,
        })
    }
}

/// The fixed 40-byte header before every chunk payload.
///
/// ```text
///  0 magic "FRCK"   4 kind u16   6 reserved u16 (0)   8 compressed_len u32
/// 12 raw_len u32   16 first_event u64   24 event_count u32
/// 28 payload crc32 (of the compressed bytes)   32 reserved u32 (0)
/// 36 crc32 of bytes 0..36
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkHeader {
    pub kind: ChunkKind,
    pub compressed_len: u32,
    pub raw_len: u32,
    pub first_event: u64,
    pub event_count: u32,
    pub payload_crc: u32,
}

/// Why 40 bytes are not a chunk header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderFault {
    BadMagic,
    BadCrc,
    BadKind(u16),
    Reserved,
}

impl std::fmt::Display for HeaderFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HeaderFault::BadMagic => write!(f, "bad chunk magic"),
            HeaderFault::BadCrc => write!(f, "chunk header checksum mismatch"),
            HeaderFault::BadKind(k) => write!(f, "unknown chunk kind {k}"),
            HeaderFault::Reserved => write!(f, "reserved chunk header bytes are not zero"),
        }
    }
}

impl ChunkHeader {
    pub fn encode(&self) -> [u8; CHUNK_HEADER_LEN] {
        let mut b = [0u8; CHUNK_HEADER_LEN];
        b[0..4].copy_from_slice(&CHUNK_MAGIC);
        b[4..6].copy_from_slice(&(self.kind as u16).to_le_bytes());
        b[8..12].copy_from_slice(&self.compressed_len.to_le_bytes());
        b[12..16].copy_from_slice(&self.raw_len.to_le_bytes());
        b[16..24].copy_from_slice(&self.first_event.to_le_bytes());
        b[24..28].copy_from_slice(&self.event_count.to_le_bytes());
        b[28..32].copy_from_slice(&self.payload_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..36]);
        b[36..40].copy_from_slice(&crc.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8; CHUNK_HEADER_LEN]) -> Result<ChunkHeader, HeaderFault> {
        if b[0..4] != CHUNK_MAGIC {
            return Err(HeaderFault::BadMagic);
        }
        if crc32fast::hash(&b[0..36]) != le_u32(b, 36) {
            return Err(HeaderFault::BadCrc);
        }
        if b[6..8] != [0, 0] || b[32..36] != [0, 0, 0, 0] {
            return Err(HeaderFault::Reserved);
        }
        let kind_raw = u16::from_le_bytes([b[4], b[5]]);
        let kind = ChunkKind::from_u16(kind_raw).ok_or(HeaderFault::BadKind(kind_raw))?;
        Ok(ChunkHeader {
            kind,
            compressed_len: le_u32(b, 8),
            raw_len: le_u32(b, 12),
            first_event: le_u64(b, 16),
            event_count: le_u32(b, 24),
            payload_crc: le_u32(b, 28),
        })
    }

    /// Header plus payload.
    pub fn total_len(&self) -> u64 {
        CHUNK_HEADER_LEN as u64 + u64::from(self.compressed_len)
    }
}

/// The last 32 bytes of a finished trace: where the footer chunk is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    /// File offset of the footer chunk's header.
    pub footer_offset: u64,
    /// Footer chunk length including its header.
    pub footer_len: u64,
    /// crc32 of the whole footer chunk (header and payload).
    pub footer_crc: u32,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_LEN] {
        let mut b = [0u8; TRAILER_LEN];
        b[0..8].copy_from_slice(&self.footer_offset.to_le_bytes());
        b[8..16].copy_from_slice(&self.footer_len.to_le_bytes());
        b[16..20].copy_from_slice(&self.footer_crc.to_le_bytes());
        let crc = crc32fast::hash(&b[0..20]);
        b[20..24].copy_from_slice(&crc.to_le_bytes());
        b[24..32].copy_from_slice(&END_MAGIC);
        b
    }

    /// `None` when the end magic or the trailer checksum is wrong.
    pub fn decode(b: &[u8; TRAILER_LEN]) -> Option<Trailer> {
        if b[24..32] != END_MAGIC || crc32fast::hash(&b[0..20]) != le_u32(b, 20) {
            return None;
        }
        Some(Trailer { footer_offset: le_u64(b, 0), footer_len: le_u64(b, 8), footer_crc: le_u32(b, 16) })
    }
}

pub fn preamble() -> [u8; PREAMBLE_LEN] {
    let mut b = [0u8; PREAMBLE_LEN];
    b[0..8].copy_from_slice(&MAGIC);
    b[8..10].copy_from_slice(&VERSION.to_le_bytes());
    b[10..12].copy_from_slice(&layout_flags().to_le_bytes());
    b
}

fn le_u32(b: &[u8], at: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[at..at + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rkyv_defaults_give_the_documented_flags() {
        assert_eq!(layout_flags(), FLAG_LITTLE_ENDIAN | FLAG_PTR32 | FLAG_ALIGNED);
        assert_eq!(layout_flags(), 0x0007);
    }

    #[test]
    fn chunk_header_and_trailer_roundtrip_and_reject_every_bit_flip() {
        let h = ChunkHeader {
            kind: ChunkKind::Events,
            compressed_len: 1234,
            raw_len: 99_999,
            first_event: 1 << 40,
            event_count: 65_536,
            payload_crc: 0xdead_beef,
        };
        let b = h.encode();
        assert_eq!(ChunkHeader::decode(&b), Ok(h));
        for bit in 0..CHUNK_HEADER_LEN * 8 {
            let mut m = b;
            m[bit / 8] ^= 1 << (bit % 8);
            assert!(ChunkHeader::decode(&m).is_err(), "bit {bit}");
        }
        let t = Trailer { footer_offset: 4096, footer_len: 300, footer_crc: 7 };
        let b = t.encode();
        assert_eq!(Trailer::decode(&b), Some(t));
        for bit in 0..TRAILER_LEN * 8 {
            let mut m = b;
            m[bit / 8] ^= 1 << (bit % 8);
            assert_eq!(Trailer::decode(&m), None, "bit {bit}");
        }
    }
}
