//! Pages we inject into the tracee, the batch protection stub, and the guard
//! set (which host memory becomes `PROT_NONE` during a foreign call).
//!
//! Ownership: every protection change goes through [`Tracer::run_batch`];
//! the tracer keeps the original protection of each guarded range
//! ([`GuardRange::prot`]) and of each text mapping (`Loaded::text`) and
//! restores them on the way back to host mode.

use crate::maps::{Mapping, PROT_R, PROT_W, PROT_X};
use crate::process::Stop;
use crate::sys::{self, Pid, RawRegs, RemoteAddr};
use crate::tracer::Tracer;
use crate::Error;

/// Batch stub: `rdi` = table of {addr, len, prot, result} (32 bytes each),
/// `rsi` = count. Calls `pkey_mprotect(addr, len, prot, -1)` for each entry,
/// falling back to `mprotect` on ENOSYS, stores rax in `result`, counts the
/// non-zero results in `r12`, then `int3` (so a run where every call
/// succeeded leaves a table whose results were written as 0 unchanged, and
/// the recorder reads nothing back). Followed by `syscall; int3` for
/// one-off remote syscalls.
const STUB: [u8; 88] = [
    0x48, 0x89, 0xfb, // mov rbx, rdi
    0x48, 0x89, 0xf5, // mov rbp, rsi
    0x45, 0x31, 0xe4, // xor r12d, r12d
    0x48, 0x85, 0xed, // 1: test rbp, rbp
    0x74, 0x46, // jz done
    0xb8, 0x49, 0x01, 0x00, 0x00, // mov eax, 329 (pkey_mprotect)
    0x48, 0x8b, 0x3b, // mov rdi, [rbx]
    0x48, 0x8b, 0x73, 0x08, // mov rsi, [rbx+8]
    0x48, 0x8b, 0x53, 0x10, // mov rdx, [rbx+16]
    0x49, 0xc7, 0xc2, 0xff, 0xff, 0xff, 0xff, // mov r10, -1
    0x0f, 0x05, // syscall
    0x48, 0x83, 0xf8, 0xda, // cmp rax, -ENOSYS
    0x75, 0x12, // jne 2f
    0xb8, 0x0a, 0x00, 0x00, 0x00, // mov eax, 10 (mprotect)
    0x48, 0x8b, 0x3b, // mov rdi, [rbx]
    0x48, 0x8b, 0x73, 0x08, // mov rsi, [rbx+8]
    0x48, 0x8b, 0x53, 0x10, // mov rdx, [rbx+16]
    0x0f, 0x05, // syscall
    0x48, 0x89, 0x43, 0x18, // 2: mov [rbx+24], rax
    0x48, 0x85, 0xc0, // test rax, rax
    0x74, 0x03, // jz 3f
    0x41, 0xff, 0xc4, // inc r12d
    0x48, 0x83, 0xc3, 0x20, // 3: add rbx, 32
    0x48, 0xff, 0xcd, // dec rbp
    0xeb, 0xb5, // jmp 1b
    0xcc, // done: int3
    0x0f, 0x05, // rsys: syscall
    0xcc, // int3
];
const STUB_DONE: u64 = 0x54;
const RSYS: u64 = 0x55;
const RSYS_DONE: u64 = 0x58;

pub const CODE_LEN: u64 = 256 << 10;
pub const DATA_LEN: u64 = 256 << 10;
/// Offset in the code area where trampoline slots begin.
pub const SLOTS_OFF: u64 = 0x8000;
/// Code-area offset of the go stub (see [`GoBatch`]), below the slots.
const GO_OFF: u64 = 0x100;
/// Data-area offset of the go stub's per-range results.
const GO_RES: u64 = 0xb000;
/// Most ranges one go stub changes (59 code bytes and one result each);
/// larger batches take the stopping path.
const GO_MAX: usize = 480;
/// Data-area scratch for the remote `sigaltstack` query.
const ALTSTACK_OFF: u64 = 0xa000;
/// Batch table: entries of 32 bytes at the start of the data area.
const TABLE_ENTRIES: usize = 1024;

/// Our pages in the tracee (never guarded, never unmapped by us).
#[derive(Debug, Clone, Copy)]
pub struct Injected {
    pub code: u64,
    pub data: u64,
}

impl Injected {
    pub fn contains(&self, addr: u64) -> bool {
        (addr >= self.code && addr < self.code + CODE_LEN) || (addr >= self.data && addr < self.data + DATA_LEN)
    }
}

/// Live blocks of the foreign arena, and those the host holds (returned by a
/// foreign call, passed to a callback, or reallocated by the host): their
/// pages are guarded during foreign calls, so what the library does to
/// memory it handed out stays recorded. The rest of the arena never is.
#[derive(Debug, Default, Clone)]
pub struct ArenaBlocks {
    live: std::collections::BTreeMap<u64, u64>,
    exported: std::collections::BTreeSet<u64>,
}

impl ArenaBlocks {
    /// Follows an allocation event (`arena`: the unguarded arena's range).
    pub fn on_event(&mut self, arena: (u64, u64), e: &ffirec_format::Event) {
        use ffirec_format::{Domain, Event};
        match *e {
            Event::Alloc { ptr, size, old_ptr, domain, .. } => {
                let was_exported = old_ptr != 0 && self.exported.remove(&old_ptr);
                if old_ptr != 0 {
                    self.live.remove(&old_ptr);
                }
                if ptr >= arena.0 && ptr < arena.1 && size > 0 {
                    self.live.insert(ptr, size);
                    if was_exported || domain == Domain::Host {
                        self.exported.insert(ptr);
                    }
                }
            }
            Event::Free { ptr, .. } => {
                self.live.remove(&ptr);
                self.exported.remove(&ptr);
            }
            _ => {}
        }
    }

    /// `value` reached host code (a return value or callback argument): if
    /// it is the start of a live arena block, the host now holds that block.
    pub fn export(&mut self, value: u64) {
        if self.live.contains_key(&value) {
            self.exported.insert(value);
        }
    }

    /// Page-rounded, merged ranges of the blocks the host holds.
    fn pages(&self, page: u64) -> Vec<(u64, u64)> {
        let mut out: Vec<(u64, u64)> = Vec::new();
        for &p in &self.exported {
            let Some(&n) = self.live.get(&p) else { continue };
            let (a, b) = (p & !(page - 1), (p.saturating_add(n) + page - 1) & !(page - 1));
            match out.last_mut() {
                Some(last) if a <= last.1 => last.1 = last.1.max(b),
                _ => out.push((a, b)),
            }
        }
        out
    }
}

