//! Any bytes handed to the membership state machine, as datagrams or stream
//! messages, are processed or dropped and counted; never a panic.
#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use membership::{Config, Membership, Meta};

fuzz_target!(|data: &[u8]| {
    let _ = membership::decode_packet(data, usize::MAX);
    let mut m = Membership::new(
        Config::for_tests(),
        "me",
        "127.0.0.1:7946".parse().unwrap(),
        Meta::default(),
        1,
        Duration::ZERO,
    )
    .unwrap();
    m.join(Duration::ZERO, &["127.0.0.2:7946".parse().unwrap()]);
    // Split the input into several packets on 0xff bytes so that sequences are explored too.
    let mut now = Duration::ZERO;
    for (i, chunk) in data.split(|b| *b == 0xff).enumerate() {
        now += Duration::from_millis(37);
        if i % 2 == 0 {
            m.handle_datagram(now, chunk);
        } else {
            m.handle_stream(now, chunk);
        }
        m.handle_timeout(now);
        while m.poll_transmit().is_some() {}
        while m.poll_event().is_some() {}
    }
    assert!(m.stats().packets_in as usize >= 1);
});
