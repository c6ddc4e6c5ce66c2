//! Any bytes a model backend or webhook streams, cut into pieces anywhere,
//! give the same server-sent events as the same bytes in one piece; never a
//! panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use processors::sse::{Event, SseBuffer};

fn events(pieces: &[&[u8]]) -> Vec<Event> {
    let mut b = SseBuffer::default();
    let mut out = Vec::new();
    for p in pieces {
        b.push(p);
        while let Some(e) = b.next_event() {
            out.push(e);
        }
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&cut, rest)) = data.split_first() else { return };
    let whole = events(&[rest]);
    let at = usize::from(cut) % (rest.len() + 1);
    let (a, b) = rest.split_at(at);
    assert_eq!(events(&[a, b]), whole);
    let bytes: Vec<&[u8]> = rest.chunks(1).collect();
    assert_eq!(events(&bytes), whole);
});
