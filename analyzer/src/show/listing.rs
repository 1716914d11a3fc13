//! The event listing: one block per event — number, thread and call context
//! on the first line; then the instruction, each memory access with the
//! allocation it hit, the bytes read, and the registers that changed since
//! the thread's previous snapshot.

use std::collections::{HashMap, HashSet};
use std::io::Write;

use ffirec_decode::{MemAccess, Rw};
use ffirec_format::{Event, Regs, Tid};
use iced_x86::{InstructionInfoFactory, Register};

use super::scan::{self, Chunks, Start};
use super::{Env, ShowError};
use crate::decode::Decoder;
use crate::report::func_name;
use crate::state::{Op, Timeline, NO_CALL};

const IND: &str = "          ";
const GPR: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

/// Replays events in order (calls, allocations, register snapshots) and
/// renders the ones asked for.
pub(crate) struct Lister<'e, 'a> {
    env: &'e Env<'a>,
    pub tl: Timeline,
    ops: Vec<(u64, Op)>,
    /// The replay started at event 0: allocation ordinals match `analyze`.
    pub ordinals: bool,
    start: u64,
    unresolved: HashSet<Tid>,
    last_regs: HashMap<Tid, Regs>,
    decoder: Decoder,
    scratch: Vec<MemAccess>,
}

impl<'e, 'a> Lister<'e, 'a> {
    pub fn new(env: &'e Env<'a>, start: &Start) -> Self {
        Lister {
            env,
            tl: Timeline::new(env.trace.header().policy.track_host_init),
            ops: Vec::new(),
            ordinals: start.event == 0,
            start: start.event,
            unresolved: start.unresolved.clone(),
            last_regs: HashMap::new(),
            decoder: Decoder::default(),
            scratch: Vec::new(),
        }
    }

    /// A lister continuing from `tl`, a timeline fed from event 0.
    pub fn with_timeline(env: &'e Env<'a>, tl: Timeline) -> Self {
        let mut l = Lister::new(env, &Start { event: 0, unresolved: HashSet::new() });
        l.tl = tl;
        l
    }

    /// Applies `ev` to the replayed state without printing it.
    pub fn feed(&mut self, seq: u64, ev: &Event) {
        match ev {
            Event::Access { tid, regs, .. } | Event::Signal { tid, regs, .. } => {
                self.last_regs.insert(*tid, *regs);
            }
            _ => {}
        }
        if let Event::Call { tid, .. } | Event::Return { tid, .. } | Event::ThreadStart { tid, .. } = ev {
            self.unresolved.remove(tid);
        }
        if !matches!(ev, Event::Access { .. }) {
            self.ops.clear();
            self.tl.feed(&[(seq, ev.clone())], &mut self.ops);
        }
    }

    fn context(&self, tid: Tid) -> String {
        if self.tl.top(tid) == NO_CALL && self.unresolved.contains(&tid) {
            return format!("in a call entered before event {} (not scanned)", self.start);
        }
        self.env.context(&self.tl, tid)
    }

    fn at(&self, addr: u64) -> String {
        self.env.attribute(&self.tl, addr, self.ordinals)
    }

