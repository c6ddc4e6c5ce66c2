//! The in-process event log: topics of partitions of records in memory, with
//! the semantics of Kafka that rumor relies on.
//!
//! ```text
//!  append(rec) ──partition = hash(key) % n──> topics[topic][p].push(rec) ── offset = index
//!                                                 │ notify_waiters()
//!  MemoryConsumer::recv() ── first call: Assigned(every partition of its topics; none while
//!                          │             its group is stuck, the partitions given when alone)
//!                          └─ then: next record at its position, round-robin over partitions,
//!                                   or wait for an append
//! ```
//!
//! Offsets start at 0 and have no gaps. A consumer starts each partition at
//! its group's committed offset (or 0) and can [`seek`](MemoryConsumer::seek)
//! anywhere. Every consumer of a group is assigned every partition: there is
//! no group coordination (like a Kafka group whose coordinator hands one
//! partition to two members); the bridge's offset fencing makes that
//! harmless. Nothing is ever deleted; the log lives as long as its clones.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};

use tokio::sync::Notify;

use crate::{ConsumerEvent, Delivered, LogError, OutRecord, Record, SeekTo, TopicPartition};

/// Partitions of a topic created implicitly (by an append or a consumer).
pub const DEFAULT_PARTITIONS: i32 = 4;

/// An in-process log shared by its clones.
#[derive(Debug, Clone, Default)]
pub struct MemoryLog {
    inner: Arc<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The largest record appended, like a broker's `message.max.bytes`;
    /// 0 stands for the default, [`crate::DEFAULT_MAX_RECORD_BYTES`].
    max_record_bytes: std::sync::atomic::AtomicUsize,
    state: Mutex<State>,
    /// Wakes consumers waiting for a record; they register before scanning,
    /// so an append between their scan and their wait is not missed.
    appended: Notify,
}

#[derive(Debug, Default)]
struct State {
    topics: BTreeMap<String, Vec<Vec<Record>>>,
    /// Committed next offsets, by group.
    committed: HashMap<(String, TopicPartition), i64>,
    /// Groups whose coordinator never forms them: a consumer that joins
    /// gets no assignment (see [`MemoryLog::set_group_stuck`]).
    stuck: std::collections::HashSet<String>,
}

