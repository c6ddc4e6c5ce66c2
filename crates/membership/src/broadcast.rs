//! The dissemination queue: updates waiting to be piggybacked, sent a bounded
//! number of times each, fewest transmissions first.

use std::cmp::Reverse;
use std::collections::{BTreeMap, HashMap};

use proto::Message;
use proto::gossip as pb;

/// Encodes `gossip` as one `gossip` field of a `Packet`: protobuf lets
/// repeated fields be concatenated, so frames appended to an encoded packet
/// are decoded as its piggybacked gossip.
pub(crate) fn frame(gossip: pb::Gossip) -> Vec<u8> {
    pb::Packet {
        gossip: vec![gossip],
        ..Default::default()
    }
    .encode_to_vec()
}

/// How many times more often a user message is sent than a membership
/// update. A member a membership update missed is repaired by push-pull and
/// the view digest; a node a user message missed never gets it, so the
/// first spread must reach every node: at the base limit one node of seven
/// missed it in 2 of 200 simulated seeds, and in real playground runs.
pub(crate) const USER_TRANSMIT_FACTOR: u32 = 3;

/// What an update is about. A newer update with the same key replaces the
/// older one (an `Alive` for a member supersedes its `Suspect`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) enum Key {
    Member(String),
    User(String, u64),
}

#[derive(Debug)]
struct Entry {
    key: Key,
    /// The update encoded as the `gossip` field of a `Packet`, tag and length
    /// included, so a packet is built by appending bytes.
    frame: Vec<u8>,
}

/// Position in the queue: fewest transmissions first, then newest first.
type Rank = (u32, Reverse<u64>);

#[derive(Debug, Default)]
pub(crate) struct Queue {
    /// Entries in the order they are sent.
    order: BTreeMap<Rank, Entry>,
    /// Where each key's entry stands in `order`. Only looked up, never iterated,
    /// so its hasher does not affect determinism.
    index: HashMap<Key, Rank>,
    next_id: u64,
}

impl Queue {
    pub(crate) fn len(&self) -> usize {
        self.order.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// Queues `gossip`, replacing any pending update with the same key.
    /// Beyond `max` entries, the most transmitted are dropped.
    pub(crate) fn push(&mut self, key: Key, gossip: pb::Gossip, max: usize) {
        self.remove(&key);
        let rank = (0, Reverse(self.next_id));
        self.next_id += 1;
        let frame = frame(gossip);
        self.index.insert(key.clone(), rank);
        self.order.insert(rank, Entry { key, frame });
        while self.order.len() > max {
            let Some((_, worst)) = self.order.pop_last() else { break };
            self.index.remove(&worst.key);
        }
    }

    pub(crate) fn remove(&mut self, key: &Key) {
        if let Some(rank) = self.index.remove(key) {
            self.order.remove(&rank);
        }
    }

    /// Takes updates that fit in `budget` bytes, fewest transmissions first,
    /// counting one transmission for each; membership updates sent `limit`
    /// times are retired, user messages after [`USER_TRANSMIT_FACTOR`] times
    /// as many.
    pub(crate) fn take(&mut self, mut budget: usize, limit: u32, out: &mut Vec<u8>) {
        // Gossip items are small and similar in size; after a few misfits the
        // packet is full for practical purposes, so stop scanning.
        const MAX_MISFITS: usize = 8;
        let mut taken = Vec::new();
        let mut misfits = 0;
        for (rank, e) in self.order.iter() {
            if e.frame.len() > budget {
                misfits += 1;
                if misfits > MAX_MISFITS {
                    break;
                }
                continue;
            }
            budget -= e.frame.len();
            out.extend_from_slice(&e.frame);
            taken.push(*rank);
        }
        for rank in taken {
            let e = self.order.remove(&rank).expect("taken entries are queued");
            let transmits = rank.0 + 1;
            let limit = match e.key {
                Key::Member(_) => limit,
                Key::User(..) => limit.saturating_mul(USER_TRANSMIT_FACTOR),
            };
            if transmits >= limit {
                self.index.remove(&e.key);
            } else {
                let rank = (transmits, rank.1);
                if let Some(r) = self.index.get_mut(&e.key) {
                    *r = rank;
                }
                self.order.insert(rank, e);
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

    fn take(q: &mut Queue, budget: usize, limit: u32) -> Vec<pb::Gossip> {
        let mut out = Vec::new();
        q.take(budget, limit, &mut out);
        pb::Packet::decode(&out[..]).unwrap().gossip
    }

    #[test]
    fn updates_are_retired_after_the_transmit_limit() {
        let mut q = Queue::default();
        q.push(Key::Member("a".into()), user(1, 10), 100);
        for _ in 0..3 {
            assert_eq!(take(&mut q, 1000, 3).len(), 1);
        }
        assert!(take(&mut q, 1000, 3).is_empty());
        assert!(q.is_empty());
    }

    #[test]
    fn user_messages_are_sent_more_times_than_membership_updates() {
        let mut q = Queue::default();
        q.push(Key::Member("x".into()), user(1, 10), 100);
        q.push(Key::User("a".into(), 2), user(2, 10), 100);
        let mut sent = 0;
        while !q.is_empty() {
            sent += take(&mut q, 1000, 2).len();
        }
        assert_eq!(sent, 2 + 2 * USER_TRANSMIT_FACTOR as usize);
    }

    #[test]
    fn fewest_transmitted_go_first_and_budget_is_respected() {
        let mut q = Queue::default();
        q.push(Key::User("a".into(), 1), user(1, 100), 100);
        take(&mut q, 1000, 10);
        q.push(Key::User("a".into(), 2), user(2, 100), 100);
        let out = take(&mut q, 150, 10);
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