/// A protection batch the thread runs on its way back to `final_regs`
/// without stopping: straight-line `pkey_mprotect` calls, then every
/// general register, `rflags` and `rip` reloaded from immediates, so the
/// batch costs no ptrace stop of its own (the synchronous [`Tracer::run_batch`]
/// costs one). Kept until the thread's next stop, which tells whether it is
/// still inside (see [`Tracer::go_stop`]).
///
/// Signals that arrive while the protections are half applied are held back:
/// the `test` before the error trap is patched into an `int3`, and at that
/// trap they are re-sent, as [`Tracer::run_until_trap`] does. A signal that
/// arrives after the last call is delivered at `final_regs` directly.
#[derive(Debug, Clone)]
pub struct GoBatch {
    start: u64,
    /// `test rbx, rbx`: every protection call is done once rip passes it.
    check: u64,
    /// After the error trap's `int3`: the register reload.
    restore: u64,
    end: u64,
    results: u64,
    entries: Vec<(u64, u64, u32)>,
    final_regs: RawRegs,
    deferred: Vec<i32>,
    patched: bool,
}

/// Code of a go stub at `at` for `entries` (results stored at `res`), and
/// the offsets of its `check` and `restore` points. `rbx` must be zero on
/// entry (it collects "some call failed", ENOMEM aside: the range was
/// unmapped meanwhile).
/// With `affinity`, the thread then sets its own CPU affinity to it
/// (`sched_setaffinity(0, …)`; the mask sits after the code; its result is
/// not checked: affinity is a hint).
fn build_go(
    at: u64,
    res: u64,
    nr: u32,
    entries: &[(u64, u64, u32)],
    fin: &RawRegs,
    affinity: Option<&libc::cpu_set_t>,
) -> Option<(Vec<u8>, u64, u64)> {
    let mut c: Vec<u8> = Vec::with_capacity(entries.len() * 59 + 400);
    let rip_disp = |c: &Vec<u8>, len_after: u64, target: u64| -> Option<[u8; 4]> {
        let next = at + c.len() as u64 + len_after;
        i32::try_from(target as i64 - next as i64).ok().map(i32::to_le_bytes)
    };
    for (i, &(addr, len, prot)) in entries.iter().enumerate() {
        c.push(0xb8); // mov eax, nr
        c.extend_from_slice(&nr.to_le_bytes());
        c.extend_from_slice(&[0x48, 0xbf]); // mov rdi, addr
        c.extend_from_slice(&addr.to_le_bytes());
        c.extend_from_slice(&[0x48, 0xbe]); // mov rsi, len
        c.extend_from_slice(&len.to_le_bytes());
        c.push(0xba); // mov edx, prot
        c.extend_from_slice(&prot.to_le_bytes());
        c.extend_from_slice(&[0x49, 0xc7, 0xc2, 0xff, 0xff, 0xff, 0xff]); // mov r10, -1
        c.extend_from_slice(&[0x0f, 0x05]); // syscall
        c.extend_from_slice(&[0x48, 0x89, 0x05]); // mov [rip+res_i], rax
        let d = rip_disp(&c, 4, res + 8 * i as u64)?;
        c.extend_from_slice(&d);
        c.extend_from_slice(&[0x48, 0x85, 0xc0]); // test rax, rax
        c.extend_from_slice(&[0x74, 0x08]); // jz next
        c.extend_from_slice(&[0x48, 0x83, 0xf8, (-libc::ENOMEM) as u8]); // cmp rax, -ENOMEM
        c.extend_from_slice(&[0x74, 0x02]); // je next
        c.extend_from_slice(&[0xb3, 0x01]); // mov bl, 1
    }
    let mut mask_at = None;
    if affinity.is_some() {
        c.push(0xb8); // mov eax, SYS_sched_setaffinity
        c.extend_from_slice(&(libc::SYS_sched_setaffinity as u32).to_le_bytes());
        c.extend_from_slice(&[0x31, 0xff]); // xor edi, edi
        c.push(0xbe); // mov esi, size
        c.extend_from_slice(&(std::mem::size_of::<libc::cpu_set_t>() as u32).to_le_bytes());
        c.extend_from_slice(&[0x48, 0x8d, 0x15]); // lea rdx, [rip+mask]
        mask_at = Some(c.len());
        c.extend_from_slice(&[0; 4]);
        c.extend_from_slice(&[0x0f, 0x05]); // syscall
    }
    let check = c.len() as u64;
    c.extend_from_slice(&[0x48, 0x85, 0xdb]); // test rbx, rbx
    c.extend_from_slice(&[0x74, 0x01]); // jz restore
    c.push(0xcc); // int3: some call failed
    let restore = c.len() as u64;
    c.extend_from_slice(&[0x48, 0x8d, 0x25]); // lea rsp, [rip+flags]
    let flags_at = c.len();
    c.extend_from_slice(&[0; 4]);
    c.push(0x9d); // popfq
    let gprs: [(u8, u64); 15] = [
        (0, fin.rax),
        (1, fin.rcx),
        (2, fin.rdx),
        (3, fin.rbx),
        (5, fin.rbp),
        (6, fin.rsi),
        (7, fin.rdi),
        (8, fin.r8),
        (9, fin.r9),
        (10, fin.r10),
        (11, fin.r11),
        (12, fin.r12),
        (13, fin.r13),
        (14, fin.r14),
        (15, fin.r15),
    ];
    for (r, v) in gprs.into_iter().chain(std::iter::once((4, fin.rsp))) {
        c.push(0x48 | if r >= 8 { 1 } else { 0 }); // mov r64, imm64
        c.push(0xb8 + (r & 7));
        c.extend_from_slice(&v.to_le_bytes());
    }
    c.extend_from_slice(&[0xff, 0x25, 0, 0, 0, 0]); // jmp [rip+0]
    c.extend_from_slice(&fin.rip.to_le_bytes());
    // popfq reads its qword here (the code area is readable).
    let flags_off = c.len() as u64;
    let disp = i32::try_from(flags_off as i64 - (flags_at as i64 + 4)).ok()?;
    c[flags_at..flags_at + 4].copy_from_slice(&disp.to_le_bytes());
    c.extend_from_slice(&fin.eflags.to_le_bytes());
    if let (Some(mask), Some(at)) = (affinity, mask_at) {
        let disp = i32::try_from(c.len() as i64 - (at as i64 + 4)).ok()?;
        c[at..at + 4].copy_from_slice(&disp.to_le_bytes());
        // SAFETY: cpu_set_t is a plain bit array; we view its bytes.
        let bytes = unsafe {
            std::slice::from_raw_parts(
                (mask as *const libc::cpu_set_t).cast::<u8>(),
                std::mem::size_of::<libc::cpu_set_t>(),
            )
        };
        c.extend_from_slice(bytes);
    }
    Some((c, check, restore))
}