    /// Prints `ev` and applies it.
    pub fn render(&mut self, seq: u64, ev: &Event, out: &mut dyn Write) -> Result<(), ShowError> {
        let st = self.env.style;
        let num = st.event(&format!("{seq:>8}"));
        // Calls and allocations are shown with their own effect applied.
        let after = matches!(ev, Event::Call { .. } | Event::Alloc { .. });
        if after {
            self.feed(seq, ev);
        }
        match ev.tid() {
            Some(tid) => writeln!(out, "{num}  tid {tid}  {}", st.call(&self.context(tid)))?,
            None => writeln!(out, "{num}  process")?,
        }
        match ev {
            Event::Access { tid, code, regs, fault_addr, data, vregs } => {
                self.instruction(regs.rip, code, out)?;
                self.scratch.clear();
                let res = self
                    .decoder
                    .decoded(regs.rip, code)
                    .and_then(|d| d.accesses_into(regs, vregs, &mut self.scratch))
                    .map(|()| std::mem::take(&mut self.scratch));
                // A GPR/immediate store: its value is known from the registers.
                let stored = self
                    .decoder
                    .decoded(regs.rip, code)
                    .ok()
                    .and_then(|d| d.emulation().copied())
                    .and_then(|e| Some((e.address(regs), e.size(), e.store_value(regs)?)));
                match res {
                    Ok(accs) => {
                        self.accesses(&accs, data, stored, out)?;
                        self.scratch = accs;
                    }
                    Err(e) => writeln!(
                        out,
                        "{IND}fault at {fault_addr:#x} {}: {}",
                        self.at(*fault_addr),
                        st.bad(&e.to_string())
                    )?,
                }
                self.regs_changed(*tid, regs, code, out)?;
            }
            Event::Call { call, args, return_addr, .. } => {
                writeln!(out, "{IND}enter #{call} from {}", self.env.loc(*return_addr))?;
                self.args(args, out)?;
            }
            Event::Return { call, rax, rdx, .. } => {
                writeln!(out, "{IND}return from #{call}: rax={rax:#x} rdx={rdx:#x}")?;
            }
            Event::Callback { call, target, args, .. } => {
                writeln!(out, "{IND}callback from #{call} into {}", self.env.loc(*target))?;
                self.args(args, out)?;
            }
            Event::CallbackReturn { call, rax, .. } => {
                writeln!(out, "{IND}callback returned into #{call}: rax={rax:#x}")?;
            }
            Event::Alloc { func, ptr, size, old_ptr, caller, domain, zeroed, .. } => {
                let what = match self.tl.live_containing(*ptr) {
                    Some(id) => self.env.alloc_name(&self.tl, id, self.ordinals),
                    None => "no allocation".into(),
                };
                let old = if *old_ptr != 0 { format!(" (from {old_ptr:#x})") } else { String::new() };
                let z = if *zeroed { ", zero-filled" } else { "" };
                writeln!(
                    out,
                    "{IND}{}({size}) = {ptr:#x}{old} -> {what}, {} at {}{z}",
                    func_name(*func),
                    format!("{domain:?}").to_lowercase(),
                    self.env.loc(*caller)
                )?;
            }
            Event::Free { ptr, caller, .. } => {
                writeln!(out, "{IND}free({ptr:#x}) {} at {}", self.at(*ptr), self.env.loc(*caller))?;
            }
            Event::Map { addr, len, prot, flags, domain, .. } => {
                writeln!(out, "{IND}mmap [{addr:#x},+{len:#x}) prot {prot:#x} flags {flags:#x} {domain:?}")?;
            }
            Event::Unmap { addr, len, .. } => writeln!(out, "{IND}munmap [{addr:#x},+{len:#x})")?,
            Event::Protect { addr, len, prot, .. } => {
                writeln!(out, "{IND}mprotect [{addr:#x},+{len:#x}) prot {prot:#x}")?
            }
            Event::SyscallAccess { nr, ret, ranges, .. } => {
                writeln!(out, "{IND}syscall {nr} = {ret}")?;
                for r in ranges {
                    let s = if r.write { st.write("kernel wrote") } else { st.read("kernel read") };
                    writeln!(out, "{IND}{s} {} bytes at {:#x} {}", r.len, r.addr, self.at(r.addr))?;
                }
            }
            Event::Signal { tid, signo, code, addr, regs, code_bytes, fatal } => {
                let fatal = if *fatal { ", fatal" } else { "" };
                writeln!(
                    out,
                    "{IND}{} code {code}, fault address {addr:#x} {}{fatal}",
                    st.bad(&format!("signal {signo} ({})", signal_name(*signo))),
                    self.at(*addr)
                )?;
                self.instruction(regs.rip, code_bytes, out)?;
                self.regs_changed(*tid, regs, code_bytes, out)?;
            }
            Event::Gap { reason, detail, .. } => {
                writeln!(out, "{IND}{} ({reason:?}, detail {detail:#x})", st.bad("gap: not traced"))?
            }
            Event::ThreadStart { pid, parent, .. } => {
                writeln!(out, "{IND}thread started in process {pid} by {parent}")?
            }
            Event::ThreadExit { code, .. } => writeln!(out, "{IND}thread exited with {code}")?,
            Event::Fork { parent_pid, child_pid, .. } => writeln!(out, "{IND}fork: {parent_pid} -> {child_pid}")?,
            Event::Exec { pid, path, .. } => writeln!(out, "{IND}exec {path} in {pid}")?,
            Event::Exit { pid, status } => writeln!(out, "{IND}process {pid} exited: {status:?}")?,
            Event::HostWrite { addr, len, .. } => {
                writeln!(out, "{IND}{} {len} bytes at {addr:#x} {}", st.write("host wrote"), self.at(*addr))?
            }
            Event::InitUnknown { addr, len } => writeln!(
                out,
                "{IND}state of {len} bytes at {addr:#x} {} is unknown from here (fault budget spent)",
                self.at(*addr)
            )?,
        }
        if !after {
            self.feed(seq, ev);
        }
        Ok(())
    }

