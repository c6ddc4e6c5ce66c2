//! rumor's event log: the one interface the mesh nodes and the bridge use to
//! publish records to Kafka and to consume them, with an in-process log of
//! the same shape for `rumor up` and for tests.
//!
//! ```text
//!   worker ──MessageRecord──> Publisher ──(bounded buffer, retries)──> Producer ─┐
//!                                                                                 ├─> EventLog
//!   bridge ──ForwardRequest──────────────────────────────────────────> Producer ─┘   (Kafka, or
//!                                                                                      memory)
//!   bridge / forward node <── Consumer::recv(): Assigned | Revoked | Record ──────────┘
//!                              seek(), commit() (for lag reporting), watermarks()
//! ```
//!
//! - [`EventLog`] names the log: [`EventLog::Kafka`] with a [`KafkaConfig`]
//!   (librdkafka through `rdkafka`), or [`EventLog::Memory`] with a shared
//!   [`MemoryLog`]. It makes [`Producer`]s, [`Consumer`]s and topics.
//! - [`Publisher`] is what request paths use: [`Publisher::publish`] never
//!   waits for the log. Records wait in a bounded buffer while a background
//!   task delivers them, retrying until they are in; a record that does not
//!   fit is refused with an error, counted and logged, never dropped silently.
//! - [`stall`] is the rule by which the bridge and the forward role notice
//!   a partition that their consumer group stopped handing out.
//! - [`codec`] turns [`proto::events`] messages into records with the
//!   content-type and schema-version headers, and back.
//!
//! Publishing a worker's record:
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use events::{EventLog, MemoryLog, Publisher, PublisherConfig, Topics, codec};
//! use proto::events::{MessageRecord, message_record::Kind};
//!
//! let log = EventLog::Memory(MemoryLog::new());
//! let topics = Topics::default();
//! log.create_topics(&topics.specs()).await?;
//! let publisher = Publisher::spawn(log.producer()?, PublisherConfig::default());
//! let rec = MessageRecord {
//!     id: events::new_message_id(),
//!     key: "conv-1".into(),
//!     kind: Kind::Inbound as i32,
//!     payload: "hello".into(),
//!     ..Default::default()
//! };
//! publisher.publish(codec::message_record(&topics.messages, &rec))?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::bytes::Bytes;

pub mod codec;
pub mod consumer;
pub mod kafka;
pub mod memory;
pub mod publisher;
pub mod stall;

pub use consumer::{Consumer, ConsumerEvent, SeekTo};
pub use kafka::KafkaConfig;
pub use memory::MemoryLog;
pub use publisher::{PublishError, Publisher, PublisherConfig, PublisherStats};

/// A record to publish: the key is the conversation key, so one
/// conversation's records land on one partition, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutRecord {
    pub topic: String,
    pub key: String,
    pub value: Bytes,
    /// Header name and value pairs, in order.
    pub headers: Vec<(String, Bytes)>,
}

impl OutRecord {
    /// Bytes the record takes in a buffer (key, value and headers).
    pub fn size(&self) -> usize {
        self.key.len() + self.value.len() + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }
}

/// A record read from the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<Bytes>,
    /// The value; empty for a record without one.
    pub value: Bytes,
    pub headers: Vec<(String, Bytes)>,
    /// The record's timestamp in unix milliseconds, when the log has one.
    pub timestamp_ms: Option<i64>,
}

impl Record {
    /// The first header called `name`.
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| &v[..])
    }

    /// Bytes the record takes (key, value and headers), for batch limits.
    pub fn size(&self) -> usize {
        self.key.as_ref().map_or(0, |k| k.len())
            + self.value.len()
            + self.headers.iter().map(|(k, v)| k.len() + v.len()).sum::<usize>()
    }

    /// Its topic and partition.
    pub fn tp(&self) -> TopicPartition {
        TopicPartition::new(&self.topic, self.partition)
    }
}

/// Where a published record landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivered {
    pub partition: i32,
    pub offset: i64,
}

/// One partition of one topic.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: String,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: impl Into<String>, partition: i32) -> Self {
        Self {
            topic: topic.into(),
            partition,
        }
    }
}

impl fmt::Display for TopicPartition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.topic, self.partition)
    }
}

/// A topic to create.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicSpec {
    pub name: String,
    pub partitions: i32,
    /// Replication factor (Kafka only).
    pub replication: i32,
}

/// The topics of the system and how to create them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    /// Inbound messages and final replies, published by workers, consumed by
    /// the bridge. Default `rumor.messages`.
    pub messages: String,
    /// Messages injected from outside, published by the bridge, consumed by
    /// forward nodes. Default `rumor.forward`.
    pub forward: String,
    /// Partitions of each topic when rumor creates it. Default 6.
    pub partitions: i32,
    /// Replication factor when rumor creates a topic. Default 1 (a single
    /// broker); use 3 on a production cluster.
    pub replication: i32,
}

