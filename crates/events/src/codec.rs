//! The records of `rumor.events.v1` on the log: protobuf values keyed by
//! conversation, with headers that say what they are.
//!
//! ```text
//!  MessageRecord ──encode──> OutRecord { topic, key: conversation key, value: protobuf,
//!                                        headers: content-type, schema, schema-version }
//!  Record ──check headers, decode, validate──> MessageRecord | DecodeError
//! ```
//!
//! A reader refuses a record whose `schema-version` it does not speak, whose
//! content type is not protobuf, or whose `schema` names another message,
//! rather than guessing (the bridge dead-letters it).

use proto::Message;
use proto::bytes::Bytes;
use proto::events::{Error as RecordError, ForwardRequest, MessageRecord, message_record::Kind};
use proto::mesh::Envelope;
use proto::rules;

use crate::{OutRecord, Record};

/// Header naming the encoding of the value.
pub const HEADER_CONTENT_TYPE: &str = "content-type";
/// Header naming the protobuf message of the value.
pub const HEADER_SCHEMA: &str = "schema";
/// Header carrying the major schema version (the `vN` of the package).
pub const HEADER_SCHEMA_VERSION: &str = "schema-version";

/// The content type of every rumor record.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// The schema version this build writes and reads.
pub const SCHEMA_VERSION: &str = "1";
/// `schema` of a [`MessageRecord`].
pub const MESSAGE_RECORD: &str = "rumor.events.v1.MessageRecord";
/// `schema` of a [`ForwardRequest`].
pub const FORWARD_REQUEST: &str = "rumor.events.v1.ForwardRequest";

