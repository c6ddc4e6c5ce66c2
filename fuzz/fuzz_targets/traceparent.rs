//! Any text received as a W3C `traceparent` (an HTTP header, a field of a
//! WebSocket frame, of an envelope from a peer or of a record from Kafka)
//! parses or is refused with a reason; never a panic. One that parses
//! writes back to text that parses to the same fields, and a version-00
//! text writes back exactly as it was read.
#![no_main]

use libfuzzer_sys::fuzz_target;
use stats::trace::TraceParent;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.parse::<TraceParent>() {
        Ok(tp) => {
            let written = tp.to_string();
            assert_eq!(written.parse::<TraceParent>(), Ok(tp));
            if text.starts_with("00-") {
                assert_eq!(written, text);
            }
        }
        Err(e) => assert!(!e.to_string().is_empty()),
    }
});
