//! The WebSocket frames: `ClientFrame`s in, `ServerFrame`s out, as the
//! proto3 JSON mapping in text frames or as protobuf in binary frames
//! (crates/proto/proto/rumor/edge/v1/edge.proto).
//!
//! Decoding never panics and names what was wrong; the fuzz target
//! `edge_frame` holds it to that.

use proto::Message as _;
use proto::edge::{ClientFrame, ServerFrame, client_frame};

/// The form a frame travels in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    /// A text frame: JSON.
    Json,
    /// A binary frame: protobuf.
    Proto,
}

/// A frame that is not a client frame, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BadFrame(pub String);

/// The frame kinds a client may send, for error messages.
pub const CLIENT_KINDS: &str = "hello, send, cancel, watch, unwatch, ping";

/// Decodes a client frame. A frame of no known kind (empty, or only
/// fields this version does not know) is refused, naming the kinds.
pub fn decode(form: Form, bytes: &[u8]) -> Result<client_frame::Frame, BadFrame> {
    let frame = match form {
        Form::Json => {
            serde_json::from_slice::<ClientFrame>(bytes).map_err(|e| BadFrame(format!("not a client frame: {e}")))?
        }
        Form::Proto => ClientFrame::decode(bytes).map_err(|e| BadFrame(format!("not a protobuf ClientFrame: {e}")))?,
    };
    frame.frame.ok_or_else(|| {
        BadFrame(format!(
            "a frame of no known kind; a client frame is one of: {CLIENT_KINDS}"
        ))
    })
}

/// Encodes a server frame in `form`: JSON text or protobuf bytes.
pub fn encode(form: Form, frame: &ServerFrame) -> Encoded {
    match form {
        // The generated serde implementation writes only strings, numbers
        // and objects: it cannot fail.
        Form::Json => Encoded::Text(serde_json::to_string(frame).unwrap_or_default()),
        Form::Proto => Encoded::Binary(frame.encode_to_vec()),
    }
}

/// An encoded server frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Encoded {
    /// For a text frame.
    Text(String),
    /// For a binary frame.
    Binary(Vec<u8>),
}

impl Encoded {
    /// Its size in bytes.
    pub fn len(&self) -> usize {
        match self {
            Encoded::Text(t) => t.len(),
            Encoded::Binary(b) => b.len(),
        }
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use proto::edge::{Send, server_frame};

    use super::*;

    #[test]
    fn json_and_protobuf_carry_the_same_frame() {
        let json = br#"{"send": {"conversation": "c1", "client_id": "a", "text": "hi", "timeout_ms": 500}}"#;
        let from_json = decode(Form::Json, json).unwrap();
        let send = Send {
            conversation: "c1".into(),
            client_id: "a".into(),
            text: "hi".into(),
            timeout_ms: 500,
            ..Default::default()
        };
        assert_eq!(from_json, client_frame::Frame::Send(send.clone()));
        let bytes = ClientFrame {
            frame: Some(client_frame::Frame::Send(send)),
        }
        .encode_to_vec();
        assert_eq!(decode(Form::Proto, &bytes).unwrap(), from_json);
    }

    #[test]
    fn bad_frames_say_what_was_wrong() {
        let wrong_type = decode(Form::Json, br#"{"send": {"conversation": 5}}"#).unwrap_err();
        assert!(
            wrong_type.0.contains("conversation") || wrong_type.0.contains("string"),
            "{wrong_type}"
        );
        let unknown = decode(Form::Json, br#"{"shout": {}}"#).unwrap_err();
        assert!(unknown.0.contains("no known kind"), "{unknown}");
        assert!(decode(Form::Json, b"{not json").is_err());
        assert!(decode(Form::Proto, &[0xff, 0xff, 0xff]).is_err());
    }

    #[test]
    fn server_frames_in_json_leave_out_default_fields() {
        let f = ServerFrame {
            frame: Some(server_frame::Frame::Pong(proto::edge::Pong { nonce: 7 })),
        };
        assert_eq!(
            encode(Form::Json, &f),
            Encoded::Text(r#"{"pong":{"nonce":"7"}}"#.into())
        );
    }
}