/// The last guard set and batch table of one process, so a call entry
/// where nothing changed redoes neither (see [`Tracer::compute_guards`]).
#[derive(Debug, Default)]
pub struct GuardCache {
    pid: Pid,
    /// The injected data area the table was written to.
    data: u64,
    /// Batch table bytes now in the tracee's data area (empty: unknown).
    table: Vec<u8>,
    /// Everything the last guard set was computed from (empty: none).
    key: Vec<u64>,
    guards: Vec<GuardRange>,
    /// Text ranges given a VMA flag of their own (`mark_texts`), sorted, and their process.
    texts: Vec<(u64, u64)>,
    texts_pid: Pid,
    /// The host-init tracked ranges among `guards`.
    tracked: Vec<(u64, u64)>,
}

impl GuardCache {
    /// Whether `range` of `pid` still needs [`Tracer::mark_texts`]; from now on it does not.
    fn mark(&mut self, pid: Pid, range: (u64, u64)) -> bool {
        if self.texts_pid != pid {
            self.texts_pid = pid;
            self.texts.clear();
        }
        match self.texts.binary_search(&range) {
            Ok(_) => false,
            Err(i) => {
                self.texts.insert(i, range);
                true
            }
        }
    }

    /// Forget everything (exec: a new image; the data area may reappear at the same address).
    pub fn clear(&mut self) {
        *self = GuardCache::default();
    }
}

/// A host range made `PROT_NONE`, with the protection to restore.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuardRange {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
}

impl Tracer {
    /// The guard covering `addr`, if it is on a guarded page.
    #[inline]
    pub fn guard_of(&self, addr: u64) -> Option<&GuardRange> {
        let i = self.guards.partition_point(|g| g.end <= addr);
        self.guards.get(i).filter(|g| g.start <= addr)
    }

    /// Lets thread `tid` run from `regs` until the `int3` at `trap_rip - 1`.
    /// Signals that arrive meanwhile are re-sent afterwards. Returns the
    /// registers at the trap; the caller restores its own.
    pub fn run_until_trap(&mut self, tid: Pid, regs: &RawRegs, trap_rip: u64) -> Result<RawRegs, Error> {
        let mut regs = *regs;
        // No syscall-restart fix-ups may apply to the injected code.
        regs.orig_rax = u64::MAX;
        sys::setregs(tid, &regs)?;
        sys::cont(tid, 0)?;
        let mut deferred = Vec::new();
        let result = loop {
            match self.wait_thread(tid)? {
                Stop::Signal { signal: libc::SIGTRAP, .. } => {
                    let r = sys::getregs(tid)?;
                    if r.rip == trap_rip {
                        break Ok(r);
                    }
                    break Err(Error::Protocol(format!(
                        "injected code trapped at {:#x}, expected {trap_rip:#x}",
                        r.rip
                    )));
                }
                Stop::Signal { signal: libc::SIGSEGV, .. } => {
                    let r = sys::getregs(tid)?;
                    break Err(Error::Protocol(format!("injected code faulted at {:#x}", r.rip)));
                }
                Stop::Signal { signal, .. } => {
                    deferred.push(signal);
                    sys::cont(tid, 0)?;
                }
                Stop::Exited { .. } | Stop::Killed { .. } => break Err(Error::TraceeDied { pid: tid }),
                _ => sys::cont(tid, 0)?,
            }
        };
        for s in deferred {
            let _ = sys::tgkill(self.pid, tid, s);
        }
        result
    }

    /// Maps our code and data pages with one-off remote `mmap`s run from the
    /// entry point (its bytes and the registers are restored afterwards).
    pub fn inject_pages(&mut self, tid: Pid, regs: &RawRegs) -> Result<(), Error> {
        let at = regs.rip;
        let mut saved = [0u8; 3];
        self.mem.read(RemoteAddr(at), &mut saved)?;
        self.mem.write(RemoteAddr(at), &STUB[RSYS as usize..RSYS_DONE as usize])?;
        let syscall = |t: &mut Tracer, nr: i64, args: [u64; 6]| -> Result<u64, Error> {
            let mut r = *regs;
            r.rax = nr as u64;
            r.rdi = args[0];
            r.rsi = args[1];
            r.rdx = args[2];
            r.r10 = args[3];
            r.r8 = args[4];
            r.r9 = args[5];
            r.rip = at;
            let out = t.run_until_trap(tid, &r, at + 3)?;
            if (out.rax as i64) < 0 && (out.rax as i64) > -4096 {
                return Err(Error::Protocol(format!("remote syscall {nr} failed: errno {}", -(out.rax as i64))));
            }
            Ok(out.rax)
        };
        // One mapping, code first, so the data area is in rip-relative reach
        // of every trampoline slot.
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u64;
        let flags = (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS) as u64;
        let base = syscall(self, libc::SYS_mmap, [0, CODE_LEN + DATA_LEN, rw, flags, u64::MAX, 0]);
        let rx = (libc::PROT_READ | libc::PROT_EXEC) as u64;
        let prot = match base {
            Ok(b) => syscall(self, libc::SYS_mprotect, [b, CODE_LEN, rx, 0, 0, 0]),
            Err(_) => Ok(0),
        };
        self.mem.write(RemoteAddr(at), &saved)?;
        let base = base?;
        prot?;
        let (code, data) = (base, base + CODE_LEN);
        self.mem.write(RemoteAddr(code), &STUB)?;
        self.inject = Some(Injected { code, data });
        // pkey_mprotect(…, -1) keeps a seccomp filter on mprotect out of our
        // way; older kernels lack it, and trampolines cannot branch on ENOSYS.
        let probe = self.remote_syscall(tid, regs, libc::SYS_pkey_mprotect, [data, self.page, rw, u64::MAX, 0, 0])?;
        self.protect_nr = if probe == 0 { libc::SYS_pkey_mprotect as u32 } else { libc::SYS_mprotect as u32 };
        Ok(())
    }

