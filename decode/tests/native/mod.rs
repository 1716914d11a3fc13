//! Running a few bytes of machine code natively in a forked child, with raw
//! syscalls (no libc dependency; the child never returns into Rust state).

#![allow(dead_code)] // shared by several test crates, each using a subset

use std::arch::asm;

pub const PAGE: u64 = 4096;

/// Raw syscall: no libc dependency, and usable in the forked child.
///
/// # Safety
/// The caller must pass a valid syscall and arguments.
pub unsafe fn syscall6(n: u64, a: [u64; 6]) -> i64 {
    let ret: i64;
    // SAFETY: the caller vouches for the syscall; rcx/r11 are clobbered by `syscall`.
    unsafe {
        asm!("syscall", inlateout("rax") n as i64 => ret, in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
             in("r10") a[3], in("r8") a[4], in("r9") a[5], lateout("rcx") _, lateout("r11") _, options(nostack));
    }
    ret
}

pub const SYS_MMAP: u64 = 9;
pub const SYS_MPROTECT: u64 = 10;
pub const SYS_FORK: u64 = 57;
pub const SYS_WAIT4: u64 = 61;
pub const SYS_SETRLIMIT: u64 = 160;
pub const SYS_EXIT_GROUP: u64 = 231;
pub const PROT_NONE: u64 = 0;
pub const PROT_RW: u64 = 3;
pub const PROT_RWX: u64 = 7;
pub const MAP_PRIVATE_ANON: u64 = 0x02 | 0x20;
pub const MAP_SHARED_ANON: u64 = 0x01 | 0x20;
pub const RLIMIT_CORE: u64 = 4;
pub const SIGSEGV: i32 = 11;
pub const SIGILL: i32 = 4;

pub fn mmap(len: u64, prot: u64, shared: bool) -> u64 {
    // SAFETY: anonymous private mapping at a kernel-chosen address.
    let r = unsafe {
        syscall6(SYS_MMAP, [0, len, prot, if shared { MAP_SHARED_ANON } else { MAP_PRIVATE_ANON }, u64::MAX, 0])
    };
    assert!(r > 0, "mmap failed: {r}");
    r as u64
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Exited,
    Segv,
    /// Another signal N, or exit code 1000 + N.
    Other(i32),
}

/// Runs `code` (which must end in exit_group) in a forked child.
pub fn run(code_page: u64, code: &[u8]) -> Outcome {
    assert!(code.len() < PAGE as usize);
    // SAFETY: code_page is our own RWX mapping of one page; code fits.
    unsafe { std::ptr::copy_nonoverlapping(code.as_ptr(), code_page as *mut u8, code.len()) };
    // SAFETY: fork; the child only makes raw syscalls and jumps to `code`,
    // which ends with exit_group, so it never returns into Rust state that
    // other threads of the parent might have held locks in.
    let pid = unsafe { syscall6(SYS_FORK, [0; 6]) };
    assert!(pid >= 0, "fork failed: {pid}");
    if pid == 0 {
        let no_core = [0u64, 0u64];
        // SAFETY: in the child: no core dumps for the expected SIGSEGVs, then
        // run the program (it ends with exit_group).
        unsafe {
            syscall6(SYS_SETRLIMIT, [RLIMIT_CORE, no_core.as_ptr() as u64, 0, 0, 0, 0]);
            let f: extern "C" fn() = std::mem::transmute(code_page as usize);
            f();
            syscall6(SYS_EXIT_GROUP, [99, 0, 0, 0, 0, 0]);
        }
        unreachable!();
    }
    let mut status: i32 = 0;
    // SAFETY: waiting for our own child; status is a valid out-pointer.
    let r = unsafe { syscall6(SYS_WAIT4, [pid as u64, &mut status as *mut i32 as u64, 0, 0, 0, 0]) };
    assert_eq!(r, pid, "wait4 failed");
    let sig = status & 0x7f;
    match (sig, (status >> 8) & 0xff) {
        (0, 0) => Outcome::Exited,
        (0, c) => Outcome::Other(1000 + c),
        (SIGSEGV, _) => Outcome::Segv,
        (s, _) => Outcome::Other(s),
    }
}
