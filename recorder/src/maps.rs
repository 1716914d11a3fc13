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

/// The writable mappings only, through `PROCMAP_QUERY` (the kernel skips
/// the others and formats no text: about half the cost of reading the whole
/// file for a small program). `Ok(None)` when the kernel lacks the ioctl.
pub fn read_writable(mem: &crate::sys::Mem) -> Result<Option<Vec<Mapping>>, Error> {
    use crate::sys::{PROCMAP_QUERY_VMA_EXECUTABLE as X, PROCMAP_QUERY_VMA_READABLE as R};
    use crate::sys::{PROCMAP_QUERY_VMA_SHARED as S, PROCMAP_QUERY_VMA_WRITABLE as W};
    let mut out = Vec::new();
    let mut name = Vec::with_capacity(4096);
    let mut addr = 0u64;
    loop {
        let v = match mem.query_vma(addr, W, &mut name) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(Some(out)),
            Err(_) if out.is_empty() && addr == 0 => return Ok(None),
            Err(e) => return Err(e),
        };
        let prot =
            [(R, PROT_R), (W, PROT_W), (X, PROT_X)].iter().filter(|(b, _)| v.flags & b != 0).map(|(_, p)| p).sum();
        out.push(Mapping {
            start: v.start,
            end: v.end,
            prot,
            shared: v.flags & S != 0,
            offset: v.offset,
            inode: v.inode,
            path: String::from_utf8_lossy(&name).into_owned(),
        });
        if v.end <= addr {
            return Err(Error::Protocol(format!("PROCMAP_QUERY went backwards at {addr:#x}")));
        }
        addr = v.end;
    }
}

/// Appends start, end, flags, offset and inode of every writable mapping
/// to `out` (`PROCMAP_QUERY` without names: no path lookups). Two equal
/// fingerprints: no writable mapping was added, removed, moved, resized
/// or reprotected in between (a read-write mapping that loses write
/// permission leaves the list; one that gains exec changes its flags).
/// `Ok(false)` when the kernel lacks the ioctl.
pub fn writable_fingerprint(mem: &crate::sys::Mem, out: &mut Vec<u64>) -> Result<bool, Error> {
    use crate::sys::PROCMAP_QUERY_VMA_WRITABLE as W;
    let mut addr = 0u64;
    loop {
        let v = match mem.query_vma_bare(addr, W) {
            Ok(Some(v)) => v,
            Ok(None) => return Ok(true),
            Err(_) if addr == 0 => return Ok(false),
            Err(e) => return Err(e),
        };
        out.extend_from_slice(&[v.start, v.end, v.flags, v.offset, v.inode]);
        if v.end <= addr {
            return Err(Error::Protocol(format!("PROCMAP_QUERY went backwards at {addr:#x}")));
        }
        addr = v.end;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writable_query_matches_the_text() {
        // SAFETY: getpid has no preconditions.
        let pid = unsafe { libc::getpid() };
        let mem = crate::sys::Mem::open(pid).unwrap();
        // SAFETY: a private anonymous mapping of our own, unmapped below.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                3 * 4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        assert_ne!(p, libc::MAP_FAILED);
        let strip =
            |v: &[Mapping]| v.iter().map(|m| (m.start, m.end, m.prot, m.shared, m.offset, m.inode)).collect::<Vec<_>>();
        // Other threads of the test binary may map, unmap or grow a heap
        // meanwhile: compare what both saw, and read both again (up to 5
        // times) while they differ by more than two mappings.
        let (mut q, mut text);
        let mut tries = 0;
        loop {
            let Some(w) = read_writable(&mem).unwrap() else { return }; // kernel before 6.11
            q = w;
            text = read(pid).unwrap().into_iter().filter(|m| m.prot & PROT_W != 0).collect::<Vec<Mapping>>();
            let (a, b) = (strip(&q), strip(&text));
            let common = a.iter().filter(|x| b.contains(x)).count();
            tries += 1;
            if common + 2 >= a.len().max(b.len()) {
                break;
            }
            assert!(tries < 5, "{a:x?}\n{b:x?}");
        }
        // SAFETY: our mapping from above.
        unsafe { libc::munmap(p, 3 * 4096) };
        let (a, b) = (p as u64, p as u64 + 3 * 4096);
        assert!(q.iter().any(|m| m.start <= a && b <= m.end && m.prot == 3 && m.path.is_empty()));
        // Same mappings, fields and names (the text escapes nothing in them here).
        for m in &q {
            if let Some(t) = text.iter().find(|t| t.start == m.start && t.end == m.end) {
                assert_eq!(t.path, m.path);
            }
        }
    }

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