    /// One remote syscall through the injected `syscall; int3`.
    pub fn remote_syscall(&mut self, tid: Pid, regs: &RawRegs, nr: i64, args: [u64; 6]) -> Result<i64, Error> {
        let inj = self.inject.ok_or_else(|| Error::Protocol("no injected pages".into()))?;
        let mut r = *regs;
        r.rax = nr as u64;
        r.rdi = args[0];
        r.rsi = args[1];
        r.rdx = args[2];
        r.r10 = args[3];
        r.r8 = args[4];
        r.r9 = args[5];
        r.rip = inj.code + RSYS;
        let out = self.run_until_trap(tid, &r, inj.code + RSYS_DONE)?;
        Ok(out.rax as i64)
    }

    /// Runs `pkey_mprotect` over every (addr, len, prot) in `thread`, one
    /// stop per 1024 ranges. Leaves the thread's registers clobbered: the
    /// caller sets the registers it wants before resuming. A table the stub
    /// left as it was written (every call succeeded) is not written again
    /// when the next batch is the same (call entries usually are).
    pub fn run_batch(&mut self, tid: Pid, regs: &RawRegs, entries: &[(u64, u64, u32)]) -> Result<(), Error> {
        let Some(inj) = self.inject else { return Ok(()) };
        for chunk in entries.chunks(TABLE_ENTRIES) {
            let mut table = Vec::with_capacity(chunk.len() * 32);
            for &(addr, len, prot) in chunk {
                table.extend_from_slice(&addr.to_le_bytes());
                table.extend_from_slice(&len.to_le_bytes());
                table.extend_from_slice(&u64::from(prot).to_le_bytes());
                table.extend_from_slice(&0u64.to_le_bytes());
            }
            let cache = &mut self.guard_cache;
            if !(cache.pid == self.mem.pid() && cache.data == inj.data && cache.table == table) {
                cache.table.clear();
                self.mem.write(RemoteAddr(inj.data), &table)?;
            }
            let mut r = *regs;
            r.rip = inj.code;
            r.rdi = inj.data;
            r.rsi = chunk.len() as u64;
            let out = self.run_until_trap(tid, &r, inj.code + STUB_DONE + 1)?;
            self.sink.counters.batches += 1;
            self.sink.counters.batch_ranges += chunk.len() as u64;
            if out.r12 == 0 {
                let cache = &mut self.guard_cache;
                (cache.pid, cache.data) = (self.mem.pid(), inj.data);
                cache.table = table;
                continue;
            }
            self.guard_cache.table.clear();
            self.mem.read(RemoteAddr(inj.data), &mut table)?;
            for (i, e) in table.chunks_exact(32).enumerate() {
                let res = i64::from_le_bytes(e[24..32].try_into().unwrap_or([0; 8]));
                // ENOMEM: the range was unmapped meanwhile; nothing to protect.
                if res != 0 && res != -(libc::ENOMEM as i64) && !self.warned_batch {
                    self.warned_batch = true;
                    let (a, l, p) = chunk[i];
                    eprintln!("ffirec: warning: mprotect({a:#x}, {l:#x}, {p}) in the tracee failed: errno {}", -res);
                }
            }
        }
        Ok(())
    }

    /// Runs `entries` on the way to `final_regs` and resumes the thread,
    /// with no stop (see [`GoBatch`]); too many ranges take the stopping
    /// path. The thread must be stopped; its next stop goes to [`Tracer::go_stop`].
    /// With `affinity`, the thread's CPU affinity is set to it on the way
    /// (by the stub itself, after the protection calls).
    pub fn run_batch_go(
        &mut self,
        tid: Pid,
        final_regs: &RawRegs,
        entries: &[(u64, u64, u32)],
        affinity: Option<&libc::cpu_set_t>,
    ) -> Result<(), Error> {
        // Host-init tracking must see every host syscall from here on: a
        // thread let go from the stub's own (unobserved) syscalls would run
        // on unobserved, and a read() into a tracked page would fail.
        let observe = self.hostinit.wants_syscalls(self.pid);
        let Some(inj) = self.inject.filter(|_| entries.len() <= GO_MAX && !observe) else {
            self.run_batch(tid, final_regs, entries)?;
            if let Some(mask) = affinity {
                sys::set_affinity(tid, mask);
            }
            sys::setregs(tid, final_regs)?;
            return self.resume(tid, 0);
        };
        let (start, results) = (inj.code + GO_OFF, inj.data + GO_RES);
        let Some((code, check, restore)) = build_go(start, results, self.protect_nr, entries, final_regs, affinity)
        else {
            return Err(Error::Protocol("go stub out of reach of its data".into()));
        };
        self.mem.write(RemoteAddr(start), &code)?;
        let mut r = *final_regs;
        r.rip = start;
        r.rbx = 0;
        r.orig_rax = u64::MAX;
        sys::setregs(tid, &r)?;
        self.sink.counters.batches += 1;
        self.sink.counters.batch_ranges += entries.len() as u64;
        let go = GoBatch {
            start,
            check: start + check,
            restore: start + restore,
            end: start + code.len() as u64,
            results,
            entries: entries.to_vec(),
            final_regs: *final_regs,
            deferred: Vec::new(),
            patched: false,
        };
        if let Some(t) = self.threads.get_mut(&tid) {
            t.go = Some(go);
        }
        self.resume(tid, 0)
    }

