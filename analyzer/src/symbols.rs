//! Addresses → module, symbol+offset and, when the module's file is present
//! with the recorded build-id, `file:line` from its DWARF (addr2line).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;

use ffirec_format::{Domain, Module};
use serde::Serialize;

/// Every mapped segment of every module, sorted by address.
#[derive(Debug, Default)]
pub(crate) struct ModuleMap {
    segs: Vec<SegEntry>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SegEntry {
    pub start: u64,
    pub end: u64,
    pub module: u32,
    /// The module's load bias.
    pub bias: u64,
    pub prot: u32,
    pub domain: Domain,
}

impl ModuleMap {
    pub fn new(modules: &[Module]) -> Self {
        let mut segs: Vec<SegEntry> = modules
            .iter()
            .enumerate()
            .flat_map(|(i, m)| {
                m.segments.iter().map(move |s| SegEntry {
                    start: s.start,
                    end: s.start.saturating_add(s.len),
                    module: i as u32,
                    bias: m.base,
                    prot: s.prot,
                    domain: m.domain,
                })
            })
            .collect();
        segs.sort_by_key(|s| (s.start, s.module));
        ModuleMap { segs }
    }

    #[inline]
    pub fn find(&self, addr: u64) -> Option<&SegEntry> {
        let i = self.segs.partition_point(|s| s.start <= addr);
        let s = self.segs.get(i.checked_sub(1)?)?;
        (addr < s.end).then_some(s)
    }
}

/// Where an address is, as precisely as the trace and the files allow.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Location {
    /// Absolute address, `0x…`.
    pub addr: String,
    /// Module file name (`libz.so.1`), when the address is in one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Covering symbol.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Offset into `symbol`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// Offset from the module's load bias (stable across ASLR).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module_offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

impl Location {
    /// `sym+0x1c (libz.so.1) [inflate.c:120]`, or the bare address.
    pub fn describe(&self) -> String {
        let mut s = match (&self.symbol, self.offset) {
            (Some(sym), Some(0)) => sym.clone(),
            (Some(sym), Some(off)) => format!("{sym}+{off:#x}"),
            (Some(sym), None) => sym.clone(),
            _ => self.addr.clone(),
        };
        if let Some(m) = &self.module {
            s.push_str(&format!(" ({m})"));
        }
        if let (Some(f), Some(l)) = (&self.file, self.line) {
            s.push_str(&format!(" [{f}:{l}]"));
        }
        s
    }

    /// `sym+0x1c` or `module+0x…` or the address: for labels.
    pub fn short(&self) -> String {
        match (&self.symbol, self.offset, &self.module, self.module_offset) {
            (Some(sym), Some(0), _, _) => sym.clone(),
            (Some(sym), Some(off), _, _) => format!("{sym}+{off:#x}"),
            (None, _, Some(m), Some(off)) => format!("{m}+{off:#x}"),
            _ => self.addr.clone(),
        }
    }
}

pub(crate) fn hex(v: u64) -> String {
    // Addresses of forked processes carry their space (state::space).
    format!("{:#x}", crate::state::space::untag(v))
}

/// Symbolises addresses; caches one DWARF loader per module.
pub(crate) struct Symbolizer<'a> {
    modules: &'a [Module],
    map: &'a ModuleMap,
    dwarf: bool,
    loaders: RefCell<HashMap<u32, Option<addr2line::Loader>>>,
}

fn file_name(path: &str) -> String {
    Path::new(path).file_name().map_or_else(|| path.to_string(), |f| f.to_string_lossy().into_owned())
}

/// The object at `path` when it exists and carries `build_id`.
fn load_dwarf(path: &str, build_id: &[u8]) -> Option<addr2line::Loader> {
    use object::Object;
    let data = std::fs::read(path).ok()?;
    let file = object::File::parse(&*data).ok()?;
    let found = file.build_id().ok().flatten().unwrap_or(&[]);
    if found != build_id {
        return None;
    }
    addr2line::Loader::new(path).ok()
}

impl<'a> Symbolizer<'a> {
    pub fn new(modules: &'a [Module], map: &'a ModuleMap, dwarf: bool) -> Self {
        Symbolizer { modules, map, dwarf, loaders: RefCell::new(HashMap::new()) }
    }

    pub fn module_name(&self, idx: u32) -> Option<String> {
        self.modules.get(idx as usize).map(|m| file_name(&m.path))
    }

    /// Domain of the module containing `addr`.
    pub fn domain_of(&self, addr: u64) -> Option<Domain> {
        self.map.find(addr).map(|s| s.domain)
    }

    /// Symbol name for symbol `sym` of module `module`.
    pub fn symbol_name(&self, module: u32, sym: Option<u32>) -> Option<String> {
        let m = self.modules.get(module as usize)?;
        Some(m.symbols.get(sym? as usize)?.name.clone())
    }

    pub fn locate(&self, addr: u64) -> Location {
        let mut loc = Location { addr: hex(addr), ..Location::default() };
        let Some(seg) = self.map.find(addr) else { return loc };
        let Some(m) = self.modules.get(seg.module as usize) else { return loc };
        loc.module = Some(file_name(&m.path));
        loc.module_offset = Some(addr.wrapping_sub(m.base));
        if let Some((sym, off)) = m.symbolize(addr) {
            loc.symbol = Some(sym.name.clone());
            loc.offset = Some(off);
        }
        if self.dwarf {
            let mut loaders = self.loaders.borrow_mut();
            let loader = loaders.entry(seg.module).or_insert_with(|| load_dwarf(&m.path, &m.build_id));
            if let Some(l) = loader {
                if let Ok(Some(found)) = l.find_location(addr.wrapping_sub(m.base)) {
                    loc.file = found.file.map(str::to_string);
                    loc.line = found.line;
                }
            }
        }
        loc
    }
}
