//! The trace-size target: a tight loop's access stream compresses to at most
//! 8 bytes per event (DESIGN.md §6).
#![allow(clippy::unwrap_used)] // test code: a failed step should panic where it happened

#[path = "support/synthetic.rs"]
mod synthetic;

use ffirec_format::*;

#[test]
fn tight_loop_access_stream_is_at_most_8_bytes_per_event() {
    let dir = std::env::temp_dir().join(format!("ffirec-format-size-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("loop.ffr");
    let n = 200_000;
    let events = synthetic::tight_loop(42, n);
    let header = Header {
        recorder_version: "0".into(),
        uuid: [0; 16],
        command: vec![],
        start_time_ns: 0,
        page_size: 4096,
        policy: Policy::default(),
    };
    let mut w = TraceWriter::create(&path, header).unwrap();
    for e in &events {
        w.push(e.clone()).unwrap();
    }
    w.finish(Summary::default()).unwrap();
    let t = Trace::open(&path).unwrap();
    let payload: u64 = t.chunks().iter().map(|c| u64::from(c.compressed_len) + 40).sum();
    let per_event = payload as f64 / n as f64;
    eprintln!("{payload} bytes of event chunks for {n} access events: {per_event:.3} bytes/event");
    assert!(per_event <= 8.0, "{per_event:.3} bytes per access event");
    assert_eq!(t.events().map(|r| r.unwrap().1).collect::<Vec<_>>(), events);
    std::fs::remove_dir_all(&dir).unwrap();
}