    /// A signal stop of the thread a [`GoBatch`] was started on. Returns
    /// false when the thread has left the stub (the stop is an ordinary one).
    pub fn go_stop(&mut self, tid: Pid, signal: i32) -> Result<bool, Error> {
        let regs = sys::getregs(tid)?;
        let Some(go) = self.threads.get_mut(&tid).and_then(|t| t.go.as_mut()) else { return Ok(false) };
        if regs.rip < go.start || regs.rip >= go.end {
            if let Some(t) = self.threads.get_mut(&tid) {
                t.go = None;
            }
            // The ordinary stop's handler needs them too.
            self.stop_regs = Some((tid, regs));
            return Ok(false);
        }
        let (check, restore) = (go.check, go.restore);
        let trapped = signal == libc::SIGTRAP && (regs.rip == check + 1 || regs.rip == restore);
        if !trapped && signal == libc::SIGSEGV {
            return Err(Error::Protocol(format!("injected code faulted at {:#x}", regs.rip)));
        }
        if !trapped && regs.rip <= check {
            // Protections half applied: hold the signal back until the trap.
            go.deferred.push(signal);
            if !go.patched {
                go.patched = true;
                self.mem.write(RemoteAddr(check), &[0xcc])?;
            }
            sys::cont(tid, 0)?;
            if let Some(t) = self.threads.get_mut(&tid) {
                t.running = true;
            }
            return Ok(true);
        }
        // Every call is done: finish here, at the registers the stub restores.
        let Some(go) = self.threads.get_mut(&tid).and_then(|t| t.go.take()) else { return Ok(true) };
        if go.patched {
            self.mem.write(RemoteAddr(check), &[0x48])?;
        }
        let mut res = vec![0u8; go.entries.len() * 8];
        self.mem.read(RemoteAddr(go.results), &mut res)?;
        for (e, r) in go.entries.iter().zip(res.chunks_exact(8)) {
            let r = i64::from_le_bytes(r.try_into().unwrap_or([0; 8]));
            if r != 0 && r != -(libc::ENOMEM as i64) && !self.warned_batch {
                self.warned_batch = true;
                eprintln!(
                    "ffirec: warning: mprotect({:#x}, {:#x}, {}) in the tracee failed: errno {}",
                    e.0, e.1, e.2, -r
                );
            }
        }
        sys::setregs(tid, &go.final_regs)?;
        for s in go.deferred {
            let _ = sys::tgkill(self.pid, tid, s);
        }
        self.resume(tid, if trapped { 0 } else { signal })?;
        Ok(true)
    }

    /// The guard set, from a fresh read of the maps: the heap, anonymous
    /// private writable mappings and writable segments (and bss tails) of
    /// host modules — minus every thread's stack and TLS, neutral and foreign
    /// data, our own pages and vvar/vdso.
    pub fn compute_guards(&mut self, owner: Pid, owner_regs: &RawRegs) -> Result<Vec<GuardRange>, Error> {
        // The owner's alternate signal stack: a signal delivered on it
        // during the call must find it writable (it may sit in the heap, so
        // only its own pages are carved out, below).
        let alt = self.altstack_of(owner, owner_regs)?;
        let on_alt = alt.is_some_and(|(sp, n)| owner_regs.rsp >= sp && owner_regs.rsp <= sp + n);
        let mut keep: Vec<u64> = vec![owner_regs.fs_base];
        if !on_alt {
            keep.push(owner_regs.rsp);
        }
        let others: Vec<Pid> = self.threads.keys().copied().filter(|&t| t != owner).collect();
        for t in others {
            if let Ok(r) = sys::getregs(t) {
                keep.push(r.rsp);
                keep.push(r.fs_base);
            } else if let Some((sp, fs)) = self.threads.get(&t).and_then(|th| th.exit_regs) {
                // Running past its exit stop: its stack and TCB must stay writable.
                keep.push(sp);
                keep.push(fs);
            }
        }
        // Only writable mappings can be guarded: the kernel lists just those
        // (PROCMAP_QUERY), at about half the cost of the whole text. Nothing
        // tells us what host code mapped, unmapped or reprotected since the
        // last call (glibc's malloc, ld.so and raw syscalls bypass the alloc
        // shim), so every entry asks the kernel again — first without names
        // (no path lookups): when those mappings and every other input are
        // what the last guard set was computed from, that set is reused.
        // Host-init tracking also needs the read-only pages it protected, so
        // it reads everything (its pages are in the key by their generation).
        // Without the alloc shim, `adopt_moved` needs the PROT_NONE mappings
        // too (see there).
        let walk = self.alloc.is_some();
        let mut key = Vec::new();
        if walk && self.guard_key(&mut key, &keep, alt, on_alt)? {
            // The shim's own count too: its mprotects are not all seen (a
            // callback's syscalls may run without stops).
            key.extend([self.hostinit.generation, self.alloc.as_ref().map_or(0, |a| a.hostinit_protects())]);
            if self.guard_cache.key == key {
                self.none_at_entry = None;
                self.sink.counters.guard_sets_reused += 1;
                let tracked = self.guard_cache.tracked.clone();
                self.hostinit_guards_reused(tracked);
                return Ok(self.guard_cache.guards.clone());
            }
        } else {
            key.clear();
        }
        let writable = if walk && !self.hostinit.enabled { crate::maps::read_writable(&self.mem)? } else { None };
        let maps = match writable {
            Some(m) => {
                self.none_at_entry = None;
                m
            }
            None => {
                let maps = crate::maps::read(self.pid)?;
                self.none_at_entry = Some(maps.iter().filter(|m| m.prot == 0).map(|m| (m.start, m.end)).collect());
                maps
            }
        };
        let mut out: Vec<GuardRange> = Vec::new();
        for m in &maps {
            if !self.guardable(m, &keep) {
                continue;
            }
            match out.last_mut() {
                Some(last) if last.end == m.start && last.prot == m.prot => last.end = m.end,
                _ => out.push(GuardRange { start: m.start, end: m.end, prot: m.prot }),
            }
        }
        // Carved out page-exactly (they may share a mapping with guarded
        // memory): the owner's alternate signal stack, and the foreign arena
        // (the library's own allocations: guarding them costs a fault per
        // access of its internal state and answers nobody's question).
        let page = self.page;
        let mut carve: Vec<(u64, u64)> = Vec::with_capacity(2);
        if let Some((sp, size)) = alt {
            carve.push((sp & !(page - 1), (sp + size + page - 1) & !(page - 1)));
        }
        // Only where the shim's arena mapping is: a process whose arena
        // could not be mapped may have program memory in that range.
        let arena = self.arena.filter(|&(a, _)| maps.iter().any(|m| m.start == a && !m.is_file() && !m.shared));
        if let Some(arena) = arena {
            carve.push(arena);
        }
        // The host-init page table is the shim's, read in foreign mode too.
        carve.push((crate::hostinit::TABLE, crate::alloc::HOSTINIT_TABLE.end));
        for (a, b) in carve {
            out = carve_out(out, a, b);
        }
        // Pages write-protected for host-init tracking are read-only in the
        // maps (so skipped above) but host memory: guarded, opened read-write.
        let tracked = self.hostinit_guards(&maps);
        for &(a, b) in &tracked {
            let i = out.partition_point(|g| g.start < a);
            out.insert(i, GuardRange { start: a, end: b, prot: PROT_R | PROT_W });
        }
        self.guard_cache.tracked = tracked;
        if arena.is_some() {
            // Arena blocks the host holds are guarded after all (the arena is
            // one private read-write mapping).
            for (a, b) in self.arena_blocks.pages(page) {
                let i = out.partition_point(|g| g.start < a);
                out.insert(i, GuardRange { start: a, end: b, prot: PROT_R | PROT_W });
            }
        }
        self.guard_cache.key = key;
        self.guard_cache.guards.clone_from(&out);
        Ok(out)
    }

