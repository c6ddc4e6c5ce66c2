//! Envelopes: message ids, deadlines, and the checks every envelope passes
//! before it is routed (each refusal counted, none a panic).

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::Message as _;
use proto::mesh::{Envelope, ReplyChunk};
use proto::rules;
use tokio::time::Instant;
use tonic::Status;
use tonic::metadata::MetadataMap;

use super::config::MeshConfig;
use super::stats::{Counters, count};

/// The mesh protocol version this build speaks (`Envelope.version`).
pub const PROTOCOL_VERSION: u32 = 1;

pub use proto::message_id;

/// A fresh [`message_id`] from the system clock and the OS-seeded RNG.
pub fn new_message_id() -> String {
    message_id(unix_ms(SystemTime::now()), rand::random())
}

/// Milliseconds since the unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The `deadline_unix_ms` for a message that must be answered within `timeout`.
/// The timeout is clamped to [`MAX_TIMEOUT`](proto::rules::MAX_TIMEOUT).
pub fn deadline_in(timeout: Duration) -> u64 {
    unix_ms(SystemTime::now() + timeout.min(rules::MAX_TIMEOUT))
}

/// The local instant of an envelope's deadline: the earliest of its absolute
/// deadline, `now + grpc_timeout`, and (when it has none) `now + default`,
/// and never more than [`MAX_TIMEOUT`](proto::rules::MAX_TIMEOUT) away,
/// whatever the envelope or header says.
pub(crate) fn deadline_of(env: &Envelope, grpc_timeout: Option<Duration>, default: Duration) -> Instant {
    let mut left = if env.deadline_unix_ms == 0 {
        default
    } else {
        rules::time_left(env.deadline_unix_ms, unix_ms(SystemTime::now()))
    };
    if let Some(t) = grpc_timeout {
        left = left.min(t);
    }
    Instant::now() + left.min(rules::MAX_TIMEOUT)
}

/// Parses a `grpc-timeout` header (`1234m`: up to 8 digits and a unit of
/// H, M, S, m, u or n). Absent or malformed headers give `None`.
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Checks an envelope received from a peer. Counts and describes each refusal.
pub(crate) fn check_envelope(env: &Envelope, config: &MeshConfig, counters: &Counters) -> Result<(), Status> {
    if env.version != PROTOCOL_VERSION {
        count(&counters.bad_version);
        return Err(Status::failed_precondition(format!(
            "mesh protocol version {} is not supported: this node speaks version {PROTOCOL_VERSION}",
            env.version
        )));
    }
    check_size(env, config, counters)?;
    if env.hops > config.max_hops {
        count(&counters.hops_over_limit);
        return Err(Status::invalid_argument(format!(
            "message {}: hop count {} is over the limit of {}",
            env.id, env.hops, config.max_hops
        )));
    }
    check_fields(env, counters)?;
    check_provenance(env, counters)
}

pub(crate) fn check_size(env: &Envelope, config: &MeshConfig, counters: &Counters) -> Result<(), Status> {
    let len = env.encoded_len();
    if len > config.max_envelope_bytes {
        count(&counters.oversized);
        return Err(Status::invalid_argument(format!(
            "envelope of {len} bytes is over the limit of {} bytes",
            config.max_envelope_bytes
        )));
    }
    Ok(())
}

/// The fields every envelope carries into the mesh, by the shared rules
/// (`proto::rules`): what a store cannot keep is refused before anything
/// is processed.
pub(crate) fn check_fields(env: &Envelope, counters: &Counters) -> Result<(), Status> {
    rules::message_id("id", &env.id)
        .and_then(|()| rules::key("key", &env.key))
        .map_err(|e| malformed(env, e, counters))
}

/// The fields a peer fills in: who accepted the message into the mesh, and
/// where it came from.
fn check_provenance(env: &Envelope, counters: &Counters) -> Result<(), Status> {
    rules::name("origin", &env.origin)
        .and_then(|()| match env.source.as_str() {
            "" => Ok(()),
            source => rules::name("source", source),
        })
        .map_err(|e| malformed(env, e, counters))
}

fn malformed(env: &Envelope, e: rules::FieldError, counters: &Counters) -> Status {
    count(&counters.malformed);
    Status::invalid_argument(format!("message {:?}: {e}", env.id))
}

/// A reply chunk that ends a stream with an explicit error.
pub(crate) fn error_chunk(id: &str, seq: u64, code: tonic::Code, message: String) -> ReplyChunk {
    ReplyChunk {
        id: id.to_owned(),
        seq,
        error: Some(proto::mesh::Error {
            code: code as u32,
            message,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_sort_by_time_and_have_26_characters() {
        let a = message_id(1_700_000_000_000, u128::MAX);
        let b = message_id(1_700_000_000_001, 0);
        assert_eq!(a.len(), 26);
        assert!(a < b, "{a} < {b}");
        assert_eq!(message_id(0, 0), "0".repeat(26));
        assert_ne!(new_message_id(), new_message_id());
    }

    #[test]
    fn grpc_timeout_headers_parse_and_bad_ones_are_ignored() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(3)));
        for bad in ["", "m", "123456789m", "12x", "-1m"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(grpc_timeout(&m), None, "{bad:?}");
        }
    }
}