/// The partition of `key` among `n`: FNV-1a, stable across processes.
fn partition_of(key: &[u8], n: i32) -> i32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in key {
        h = (h ^ u32::from(*b)).wrapping_mul(0x0100_0193);
    }
    (h % n.max(1) as u32) as i32
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self::default()
    }

    /// The largest record it takes (key, value and headers).
    pub fn max_record_bytes(&self) -> usize {
        match self.inner.max_record_bytes.load(std::sync::atomic::Ordering::Relaxed) {
            0 => crate::DEFAULT_MAX_RECORD_BYTES,
            n => n,
        }
    }

    /// Sets the largest record it takes, as a broker's `message.max.bytes`
    /// does (shared by every clone).
    pub fn set_max_record_bytes(&self, limit: usize) {
        self.inner
            .max_record_bytes
            .store(limit.max(1), std::sync::atomic::Ordering::Relaxed);
    }

    /// Appends a record unless it is larger than [`MemoryLog::max_record_bytes`].
    pub fn produce(&self, rec: &OutRecord) -> Result<Delivered, crate::LogError> {
        let limit = self.max_record_bytes();
        if rec.size() > limit {
            return Err(crate::LogError::TooLarge {
                size: rec.size(),
                limit,
            });
        }
        Ok(self.append(rec))
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock leaves the log consistent (every
        // change is a single push or insert), so a poisoned lock is usable.
        self.inner.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Creates `topic` with `partitions` partitions unless it exists.
    pub fn create_topic(&self, topic: &str, partitions: i32) {
        self.state()
            .topics
            .entry(topic.into())
            .or_insert_with(|| vec![Vec::new(); partitions.max(1) as usize]);
    }

    /// Appends a record (creating its topic with [`DEFAULT_PARTITIONS`] when
    /// missing) and wakes the consumers.
    pub fn append(&self, rec: &OutRecord) -> Delivered {
        let delivered = {
            let mut st = self.state();
            let parts = st
                .topics
                .entry(rec.topic.clone())
                .or_insert_with(|| vec![Vec::new(); DEFAULT_PARTITIONS as usize]);
            let partition = partition_of(rec.key.as_bytes(), parts.len() as i32);
            let log = &mut parts[partition as usize];
            let offset = log.len() as i64;
            log.push(Record {
                topic: rec.topic.clone(),
                partition,
                offset,
                key: Some(rec.key.clone().into_bytes().into()),
                value: rec.value.clone(),
                headers: rec.headers.clone(),
                timestamp_ms: Some(crate::unix_ms() as i64),
            });
            Delivered { partition, offset }
        };
        self.inner.appended.notify_waiters();
        delivered
    }

    /// Partitions of `topic`, if it exists.
    pub fn partitions(&self, topic: &str) -> Option<i32> {
        self.state().topics.get(topic).map(|p| p.len() as i32)
    }

    /// Every partition of `topic` (none when it does not exist).
    pub fn topic_partitions(&self, topic: &str) -> Vec<TopicPartition> {
        (0..self.partitions(topic).unwrap_or(0))
            .map(|p| TopicPartition::new(topic, p))
            .collect()
    }

    /// The record at `offset`, if there is one.
    pub fn read(&self, tp: &TopicPartition, offset: i64) -> Option<Record> {
        let st = self.state();
        let log = st.topics.get(&tp.topic)?.get(usize::try_from(tp.partition).ok()?)?;
        log.get(usize::try_from(offset).ok()?).cloned()
    }

    /// Every record of `topic`, partition by partition.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        self.state().topics.get(topic).map(|p| p.concat()).unwrap_or_default()
    }

    /// The offset the next record of the partition will get.
    pub fn high_watermark(&self, tp: &TopicPartition) -> Option<i64> {
        let st = self.state();
        Some(
            st.topics
                .get(&tp.topic)?
                .get(usize::try_from(tp.partition).ok()?)?
                .len() as i64,
        )
    }

    /// The next offset `group` committed for the partition.
    pub fn committed(&self, group: &str, tp: &TopicPartition) -> Option<i64> {
        self.state().committed.get(&(group.to_owned(), tp.clone())).copied()
    }

    /// Makes `group`'s coordinator stop forming the group (`stuck`), or
    /// form it again: a consumer of the group that joins (starts, or
    /// rejoins) while it is stuck waits without an assignment, as with a
    /// broker that never answers a JoinGroup. Consumers that already have
    /// their partitions keep them; one reading alone is not affected. A
    /// fault for tests.
    pub fn set_group_stuck(&self, group: &str, stuck: bool) {
        let mut st = self.state();
        if stuck {
            st.stuck.insert(group.to_owned());
        } else {
            st.stuck.remove(group);
        }
        drop(st);
        self.inner.appended.notify_waiters();
    }

    fn group_stuck(&self, group: &str) -> bool {
        self.state().stuck.contains(group)
    }

    /// A consumer in `group` for `topics` (created when missing).
    pub fn consumer(&self, group: &str, topics: &[&str]) -> MemoryConsumer {
        MemoryConsumer {
            log: self.clone(),
            group: group.into(),
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            assigned: Vec::new(),
            positions: HashMap::new(),
            announced: false,
            alone: false,
            next: 0,
        }
    }
}

/// A consumer of a [`MemoryLog`]; see the [module docs](self).
#[derive(Debug)]
pub struct MemoryConsumer {
    log: MemoryLog,
    group: String,
    topics: Vec<String>,
    assigned: Vec<TopicPartition>,
    positions: HashMap<TopicPartition, i64>,
    announced: bool,
    /// Reading the partitions in `assigned` without the group.
    alone: bool,
    /// Where the next round-robin scan starts.
    next: usize,
}

