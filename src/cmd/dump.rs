//! `ffirec dump`: every event of a trace, one per line (text or JSONL).

use std::io::{self, BufWriter, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use ffirec_format::{Completeness, Event, ExitStatus, Regs, Trace, VecReg};
use serde_json::{json, Value};

use crate::exit;

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// One compact human-readable line per event (registers other than rip omitted).
    Text,
    /// One JSON object per line: "seq", "kind", then every field; addresses as "0x…" strings.
    Jsonl,
}

/// Print every event of a trace, one per line.
#[derive(clap::Args, Debug)]
pub struct DumpArgs {
    /// The trace (.ffr) to print.
    #[arg(value_name = "TRACE")]
    pub trace: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "text")]
    pub format: Format,
    /// Print the decoded memory accesses instead, one JSON object per access:
    /// {"kind":"access","seq","tid","call","ip","addr","size","rw":"r"|"w"|"rw","module","symbol"}.
    #[arg(long)]
    pub accesses: bool,
}

pub fn run(args: DumpArgs) -> ExitCode {
    match dump(&args) {
        Ok(code) => ExitCode::from(code),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => ExitCode::from(exit::SUCCESS),
        Err(e) => {
            eprintln!("ffirec: error: writing output: {e}");
            ExitCode::from(exit::ERROR)
        }
    }
}

/// Returns the exit code; `Err` only for failures writing stdout.
fn dump(args: &DumpArgs) -> io::Result<u8> {
    let trace = match Trace::open(&args.trace) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("ffirec: error: {}", describe(&args.trace, &e));
            return Ok(exit::ERROR);
        }
    };
    let stdout = io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    if args.accesses {
        return accesses(args, &trace, &mut out);
    }
    if args.format == Format::Text {
        text_preamble(&mut out, &trace)?;
    }
    for item in trace.events() {
        match item {
            Ok((seq, event)) => match args.format {
                Format::Text => writeln!(out, "{}", text_line(seq, &event))?,
                Format::Jsonl => writeln!(out, "{}", json_line(seq, &event))?,
            },
            Err(e) => {
                out.flush()?;
                eprintln!("ffirec: error: {}", describe(&args.trace, &e));
                return Ok(exit::ERROR);
            }
        }
    }
    out.flush()?;
    if let Completeness::Truncated { chunks, events } = trace.completeness() {
        eprintln!(
            "ffirec: error: {}: trace truncated (no valid footer): printed the {events} events of its {chunks} complete chunks",
            args.trace.display()
        );
        return Ok(exit::TRUNCATED);
    }
    Ok(exit::SUCCESS)
}

/// `--accesses`: decoded memory accesses (the analyzer's first stage) as JSON lines.
fn accesses(args: &DumpArgs, trace: &Trace, out: &mut impl Write) -> io::Result<u8> {
    if let Err(e) = ffirec_analyzer::dump_accesses(trace, out) {
        out.flush()?;
        match e {
            ffirec_analyzer::Error::Io { source, .. } => return Err(source),
            ffirec_analyzer::Error::Trace(e) => eprintln!("ffirec: error: {}", describe(&args.trace, &e)),
            e => eprintln!("ffirec: error: {}: {e}", args.trace.display()),
        }
        return Ok(exit::ERROR);
    }
    out.flush()?;
    if let Completeness::Truncated { chunks, events } = trace.completeness() {
        eprintln!(
            "ffirec: error: {}: trace truncated (no valid footer): printed the accesses of the {events} events of its {chunks} complete chunks",
            args.trace.display()
        );
        return Ok(exit::TRUNCATED);
    }
    Ok(exit::SUCCESS)
}

/// The error with the trace's name in front (I/O errors already carry it).
fn describe(path: &std::path::Path, e: &ffirec_format::Error) -> String {
    match e {
        ffirec_format::Error::Io { .. } => e.to_string(),
        _ => format!("{}: {e}", path.display()),
    }
}

fn text_preamble(out: &mut impl Write, t: &Trace) -> io::Result<()> {
    let h = t.header();
    writeln!(
        out,
        "# ffirec trace, format v{}, recorder {}, page size {}: {}",
        t.version(),
        h.recorder_version,
        h.page_size,
        h.command.join(" ")
    )?;
    for (i, m) in t.modules().iter().enumerate() {
        let domain = match m.domain {
            ffirec_format::Domain::Host => "host",
            ffirec_format::Domain::Foreign => "foreign",
            ffirec_format::Domain::Neutral => "neutral",
        };
        writeln!(out, "# module {i}: pid {} {:#x} {domain} {} ({} symbols)", m.pid, m.base, m.path, m.symbols.len())?;
    }
    Ok(())
}

