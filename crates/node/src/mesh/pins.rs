//! Conversations pinned, at the node where their messages enter, to the
//! worker that holds their records not yet in the event log.
//!
//! A conversation's records reach the log in the order one worker sends
//! them. When an owner answers while the log is unreachable or slow, its
//! records wait in its publisher; if the conversation's next message went
//! to another worker (the ring changed, or the owner failed one attempt),
//! that worker's records could reach the log first and the stored history
//! would list the later message first. So the final chunk of such a reply
//! says `records_pending`, the entry node pins the conversation to the
//! worker that answered it, and the next message goes there whatever the
//! ring says; that worker keeps it (it holds the conversation's records)
//! or, once they are in the log, routes it by its own view. A reply that
//! ends without `records_pending` unpins the conversation.
//!
//! The pin is given up, and counted, when the pinned worker is not a live
//! worker any more, an attempt on it fails, the conversation was quiet for
//! [`STALE`], or the map is full: the message then goes by the ring and may
//! be stored before the earlier one.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use tokio::time::Instant;

/// At most this many conversations are pinned at once; a full map first
/// forgets pins older than [`STALE`], then pins nothing more.
pub(crate) const MAX_PINS: usize = 65_536;
/// A pin this old is given up: its conversation has been quiet for that
/// long (and a full map forgets it).
pub(crate) const STALE: Duration = Duration::from_secs(600);

/// Pinned conversations: key to worker name, with when it was pinned.
#[derive(Debug, Default)]
pub(crate) struct Pins(Mutex<HashMap<String, (String, Instant)>>);

impl Pins {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, (String, Instant)>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The worker conversation `key` is pinned to, and whether the pin is
    /// younger than [`STALE`] at `now`.
    pub(crate) fn get(&self, key: &str, now: Instant) -> Option<(String, bool)> {
        self.lock()
            .get(key)
            .map(|(worker, at)| (worker.clone(), now.saturating_duration_since(*at) < STALE))
    }

    /// Pins `key` to `worker`; false when the map is full of recent pins.
    pub(crate) fn pin(&self, key: &str, worker: &str, now: Instant) -> bool {
        let mut map = self.lock();
        if map.len() >= MAX_PINS && !map.contains_key(key) {
            map.retain(|_, (_, at)| now.saturating_duration_since(*at) < STALE);
            if map.len() >= MAX_PINS {
                return false;
            }
        }
        map.insert(key.to_owned(), (worker.to_owned(), now));
        true
    }

    /// Unpins `key`; true when it was pinned.
    pub(crate) fn unpin(&self, key: &str) -> bool {
        self.lock().remove(key).is_some()
    }

    /// Conversations pinned now.
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_is_kept_until_unpinned_and_a_full_map_forgets_only_stale_pins() {
        let pins = Pins::default();
        let t0 = Instant::now();
        assert!(pins.pin("k", "w1", t0));
        assert_eq!(pins.get("k", t0), Some(("w1".into(), true)));
        assert!(pins.pin("k", "w2", t0), "a later reply moves the pin");
        assert_eq!(pins.get("k", t0 + STALE / 2), Some(("w2".into(), true)));
        assert_eq!(pins.get("k", t0 + STALE), Some(("w2".into(), false)), "stale");
        assert!(pins.unpin("k"));
        assert!(!pins.unpin("k"));
        assert_eq!(pins.get("k", t0), None);

        for i in 0..MAX_PINS {
            assert!(pins.pin(&format!("old-{i}"), "w", t0));
        }
        let soon = t0 + Duration::from_secs(1);
        assert!(!pins.pin("new", "w", soon), "full of recent pins");
        assert!(pins.pin("old-7", "w3", soon), "a pinned conversation may move");
        let later = t0 + STALE;
        assert!(pins.pin("new", "w", later), "stale pins make room");
        assert_eq!(pins.len(), 2, "old-7 was pinned again at `soon`, so it stays");
        assert_eq!(pins.get("old-7", later).map(|p| p.0).as_deref(), Some("w3"));
    }
}