/// Why a record is not a valid rumor record. Nothing changed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("missing header {0:?}")]
    MissingHeader(&'static str),
    #[error("header {header:?} is {found:?}, expected {expected:?}")]
    WrongHeader {
        header: &'static str,
        found: String,
        expected: &'static str,
    },
    #[error("value is not a valid {schema}: {reason}")]
    Protobuf { schema: &'static str, reason: String },
    #[error("invalid {schema}: {reason}")]
    Invalid { schema: &'static str, reason: String },
}

fn headers(schema: &'static str) -> Vec<(String, Bytes)> {
    vec![
        (HEADER_CONTENT_TYPE.into(), Bytes::from_static(CONTENT_TYPE.as_bytes())),
        (HEADER_SCHEMA.into(), Bytes::from_static(schema.as_bytes())),
        (
            HEADER_SCHEMA_VERSION.into(),
            Bytes::from_static(SCHEMA_VERSION.as_bytes()),
        ),
    ]
}

/// The INBOUND record worker `worker` publishes as it starts processing `msg`.
pub fn inbound(worker: &str, msg: &Envelope) -> MessageRecord {
    MessageRecord {
        id: msg.id.clone(),
        key: msg.key.clone(),
        kind: Kind::Inbound as i32,
        payload: msg.payload.clone(),
        worker: worker.into(),
        origin: msg.origin.clone(),
        created_unix_ms: crate::unix_ms(),
        deadline_unix_ms: msg.deadline_unix_ms,
        traceparent: msg.traceparent.clone(),
        ..Default::default()
    }
}

/// The REPLY record worker `worker` publishes when its reply to `msg` ended:
/// the reply data (its beginning when `truncated`), the number of chunks,
/// and the error (a gRPC code and a message) when it failed.
pub fn reply(
    worker: &str,
    msg: &Envelope,
    data: impl Into<Bytes>,
    chunks: u64,
    error: Option<(u32, String)>,
    truncated: bool,
) -> MessageRecord {
    MessageRecord {
        kind: Kind::Reply as i32,
        payload: data.into(),
        chunks,
        error: error.map(|(code, message)| RecordError { code, message }),
        truncated,
        ..inbound(worker, msg)
    }
}

/// A worker's record for `topic` (the messages topic), keyed by conversation.
pub fn message_record(topic: &str, rec: &MessageRecord) -> OutRecord {
    OutRecord {
        topic: topic.into(),
        key: rec.key.clone(),
        value: rec.encode_to_vec().into(),
        headers: headers(MESSAGE_RECORD),
    }
}

/// A forward request for `topic` (the forward topic), keyed by conversation.
pub fn forward_request(topic: &str, req: &ForwardRequest) -> OutRecord {
    OutRecord {
        topic: topic.into(),
        key: req.key.clone(),
        value: req.encode_to_vec().into(),
        headers: headers(FORWARD_REQUEST),
    }
}

fn check_headers(rec: &Record, schema: &'static str) -> Result<(), DecodeError> {
    for (header, expected) in [
        (HEADER_SCHEMA_VERSION, SCHEMA_VERSION),
        (HEADER_CONTENT_TYPE, CONTENT_TYPE),
        (HEADER_SCHEMA, schema),
    ] {
        let found = rec.header(header).ok_or(DecodeError::MissingHeader(header))?;
        if found != expected.as_bytes() {
            return Err(DecodeError::WrongHeader {
                header,
                found: String::from_utf8_lossy(found).into_owned(),
                expected,
            });
        }
    }
    Ok(())
}

fn invalid(schema: &'static str, reason: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        schema,
        reason: reason.into(),
    }
}

/// Decodes and validates a [`MessageRecord`]: a message id, a key equal to
/// the record key (when there is one) and a known kind.
pub fn decode_message(rec: &Record) -> Result<MessageRecord, DecodeError> {
    const S: &str = MESSAGE_RECORD;
    check_headers(rec, S)?;
    let m = MessageRecord::decode(&rec.value[..]).map_err(|e| DecodeError::Protobuf {
        schema: S,
        reason: e.to_string(),
    })?;
    rules::message_id("id", &m.id)
        .and_then(|()| rules::key("key", &m.key))
        .map_err(|e| invalid(S, e.to_string()))?;
    if let Some(k) = &rec.key
        && k[..] != *m.key.as_bytes()
    {
        return Err(invalid(S, "record key differs from the conversation key"));
    }
    match Kind::try_from(m.kind) {
        Ok(Kind::Inbound | Kind::Reply) => Ok(m),
        _ => Err(invalid(S, format!("unknown kind {}", m.kind))),
    }
}

/// Decodes and validates a [`ForwardRequest`]: a message id and a key.
pub fn decode_forward(rec: &Record) -> Result<ForwardRequest, DecodeError> {
    const S: &str = FORWARD_REQUEST;
    check_headers(rec, S)?;
    let f = ForwardRequest::decode(&rec.value[..]).map_err(|e| DecodeError::Protobuf {
        schema: S,
        reason: e.to_string(),
    })?;
    rules::message_id("id", &f.id)
        .and_then(|()| rules::key("key", &f.key))
        .map_err(|e| invalid(S, e.to_string()))?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn as_read(out: OutRecord) -> Record {
        Record {
            topic: out.topic,
            partition: 0,
            offset: 0,
            key: Some(out.key.into_bytes().into()),
            value: out.value,
            headers: out.headers,
            timestamp_ms: None,
        }
    }

    #[test]
    fn message_records_round_trip_with_their_headers() {
        let m = MessageRecord {
            id: crate::new_message_id(),
            key: "c".into(),
            kind: Kind::Reply as i32,
            payload: "hi".into(),
            ..Default::default()
        };
        let out = message_record("t", &m);
        assert_eq!(out.key, "c");
        assert_eq!(decode_message(&as_read(out)), Ok(m));
    }

    #[test]
    fn worker_records_carry_the_envelope_and_the_reply() {
        let env = Envelope {
            id: crate::new_message_id(),
            key: "c".into(),
            payload: "q".into(),
            origin: "gw".into(),
            deadline_unix_ms: 7,
            ..Default::default()
        };
        let i = inbound("w", &env);
        assert_eq!(
            (i.kind, &i.payload[..], i.worker.as_str()),
            (Kind::Inbound as i32, &b"q"[..], "w")
        );
        let r = reply("w", &env, b"a".to_vec(), 2, Some((13, "boom".into())), true);
        assert_eq!(
            (r.kind, r.id.as_str(), r.origin.as_str()),
            (Kind::Reply as i32, env.id.as_str(), "gw")
        );
        assert_eq!((r.chunks, r.truncated, r.error.unwrap().code), (2, true, 13));
        assert_eq!(decode_message(&as_read(message_record("t", &i))), Ok(i));
    }

    #[test]
    fn records_of_another_schema_version_or_kind_are_refused() {
        let m = MessageRecord {
            id: crate::new_message_id(),
            key: "c".into(),
            kind: Kind::Inbound as i32,
            ..Default::default()
        };
        let mut r = as_read(message_record("t", &m));
        r.headers[2].1 = Bytes::from_static(b"2");
        assert!(matches!(decode_message(&r), Err(DecodeError::WrongHeader { .. })));
        let f = ForwardRequest {
            id: m.id.clone(),
            key: "c".into(),
            ..Default::default()
        };
        let r = as_read(forward_request("t", &f));
        assert!(matches!(decode_message(&r), Err(DecodeError::WrongHeader { .. })));
        assert_eq!(decode_forward(&r), Ok(f));
        let mut r = as_read(message_record("t", &m));
        r.value = Bytes::from_static(b"\xff\xff\xff");
        assert!(matches!(decode_message(&r), Err(DecodeError::Protobuf { .. })));
        let r = as_read(message_record("t", &MessageRecord { kind: 0, ..m.clone() }));
        assert!(matches!(decode_message(&r), Err(DecodeError::Invalid { .. })));
    }
}
