//! Deterministic write/read checks of the public API.
#![allow(clippy::unwrap_used)] // test code: a failed step should panic where it happened

use ffirec_format::*;

fn header() -> Header {
    Header {
        recorder_version: "0.1.0".into(),
        uuid: [7; 16],
        command: vec!["./prog".into(), "arg".into()],
        start_time_ns: 1_700_000_000_000_000_000,
        page_size: 4096,
        policy: Policy {
            foreign: vec!["libz.so.1".into()],
            neutral: vec!["libc.so.6".into()],
            track_host_init: true,
            guard_foreign: false,
        },
    }
}

fn access(i: u64) -> Event {
    let mut regs = Regs { rip: 0x401000 + (i % 2) * 4, rflags: 0x246, ..Regs::default() };
    regs.gpr[Regs::RCX] = i;
    regs.gpr[Regs::RSI] = 0x7f00_0000_0000;
    Event::Access {
        tid: 100,
        code: vec![0x48, 0x8b, 0x04, 0xce],
        regs,
        fault_addr: 0x7f00_0000_0000 + 8 * i,
        data: i.to_le_bytes().to_vec(),
        vregs: vec![],
    }
}

fn module() -> Module {
    Module {
        pid: 1,
        path: "/usr/lib/libz.so.1".into(),
        build_id: vec![1, 2, 3],
        base: 0x7f00_1000_0000,
        segments: vec![Segment { start: 0x7f00_1000_0000, len: 0x1000, prot: 5, file_offset: 0 }],
        domain: Domain::Foreign,
        symbols: vec![Symbol { name: "inflate".into(), addr: 0x100, size: 0x40 }],
    }
}