impl Default for Topics {
    fn default() -> Self {
        Self {
            messages: "rumor.messages".into(),
            forward: "rumor.forward".into(),
            partitions: 6,
            replication: 1,
        }
    }
}

impl Topics {
    /// Both topics, for [`EventLog::create_topics`].
    pub fn specs(&self) -> Vec<TopicSpec> {
        [&self.messages, &self.forward]
            .into_iter()
            .map(|name| TopicSpec {
                name: name.clone(),
                partitions: self.partitions,
                replication: self.replication,
            })
            .collect()
    }
}

/// The largest record a log takes by default: Kafka's own default
/// `message.max.bytes`.
pub const DEFAULT_MAX_RECORD_BYTES: usize = 1_000_000;

/// Bytes a record needs beyond its payload: the other fields of a message
/// record (an id, a key of up to `proto::rules::MAX_KEY_BYTES`, names,
/// numbers), its headers and Kafka's record framing. A payload of
/// `max_record_bytes - RECORD_OVERHEAD` always fits.
pub const RECORD_OVERHEAD: usize = 4096;

/// An error of the event log. Every variant names what was being done.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// librdkafka refused or failed the operation.
    #[error("kafka: {op}: {source}")]
    Kafka {
        op: &'static str,
        #[source]
        source: rdkafka::error::KafkaError,
    },
    /// A setting is invalid (named in the message).
    #[error("event log config: {0}")]
    Config(String),
    /// Creating a topic failed for a reason other than that it exists.
    #[error("creating topic {topic:?}: {reason}")]
    CreateTopic { topic: String, reason: String },
    /// The operation did not finish in time; it may still take effect.
    #[error("{op} timed out after {after:?}")]
    Timeout { op: &'static str, after: Duration },
    /// The partition is not assigned to this consumer (or the topic does not exist).
    #[error("{0} is not assigned to this consumer")]
    NotAssigned(TopicPartition),
    /// The record is larger than the log takes.
    #[error("record of {size} bytes is over the log's limit of {limit} bytes")]
    TooLarge { size: usize, limit: usize },
}

impl LogError {
    /// True when retrying cannot help: the log refused this record for good
    /// (too large, invalid). Such a record is set aside, not retried.
    pub fn is_permanent(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as C;
        match self {
            Self::TooLarge { .. } => true,
            Self::Kafka {
                source: rdkafka::error::KafkaError::MessageProduction(code),
                ..
            } => matches!(
                code,
                C::MessageSizeTooLarge
                    | C::InvalidMessageSize
                    | C::InvalidMessage
                    | C::MessageBatchTooLarge
                    | C::InvalidRecord
                    | C::InvalidRequiredAcks
            ),
            _ => false,
        }
    }

    /// True when the producer that returned this error cannot deliver
    /// again, but a new one can: the broker fenced its producer id and
    /// epoch, or librdkafka failed it for good.
    ///
    /// An idempotent producer moves to its next epoch on its own after a
    /// record times out, as Kafka (KIP-360) allows; tansu 0.6 only ever
    /// knows epoch 0 of a non-transactional producer and fences every later
    /// request of it, which librdkafka answers with yet another epoch. Only
    /// a new producer id ends that.
    pub fn needs_new_producer(&self) -> bool {
        use rdkafka::types::RDKafkaErrorCode as C;
        matches!(
            self,
            Self::Kafka {
                source: rdkafka::error::KafkaError::MessageProduction(
                    C::ProducerFenced | C::InvalidProducerEpoch | C::Fatal
                ),
                ..
            }
        )
    }

    pub(crate) fn kafka(op: &'static str) -> impl FnOnce(rdkafka::error::KafkaError) -> Self {
        move |source| Self::Kafka { op, source }
    }
}

impl EventLog {
    /// The largest record this log takes.
    pub fn max_record_bytes(&self) -> usize {
        match self {
            EventLog::Memory(m) => m.max_record_bytes(),
            EventLog::Kafka(k) => k.max_record_bytes,
        }
    }
}

/// Which event log to use: Kafka, or the in-process log.
#[derive(Debug, Clone)]
pub enum EventLog {
    /// An in-process log shared by every clone (for `rumor up` and tests).
    Memory(MemoryLog),
    /// A Kafka cluster.
    Kafka(KafkaConfig),
}

impl EventLog {
    /// A producer; for Kafka an idempotent one (`acks=all`).
    pub fn producer(&self) -> Result<Producer, LogError> {
        match self {
            Self::Memory(log) => Ok(Producer::Memory(log.clone())),
            Self::Kafka(cfg) => Ok(Producer::Kafka(kafka::KafkaProducer::new(cfg)?)),
        }
    }