    /// Everything the guard set is computed from, but the mappings' names:
    /// the process, the writable mappings' fingerprint, which of them hold a
    /// stack or TCB to keep, the owner's alternate stack, our pages, the
    /// modules and the arena blocks the host holds. `Ok(false)`: the kernel
    /// lacks `PROCMAP_QUERY`.
    fn guard_key(
        &self,
        key: &mut Vec<u64>,
        keep: &[u64],
        alt: Option<(u64, u64)>,
        on_alt: bool,
    ) -> Result<bool, Error> {
        key.push(self.mem.pid() as u64);
        let start = key.len();
        if !crate::maps::writable_fingerprint(&self.mem, key)? {
            return Ok(false);
        }
        let n = (key.len() - start) / 5;
        for &a in keep {
            let hit = (0..n).find(|&i| key[start + 5 * i] <= a && a < key[start + 5 * i + 1]);
            key.push(hit.map_or(u64::MAX, |i| i as u64));
        }
        let (sp, size) = alt.unwrap_or((0, 0));
        key.extend_from_slice(&[sp, size, on_alt as u64]);
        let (code, data) = self.inject.map_or((0, 0), |i| (i.code, i.data));
        let (a0, a1) = self.arena.unwrap_or((0, 0));
        key.extend_from_slice(&[code, data, a0, a1, self.modules.len() as u64]);
        for l in &self.modules {
            key.extend_from_slice(&[l.index as u64, l.module.domain as u64, l.loads.len() as u64]);
            for s in &l.loads {
                key.extend_from_slice(&[s.start, s.end, s.prot as u64]);
            }
        }
        for (a, b) in self.arena_blocks.pages(self.page) {
            key.extend_from_slice(&[a, b]);
        }
        Ok(true)
    }

    /// Text that flips between modes (host and foreign modules') gets a VMA
    /// flag of its own once, `MADV_NOHUGEPAGE`, so the kernel never merges
    /// it with the file's neighbouring read-only segments when it loses
    /// exec, nor splits it again when it gets it back: on the test VM a
    /// 1-page text flip and back costs 11.5 µs with the merge and split,
    /// 5.9 µs without, and every call does two. The flag only keeps
    /// khugepaged from collapsing that text into huge pages (which in the
    /// default `madvise` THP mode it does not do anyway unless the program
    /// asked for it with `MADV_HUGEPAGE`). Failure (no THP in the kernel)
    /// costs nothing but the merges.
    pub fn mark_texts(&mut self, tid: Pid, regs: &RawRegs) -> Result<(), Error> {
        if self.inject.is_none() {
            return Ok(());
        }
        let pid = self.mem.pid();
        let mut todo = Vec::new();
        for l in &self.modules {
            if l.module.domain == ffirec_format::Domain::Neutral {
                continue;
            }
            for t in &l.text {
                if self.guard_cache.mark(pid, (t.start, t.end)) {
                    todo.push((t.start, t.end));
                }
            }
        }
        if todo.is_empty() {
            return Ok(());
        }
        for (a, b) in todo {
            self.remote_syscall(tid, regs, libc::SYS_madvise, [a, b - a, libc::MADV_NOHUGEPAGE as u64, 0, 0, 0])?;
        }
        // The registers the remote syscalls clobbered are restored by the caller.
        sys::setregs(tid, regs)
    }

    /// The thread's `sigaltstack` (its base address), asked once per thread
    /// with a remote `sigaltstack(NULL, &old)` and cached.
    fn altstack_of(&mut self, tid: Pid, regs: &RawRegs) -> Result<Option<(u64, u64)>, Error> {
        if let Some(t) = self.threads.get(&tid) {
            if let Some(cached) = t.altstack {
                return Ok(cached);
            }
        }
        let Some(inj) = self.inject else { return Ok(None) };
        let out = inj.data + ALTSTACK_OFF;
        let r = self.remote_syscall(tid, regs, libc::SYS_sigaltstack, [0, out, 0, 0, 0, 0])?;
        let mut ss = [0u8; 24];
        let found = if r == 0 && self.mem.read(RemoteAddr(out), &mut ss).is_ok() {
            let sp = u64::from_le_bytes(ss[0..8].try_into().unwrap_or([0; 8]));
            let flags = i32::from_le_bytes(ss[8..12].try_into().unwrap_or([0; 4]));
            let size = u64::from_le_bytes(ss[16..24].try_into().unwrap_or([0; 8]));
            (flags & libc::SS_DISABLE == 0 && sp != 0).then_some((sp, size))
        } else {
            None
        };
        // The registers the remote syscall clobbered are restored by the caller.
        sys::setregs(tid, regs)?;
        if let Some(t) = self.threads.get_mut(&tid) {
            t.altstack = Some(found);
        }
        Ok(found)
    }

    /// A foreign-mode fault outside the guard set on a PROT_NONE anonymous
    /// mapping where a block moved during this call: guarded memory that
    /// moved (realloc → mremap keeps PROT_NONE). Adopt it as guarded, with
    /// read-write restored at return.
    pub fn adopt_moved(&mut self, tid: Pid, addr: u64) -> Result<bool, Error> {
        let maps = crate::maps::read(self.pid)?;
        let Some(m) = maps.iter().find(|m| m.contains(addr)) else { return Ok(false) };
        let in_arena = self.arena.is_some_and(|(a, b)| m.start < b && a < m.end);
        let moved = match &self.none_at_entry {
            Some(none) => !none.contains(&(m.start, m.end)),
            // Only the writable mappings were listed at entry. A block moves
            // inside realloc (glibc writes the moved chunk's header before
            // returning) or has moved during this call (the shim's ring); a
            // PROT_NONE mapping of the program's own, or one the library made,
            // faults as it would natively.
            None => {
                self.alloc.as_ref().is_some_and(|a| a.in_allocator(tid as u32))
                    || self.moved.iter().any(|&(p, n)| p < m.end && m.start < p.saturating_add(n.max(1)))
            }
        };
        if m.prot != 0 || m.shared || !m.path.is_empty() || in_arena || !moved {
            return Ok(false);
        }
        let g = GuardRange { start: m.start, end: m.end, prot: PROT_R | PROT_W };
        let i = self.guards.partition_point(|x| x.start < g.start);
        self.guards.insert(i, g);
        Ok(true)
    }