#[test]
fn write_then_read_back_exactly() {
    let dir = std::env::temp_dir().join(format!("ffirec-format-basic-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.ffr");
    let opts = WriterOptions { events_per_chunk: 100, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(&path, header(), opts).unwrap();
    assert_eq!(w.add_module(module()).unwrap(), 0);
    let events: Vec<Event> = (0..1000).map(access).collect();
    for (i, e) in events.iter().enumerate() {
        assert_eq!(w.push(e.clone()).unwrap(), i as u64);
    }
    let written =
        w.finish(Summary { exit: Some(ExitStatus::Code(3)), counters: vec![("ptrace_stops".into(), 42)] }).unwrap();
    assert_eq!(written.events, 1000);
    assert!(!dir.join("t.ffr.partial").exists());
    let t = Trace::open(&path).unwrap();
    assert_eq!(t.header(), &header());
    assert_eq!(t.modules(), &[module()]);
    assert_eq!(t.completeness(), &Completeness::Complete);
    assert_eq!(t.chunks().len(), 10);
    assert_eq!(t.event_count(), 1000);
    let s = t.summary().unwrap();
    assert_eq!(s.exit, Some(ExitStatus::Code(3)));
    assert_eq!(s.counter("events.access"), Some(1000));
    assert_eq!(s.counter("events.call"), Some(0));
    assert_eq!(s.counter("ptrace_stops"), Some(42));
    let back: Vec<Event> = t.events().map(|r| r.unwrap().1).collect();
    assert_eq!(back, events);
    assert_eq!(t.read_chunk(3).unwrap(), events[300..400].to_vec());
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn dropped_writer_leaves_a_readable_partial() {
    let dir = std::env::temp_dir().join(format!("ffirec-format-drop-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("t.ffr");
    let opts = WriterOptions { events_per_chunk: 64, ..WriterOptions::default() };
    let mut w = TraceWriter::with_options(&path, header(), opts).unwrap();
    let events: Vec<Event> = (0..200).map(access).collect();
    for e in &events[..100] {
        w.push(e.clone()).unwrap();
    }
    w.add_module(module()).unwrap();
    for e in &events[100..] {
        w.push(e.clone()).unwrap();
    }
    drop(w);
    assert!(!path.exists());
    let t = Trace::open(dir.join("t.ffr.partial")).unwrap();
    assert_eq!(t.completeness(), &Completeness::Truncated { chunks: 4, events: 200 });
    assert_eq!(t.summary(), None);
    assert_eq!(t.modules(), &[module()]);
    let back: Vec<Event> = t.events().map(|r| r.unwrap().1).collect();
    assert_eq!(back, events);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn trace_is_sync_and_send() {
    fn check<T: Sync + Send>() {}
    check::<Trace>();
}

#[test]
fn directories_and_missing_files_are_io_errors_naming_the_path() {
    let dir = std::env::temp_dir();
    match Trace::open(&dir) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, dir);
            assert_eq!(source.to_string(), "is a directory, not a trace file");
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
    let missing = dir.join("ffirec-no-such-trace.ffr");
    match Trace::open(&missing) {
        Err(Error::Io { path, source }) => {
            assert_eq!(path, missing);
            assert_eq!(source.kind(), std::io::ErrorKind::NotFound);
        }
        other => panic!("{:?}", other.map(|_| ())),
    }
}

#[test]
fn push_access_writes_the_same_bytes_as_push() {
    // The recorder's allocation-free path (push_access from borrowed parts)
    // and push(Event::Access) must give byte-identical files, with other
    // kinds, several threads, data, extended registers and several chunks.
    let dir = std::env::temp_dir().join(format!("ffirec-format-push-access-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut events: Vec<Event> = Vec::new();
    for i in 0..700u64 {
        let mut e = access(i);
        if let Event::Access { tid, vregs, data, .. } = &mut e {
            *tid = 100 + (i % 3) as u32;
            if i % 50 == 7 {
                vregs.push(VecReg { kind: VecRegKind::Ymm, index: 2, bytes: (0..32).collect() });
            }
            if i % 5 == 0 {
                data.clear();
            }
        }
        events.push(e);
        if i % 9 == 0 {
            events.push(Event::Alloc {
                tid: 100,
                func: AllocFn::Malloc,
                ptr: 0x5000 + i,
                size: 16,
                old_ptr: 0,
                caller: 0x401000,
                domain: Domain::Host,
                zeroed: false,
            });
        }
        if i % 13 == 0 {
            events.push(Event::Gap { tid: 101, reason: GapReason::Blocked, detail: i });
        }
    }
    let mut files = Vec::new();
    for borrowed in [false, true] {
        let path = dir.join(format!("t{borrowed}.ffr"));
        let opts = WriterOptions { events_per_chunk: 128, ..WriterOptions::default() };
        let mut w = TraceWriter::with_options(&path, header(), opts).unwrap();
        for (i, e) in events.iter().enumerate() {
            let n = match e {
                Event::Access { tid, code, regs, fault_addr, data, vregs } if borrowed => {
                    w.push_access(&AccessRef { tid: *tid, code, regs, fault_addr: *fault_addr, data, vregs }).unwrap()
                }
                _ => w.push(e.clone()).unwrap(),
            };
            assert_eq!(n, i as u64);
        }
        files.push(finish_bytes(w, &path));
    }
    same_bytes_same_events(&files, &dir.join("ttrue.ffr"), &events);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Finishes `w` (written to `path`) and returns the file's bytes.
fn finish_bytes(w: TraceWriter, path: &std::path::Path) -> Vec<u8> {
    w.finish(Summary { exit: Some(ExitStatus::Code(0)), counters: vec![] }).unwrap();
    std::fs::read(path).unwrap()
}

/// Two ways of writing the same events gave the same two `files`, and the
/// file at `path` reads back as `events`. Returns it opened.
fn same_bytes_same_events(files: &[Vec<u8>], path: &std::path::Path, events: &[Event]) -> Trace {
    assert_eq!(files[0], files[1], "same events, different bytes");
    let t = Trace::open(path).unwrap();
    let back: Vec<Event> = t.events().map(|r| r.unwrap().1).collect();
    assert_eq!(back, events);
    t
}

#[test]
fn push_plain_mem_writes_the_same_bytes_as_push() {
    // The recorder's run path (push_plain_mem) and push(Event::Alloc/Free)
    // one at a time must give byte-identical files: runs that cross chunk
    // boundaries (7 events per chunk), a run ending exactly on one, other
    // kinds in between, runs of one thread (the same as the run before or
    // not) and of two, pointer and size deltas of 1 to 10 LEB128 bytes,
    // mallocs given with their frees (some cut by a chunk boundary).
    let dir = std::env::temp_dir().join(format!("ffirec-format-push-plain-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut runs: Vec<Vec<PlainMem>> = Vec::new();
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    for r in 0..40u64 {
        let mut run = Vec::new();
        for i in 0..(r * 3) % 17 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let bits = (x % 65) as u32;
            let size = if bits == 64 { u64::MAX } else { x & ((1u64 << bits) - 1) };
            let ptr = if i % 4 == 3 { u64::MAX - size } else { 0x5555_0000_0000u64.wrapping_add(size) };
            let caller = if i % 5 == 0 { x.rotate_left(9) } else { 0x5555_0000_1234 };
            // One thread per run, changing every third run; two in every fifth.
            let tid = if r % 5 == 4 { 100 + (i % 2) as u32 * 7 } else { 100 + (r / 3 % 2) as u32 * 7 };
            // Every other malloc with its free (callers near or far apart).
            let free_caller = (x % 3 == 1 && i % 2 == 0).then(|| caller.wrapping_add(x % 7 * (x >> 40)));
            run.push(PlainMem { free: x % 3 == 0, tid, ptr, size, caller, free_caller });
        }
        runs.push(run);
    }
    let gap = |r: usize| Event::Gap { tid: 101, reason: GapReason::Blocked, detail: r as u64 };
    let event = |m: &PlainMem| match m.free {
        true => vec![Event::Free { tid: m.tid, ptr: m.ptr, caller: m.caller, domain: Domain::Foreign }],
        false => {
            let alloc = Event::Alloc {
                tid: m.tid,
                func: AllocFn::Malloc,
                ptr: m.ptr,
                size: m.size,
                old_ptr: 0,
                caller: m.caller,
                domain: Domain::Foreign,
                zeroed: false,
            };
            let free =
                m.free_caller.map(|caller| Event::Free { tid: m.tid, ptr: m.ptr, caller, domain: Domain::Foreign });
            std::iter::once(alloc).chain(free).collect()
        }
    };
    let mut files = Vec::new();
    let mut events = Vec::new();
    for by_run in [false, true] {
        let path = dir.join(format!("t{by_run}.ffr"));
        let opts = WriterOptions { events_per_chunk: 7, ..WriterOptions::default() };
        let mut w = TraceWriter::with_options(&path, header(), opts).unwrap();
        events.clear();
        for (r, run) in runs.iter().enumerate() {
            if r % 3 == 0 {
                w.push(gap(r)).unwrap();
                events.push(gap(r));
            }
            if by_run {
                w.push_plain_mem(Domain::Foreign, run, |m| *m).unwrap();
            } else {
                for e in run.iter().flat_map(event) {
                    w.push(e).unwrap();
                }
            }
            events.extend(run.iter().flat_map(event));
            assert_eq!(w.events(), events.len() as u64);
        }
        files.push(finish_bytes(w, &path));
    }
    let t = same_bytes_same_events(&files, &dir.join("ttrue.ffr"), &events);
    let s = t.summary().unwrap();
    let frees = events.iter().filter(|e| matches!(e, Event::Free { .. })).count() as u64;
    assert_eq!(s.counter("events.free"), Some(frees));
    assert_eq!(s.counter("events.alloc"), Some(events.len() as u64 - frees - 14));
    std::fs::remove_dir_all(&dir).unwrap();
}
