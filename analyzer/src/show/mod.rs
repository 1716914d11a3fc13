//! `ffirec show`: a trace replayed event by event, like a debugger.
//!
//! Owns the four views — an event listing from any event (`--from`), one
//! foreign call with its footprint (`--call`), the crash site (`--crash`) and
//! the reconstructed state of a memory range at one event (`--at`/`--memory`)
//! — and their text rendering. It owns no state machine of its own: calls
//! and allocations come from `state::Timeline`, byte state from
//! `state::Shard`, access ranges from `decode::Decoder`, symbols from
//! `symbols`, so what it shows agrees with `analyze`.
//!
//! Cost model: jumping to an event is a binary search over the chunk index
//! plus a short backward scan to find each shown thread's foreign call
//! (bounded, see `scan`); `--at` and `--call` replay the events before their
//! point, decoding instructions only where they can matter.

mod listing;
mod memory;
mod scan;
mod style;

use std::io::Write;

use ffirec_format::{Module, Trace};
use iced_x86::{Formatter, Instruction, IntelFormatter, SymbolResolver, SymbolResult};

use crate::report::func_name;
use crate::state::{Timeline, NO_CALL};
use crate::symbols::{Location, ModuleMap, Symbolizer};

pub(crate) use style::Style;

/// What to show.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShowMode {
    /// Events from this event number on.
    From(u64),
    /// Everything foreign call N did, its arguments, return value and footprint.
    Call(u64),
    /// The program's crash (its last fault signal) and the events of that
    /// thread leading to it.
    Crash,
    /// The reconstructed state of a memory range after event `at`.
    Memory { at: u64, range: MemSpec },
}

/// `ADDR[:LEN]`: an absolute address or `allocN+OFF` (allocation ordinal, as
/// `analyze` numbers them, plus an offset) and a length (default 64).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MemSpec {
    pub addr: MemAddr,
    pub len: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MemAddr {
    Abs(u64),
    Alloc { id: u32, offset: u64 },
}

/// Bytes shown when `--memory` gives no length.
pub const DEFAULT_MEMORY_LEN: u64 = 64;
/// Longest range `--memory` shows.
pub const MAX_MEMORY_LEN: u64 = 1 << 20;

fn parse_num(s: &str) -> Option<u64> {
    let s = s.trim();
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).ok(),
        None => s.parse().ok(),
    }
}

impl std::str::FromStr for MemSpec {
    type Err = String;
    /// `0x7f00…:32`, `alloc3+16:8`, `alloc#3`, `alloc3+0x10`.
    fn from_str(s: &str) -> Result<MemSpec, String> {
        let (a, len) = match s.rsplit_once(':') {
            Some((a, l)) => (a, parse_num(l).ok_or_else(|| format!("bad length `{l}` in `{s}`"))?),
            None => (s, DEFAULT_MEMORY_LEN),
        };
        if len == 0 || len > MAX_MEMORY_LEN {
            return Err(format!("length must be 1..={MAX_MEMORY_LEN}, got {len}"));
        }
        let addr = if let Some(rest) = a.strip_prefix("alloc") {
            let rest = rest.strip_prefix('#').unwrap_or(rest);
            let (id, off) = rest.split_once('+').unwrap_or((rest, "0"));
            let id = id.parse::<u32>().map_err(|_| format!("bad allocation number in `{a}` (want allocN+OFF)"))?;
            let offset = parse_num(off).ok_or_else(|| format!("bad offset `{off}` in `{a}`"))?;
            MemAddr::Alloc { id, offset }
        } else {
            let v = a
                .strip_prefix("0x")
                .or_else(|| a.strip_prefix("0X"))
                .map(|h| u64::from_str_radix(h, 16))
                .unwrap_or_else(|| u64::from_str_radix(a, 16))
                .map_err(|_| format!("bad address `{a}` (want hex, or allocN+OFF)"))?;
            MemAddr::Abs(v)
        };
        Ok(MemSpec { addr, len })
    }
}

/// How to show.
#[derive(Debug, Clone)]
pub struct ShowOptions {
    pub mode: ShowMode,
    /// Events to list (`--from`, `--crash`: default 20; `--call`: all).
    pub count: Option<usize>,
    /// Only this thread's events.
    pub tid: Option<u32>,
    /// ANSI colour.
    pub color: bool,
    /// Look up `file:line` in the modules' DWARF when their files are present.
    pub dwarf: bool,
    /// Listings replay from event 0 instead of jumping: every allocation gets
    /// its `analyze` number and every thread its call context, for a read of
    /// all chunks before the first event shown.
    pub full_replay: bool,
}

/// Default number of events listed by `--from` and `--crash`.
pub const DEFAULT_COUNT: usize = 20;