    /// A member of consumer group `group` reading `topics`, with automatic
    /// offset commits off: the caller decides where to read from.
    pub fn consumer(&self, group: &str, topics: &[&str]) -> Result<Consumer, LogError> {
        match self {
            Self::Memory(log) => Ok(Consumer::Memory(log.consumer(group, topics))),
            Self::Kafka(cfg) => Ok(Consumer::Kafka(kafka::KafkaConsumer::new(cfg, group, topics)?)),
        }
    }

    /// Creates the topics that do not exist yet; existing ones are left as they are.
    pub async fn create_topics(&self, topics: &[TopicSpec]) -> Result<(), LogError> {
        match self {
            Self::Memory(log) => {
                for t in topics {
                    log.create_topic(&t.name, t.partitions);
                }
                Ok(())
            }
            Self::Kafka(cfg) => kafka::create_topics(cfg, topics).await,
        }
    }

    /// `memory`, or `kafka <brokers>`: for logs and readiness messages.
    pub fn describe(&self) -> String {
        match self {
            Self::Memory(_) => "memory".into(),
            Self::Kafka(cfg) => format!("kafka {}", cfg.brokers),
        }
    }
}

/// Sends records to the log. Cheap to clone.
#[derive(Debug, Clone)]
pub enum Producer {
    Memory(MemoryLog),
    Kafka(kafka::KafkaProducer),
}

impl Producer {
    /// Hands `rec` to the log without waiting: the result arrives through the
    /// returned future. Records enqueued one after another keep their order
    /// within a partition.
    pub fn enqueue(&self, rec: &OutRecord) -> Result<Pending, LogError> {
        match self {
            Self::Memory(log) => Ok(Pending::Ready(Some(log.produce(rec)))),
            Self::Kafka(p) => p.enqueue(rec).map(Pending::Kafka),
        }
    }

    /// A new producer like this one (see [`kafka::KafkaProducer::renewed`]); an
    /// in-process log needs none and gives `None`.
    pub fn renewed(&self) -> Option<Result<Producer, LogError>> {
        match self {
            Self::Memory(_) => None,
            Self::Kafka(p) => Some(p.renewed().map(Self::Kafka)),
        }
    }

    /// Fails every record still queued or in flight (each one's [`Pending`]
    /// resolves with an error) and waits until those answers are out; for
    /// a producer being replaced. Blocks.
    pub fn close(self) {
        if let Self::Kafka(p) = self {
            p.close();
        }
    }

    /// Why this producer cannot deliver again, if librdkafka failed it for good.
    pub fn fatal_error(&self) -> Option<String> {
        match self {
            Self::Memory(_) => None,
            Self::Kafka(p) => p.fatal_error(),
        }
    }

    /// Sends `rec` and waits until the log has it (for Kafka: acknowledged by
    /// all in-sync replicas), at most `timeout`.
    pub async fn send(&self, rec: &OutRecord, timeout: Duration) -> Result<Delivered, LogError> {
        let pending = self.enqueue(rec)?;
        match tokio::time::timeout(timeout, pending).await {
            Ok(r) => r,
            Err(_) => Err(LogError::Timeout {
                op: "sending a record",
                after: timeout,
            }),
        }
    }
}

/// A record on its way into the log; resolves when the log has it or gave up.
#[derive(Debug)]
pub enum Pending {
    Ready(Option<Result<Delivered, LogError>>),
    Kafka(kafka::KafkaPending),
}

impl std::future::Future for Pending {
    type Output = Result<Delivered, LogError>;

    fn poll(self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        match self.get_mut() {
            Self::Ready(r) => std::task::Poll::Ready(
                r.take()
                    .unwrap_or_else(|| Err(LogError::Config("a delivery result was polled twice".into()))),
            ),
            Self::Kafka(p) => std::pin::Pin::new(p).poll(cx),
        }
    }
}

pub use proto::message_id;

/// A fresh [`message_id`] from the system clock and the OS-seeded RNG.
pub fn new_message_id() -> String {
    message_id(unix_ms(), rand::random())
}

/// Milliseconds since the unix epoch now (0 before it).
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

pub use proto::rules::is_message_id;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_match_the_mesh_layout_and_sort_by_time() {
        let a = message_id(1_700_000_000_000, 0);
        let b = message_id(1_700_000_000_001, u128::MAX);
        assert_eq!(a.len(), 26);
        assert!(a < b);
        assert!(is_message_id(&a) && is_message_id(&b) && is_message_id(&new_message_id()));
        assert!(!is_message_id("short") && !is_message_id(&"I".repeat(26)));
    }
}
