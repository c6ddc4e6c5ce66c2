//! The consumer side of the event log, one interface over Kafka and memory.
//!
//! ```text
//!  loop {
//!      match consumer.recv().await? {
//!          Assigned(partitions) => for each: seek(tp, where the caller's store says),
//!          Revoked(partitions)  => forget their pending work,
//!          Record(rec)          => process; later commit(&[(tp, rec.offset + 1)]),
//!      }
//!  }
//! ```
//!
//! Automatic commits are off: where a partition is read from is the caller's
//! decision ([`Consumer::seek`]). [`Consumer::commit`] stores offsets in the
//! log's consumer group, which tools use to report lag; a consumer that keeps
//! its offsets elsewhere (the bridge) commits only for that.

use std::collections::BTreeMap;

use crate::memory::MemoryConsumer;
use crate::{LogError, Record, TopicPartition, kafka::KafkaConsumer};

/// What [`Consumer::recv`] returns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConsumerEvent {
    /// These partitions are now assigned to this consumer (in addition to
    /// any assigned before). Records of them follow.
    Assigned(Vec<TopicPartition>),
    /// These partitions are taken away; records of them that were not
    /// processed yet will be read by their next owner.
    Revoked(Vec<TopicPartition>),
    /// The next record of an assigned partition, in offset order within it.
    Record(Record),
}

/// Where [`Consumer::seek`] moves a partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeekTo {
    /// The oldest record still in the log.
    Beginning,
    /// This offset: the next record read has it (or the next one present).
    Offset(i64),
}

/// A consumer-group member; see the [module docs](self).
#[derive(Debug)]
pub enum Consumer {
    Memory(MemoryConsumer),
    Kafka(KafkaConsumer),
}

impl Consumer {
    /// The next assignment change or record. Cancel-safe: a `select!` that
    /// drops the future loses nothing.
    pub async fn recv(&mut self) -> Result<ConsumerEvent, LogError> {
        match self {
            Self::Memory(c) => Ok(c.recv().await),
            Self::Kafka(c) => c.recv().await,
        }
    }

    /// Moves the read position of an assigned partition; records fetched
    /// before the seek are not returned after it.
    pub async fn seek(&mut self, tp: &TopicPartition, to: SeekTo) -> Result<(), LogError> {
        match self {
            Self::Memory(c) => c.seek(tp, to),
            Self::Kafka(c) => c.seek(tp, to).await,
        }
    }

    /// Commits next offsets to the log's consumer group, without waiting.
    pub fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), LogError> {
        match self {
            Self::Memory(c) => {
                c.commit(offsets);
                Ok(())
            }
            Self::Kafka(c) => c.commit(offsets),
        }
    }

    /// The low and high watermarks of a partition (high: the offset the next
    /// record will get). For Kafka this asks the broker.
    pub async fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), LogError> {
        match self {
            Self::Memory(c) => c.watermarks(tp),
            Self::Kafka(c) => c.watermarks(tp).await,
        }
    }

    /// Leaves the consumer group and joins it again as a new member, for a
    /// group that stopped handing out some partition. The partitions
    /// assigned so far are gone without a `Revoked` event; an `Assigned`
    /// follows as after a start. An error means nothing changed.
    pub async fn rejoin(&mut self) -> Result<(), LogError> {
        match self {
            Self::Memory(c) => {
                c.rejoin();
                Ok(())
            }
            Self::Kafka(c) => c.rejoin().await,
        }
    }

    /// Leaves the consumer group and reads `partitions` without it, each
    /// from the group's committed offset (else the beginning), for a group
    /// that hands out nothing however often its members rejoin. An
    /// `Assigned` with them follows; the partitions held so far are gone
    /// without a `Revoked` event. No coordinator keeps two readers off one
    /// partition: the caller must be safe with that. [`rejoin`](Self::rejoin)
    /// goes back to the group. An error means nothing changed.
    pub async fn read_alone(&mut self, partitions: &[TopicPartition]) -> Result<(), LogError> {
        match self {
            Self::Memory(c) => {
                c.read_alone(partitions);
                Ok(())
            }
            Self::Kafka(c) => c.read_alone(partitions).await,
        }
    }

    /// A handle that reads watermarks, partitions and the group's committed
    /// offsets while the consumer is busy elsewhere (the bridge's metrics
    /// endpoint and the stall watches use it).
    pub fn watermark_reader(&self) -> WatermarkReader {
        match self {
            Self::Memory(c) => WatermarkReader(Reader::Memory(c.log().clone(), c.group().to_owned())),
            Self::Kafka(c) => WatermarkReader(Reader::Kafka(c.watermark_reader())),
        }
    }
}

/// Reads partition watermarks on behalf of a [`Consumer`]; cheap to clone.
#[derive(Debug, Clone)]
pub struct WatermarkReader(Reader);

#[derive(Debug, Clone)]
enum Reader {
    /// The log, and the group of the consumer it reads for.
    Memory(crate::MemoryLog, String),
    Kafka(crate::kafka::KafkaWatermarks),
}

impl WatermarkReader {
    /// The low and high watermarks of a partition.
    pub async fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), LogError> {
        match &self.0 {
            Reader::Memory(log, _) => log
                .high_watermark(tp)
                .map(|h| (0, h))
                .ok_or_else(|| LogError::NotAssigned(tp.clone())),
            Reader::Kafka(k) => k.watermarks(tp).await,
        }
    }

    /// The partitions of `topic`. For Kafka this asks the broker.
    pub async fn partitions(&self, topic: &str) -> Result<Vec<TopicPartition>, LogError> {
        match &self.0 {
            Reader::Memory(log, _) => Ok(log.topic_partitions(topic)),
            Reader::Kafka(k) => k.partitions(topic).await,
        }
    }

    /// The next offsets the consumer's group committed for these
    /// partitions; a partition without a committed offset is left out.
    /// For Kafka this asks the group's coordinator.
    pub async fn committed(&self, partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, i64>, LogError> {
        match &self.0 {
            Reader::Memory(log, group) => Ok(partitions
                .iter()
                .filter_map(|tp| Some((tp.clone(), log.committed(group, tp)?)))
                .collect()),
            Reader::Kafka(k) => k.committed(partitions).await,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{EventLog, MemoryLog};

    #[tokio::test]
    async fn the_reader_sees_the_group_s_committed_offsets() {
        let mem = MemoryLog::new();
        mem.create_topic("t", 2);
        let log = EventLog::Memory(mem);
        let c = log.consumer("g", &["t"]).unwrap();
        let other = log.consumer("other", &["t"]).unwrap();
        let reader = c.watermark_reader();
        let parts = reader.partitions("t").await.unwrap();
        assert_eq!(parts.len(), 2);
        assert!(reader.committed(&parts).await.unwrap().is_empty());

        c.commit(&[(parts[0].clone(), 7)]).unwrap();
        other.commit(&[(parts[1].clone(), 3)]).unwrap();
        let got = reader.committed(&parts).await.unwrap();
        assert_eq!(got, BTreeMap::from([(parts[0].clone(), 7)]), "only its own group's");
    }
}
