//! The rules every field obeys wherever it enters rumor: an HTTP body, a
//! gRPC envelope from a peer, a record read from Kafka, a config file. Each
//! entry point checks a field once, here, and answers a refusal with the
//! field's name: a 400 or `INVALID_ARGUMENT` to a client, a dead letter for
//! a record. The limits are what every store can keep, so nothing the mesh
//! accepts is refused later by the database.
//!
//! | field | rule |
//! |---|---|
//! | conversation key | 1 to [`MAX_KEY_BYTES`] bytes of UTF-8, no control characters |
//! | message id | [`is_message_id`]: 26 Crockford base32 digits, as [`message_id`](crate::message_id) makes them |
//! | node name, origin, source | 1 to [`MAX_NAME_BYTES`] bytes of letters, digits and `- _ . : @ /` |
//! | timeout | 1 to [`MAX_TIMEOUT_MS`] milliseconds |

use std::time::Duration;

/// The longest conversation key, in bytes. PostgreSQL keeps keys in a
/// b-tree index whose entries are limited to about 2.7 KB.
pub const MAX_KEY_BYTES: usize = 1024;

/// The longest node name, origin or source, in bytes.
pub const MAX_NAME_BYTES: usize = 128;

/// The longest time a message may be given to be answered, in milliseconds
/// (one hour). Longer timeouts are refused where a client sets them and
/// clamped where a deadline arrives from a peer.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// [`MAX_TIMEOUT_MS`] as a duration.
pub const MAX_TIMEOUT: Duration = Duration::from_millis(MAX_TIMEOUT_MS);

/// A field that breaks its rule: which one, and why. Displays as
/// `` `field` reason ``, the way every API says it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldError {
    /// The field's name as the caller wrote it (`key`, `timeout_ms`).
    pub field: &'static str,
    /// What is wrong with its value.
    pub reason: String,
}

impl std::fmt::Display for FieldError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "`{}` {}", self.field, self.reason)
    }
}

impl std::error::Error for FieldError {}

fn refuse<T>(field: &'static str, reason: impl Into<String>) -> Result<T, FieldError> {
    Err(FieldError {
        field,
        reason: reason.into(),
    })
}

/// A conversation key in field `field`.
pub fn key(field: &'static str, key: &str) -> Result<(), FieldError> {
    if key.is_empty() {
        return refuse(field, "must not be empty");
    }
    if key.len() > MAX_KEY_BYTES {
        return refuse(field, format!("is {} bytes; at most {MAX_KEY_BYTES}", key.len()));
    }
    if let Some(c) = key.chars().find(|c| c.is_control()) {
        return refuse(field, format!("holds the control character {:?}", c));
    }
    Ok(())
}

/// True when `id` has the form of a [`message_id`](crate::message_id): 26
/// Crockford base32 digits in upper case, the first at most `7` (the top of
/// the 130 bits the digits could hold is unused).
pub fn is_message_id(id: &str) -> bool {
    id.len() == 26 && id.bytes().all(|b| b"0123456789ABCDEFGHJKMNPQRSTVWXYZ".contains(&b)) && id.as_bytes()[0] <= b'7'
}

/// A message id in field `field`.
pub fn message_id(field: &'static str, id: &str) -> Result<(), FieldError> {
    if is_message_id(id) {
        Ok(())
    } else {
        refuse(
            field,
            format!("must be a 26-character message id (Crockford base32, upper case), got {id:?}"),
        )
    }
}

/// A node name, an origin or a source in field `field`.
pub fn name(field: &'static str, name: &str) -> Result<(), FieldError> {
    if name.is_empty() {
        return refuse(field, "must not be empty");
    }
    if name.len() > MAX_NAME_BYTES {
        return refuse(field, format!("is {} bytes; at most {MAX_NAME_BYTES}", name.len()));
    }
    if let Some(c) = name
        .chars()
        .find(|c| !(c.is_alphanumeric() || matches!(c, '-' | '_' | '.' | ':' | '@' | '/')))
    {
        return refuse(field, format!("holds {c:?}; names use letters, digits and - _ . : @ /"));
    }
    Ok(())
}

/// A timeout in milliseconds that a client sets, in field `field`: 1 to
/// [`MAX_TIMEOUT_MS`].
pub fn timeout_ms(field: &'static str, ms: u64) -> Result<Duration, FieldError> {
    if ms == 0 {
        return refuse(field, "must be at least 1 (leave it out for the default)");
    }
    if ms > MAX_TIMEOUT_MS {
        return refuse(field, format!("is {ms} ms; at most {MAX_TIMEOUT_MS} (one hour)"));
    }
    Ok(Duration::from_millis(ms))
}

/// The time left until an absolute deadline in unix milliseconds that came
/// from elsewhere (a peer's envelope): zero once passed, and never more than
/// [`MAX_TIMEOUT`], however far away the deadline says it is.
pub fn time_left(deadline_unix_ms: u64, now_unix_ms: u64) -> Duration {
    Duration::from_millis(deadline_unix_ms.saturating_sub(now_unix_ms).min(MAX_TIMEOUT_MS))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_short_printable_and_present() {
        assert!(key("key", "conv-1").is_ok());
        assert!(key("key", "会話").is_ok());
        assert_eq!(key("key", "").unwrap_err().to_string(), "`key` must not be empty");
        assert!(key("key", "a\0b").unwrap_err().reason.contains("control"));
        assert!(key("key", &"k".repeat(MAX_KEY_BYTES)).is_ok());
        assert!(
            key("key", &"k".repeat(MAX_KEY_BYTES + 1))
                .unwrap_err()
                .reason
                .contains("1025 bytes")
        );
    }

    #[test]
    fn message_ids_are_what_message_id_makes() {
        let id = crate::message_id(1_700_000_000_000, 42);
        assert!(message_id("id", &id).is_ok());
        for bad in ["", "short", &"I".repeat(26), &"8".repeat(26), &id.to_lowercase()] {
            assert!(message_id("id", bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn names_refuse_nul_and_spaces() {
        assert!(name("origin", "gateway-1").is_ok());
        assert!(name("source", "bridge:billing@eu/1").is_ok());
        assert!(name("origin", "").is_err());
        assert!(name("origin", "a\0").is_err());
        assert!(name("origin", "a b").is_err());
        assert!(name("origin", &"n".repeat(MAX_NAME_BYTES + 1)).is_err());
    }

    #[test]
    fn timeouts_are_bounded_and_deadlines_from_afar_are_clamped() {
        assert_eq!(timeout_ms("timeout_ms", 250), Ok(Duration::from_millis(250)));
        assert!(timeout_ms("timeout_ms", 0).is_err());
        assert!(
            timeout_ms("timeout_ms", u64::MAX)
                .unwrap_err()
                .reason
                .contains("one hour")
        );
        assert!(timeout_ms("timeout_ms", 9_223_372_036_854_775_807).is_err());
        assert_eq!(time_left(u64::MAX, 5), MAX_TIMEOUT);
        assert_eq!(time_left(1_000, 5_000), Duration::ZERO);
        assert_eq!(time_left(6_000, 5_000), Duration::from_secs(1));
    }
}
