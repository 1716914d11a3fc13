//! Loaded ELF objects: symbols (.dynsym + .symtab), build-id, soname, and
//! where their PT_LOAD segments lie at runtime.

use object::read::elf::{ElfFile64, FileHeader, ProgramHeader};
use object::{Endianness, Object, ObjectSymbol, SymbolKind};

use ffirec_format::{Domain, Module, Segment, Symbol};

use crate::maps::{Mapping, PROT_R, PROT_W, PROT_X};
use crate::sys::Pid;

/// A PT_LOAD segment at its runtime address (page-rounded), with file prot.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    pub start: u64,
    pub end: u64,
    pub prot: u32,
}

/// What the recorder keeps about one object besides the module table entry.
#[derive(Debug, Clone)]
pub struct Loaded {
    /// Index in the trace's module table.
    pub index: u32,
    pub module: Module,
    pub soname: Option<String>,
    pub loads: Vec<Load>,
    /// Executable mappings (runtime ranges) with their original protection.
    pub text: Vec<Load>,
}

impl Loaded {
    pub fn in_text(&self, addr: u64) -> bool {
        self.text.iter().any(|t| addr >= t.start && addr < t.end)
    }

    /// Index of the symbol covering `addr` in `module.symbols`.
    pub fn symbol_index(&self, addr: u64) -> Option<u32> {
        let rel = addr.checked_sub(self.module.base)?;
        let syms = &self.module.symbols;
        let i = syms.partition_point(|s| s.addr <= rel).checked_sub(1)?;
        let s = &syms[i];
        (rel - s.addr < s.size.max(1)).then_some(i as u32)
    }
}

fn page_down(x: u64, page: u64) -> u64 {
    x & !(page - 1)
}

fn page_up(x: u64, page: u64) -> u64 {
    (x + page - 1) & !(page - 1)
}

/// Parses an object from `data` given its runtime mappings (all mappings of
/// the same file). `None` when it is not a 64-bit ELF we understand.
pub fn load(
    pid: Pid,
    path: &str,
    data: &[u8],
    maps: &[&Mapping],
    page: u64,
) -> Option<(Module, Option<String>, Vec<Load>)> {
    let elf = ElfFile64::<Endianness>::parse(data).ok()?;
    let endian = elf.endian();
    let phdrs = elf.elf_header().program_headers(endian, data).ok()?;
    let mut pt_loads = Vec::new();
    for ph in phdrs {
        if ph.p_type(endian) == object::elf::PT_LOAD {
            pt_loads.push((ph.p_vaddr(endian), ph.p_memsz(endian), ph.p_offset(endian), ph.p_flags(endian).0));
        }
    }
    let first = pt_loads.first()?;
    // The mapping of file offset 0 (or the lowest one) fixes the load bias.
    let base = if let Some(m) = maps.iter().find(|m| m.offset == page_down(first.2, page)) {
        m.start.wrapping_sub(page_down(first.0, page))
    } else {
        let m = maps.iter().min_by_key(|m| m.start)?;
        m.start.wrapping_sub(page_down(first.0, page)).wrapping_sub(m.offset)
    };
    let mut segments = Vec::new();
    let mut loads = Vec::new();
    for &(vaddr, memsz, off, flags) in &pt_loads {
        let mut prot = 0;
        if flags & object::elf::PF_R.0 != 0 {
            prot |= PROT_R;
        }
        if flags & object::elf::PF_W.0 != 0 {
            prot |= PROT_W;
        }
        if flags & object::elf::PF_X.0 != 0 {
            prot |= PROT_X;
        }
        let start = base.wrapping_add(vaddr);
        segments.push(Segment { start, len: memsz, prot, file_offset: off });
        loads.push(Load { start: page_down(start, page), end: page_up(start + memsz, page), prot });
    }
    let mut symbols: Vec<Symbol> = elf
        .symbols()
        .chain(elf.dynamic_symbols())
        .filter(|s| s.is_definition() && s.address() != 0)
        .filter(|s| matches!(s.kind(), SymbolKind::Text | SymbolKind::Data | SymbolKind::Unknown))
        .filter_map(|s| Some(Symbol { name: s.name().ok()?.to_string(), addr: s.address(), size: s.size() }))
        .filter(|s| !s.name.is_empty())
        .collect();
    symbols.extend(lifecycle_symbols(&elf, data, &pt_loads));
    symbols.sort_by(|a, b| (a.addr, &a.name).cmp(&(b.addr, &b.name)));
    symbols.dedup_by(|a, b| a.addr == b.addr && a.name == b.name);
    // Keep one symbol per address (prefer the one with a size): symbolize()
    // does a binary search and must find a covering one.
    symbols.dedup_by(|later, earlier| {
        if later.addr == earlier.addr {
            if earlier.size == 0 {
                std::mem::swap(later, earlier);
            }
            true
        } else {
            false
        }
    });
    let build_id = elf.build_id().ok().flatten().map(<[u8]>::to_vec).unwrap_or_default();
    let soname = elf.elf_dynamic_table().ok().and_then(|t| {
        t.iter()
            .find(|d| d.tag == object::elf::DT_SONAME)
            .and_then(|d| t.string(d).ok())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    });
    Some((
        Module { pid: pid as u32, path: path.to_string(), build_id, base, segments, domain: Domain::Host, symbols },
        soname,
        loads,
    ))
}