    fn guardable(&self, m: &Mapping, keep: &[u64]) -> bool {
        // Executable anonymous memory is code (libffi/ctypes closures, JIT
        // stubs): guarding it would fault on every instruction fetch there.
        if m.prot & PROT_W == 0 || m.prot & PROT_X != 0 || m.shared {
            return false;
        }
        if self.inject.is_some_and(|i| i.contains(m.start)) {
            return false;
        }
        if keep.iter().any(|&a| m.contains(a)) {
            return false;
        }
        if m.path == "[heap]" {
            return true;
        }
        if m.path.starts_with('[') {
            // [stack], [vvar], [vdso], [vsyscall], named anonymous memory we do not know.
            return false;
        }
        // A module's own writable pages, or the anonymous bss tail of one.
        for l in &self.modules {
            let owns = if m.is_file() {
                l.module.path == m.path
            } else {
                l.loads.iter().any(|s| s.prot & PROT_W != 0 && m.start < s.end && s.start < m.end)
            };
            if owns {
                return l.module.domain == ffirec_format::Domain::Host;
            }
        }
        true
    }
}

/// `guards` minus `[a, b)`.
fn carve_out(guards: Vec<GuardRange>, a: u64, b: u64) -> Vec<GuardRange> {
    let mut cut = Vec::with_capacity(guards.len() + 1);
    for g in guards {
        if g.end <= a || b <= g.start {
            cut.push(g);
            continue;
        }
        if g.start < a {
            cut.push(GuardRange { start: g.start, end: a, prot: g.prot });
        }
        if b < g.end {
            cut.push(GuardRange { start: b, end: g.end, prot: g.prot });
        }
    }
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use ffirec_format::{AllocFn, Domain, Event};

    #[test]
    fn arena_blocks_the_host_holds() {
        let arena = (0x6f00_0000_0000, 0x6f00_4000_0000);
        let alloc = |ptr, size, old_ptr, domain| Event::Alloc {
            tid: 1,
            func: AllocFn::Malloc,
            ptr,
            size,
            old_ptr,
            caller: 0,
            domain,
            zeroed: false,
        };
        let mut b = ArenaBlocks::default();
        b.on_event(arena, &alloc(0x6f00_0000_0010, 16, 0, Domain::Foreign));
        b.on_event(arena, &alloc(0x6f00_0000_1ff0, 0x20, 0, Domain::Foreign));
        b.on_event(arena, &alloc(0x6f00_0000_5010, 16, 0, Domain::Foreign));
        b.on_event(arena, &alloc(0x5555_0000_0010, 16, 0, Domain::Foreign));
        assert_eq!(b.pages(4096), vec![]);
        b.export(0x6f00_0000_0010);
        b.export(0x6f00_0000_1ff0);
        b.export(0x6f00_0000_0011); // not a block start
        b.export(0x5555_0000_0010); // not in the arena
        assert_eq!(b.pages(4096), vec![(0x6f00_0000_0000, 0x6f00_0000_3000)]);
        // A host realloc keeps it held; a free drops it; the host's own arena realloc exports.
        b.on_event(arena, &alloc(0x6f00_0000_8010, 64, 0x6f00_0000_0010, Domain::Host));
        b.on_event(arena, &Event::Free { tid: 1, ptr: 0x6f00_0000_1ff0, caller: 0, domain: Domain::Host });
        assert_eq!(b.pages(4096), vec![(0x6f00_0000_8000, 0x6f00_0000_9000)]);
    }

    #[test]
    fn go_stub_protects_then_reloads_every_register() {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic, OpKind, Register};
        let (at, res) = (0x7f00_1000_0100u64, 0x7f00_1004_b000u64);
        let entries = [(0x5555_0000_0000u64, 0x3000u64, 3u32), (0x7f00_2000_0000, 0x1000, 0)];
        // SAFETY: user_regs_struct is plain integers.
        let mut fin: RawRegs = unsafe { std::mem::zeroed() };
        (fin.rax, fin.rbx, fin.rsp, fin.r11, fin.r15) = (1, 2, 0x7ffd_0000_1000, 4, 5);
        (fin.rip, fin.eflags) = (0x5555_0000_1234, 0x246);
        let (code, check, restore) = build_go(at, res, 329, &entries, &fin, None).expect("stub");
        let mut d = Decoder::with_ip(64, &code, at, DecoderOptions::NONE);
        let mut ins = Vec::new();
        while d.can_decode() {
            let i = d.decode();
            let done = i.mnemonic() == Mnemonic::Jmp;
            ins.push(i);
            if done {
                break;
            }
        }
        let sys: Vec<_> = ins.iter().filter(|i| i.mnemonic() == Mnemonic::Syscall).collect();
        assert_eq!(sys.len(), 2);
        // Every call's arguments are immediates; its result goes to its own slot.
        let imm = |reg: Register| -> Vec<u64> {
            ins.iter()
                .filter(|i| {
                    i.mnemonic() == Mnemonic::Mov
                        && i.op0_register().full_register() == reg
                        && i.op1_kind() != OpKind::Register
                        && i.op1_kind() != OpKind::Memory
                })
                .map(|i| i.immediate(1))
                .collect()
        };
        assert_eq!(imm(Register::RDI)[..2], [0x5555_0000_0000, 0x7f00_2000_0000]);
        assert_eq!(imm(Register::RSI)[..2], [0x3000, 0x1000]);
        assert_eq!(imm(Register::RDX)[..2], [3, 0]);
        let stores: Vec<u64> = ins
            .iter()
            .filter(|i| i.mnemonic() == Mnemonic::Mov && i.op0_kind() == OpKind::Memory)
            .map(|i| i.ip_rel_memory_address())
            .collect();
        assert_eq!(stores, vec![res, res + 8]);
        // The check and restore points, then popfq from the flags slot and
        // all 16 registers loaded from immediates, rsp last, then jmp to rip.
        let at_check = ins.iter().position(|i| i.ip() == at + check).expect("check");
        assert_eq!(ins[at_check].mnemonic(), Mnemonic::Test);
        assert_eq!(ins[at_check + 2].mnemonic(), Mnemonic::Int3);
        let at_restore = ins.iter().position(|i| i.ip() == at + restore).expect("restore");
        assert_eq!(ins[at_restore].mnemonic(), Mnemonic::Lea);
        let flags_slot = ins[at_restore].ip_rel_memory_address() - at;
        assert_eq!(u64::from_le_bytes(code[flags_slot as usize..][..8].try_into().unwrap()), 0x246);
        assert_eq!(ins[at_restore + 1].mnemonic(), Mnemonic::Popfq);
        let reload = &ins[at_restore + 2..ins.len() - 1];
        assert_eq!(reload.len(), 16);
        assert!(reload.iter().all(|i| i.mnemonic() == Mnemonic::Mov && i.op1_kind() == OpKind::Immediate64));
        assert_eq!((reload[0].op0_register(), reload[0].immediate(1)), (Register::RAX, 1));
        assert_eq!((reload[3].op0_register(), reload[3].immediate(1)), (Register::RBX, 2));
        assert_eq!((reload[10].op0_register(), reload[10].immediate(1)), (Register::R11, 4));
        assert_eq!((reload[15].op0_register(), reload[15].immediate(1)), (Register::RSP, 0x7ffd_0000_1000));
        // No flag-changing instruction between popfq and the jump.
        assert!(reload.iter().all(|i| i.rflags_modified() == 0));
        let jmp = ins.last().expect("jmp");
        assert_eq!(jmp.mnemonic(), Mnemonic::Jmp);
        let target_at = (jmp.next_ip() - at) as usize;
        assert_eq!(u64::from_le_bytes(code[target_at..][..8].try_into().unwrap()), 0x5555_0000_1234);
    }

    #[test]
    fn batch_stub_branches_land_where_the_offsets_say() {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic};
        let at = 0x7f00_0000_0000u64;
        let mut d = Decoder::with_ip(64, &STUB, at, DecoderOptions::NONE);
        let ins: Vec<_> = std::iter::from_fn(|| d.can_decode().then(|| d.decode())).collect();
        assert!(ins.iter().all(|i| !i.is_invalid()));
        let find = |m: Mnemonic| ins.iter().filter(move |i| i.mnemonic() == m);
        let head = at + 9; // 1: test rbp, rbp
        assert_eq!(ins.iter().find(|i| i.ip() == head).map(|i| i.mnemonic()), Some(Mnemonic::Test));
        assert_eq!(find(Mnemonic::Je).next().map(|i| i.near_branch_target()), Some(at + STUB_DONE));
        assert_eq!(find(Mnemonic::Jmp).next().map(|i| i.near_branch_target()), Some(head));
        let int3: Vec<u64> = find(Mnemonic::Int3).map(|i| i.ip() - at).collect();
        assert_eq!(int3, vec![STUB_DONE, RSYS_DONE - 1]);
        let sys: Vec<u64> = find(Mnemonic::Syscall).map(|i| i.ip() - at).collect();
        assert_eq!(sys.last(), Some(&RSYS));
        assert_eq!(RSYS_DONE as usize, STUB.len());
        // Failures are counted in r12 (zeroed first, one inc after a non-zero result).
        assert_eq!(find(Mnemonic::Inc).map(|i| i.op0_register()).collect::<Vec<_>>(), vec![iced_x86::Register::R12D]);
        assert_eq!(find(Mnemonic::Xor).map(|i| i.op0_register()).collect::<Vec<_>>(), vec![iced_x86::Register::R12D]);
    }

    #[test]
    fn go_stub_gives_the_thread_its_affinity_back() {
        use iced_x86::{Decoder, DecoderOptions, Mnemonic, Register};
        let (at, res) = (0x7f00_1000_0100u64, 0x7f00_1004_b000u64);
        // SAFETY: user_regs_struct and cpu_set_t are plain integers.
        let (mut fin, mut mask): (RawRegs, libc::cpu_set_t) = unsafe { (std::mem::zeroed(), std::mem::zeroed()) };
        fin.rip = 0x5555_0000_1234;
        // SAFETY: sets bits in our local set.
        unsafe {
            libc::CPU_SET(0, &mut mask);
            libc::CPU_SET(5, &mut mask);
        }
        let entries = [(0x5555_0000_0000u64, 0x3000u64, 3u32)];
        let (code, check, _) = build_go(at, res, 329, &entries, &fin, Some(&mask)).expect("stub");
        let mut d = Decoder::with_ip(64, &code, at, DecoderOptions::NONE);
        let mut ins = Vec::new();
        while d.can_decode() && d.ip() < at + check {
            ins.push(d.decode());
        }
        // The protection call, then sched_setaffinity(0, sizeof mask, &mask), before the check.
        let sys: Vec<usize> = (0..ins.len()).filter(|&i| ins[i].mnemonic() == Mnemonic::Syscall).collect();
        assert_eq!(sys.len(), 2);
        let before = &ins[sys[0] + 1..sys[1]];
        let eax = before.iter().rev().find(|i| i.op0_register() == Register::EAX).map(|i| i.immediate(1));
        assert_eq!(eax, Some(libc::SYS_sched_setaffinity as u64));
        let esi = before.iter().rev().find(|i| i.op0_register() == Register::ESI).map(|i| i.immediate(1));
        assert_eq!(esi, Some(std::mem::size_of::<libc::cpu_set_t>() as u64));
        let lea = before.iter().find(|i| i.mnemonic() == Mnemonic::Lea).expect("lea rdx");
        assert_eq!(lea.op0_register(), Register::RDX);
        let off = (lea.ip_rel_memory_address() - at) as usize;
        let n = std::mem::size_of::<libc::cpu_set_t>();
        assert_eq!(off + n, code.len());
        assert_eq!(code[off], 0b10_0001);
        assert!(code[off + 1..].iter().all(|&b| b == 0));
        assert!(before.iter().any(|i| i.mnemonic() == Mnemonic::Xor && i.op0_register() == Register::EDI));
    }

    #[test]
    fn carve_out_splits_and_drops() {
        let g = |start, end| GuardRange { start, end, prot: 3 };
        let guards = vec![g(0x1000, 0x3000), g(0x4000, 0x8000), g(0x9000, 0xa000)];
        assert_eq!(
            carve_out(guards.clone(), 0x5000, 0x6000),
            vec![g(0x1000, 0x3000), g(0x4000, 0x5000), g(0x6000, 0x8000), g(0x9000, 0xa000)]
        );
        assert_eq!(carve_out(guards.clone(), 0x2000, 0x9800), vec![g(0x1000, 0x2000), g(0x9800, 0xa000)]);
        assert_eq!(carve_out(guards.clone(), 0x3000, 0x4000), guards);
        assert_eq!(carve_out(guards, 0, u64::MAX), vec![]);
    }
}