fn hex(v: u64) -> Value {
    Value::String(format!("{v:#x}"))
}

fn hex_bytes(b: &[u8]) -> Value {
    Value::String(b.iter().map(|x| format!("{x:02x}")).collect())
}

fn hex_all(v: &[u64]) -> Value {
    Value::Array(v.iter().map(|&x| hex(x)).collect())
}

/// A unit enum's serde name ("host", "posix_memalign", ...). A macro, not a
/// generic fn, so this crate needs no direct serde dependency.
macro_rules! named {
    ($v:expr) => {
        serde_json::to_value($v).unwrap_or(Value::Null)
    };
}

const GPR_NAMES: [&str; 16] =
    ["rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"];

fn regs(r: &Regs) -> Value {
    let mut m = serde_json::Map::new();
    for (name, v) in GPR_NAMES.iter().zip(r.gpr) {
        m.insert((*name).into(), hex(v));
    }
    m.insert("rip".into(), hex(r.rip));
    m.insert("rflags".into(), hex(r.rflags));
    m.insert("fs_base".into(), hex(r.fs_base));
    m.insert("gs_base".into(), hex(r.gs_base));
    Value::Object(m)
}

fn vregs(v: &[VecReg]) -> Value {
    Value::Array(
        v.iter().map(|v| json!({"kind": named!(v.kind), "index": v.index, "bytes": hex_bytes(&v.bytes)})).collect(),
    )
}

fn exit_status(s: ExitStatus) -> Value {
    match s {
        ExitStatus::Code(c) => json!({ "code": c }),
        ExitStatus::Signal(s) => json!({ "signal": s }),
    }
}

/// The event's fields in a stable order (after "seq" and "kind").
fn fields(e: &Event) -> Vec<(&'static str, Value)> {
    match e {
        Event::Access { tid, code, regs: r, fault_addr, data, vregs: v } => vec![
            ("tid", json!(tid)),
            ("ip", hex(r.rip)),
            ("code", hex_bytes(code)),
            ("fault_addr", hex(*fault_addr)),
            ("data", hex_bytes(data)),
            ("regs", regs(r)),
            ("vregs", vregs(v)),
        ],
        Event::Call { tid, call, target, module, symbol, args, rsp, return_addr } => vec![
            ("tid", json!(tid)),
            ("call", json!(call)),
            ("target", hex(*target)),
            ("module", json!(module)),
            ("symbol", json!(symbol)),
            ("args", hex_all(args)),
            ("rsp", hex(*rsp)),
            ("return_addr", hex(*return_addr)),
        ],
        Event::Return { tid, call, rax, rdx } => {
            vec![("tid", json!(tid)), ("call", json!(call)), ("rax", hex(*rax)), ("rdx", hex(*rdx))]
        }
        Event::Callback { tid, call, target, args, rsp, return_addr } => vec![
            ("tid", json!(tid)),
            ("call", json!(call)),
            ("target", hex(*target)),
            ("args", hex_all(args)),
            ("rsp", hex(*rsp)),
            ("return_addr", hex(*return_addr)),
        ],
        Event::CallbackReturn { tid, call, rax } => {
            vec![("tid", json!(tid)), ("call", json!(call)), ("rax", hex(*rax))]
        }
        Event::Alloc { tid, func, ptr, size, old_ptr, caller, domain, zeroed } => vec![
            ("tid", json!(tid)),
            ("func", named!(func)),
            ("ptr", hex(*ptr)),
            ("size", json!(size)),
            ("old_ptr", hex(*old_ptr)),
            ("caller", hex(*caller)),
            ("domain", named!(domain)),
            ("zeroed", json!(zeroed)),
        ],
        Event::Free { tid, ptr, caller, domain } => {
            vec![("tid", json!(tid)), ("ptr", hex(*ptr)), ("caller", hex(*caller)), ("domain", named!(domain))]
        }
        Event::Map { tid, addr, len, prot, flags, domain } => vec![
            ("tid", json!(tid)),
            ("addr", hex(*addr)),
            ("len", json!(len)),
            ("prot", json!(prot)),
            ("flags", hex(u64::from(*flags))),
            ("domain", named!(domain)),
        ],
        Event::Unmap { tid, addr, len } => vec![("tid", json!(tid)), ("addr", hex(*addr)), ("len", json!(len))],
        Event::Protect { tid, addr, len, prot } => {
            vec![("tid", json!(tid)), ("addr", hex(*addr)), ("len", json!(len)), ("prot", json!(prot))]
        }
        Event::SyscallAccess { tid, nr, args, ret, ranges } => vec![
            ("tid", json!(tid)),
            ("nr", json!(nr)),
            ("args", hex_all(args)),
            ("ret", json!(ret)),
            (
                "ranges",
                Value::Array(
                    ranges.iter().map(|r| json!({"addr": hex(r.addr), "len": r.len, "write": r.write})).collect(),
                ),
            ),
        ],
        Event::Signal { tid, signo, code, addr, regs: r, code_bytes, fatal } => vec![
            ("tid", json!(tid)),
            ("signo", json!(signo)),
            ("code", json!(code)),
            ("addr", hex(*addr)),
            ("ip", hex(r.rip)),
            ("code_bytes", hex_bytes(code_bytes)),
            ("fatal", json!(fatal)),
            ("regs", regs(r)),
        ],
        Event::Gap { tid, reason, detail } => {
            vec![("tid", json!(tid)), ("reason", named!(reason)), ("detail", json!(detail))]
        }
        Event::ThreadStart { tid, pid, parent } => {
            vec![("tid", json!(tid)), ("pid", json!(pid)), ("parent", json!(parent))]
        }
        Event::ThreadExit { tid, code } => vec![("tid", json!(tid)), ("code", json!(code))],
        Event::Fork { tid, parent_pid, child_pid } => {
            vec![("tid", json!(tid)), ("parent_pid", json!(parent_pid)), ("child_pid", json!(child_pid))]
        }
        Event::Exec { tid, pid, path } => vec![("tid", json!(tid)), ("pid", json!(pid)), ("path", json!(path))],
        Event::Exit { pid, status } => vec![("pid", json!(pid)), ("status", exit_status(*status))],
        Event::HostWrite { tid, addr, len } => {
            vec![("tid", json!(tid)), ("addr", hex(*addr)), ("len", json!(len))]
        }
        Event::InitUnknown { addr, len } => vec![("addr", hex(*addr)), ("len", json!(len))],
    }
}

