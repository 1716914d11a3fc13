//! Exit codes, documented in `ffirec --help`.

pub const SUCCESS: u8 = 0;
pub const FINDINGS: u8 = 1;
pub const ERROR: u8 = 2;
pub const NEW_FINDINGS: u8 = 3;
pub const TRUNCATED: u8 = 4;
pub const RECORD_FAILED: u8 = 125;
pub const NOT_EXECUTABLE: u8 = 126;
pub const NOT_FOUND: u8 = 127;
