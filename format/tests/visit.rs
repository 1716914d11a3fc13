//! `Trace::visit_chunk`: the borrowing reader gives exactly what `read_chunk`
//! gives (same events, same numbers, same errors).
#![allow(clippy::unwrap_used)] // test code: a failed step should panic where it happened

use ffirec_format::*;

fn header() -> Header {
    Header {
        recorder_version: "0.1.0".into(),
        uuid: [3; 16],
        command: vec!["./prog".into()],
        start_time_ns: 0,
        page_size: 4096,
        policy: Policy::default(),
    }
}

/// Accesses of two threads (every fifth with a vector register), with a
/// call, a syscall and an alloc in between.
fn events() -> Vec<Event> {
    let mut out = vec![];
    for i in 0..250u64 {
        let tid = 100 + (i % 2) as u32;
        let mut regs = Regs { rip: 0x401000 + (i % 3) * 4, rflags: 0x246, ..Regs::default() };
        regs.gpr[Regs::RCX] = i;
        let vregs = if i % 5 == 0 {
            vec![VecReg { kind: VecRegKind::Xmm, index: (i % 16) as u8, bytes: vec![i as u8; 16] }]
        } else {
            vec![]
        };
        out.push(Event::Access {
            tid,
            code: vec![0x48, 0x8b, 0x04, 0xce, (i % 3) as u8][..4 + (i % 3 == 1) as usize].to_vec(),
            regs,
            fault_addr: 0x7f00_0000_0000 + 8 * i,
            data: i.to_le_bytes()[..(i % 9) as usize].to_vec(),
            vregs,
        });
        match i % 50 {
            7 => out.push(Event::Call {
                tid,
                call: i,
                target: 0x7f00_1000_0100,
                module: 0,
                symbol: None,
                args: [i, 2, 3, 4, 5, 6],
                rsp: 0x7ffd_0000_0000,
                return_addr: 0x401234,
            }),
            8 => out.push(Event::SyscallAccess {
                tid,
                nr: 0,
                args: [3, 0x5000, 64, 0, 0, 0],
                ret: 64,
                ranges: vec![SyscallRange { addr: 0x5000, len: 64, write: true }],
            }),
            9 => out.push(Event::InitUnknown { addr: i * 0x1000, len: 4096 }),
            _ => {}
        }
    }
    out
}

fn write(name: &str, evs: &[Event]) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("ffirec-format-visit-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.ffr");
    let opts = WriterOptions { events_per_chunk: 64, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(&path, header(), opts).unwrap();
    for e in evs {
        w.push(e.clone()).unwrap();
    }
    w.finish(Summary::default()).unwrap();
    (dir, path)
}

#[test]
fn visit_chunk_yields_read_chunk_events_with_their_numbers() {
    let evs = events();
    assert_eq!(evs.len(), 265);
    let (dir, path) = write("same", &evs);
    let t = Trace::open(&path).unwrap();
    assert_eq!(t.chunks().len(), 5);
    let mut seen: Vec<(u64, Event)> = vec![];
    let (mut borrowed, mut owned) = (0, 0);
    for c in 0..t.chunks().len() {
        t.visit_chunk(c, |n, e| {
            match &e {
                EventRef::Access(_) => borrowed += 1,
                EventRef::Other(o) => {
                    assert_ne!(o.kind(), "access");
                    owned += 1;
                }
            }
            seen.push((n, e.into_event()));
        })
        .unwrap();
        let info = t.chunks()[c];
        let start = info.first_event as usize;
        assert_eq!(t.read_chunk(c).unwrap(), evs[start..start + info.events as usize].to_vec());
    }
    assert_eq!((borrowed, owned), (250, 15));
    let want: Vec<(u64, Event)> = evs.into_iter().enumerate().map(|(i, e)| (i as u64, e)).collect();
    assert_eq!(seen, want);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn visit_chunk_fails_like_read_chunk() {
    let (dir, path) = write("bad", &events());
    let mut bytes = std::fs::read(&path).unwrap();
    let t = Trace::from_bytes(bytes.clone()).unwrap();
    let c2 = t.chunks()[2];
    // A byte inside chunk 2's compressed payload: the checksum catches it.
    bytes[c2.offset as usize + 40 + c2.compressed_len as usize / 2] ^= 0x40;
    let t = Trace::from_bytes(bytes).unwrap();
    let mut visited = 0;
    let err = t.visit_chunk(2, |_, _| visited += 1).unwrap_err();
    assert_eq!(visited, 0);
    assert_eq!(err.to_string(), t.read_chunk(2).unwrap_err().to_string());
    assert!(matches!(err, Error::Corrupt { chunk: 2, ref reason } if reason == "payload checksum mismatch"), "{err}");
    assert!(t.visit_chunk(1, |_, _| ()).is_ok());
    let err = t.visit_chunk(9, |_, _| ()).unwrap_err();
    assert_eq!(err.to_string(), t.read_chunk(9).unwrap_err().to_string());
    std::fs::remove_dir_all(&dir).unwrap();
}