/// Names for the code ld.so and `exit` call directly, which a stripped
/// library has no symbol for: `_init`/`_fini` (DT_INIT/DT_FINI) and
/// `__init_array[k]`/`__fini_array[k]` for the entries of DT_INIT_ARRAY and
/// DT_FINI_ARRAY (a constructor or destructor such as
/// `__do_global_dtors_aux`; a real symbol at the same address wins). An
/// array entry is its R_X86_64_RELATIVE relocation's addend, else the word
/// stored in the file (RELR keeps it there).
fn lifecycle_symbols(elf: &ElfFile64<Endianness>, data: &[u8], pt_loads: &[(u64, u64, u64, u32)]) -> Vec<Symbol> {
    use object::elf::{DT_FINI, DT_FINI_ARRAY, DT_FINI_ARRAYSZ, DT_INIT, DT_INIT_ARRAY, DT_INIT_ARRAYSZ};
    use object::{RelocationFlags, RelocationTarget};
    let Ok(table) = elf.elf_dynamic_table() else { return Vec::new() };
    let value = |tag: object::elf::DynamicTag| table.iter().find(|d| d.tag == tag).map(|d| d.val);
    let mut out = Vec::new();
    let mut named = |name: String, addr: u64| {
        if addr != 0 {
            out.push(Symbol { name, addr, size: 0 });
        }
    };
    if let Some(a) = value(DT_INIT) {
        named("_init".into(), a);
    }
    if let Some(a) = value(DT_FINI) {
        named("_fini".into(), a);
    }
    let relative: std::collections::HashMap<u64, u64> = elf
        .dynamic_relocations()
        .into_iter()
        .flatten()
        .filter(|(_, r)| {
            matches!(r.flags(), RelocationFlags::Elf { r_type } if r_type == object::elf::R_X86_64_RELATIVE)
                && matches!(r.target(), RelocationTarget::Absolute)
        })
        .map(|(off, r)| (off, r.addend() as u64))
        .collect();
    let stored = |vaddr: u64| -> Option<u64> {
        let &(v, _, off, _) = pt_loads.iter().find(|&&(v, sz, _, _)| vaddr >= v && vaddr + 8 <= v + sz)?;
        let at = usize::try_from(vaddr - v + off).ok()?;
        let b: [u8; 8] = data.get(at..at + 8)?.try_into().ok()?;
        Some(u64::from_le_bytes(b))
    };
    for (array, size, name) in
        [(DT_INIT_ARRAY, DT_INIT_ARRAYSZ, "__init_array"), (DT_FINI_ARRAY, DT_FINI_ARRAYSZ, "__fini_array")]
    {
        let (Some(start), Some(len)) = (value(array), value(size)) else { continue };
        for k in 0..len.min(4096) / 8 {
            let slot = start + 8 * k;
            if let Some(target) = relative.get(&slot).copied().or_else(|| stored(slot)) {
                named(format!("{name}[{k}]"), target);
            }
        }
    }
    out
}

/// Addresses (ELF virtual) of the defined symbols of `elf` named in `names`,
/// as (index into `names`, address), aliases included (the module table
/// keeps one name per address; glibc's `malloc` is also `__libc_malloc`).
pub fn find_symbols(elf: &[u8], names: &[&str]) -> Vec<(usize, u64)> {
    use object::{Object, ObjectSymbol};
    let Ok(file) = object::File::parse(elf) else { return Vec::new() };
    let mut out: Vec<(usize, u64)> = file
        .symbols()
        .chain(file.dynamic_symbols())
        .filter(|s| s.is_definition() && s.address() != 0)
        .filter_map(|s| Some((names.iter().position(|n| Ok(*n) == s.name())?, s.address())))
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}
