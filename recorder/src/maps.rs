//! `/proc/PID/maps`: the tracee's mappings, with their real protections.
//!
//! The kernel's view changes while we guard memory; [`Mapping::prot`] is what
//! the file says now, and the guard module keeps the originals of whatever it
//! changed, so "real protection" = the original where we changed it.

use crate::sys::Pid;
use crate::Error;

pub const PROT_R: u32 = libc::PROT_READ as u32;
pub const PROT_W: u32 = libc::PROT_WRITE as u32;
pub const PROT_X: u32 = libc::PROT_EXEC as u32;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
    pub shared: bool,
    pub offset: u64,
    pub inode: u64,
    /// File path, `[heap]`-style pseudo name, or empty for anonymous memory.
    pub path: String,
}

impl Mapping {
    pub fn contains(&self, addr: u64) -> bool {
        addr >= self.start && addr < self.end
    }
    pub fn is_file(&self) -> bool {
        self.inode != 0 && self.path.starts_with('/')
    }
}

/// Parses one line of `/proc/PID/maps`.
pub fn parse_line(line: &str) -> Option<Mapping> {
    let mut it = line.splitn(6, ' ');
    let range = it.next()?;
    let perms = it.next()?.as_bytes();
    let offset = u64::from_str_radix(it.next()?, 16).ok()?;
    let _dev = it.next()?;
    let inode = it.next()?.parse().ok()?;
    let path = it.next().unwrap_or("").trim_start().to_string();
    let (s, e) = range.split_once('-')?;
    let start = u64::from_str_radix(s, 16).ok()?;
    let end = u64::from_str_radix(e, 16).ok()?;
    if perms.len() < 4 {
        return None;
    }
    let mut prot = 0;
    if perms[0] == b'r' {
        prot |= PROT_R;
    }
    if perms[1] == b'w' {
        prot |= PROT_W;
    }
    if perms[2] == b'x' {
        prot |= PROT_X;
    }
    Some(Mapping { start, end, prot, shared: perms[3] == b's', offset, inode, path })
}

pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines().filter_map(parse_line).collect()
}

pub fn read(pid: Pid) -> Result<Vec<Mapping>, Error> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/maps"))
        .map_err(|source| Error::Sys { what: "read /proc/PID/maps", source })?;
    Ok(parse(&text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_lines() {
        let m = parse_line("7f1c2a000000-7f1c2a021000 rw-p 00000000 00:00 0 ").unwrap();
        assert_eq!((m.start, m.end, m.prot, m.shared, m.inode), (0x7f1c2a000000, 0x7f1c2a021000, 3, false, 0));
        assert!(m.path.is_empty() && !m.is_file());
        let m = parse_line("55d0c0a00000-55d0c0a01000 r-xp 00001000 08:01 123456  /usr/bin/my prog").unwrap();
        assert_eq!(m.path, "/usr/bin/my prog");
        assert_eq!(m.prot, PROT_R | PROT_X);
        assert_eq!(m.offset, 0x1000);
        let m = parse_line("7ffd1000-7ffd2000 rw-p 00000000 00:00 0                          [stack]").unwrap();
        assert_eq!(m.path, "[stack]");
        assert!(!m.is_file());
    }
}