/// Everything that can stop `show`.
#[derive(Debug, thiserror::Error)]
pub enum ShowError {
    #[error(transparent)]
    Trace(#[from] ffirec_format::Error),
    #[error("no event {event}: the trace has {events} events")]
    NoEvent { event: u64, events: u64 },
    #[error("no foreign call #{call} in the trace ({calls} calls recorded)")]
    NoCall { call: u64, calls: u64 },
    #[error("the trace records no crash (no fault signal and no fatal signal)")]
    NoCrash,
    #[error("alloc#{id} was not born by event {at} ({born} allocations by then)")]
    NoAlloc { id: u32, at: u64, born: usize },
    #[error("writing output: {0}")]
    Io(#[from] std::io::Error),
}

/// Shows `trace` as `opts` asks, writing text to `out`.
pub fn show(trace: &Trace, opts: &ShowOptions, out: &mut dyn Write) -> Result<(), ShowError> {
    let mm = ModuleMap::new(trace.modules());
    let env = Env::new(trace, &mm, opts);
    match &opts.mode {
        ShowMode::From(from) => listing::from(&env, *from, opts.count.unwrap_or(DEFAULT_COUNT), opts.tid, out),
        ShowMode::Crash => listing::crash(&env, opts.count.unwrap_or(DEFAULT_COUNT), out),
        ShowMode::Call(n) => memory::call(&env, *n, opts.count, out),
        ShowMode::Memory { at, range } => memory::at(&env, *at, *range, out),
    }
}

/// What every view needs: the trace, symbols, the disassembler, colour.
pub(crate) struct Env<'a> {
    pub trace: &'a Trace,
    pub syms: Symbolizer<'a>,
    pub style: Style,
    /// Listings replay from event 0 (see [`ShowOptions::full_replay`]).
    pub full_replay: bool,
    disasm: std::cell::RefCell<IntelFormatter>,
}

impl<'a> Env<'a> {
    fn new(trace: &'a Trace, mm: &'a ModuleMap, opts: &ShowOptions) -> Self {
        let resolver = Box::new(SymTable::new(trace.modules()));
        let mut f = IntelFormatter::with_options(Some(resolver), None);
        f.options_mut().set_space_after_operand_separator(true);
        f.options_mut().set_hex_prefix("0x");
        f.options_mut().set_hex_suffix("");
        Env {
            trace,
            syms: Symbolizer::new(trace.modules(), mm, opts.dwarf),
            style: Style { on: opts.color },
            full_replay: opts.full_replay,
            disasm: std::cell::RefCell::new(f),
        }
    }

    /// Intel syntax, branch targets and RIP-relative operands symbolised.
    pub fn disassemble(&self, instr: &Instruction) -> String {
        let mut s = String::new();
        self.disasm.borrow_mut().format(instr, &mut s);
        s
    }

    /// `sym+0x1c (file.c:12)`, `sym+0x1c (libz.so.1)`, `libz.so.1+0x…` or the address.
    pub fn loc(&self, addr: u64) -> String {
        loc_text(&self.syms.locate(addr))
    }

    /// `#3 inflate() called from main+0x45 (host.c:33)`.
    pub fn call_label(&self, tl: &Timeline, idx: u32) -> String {
        let Some(c) = tl.calls.get(idx as usize) else { return "host".into() };
        let sym = self.syms.symbol_name(c.module, c.symbol).unwrap_or_else(|| self.syms.locate(c.target).short());
        format!("#{} {sym}() called from {}", c.call, self.loc(c.return_addr))
    }

    /// Context of thread `tid` now: its innermost foreign call, or host.
    pub fn context(&self, tl: &Timeline, tid: u32) -> String {
        match tl.top(tid) {
            NO_CALL => "host".into(),
            idx => self.call_label(tl, idx),
        }
    }

    /// `alloc#3`, or `alloc@E` (born at event E) when ordinals are not known
    /// (the replay did not start at event 0).
    pub fn alloc_name(&self, tl: &Timeline, id: u32, ordinals: bool) -> String {
        match tl.allocs.get(id as usize) {
            Some(a) if !ordinals => format!("alloc@{}", a.born),
            _ => format!("alloc#{id}"),
        }
    }

    /// `alloc#3 (malloc 64 at main+0x2a)`.
    pub fn alloc_label(&self, tl: &Timeline, id: u32, ordinals: bool) -> String {
        let name = self.alloc_name(tl, id, ordinals);
        match tl.allocs.get(id as usize) {
            Some(a) => format!("{name} ({} {} at {})", func_name(a.func), a.size, self.syms.locate(a.caller).short()),
            None => name,
        }
    }

