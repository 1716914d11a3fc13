//! `ffirec dump --accesses`: every decoded memory access as one JSON line.

use std::collections::HashMap;
use std::io::Write;

use ffirec_decode::{MemAccess, Rw};
use ffirec_format::{Event, Trace};

use crate::decode::Decoder;
use crate::symbols::ModuleMap;
use crate::Error;

/// Writes one JSON object per decoded memory access of `trace`, in event order:
/// `{"kind":"access","seq":N,"tid":N,"call":N|null,"ip":"0x…","addr":"0x…",
/// "size":N,"rw":"r"|"w"|"rw","module":"…"|null,"symbol":"…"|null}`
/// (plus `"certain":false` for accesses that may not have happened). An
/// instruction that cannot be decoded gives
/// `{"kind":"undecodable","seq":N,"tid":N,"ip":"0x…","error":"…"}`.
/// Returns the number of access lines written.
pub fn dump_accesses(trace: &Trace, out: &mut dyn Write) -> Result<u64, Error> {
    let io = |source| Error::Io { path: "<output>".into(), source };
    let modules = trace.modules();
    let map = ModuleMap::new(modules);
    let mut decoder = Decoder::default();
    let mut stacks: HashMap<u32, Vec<u64>> = HashMap::new();
    let mut scratch: Vec<MemAccess> = Vec::new();
    let mut lines = 0u64;
    for index in 0..trace.chunks().len() {
        let first = trace.chunks()[index].first_event;
        let events = trace.read_chunk(index)?;
        for (seq, ev) in (first..).zip(events.iter()) {
            match ev {
                Event::Call { tid, call, .. } => stacks.entry(*tid).or_default().push(*call),
                Event::Return { tid, call, .. } => {
                    if let Some(st) = stacks.get_mut(tid) {
                        if let Some(pos) = st.iter().rposition(|c| c == call) {
                            st.truncate(pos);
                        }
                    }
                }
                Event::Access { tid, code, regs, vregs, .. } => {
                    scratch.clear();
                    let ip = regs.rip;
                    if let Err(e) = decoder.decoded(ip, code).and_then(|d| d.accesses_into(regs, vregs, &mut scratch)) {
                        let err = serde_json::to_string(&e.to_string()).unwrap_or_default();
                        writeln!(out, "{{\"kind\":\"undecodable\",\"seq\":{seq},\"tid\":{tid},\"ip\":\"{ip:#x}\",\"error\":{err}}}")
                            .map_err(io)?;
                        continue;
                    }
                    let call = stacks.get(tid).and_then(|s| s.last()).map_or("null".to_string(), |c| c.to_string());
                    let (module, symbol) = match map.find(ip).and_then(|s| modules.get(s.module as usize)) {
                        Some(m) => {
                            let name = std::path::Path::new(&m.path)
                                .file_name()
                                .map_or_else(|| m.path.clone(), |f| f.to_string_lossy().into_owned());
                            let sym = m.symbolize(ip).map(|(s, off)| {
                                if off == 0 {
                                    s.name.clone()
                                } else {
                                    format!("{}+{off:#x}", s.name)
                                }
                            });
                            (Some(name), sym)
                        }
                        None => (None, None),
                    };
                    let js = |v: &Option<String>| serde_json::to_string(v).unwrap_or_else(|_| "null".into());
                    let (module, symbol) = (js(&module), js(&symbol));
                    for a in &scratch {
                        let rw = match a.rw {
                            Rw::Read => "r",
                            Rw::Write => "w",
                            Rw::ReadWrite => "rw",
                        };
                        let certain = if a.certain { "" } else { ",\"certain\":false" };
                        writeln!(
                            out,
                            "{{\"kind\":\"access\",\"seq\":{seq},\"tid\":{tid},\"call\":{call},\"ip\":\"{ip:#x}\",\"addr\":\"{:#x}\",\"size\":{},\"rw\":\"{rw}\",\"module\":{module},\"symbol\":{symbol}{certain}}}",
                            a.addr, a.size
                        )
                        .map_err(io)?;
                        lines += 1;
                    }
                }
                _ => {}
            }
        }
    }
    Ok(lines)
}