    fn instruction(&mut self, rip: u64, code: &[u8], out: &mut dyn Write) -> Result<(), ShowError> {
        let st = self.env.style;
        let text = match self.decoder.decoded(rip, code) {
            Ok(d) => st.code(&self.env.disassemble(d.instruction())),
            Err(_) => {
                let bytes: String = code.iter().map(|b| format!("{b:02x}")).collect();
                st.bad(&format!("(undecodable: {bytes})"))
            }
        };
        writeln!(out, "{IND}at {}: {text}", self.env.loc(rip))?;
        Ok(())
    }

    fn accesses(
        &self,
        accs: &[MemAccess],
        data: &[u8],
        stored: Option<(u64, usize, u64)>,
        out: &mut dyn Write,
    ) -> Result<(), ShowError> {
        let st = self.env.style;
        let mut off = 0usize;
        for a in accs {
            let verb = match a.rw {
                Rw::Read => st.read("read"),
                Rw::Write => st.write("write"),
                Rw::ReadWrite => st.write("read-write"),
            };
            let maybe = if a.certain { "" } else { " (may not happen)" };
            let mut bytes = String::new();
            if a.rw != Rw::Write {
                let n = usize::try_from(a.size).unwrap_or(usize::MAX);
                if let Some(d) = data.get(off..off.saturating_add(n)) {
                    bytes = format!(" = {}", d.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" "));
                }
                off = off.saturating_add(n);
            } else if let Some((_, size, v)) = stored.filter(|&(addr, size, _)| addr == a.addr && size as u64 == a.size)
            {
                bytes = format!(
                    " := {}",
                    v.to_le_bytes()[..size.min(8)].iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(" ")
                );
            }
            let unit = if a.size == 1 { "byte" } else { "bytes" };
            writeln!(
                out,
                "{IND}{verb} {} {unit} at {:#x} {}{maybe}{}",
                a.size,
                a.addr,
                self.at(a.addr),
                st.dim(&bytes)
            )?;
        }
        Ok(())
    }

    fn args(&self, args: &[u64; 6], out: &mut dyn Write) -> Result<(), ShowError> {
        const NAMES: [&str; 6] = ["rdi", "rsi", "rdx", "rcx", "r8", "r9"];
        let parts: Vec<String> = args
            .iter()
            .zip(NAMES)
            .map(|(&v, n)| match self.tl.live_containing(v) {
                Some(_) => format!("{n}={v:#x} ({})", self.at(v)),
                None => format!("{n}={v:#x}"),
            })
            .collect();
        writeln!(out, "{IND}args {}", parts.join(", "))?;
        Ok(())
    }

    /// Registers that changed since the thread's previous snapshot; for its
    /// first one, the general registers the instruction uses, `rsp` and `rip`.
    fn regs_changed(&mut self, tid: Tid, regs: &Regs, code: &[u8], out: &mut dyn Write) -> Result<(), ShowError> {
        let st = self.env.style;
        let named = |r: &Regs| -> Vec<(&'static str, u64)> {
            let mut v: Vec<(&'static str, u64)> = GPR.iter().copied().zip(r.gpr).collect();
            v.extend([("rip", r.rip), ("rflags", r.rflags), ("fs_base", r.fs_base), ("gs_base", r.gs_base)]);
            v
        };
        match self.last_regs.get(&tid) {
            Some(prev) => {
                let changed: Vec<String> = named(prev)
                    .into_iter()
                    .zip(named(regs))
                    .filter(|((_, a), (_, b))| a != b)
                    .map(|((n, a), (_, b))| format!("{n} {a:#x}->{b:#x}"))
                    .collect();
                let text = if changed.is_empty() { "none".to_string() } else { changed.join(" ") };
                writeln!(out, "{IND}regs changed: {}", st.dim(&text))?;
            }
            None => {
                let mut used: Vec<usize> = match self.decoder.decoded(regs.rip, code) {
                    Ok(d) => InstructionInfoFactory::new()
                        .info(d.instruction())
                        .used_registers()
                        .iter()
                        .filter_map(|u| gpr_index(u.register().full_register()))
                        .collect(),
                    Err(_) => (0..16).collect(),
                };
                used.push(Regs::RSP);
                used.sort_unstable();
                used.dedup();
                let mut shown: Vec<String> = used.iter().map(|&i| format!("{}={:#x}", GPR[i], regs.gpr[i])).collect();
                shown.push(format!("rip={:#x}", regs.rip));
                writeln!(out, "{IND}regs (first snapshot of this thread): {}", st.dim(&shown.join(" ")))?;
            }
        }
        Ok(())
    }
}

