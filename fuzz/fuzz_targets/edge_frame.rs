//! Any bytes a WebSocket client sends, in a text frame (JSON) or a binary
//! frame (protobuf), decode to a client frame or to an error that says what
//! was wrong; never a panic. A frame that decodes means the same in both
//! forms: encoded in the other form, it decodes to the same frame.
#![no_main]

use gateway::frames::{Form, decode};
use libfuzzer_sys::fuzz_target;
use proto::Message as _;
use proto::edge::ClientFrame;

fuzz_target!(|data: &[u8]| {
    for form in [Form::Json, Form::Proto] {
        match decode(form, data) {
            Ok(frame) => {
                let frame = ClientFrame { frame: Some(frame) };
                let bytes = frame.encode_to_vec();
                let again = decode(Form::Proto, &bytes).expect("a decoded frame re-encodes");
                assert_eq!(Some(again), frame.frame.clone());
                let json = serde_json::to_vec(&frame).expect("a frame serializes as JSON");
                let again = decode(Form::Json, &json).expect("a decoded frame re-serializes");
                assert_eq!(Some(again), frame.frame);
            }
            Err(e) => assert!(!e.0.is_empty()),
        }
    }
});
