//! The dissemination queue: updates waiting to be piggybacked, sent a bounded
//! number of times each, fewest transmissions first.

use std::collections::{BTreeMap, BTreeSet};

use proto::Message;
use proto::gossip as pb;

use crate::codec::field_len;

/// What an update is about. A newer update with the same key replaces the
/// older one (an `Alive` for a member supersedes its `Suspect`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Key {
    Member(String),
    User(String, u64),
}

#[derive(Debug)]
struct Entry {
    gossip: pb::Gossip,
    /// Encoded size inside a packet, tag and length included.
    size: usize,
    transmits: u32,
    /// Insertion order: among equally transmitted entries the newest goes first.
    id: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Queue {
    entries: BTreeMap<Key, Entry>,
    /// Priority order: (transmits, reversed id) -> key.
    order: BTreeSet<(u32, std::cmp::Reverse<u64>, Key)>,
    next_id: u64,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Queues `gossip`, replacing any pending update with the same key.
    /// Beyond `max` entries, the most transmitted are dropped.
    pub(crate) fn push(&mut self, key: Key, gossip: pb::Gossip, max: usize) {
        self.remove(&key);
        let id = self.next_id;
        self.next_id += 1;
        let size = field_len(gossip.encoded_len());
        self.order.insert((0, std::cmp::Reverse(id), key.clone()));
        self.entries.insert(key, Entry { gossip, size, transmits: 0, id });
        while self.entries.len() > max {
            let Some((_, _, worst)) = self.order.last().cloned() else { break };
            self.remove(&worst);
        }
    }

    pub(crate) fn remove(&mut self, key: &Key) {
        if let Some(e) = self.entries.remove(key) {
            self.order.remove(&(e.transmits, std::cmp::Reverse(e.id), key.clone()));
        }
    }

    /// Takes updates that fit in `budget` bytes, fewest transmissions first,
    /// counting one transmission for each; updates sent `limit` times are retired.
    pub(crate) fn take(&mut self, mut budget: usize, limit: u32, out: &mut Vec<pb::Gossip>) {
        let mut taken = Vec::new();
        for (transmits, id, key) in self.order.iter() {
            if budget < 8 {
                break;
            }
            let e = &self.entries[key];
            if e.size > budget {
                continue;
            }
            budget -= e.size;
            out.push(e.gossip.clone());
            taken.push((*transmits, *id, key.clone()));
        }
        for (transmits, id, key) in taken {
            self.order.remove(&(transmits, id, key.clone()));
            if transmits + 1 >= limit {
                self.entries.remove(&key);
            } else {
                let e = self.entries.get_mut(&key).expect("entry exists for ordered key");
                e.transmits = transmits + 1;
                self.order.insert((transmits + 1, id, key));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(seq: u64, len: usize) -> pb::Gossip {
        pb::Gossip {
            kind: Some(pb::gossip::Kind::User(pb::UserMessage {
                origin: "a".into(),
                seq,
                payload: vec![0; len].into(),
            })),
        }
    }

    #[test]
    fn updates_are_retired_after_the_transmit_limit() {
        let mut q = Queue::default();
        q.push(Key::User("a".into(), 1), user(1, 10), 100);
        for _ in 0..3 {
            let mut out = Vec::new();
            q.take(1000, 3, &mut out);
            assert_eq!(out.len(), 1);
        }
        let mut out = Vec::new();
        q.take(1000, 3, &mut out);
        assert!(out.is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn fewest_transmitted_go_first_and_budget_is_respected() {
        let mut q = Queue::default();
        q.push(Key::User("a".into(), 1), user(1, 100), 100);
        let mut out = Vec::new();
        q.take(1000, 10, &mut out);
        q.push(Key::User("a".into(), 2), user(2, 100), 100);
        let mut out = Vec::new();
        q.take(150, 10, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(&out[0].kind, Some(pb::gossip::Kind::User(u)) if u.seq == 2));
    }

    #[test]
    fn a_newer_update_for_the_same_key_replaces_the_older() {
        let mut q = Queue::default();
        q.push(Key::Member("x".into()), user(1, 1), 100);
        q.push(Key::Member("x".into()), user(2, 1), 100);
        assert_eq!(q.len(), 1);
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut q = Queue::default();
        for i in 0..50 {
            q.push(Key::User("a".into(), i), user(i, 1), 10);
        }
        assert_eq!(q.len(), 10);
    }
}