/// Index into `Regs::gpr` of a 64-bit general register.
fn gpr_index(r: Register) -> Option<usize> {
    const ORDER: [Register; 16] = [
        Register::RAX,
        Register::RCX,
        Register::RDX,
        Register::RBX,
        Register::RSP,
        Register::RBP,
        Register::RSI,
        Register::RDI,
        Register::R8,
        Register::R9,
        Register::R10,
        Register::R11,
        Register::R12,
        Register::R13,
        Register::R14,
        Register::R15,
    ];
    ORDER.iter().position(|&g| g == r)
}

pub(crate) fn signal_name(signo: i32) -> &'static str {
    match signo {
        4 => "SIGILL",
        5 => "SIGTRAP",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        11 => "SIGSEGV",
        13 => "SIGPIPE",
        _ => "signal",
    }
}

/// Replays from `start` and prints, from event `from` on, up to `count`
/// events (of thread `tid` when given), stopping after event `until`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn run(
    lister: &mut Lister,
    chunks: &mut Chunks,
    start: u64,
    from: u64,
    until: Option<u64>,
    count: Option<usize>,
    tid: Option<Tid>,
    out: &mut dyn Write,
) -> Result<usize, ShowError> {
    let trace = chunks.trace;
    if trace.event_count() == 0 || start >= trace.event_count() {
        return Ok(0);
    }
    let mut printed = 0usize;
    for ci in scan::chunk_of(trace, start)?..trace.chunks().len() {
        let first = chunks.first_event(ci);
        let events = chunks.get(ci)?;
        for (seq, ev) in (first..).zip(events.iter()) {
            if seq < start {
                continue;
            }
            if until.is_some_and(|u| seq > u) || count.is_some_and(|c| printed >= c) {
                return Ok(printed);
            }
            if seq >= from && tid.is_none_or(|t| ev.tid() == Some(t)) {
                lister.render(seq, ev, out)?;
                printed += 1;
            } else {
                lister.feed(seq, ev);
            }
        }
    }
    Ok(printed)
}

/// `--from EVENT`: jump (chunk index + bounded backward scan), then list.
pub(crate) fn from(env: &Env, from: u64, count: usize, tid: Option<Tid>, out: &mut dyn Write) -> Result<(), ShowError> {
    let trace = env.trace;
    if from >= trace.event_count() {
        return Err(ShowError::NoEvent { event: from, events: trace.event_count() });
    }
    let mut chunks = Chunks::new(trace);
    let tids: HashSet<Tid> = match tid {
        Some(t) => [t].into_iter().collect(),
        None => {
            // The threads of the events to be shown.
            let mut set = HashSet::new();
            let mut n = 0;
            'outer: for ci in scan::chunk_of(trace, from)?..trace.chunks().len() {
                let first = chunks.first_event(ci);
                let events = chunks.get(ci)?;
                for (seq, ev) in (first..).zip(events.iter()) {
                    if seq < from {
                        continue;
                    }
                    if n >= count {
                        break 'outer;
                    }
                    set.extend(ev.tid());
                    n += 1;
                }
            }
            set
        }
    };
    let start = if env.full_replay {
        Start { event: 0, unresolved: HashSet::new() }
    } else {
        scan::replay_start(&mut chunks, from, &tids)?
    };
    let mut l = Lister::new(env, &start);
    if !l.ordinals {
        writeln!(
            out,
            "# replayed from event {}: allocations born before it are not known; others are named alloc@BIRTH_EVENT",
            start.event
        )?;
    }
    let shown = run(&mut l, &mut chunks, start.event, from, None, Some(count), tid, out)?;
    if shown == 0 {
        writeln!(out, "# no events of thread {} from event {from}", tid.unwrap_or(0))?;
    }
    Ok(())
}

/// `--crash`: the fatal (or last fault) signal and the `count` events of its
/// thread before it.
pub(crate) fn crash(env: &Env, count: usize, out: &mut dyn Write) -> Result<(), ShowError> {
    let mut chunks = Chunks::new(env.trace);
    let Some((seq, tid)) = scan::find_crash(&mut chunks)? else { return Err(ShowError::NoCrash) };
    let first = scan::back_events_of(&mut chunks, seq, tid, count)?;
    let tids: HashSet<Tid> = [tid].into_iter().collect();
    let start = if env.full_replay {
        Start { event: 0, unresolved: HashSet::new() }
    } else {
        scan::replay_start(&mut chunks, first, &tids)?
    };
    let mut l = Lister::new(env, &start);
    writeln!(out, "# crash at event {seq} in thread {tid}; the thread's events before it:")?;
    run(&mut l, &mut chunks, start.event, first, Some(seq), None, Some(tid), out)?;
    Ok(())
}
