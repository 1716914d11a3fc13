//! Random event streams of every kind, over several threads and with modules
//! interleaved, written with random chunk sizes and read back equal.
#![allow(clippy::unwrap_used)] // test code: a failed step should panic where it happened

#[path = "support/arb.rs"]
mod arb;

use ffirec_format::*;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Event(Event),
    Module(Module),
}

fn ops() -> impl Strategy<Value = Vec<Op>> {
    proptest::collection::vec(
        prop_oneof![20 => arb::event().prop_map(Op::Event), 1 => arb::module().prop_map(Op::Module)],
        0..300,
    )
}

fn scratch(case: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("ffirec-roundtrip-{}-{case}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn written_streams_read_back_equal(
        header in arb::header(),
        ops in ops(),
        chunk in 1usize..64,
        level in prop_oneof![Just(1), Just(3), Just(9)],
        summary in arb::summary(),
        finish in prop_oneof![3 => Just(true), 1 => Just(false)],
    ) {
        let dir = scratch("case");
        let path = dir.join("t.ffr");
        let opts = WriterOptions { events_per_chunk: chunk, level, queue_depth: 2 };
        let mut w = TraceWriter::with_options(&path, header.clone(), opts).unwrap();
        let mut events = vec![];
        let mut modules = vec![];
        let mut module_events = vec![];
        for op in ops {
            match op {
                Op::Event(e) => {
                    prop_assert_eq!(w.push(e.clone()).unwrap(), events.len() as u64);
                    events.push(e);
                }
                Op::Module(m) => {
                    prop_assert_eq!(w.add_module(m.clone()).unwrap(), modules.len() as u32);
                    modules.push(m);
                    module_events.push(events.len() as u64);
                }
            }
        }
        prop_assert_eq!(w.events(), events.len() as u64);
        let expected_chunks = events.len().div_ceil(chunk);
        let t = if finish {
            let written = w.finish(summary.clone()).unwrap();
            prop_assert_eq!(written.events, events.len() as u64);
            prop_assert_eq!(written.bytes, std::fs::metadata(&path).unwrap().len());
            Trace::open(&path).unwrap()
        } else {
            drop(w);
            Trace::open(dir.join("t.ffr.partial")).unwrap()
        };
        prop_assert_eq!(t.header(), &header);
        prop_assert_eq!(t.modules(), modules.as_slice());
        for (i, &n) in module_events.iter().enumerate() {
            prop_assert_eq!(t.module_first_event(i), Some(n));
        }
        prop_assert_eq!(t.module_first_event(modules.len()), None);
        prop_assert_eq!(t.event_count(), events.len() as u64);
        prop_assert_eq!(t.chunks().len(), expected_chunks);
        if finish {
            prop_assert_eq!(t.completeness(), &Completeness::Complete);
            let s = t.summary().unwrap();
            prop_assert_eq!(s.exit, summary.exit);
            for kind in EVENT_KINDS {
                let n = events.iter().filter(|e| e.kind() == *kind).count() as u64;
                prop_assert_eq!(s.counter(&format!("events.{kind}")), Some(n));
            }
            let recorder: Vec<_> = s.counters[EVENT_KINDS.len()..].to_vec();
            prop_assert_eq!(recorder, summary.counters.clone());
        } else {
            prop_assert_eq!(
                t.completeness(),
                &Completeness::Truncated { chunks: expected_chunks, events: events.len() as u64 }
            );
            prop_assert_eq!(t.summary(), None);
        }
        let back: Vec<(u64, Event)> = t.events().map(|r| r.unwrap()).collect();
        prop_assert_eq!(back.len(), events.len());
        for (i, ((n, got), want)) in back.iter().zip(&events).enumerate() {
            prop_assert_eq!(*n, i as u64);
            prop_assert_eq!(got, want);
        }
        // Chunks decode independently and in any order.
        for c in (0..t.chunks().len()).rev() {
            let info = t.chunks()[c];
            let start = info.first_event as usize;
            prop_assert_eq!(t.read_chunk(c).unwrap(), events[start..start + info.events as usize].to_vec());
        }
        // The in-memory reader sees the same trace.
        let bytes = std::fs::read(if finish { path.clone() } else { dir.join("t.ffr.partial") }).unwrap();
        let m = Trace::from_bytes(bytes).unwrap();
        prop_assert_eq!(m.chunks(), t.chunks());
        prop_assert_eq!(m.events().map(|r| r.unwrap().1).collect::<Vec<_>>(), events);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