impl MemoryConsumer {
    /// The next event: first the assignment, then records. Cancel-safe.
    pub async fn recv(&mut self) -> ConsumerEvent {
        while !self.announced && !self.alone && self.log.group_stuck(&self.group) {
            let unstuck = self.log.inner.appended.notified();
            tokio::pin!(unstuck);
            unstuck.as_mut().enable();
            if !self.log.group_stuck(&self.group) {
                break;
            }
            unstuck.await;
        }
        if !self.announced {
            if !self.alone {
                for t in &self.topics {
                    self.log.create_topic(t, DEFAULT_PARTITIONS);
                }
                self.assigned = self.topics.iter().flat_map(|t| self.log.topic_partitions(t)).collect();
            }
            for tp in &self.assigned {
                let at = self.log.committed(&self.group, tp).unwrap_or(0);
                self.positions.insert(tp.clone(), at);
            }
            self.announced = true;
            return ConsumerEvent::Assigned(self.assigned.clone());
        }
        loop {
            let appended = self.log.inner.appended.notified();
            tokio::pin!(appended);
            appended.as_mut().enable();
            let n = self.assigned.len();
            for i in 0..n {
                let idx = (self.next + i) % n;
                let tp = &self.assigned[idx];
                let at = self.positions.get(tp).copied().unwrap_or(0);
                if let Some(rec) = self.log.read(tp, at) {
                    self.positions.insert(tp.clone(), at + 1);
                    self.next = idx + 1;
                    return ConsumerEvent::Record(rec);
                }
            }
            appended.await;
        }
    }

    /// Moves the position of an assigned partition.
    pub fn seek(&mut self, tp: &TopicPartition, to: SeekTo) -> Result<(), LogError> {
        let pos = self
            .positions
            .get_mut(tp)
            .ok_or_else(|| LogError::NotAssigned(tp.clone()))?;
        *pos = match to {
            SeekTo::Beginning => 0,
            SeekTo::Offset(o) => o.max(0),
        };
        Ok(())
    }

    /// Records `offsets` (next offsets to read) as the group's committed ones.
    pub fn commit(&self, offsets: &[(TopicPartition, i64)]) {
        let mut st = self.log.state();
        for (tp, next) in offsets {
            st.committed.insert((self.group.clone(), tp.clone()), *next);
        }
    }

    /// The log it reads.
    /// The consumer group it is in.
    pub fn group(&self) -> &str {
        &self.group
    }

    pub fn log(&self) -> &MemoryLog {
        &self.log
    }

    /// Leaves the group and joins it again: the next [`recv`](Self::recv)
    /// announces the assignment again, from the group's committed offsets,
    /// as a new consumer's first would.
    pub fn rejoin(&mut self) {
        self.assigned.clear();
        self.positions.clear();
        self.announced = false;
        self.alone = false;
        self.next = 0;
    }

    /// Leaves the group and reads `partitions` without it: the next
    /// [`recv`](Self::recv) announces them, from the group's committed
    /// offsets. [`rejoin`](Self::rejoin) goes back to the group.
    pub fn read_alone(&mut self, partitions: &[TopicPartition]) {
        self.rejoin();
        self.assigned = partitions.to_vec();
        self.alone = true;
    }

    /// The partitions assigned so far.
    pub fn assignment(&self) -> &[TopicPartition] {
        &self.assigned
    }

    /// The low (0) and high watermarks of a partition.
    pub fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), LogError> {
        let high = self
            .log
            .high_watermark(tp)
            .ok_or_else(|| LogError::NotAssigned(tp.clone()))?;
        Ok((0, high))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_key_always_maps_to_one_partition() {
        assert_eq!(partition_of(b"conv-1", 6), partition_of(b"conv-1", 6));
        let used: std::collections::HashSet<i32> =
            (0..100).map(|i| partition_of(format!("k{i}").as_bytes(), 6)).collect();
        assert_eq!(used.len(), 6);
    }
}