    /// Which allocation (live or freed) or module holds `addr`, and where in it.
    pub fn attribute(&self, tl: &Timeline, addr: u64, ordinals: bool) -> String {
        if let Some(id) = tl.live_containing(addr) {
            let base = tl.allocs.get(id as usize).map_or(addr, |a| a.base);
            let name = self.alloc_name(tl, id, ordinals);
            let label = self.alloc_label(tl, id, ordinals);
            return format!("{name}+{} {}", addr - base, label.strip_prefix(&name).unwrap_or("").trim_start());
        }
        // Recently freed blocks (bounded look-back: display only).
        if let Some((id, a)) =
            tl.allocs.iter().enumerate().rev().take(4096).find(|(_, a)| a.freed.is_some() && a.contains(addr))
        {
            let id = id as u32;
            let name = self.alloc_name(tl, id, ordinals);
            return self.style.bad(&format!(
                "freed {name}+{} ({} {}, freed at event {})",
                addr - a.base,
                func_name(a.func),
                a.size,
                a.freed.unwrap_or(0)
            ));
        }
        let l = self.syms.locate(addr);
        match (&l.module, l.module_offset) {
            (Some(m), Some(_)) if l.symbol.is_some() => format!("{} ({m})", l.short()),
            (Some(m), Some(off)) => format!("{m}+{off:#x}"),
            _ if ordinals => "no allocation".into(),
            _ => "no allocation born in the replayed part".into(),
        }
    }
}

/// `sym+0x1c (file.c:12)` with the file's base name; the module when no line.
pub(crate) fn loc_text(l: &Location) -> String {
    let base = match (&l.symbol, l.offset, &l.module, l.module_offset) {
        (Some(s), Some(0), _, _) => s.clone(),
        (Some(s), Some(off), _, _) => format!("{s}+{off:#x}"),
        (None, _, Some(m), Some(off)) => return format!("{m}+{off:#x}"),
        _ => return l.addr.clone(),
    };
    match (&l.file, l.line, &l.module) {
        (Some(f), Some(line), _) => {
            let f = std::path::Path::new(f).file_name().map_or_else(|| f.clone(), |n| n.to_string_lossy().into_owned());
            format!("{base} ({f}:{line})")
        }
        (_, _, Some(m)) => format!("{base} ({m})"),
        _ => base,
    }
}

/// Every module symbol at its runtime address, for the disassembler.
struct SymTable {
    /// (start, end, name), sorted by start.
    syms: Vec<(u64, u64, String)>,
}

impl SymTable {
    fn new(modules: &[Module]) -> Self {
        let mut syms: Vec<(u64, u64, String)> = modules
            .iter()
            .flat_map(|m| {
                m.symbols.iter().filter(|s| s.addr != 0).map(move |s| {
                    let start = m.base.wrapping_add(s.addr);
                    (start, start.saturating_add(s.size.max(1)), s.name.clone())
                })
            })
            .collect();
        syms.sort_by_key(|s| s.0);
        SymTable { syms }
    }
}

impl SymbolResolver for SymTable {
    fn symbol(
        &mut self,
        _instruction: &Instruction,
        _operand: u32,
        _instruction_operand: Option<u32>,
        address: u64,
        _address_size: u32,
    ) -> Option<SymbolResult<'_>> {
        let i = self.syms.partition_point(|s| s.0 <= address);
        let (start, end, name) = self.syms.get(i.checked_sub(1)?)?;
        (address < *end).then(|| SymbolResult::with_str(*start, name.as_str()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_specs() {
        let cases: [(&str, Result<MemSpec, &str>); 9] = [
            ("0x7f0000001000:32", Ok(MemSpec { addr: MemAddr::Abs(0x7f00_0000_1000), len: 32 })),
            ("7f0000001000", Ok(MemSpec { addr: MemAddr::Abs(0x7f00_0000_1000), len: DEFAULT_MEMORY_LEN })),
            ("alloc3+16:8", Ok(MemSpec { addr: MemAddr::Alloc { id: 3, offset: 16 }, len: 8 })),
            ("alloc#3+0x10:0x20", Ok(MemSpec { addr: MemAddr::Alloc { id: 3, offset: 16 }, len: 32 })),
            ("alloc0", Ok(MemSpec { addr: MemAddr::Alloc { id: 0, offset: 0 }, len: DEFAULT_MEMORY_LEN })),
            ("allocx+1", Err("bad allocation number in `allocx+1` (want allocN+OFF)")),
            ("alloc1+y", Err("bad offset `y` in `alloc1+y`")),
            ("0x10:0", Err("length must be 1..=1048576, got 0")),
            ("zz:4", Err("bad address `zz` (want hex, or allocN+OFF)")),
        ];
        for (text, want) in cases {
            assert_eq!(text.parse::<MemSpec>(), want.map_err(String::from), "{text}");
        }
    }
}
