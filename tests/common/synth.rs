//! Synthetic traces written with `TraceWriter` (no compiler, no ASLR): the
//! header and the two modules the synthetic `show`/`analyze` tests share — a
//! host executable with `main` at `HOST+0x1000`, and a foreign `libsyn.so`
//! with `fill` at `LIB+0x1000` and `sum` at `LIB+0x1100`.

use ffirec_format::{Domain, Header, Module, Policy, Segment, Symbol, TraceWriter};

pub const HOST: u64 = 0x5555_5555_0000;
pub const LIB: u64 = 0x7f00_0000_0000;

/// A trace header for a program named `command`; `uuid` is the byte every
/// uuid byte is set to (it tells the tests' traces apart).
pub fn header(uuid: u8, command: &str, track_host_init: bool) -> Header {
    Header {
        recorder_version: "test".into(),
        uuid: [uuid; 16],
        command: vec![command.into()],
        start_time_ns: 0,
        page_size: 4096,
        policy: Policy { foreign: vec!["libsyn.so".into()], neutral: vec![], track_host_init, guard_foreign: false },
    }
}

/// Adds the host executable and `libsyn.so`, both of process `pid`.
pub fn add_modules(w: &mut TraceWriter, pid: u32) {
    w.add_module(Module {
        pid,
        path: "/nonexistent/host".into(),
        build_id: vec![],
        base: HOST,
        segments: vec![Segment { start: HOST, len: 0x2000, prot: 5, file_offset: 0 }],
        domain: Domain::Host,
        symbols: vec![Symbol { name: "main".into(), addr: 0x1000, size: 0x200 }],
    })
    .expect("add the host module");
    w.add_module(Module {
        pid,
        path: "/nonexistent/libsyn.so".into(),
        build_id: vec![],
        base: LIB,
        segments: vec![Segment { start: LIB, len: 0x3000, prot: 5, file_offset: 0 }],
        domain: Domain::Foreign,
        symbols: vec![
            Symbol { name: "fill".into(), addr: 0x1000, size: 0x100 },
            Symbol { name: "sum".into(), addr: 0x1100, size: 0x100 },
        ],
    })
    .expect("add libsyn.so");
}