fn json_line(seq: u64, e: &Event) -> String {
    let mut s = format!("{{\"seq\":{seq},\"kind\":\"{}\"", e.kind());
    for (k, v) in fields(e) {
        s.push_str(&format!(",\"{k}\":{v}"));
    }
    s.push('}');
    s
}

fn text_value(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Array(a) => format!("[{}]", a.iter().map(text_value).collect::<Vec<_>>().join(",")),
        Value::Object(m) => {
            format!("{{{}}}", m.iter().map(|(k, v)| format!("{k}={}", text_value(v))).collect::<Vec<_>>().join(","))
        }
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn text_line(seq: u64, e: &Event) -> String {
    let mut s = format!("{seq:>8} {:<15}", e.kind());
    for (k, v) in fields(e) {
        // The register file does not fit a line; `ip` is shown, the rest is in --format jsonl.
        if k == "regs" || (k == "vregs" && v.as_array().is_some_and(|a| a.is_empty())) {
            continue;
        }
        s.push_str(&format!(" {k}={}", text_value(&v)));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn access_as_json_and_text() {
        let mut r = Regs { rip: 0x401000, ..Regs::default() };
        r.gpr[Regs::RCX] = 3;
        let e = Event::Access {
            tid: 7,
            code: vec![0x8b, 0x07],
            regs: r,
            fault_addr: 0x1000,
            data: vec![1, 2],
            vregs: vec![],
        };
        let line = json_line(5, &e);
        let v: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["seq"], 5);
        assert_eq!(v["kind"], "access");
        assert_eq!(v["ip"], "0x401000");
        assert_eq!(v["code"], "8b07");
        assert_eq!(v["fault_addr"], "0x1000");
        assert_eq!(v["regs"]["rcx"], "0x3");
        assert!(line.starts_with("{\"seq\":5,\"kind\":\"access\",\"tid\":7,"));
        assert_eq!(
            text_line(5, &e),
            "       5 access          tid=7 ip=0x401000 code=8b07 fault_addr=0x1000 data=0102"
        );
    }
}
