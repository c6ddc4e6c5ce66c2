//! What a node set aside because it could never be delivered: a record the
//! event log refused for good (too large for the broker, say), or a forward
//! request that no rule lets into the mesh. Each is logged, counted and kept
//! here with its reason, so the records behind it go on and an operator can
//! read what was lost and why (`GET /v1/dead-letters` on the admin API).
//!
//! The list is bounded: the newest [`DeadLetters::KEEP`] entries, each with
//! at most [`DeadLetters::RAW_BYTES`] of the record. The log line carries the
//! same reason and identity, for what scrolls out.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use base64::Engine as _;
use proto::api::DeadLetter;

/// A node's set-aside records; shared by the parts that set records aside
/// and the admin API. A plain mutex: held only to push or to copy a page.
#[derive(Debug, Default)]
pub struct DeadLetters {
    kept: Mutex<VecDeque<(u64, DeadLetter)>>,
    total: AtomicU64,
}

/// Where a set-aside record was headed and what it was.
#[derive(Debug, Clone, Copy)]
pub struct Record<'a> {
    /// Its topic.
    pub topic: &'a str,
    /// Its partition and offset when it was read from the log; `None` for a
    /// record that never reached it.
    pub position: Option<(i32, i64)>,
    /// Its key (the conversation key).
    pub key: Option<&'a [u8]>,
    /// Its value.
    pub value: &'a [u8],
}

impl DeadLetters {
    /// Entries kept, the newest.
    pub const KEEP: usize = 1000;
    /// Bytes of each record kept.
    pub const RAW_BYTES: usize = 4096;

    /// Sets `rec` aside for `reason`: logged at error level, counted, kept.
    pub fn set_aside(&self, rec: Record<'_>, reason: &str) {
        let n = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let (partition, offset) = rec.position.unwrap_or((-1, -1));
        tracing::error!(
            topic = rec.topic,
            partition,
            offset,
            key = %String::from_utf8_lossy(rec.key.unwrap_or_default()),
            bytes = rec.value.len(),
            set_aside_total = n,
            "record set aside: {reason}"
        );
        let b64 = base64::engine::general_purpose::STANDARD;
        let raw = &rec.value[..rec.value.len().min(Self::RAW_BYTES)];
        let letter = DeadLetter {
            topic: rec.topic.to_owned(),
            partition,
            offset,
            key_base64: rec.key.map(|k| b64.encode(k)),
            error: reason.to_owned(),
            raw_base64: b64.encode(raw),
            cursor: n.to_string(),
            truncated: raw.len() < rec.value.len(),
            set_aside_unix_ms: SystemTime::now()
                .duration_since(SystemTime::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
        };
        let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        if kept.len() >= Self::KEEP {
            kept.pop_front();
        }
        kept.push_back((n, letter));
    }

    /// Records set aside since the node started.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Up to `limit` kept entries after cursor `after` (0: the oldest kept),
    /// oldest first.
    pub fn page(&self, after: u64, limit: usize) -> Vec<DeadLetter> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.iter()
            .filter(|(n, _)| *n > after)
            .take(limit)
            .map(|(_, d)| d.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(value: &[u8]) -> Record<'_> {
        Record {
            topic: "t",
            position: None,
            key: Some(b"k"),
            value,
        }
    }

    #[test]
    fn the_newest_are_kept_with_their_reason_and_the_beginning_of_the_record() {
        let d = DeadLetters::default();
        d.set_aside(rec(&[7; 5000]), "too large");
        let first = &d.page(0, 10)[0];
        assert_eq!(
            (first.error.as_str(), first.truncated, first.partition),
            ("too large", true, -1)
        );
        for _ in 0..DeadLetters::KEEP {
            d.set_aside(rec(b"x"), "again");
        }
        assert_eq!(d.total(), DeadLetters::KEEP as u64 + 1);
        let page = d.page(0, 2);
        assert_eq!(page[0].cursor, "2", "the oldest entry scrolled out");
        assert_eq!(d.page(page[1].cursor.parse().unwrap(), 1)[0].cursor, "4");
    }
}
