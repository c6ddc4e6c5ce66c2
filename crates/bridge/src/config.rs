//! The bridge's settings: a plain struct the binary fills from its TOML
//! config (and `rumor up` from its embedded defaults).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use events::{EventLog, MemoryLog, TopicPartition, Topics};

/// What a batch commit did, for [`BridgeConfig::after_commit`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommitInfo {
    /// 1 for the first batch this bridge committed, then 2, 3, ...
    pub batch: u64,
    /// Records in the batch (rows and dead letters).
    pub records: usize,
    /// The next offsets stored by the batch.
    pub offsets: Vec<(TopicPartition, i64)>,
}

/// Called after each committed batch, before the Kafka commit; returning
/// true stops the consume loop on the spot as if the process died there
/// (the crash tests), false goes on (the benchmark times commits with it).
pub type CommitHook = Arc<dyn Fn(&CommitInfo) -> bool + Send + Sync>;

/// When a batch is written: whichever limit is reached first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchConfig {
    /// Records per batch, at most. Default 500.
    pub max_records: usize,
    /// Bytes (keys, values, headers) per batch, at most; a single larger
    /// record is a batch of its own. Default 4 MiB.
    pub max_bytes: usize,
    /// How long the first record of a batch waits for more. Default 100 ms.
    pub max_wait: Duration,
}

impl Default for BatchConfig {
    fn default() -> Self {
        Self {
            max_records: 500,
            max_bytes: 4 << 20,
            max_wait: Duration::from_millis(100),
        }
    }
}

/// Retries of a batch the database failed to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RetryConfig {
    /// Attempts of the batch as one insert. After them the batch is written
    /// row by row, and a row the database still refuses goes to the
    /// dead-letter table; when even that fails (the database is down), the
    /// bridge keeps retrying at `max_backoff` and reports not ready. Default 3.
    pub attempts: u32,
    /// Pause after the first failure, doubled up to `max_backoff`. Default 100 ms.
    pub backoff: Duration,
    /// Default 5 s.
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            attempts: 3,
            backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

/// The shortest [`BridgeConfig::stall_timeout`] accepted.
pub const MIN_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Everything the bridge needs; see [`crate::start`].
#[derive(Clone)]
pub struct BridgeConfig {
    /// `postgres://user@host/db`, `sqlite:path/to/file.db` or `sqlite::memory:`.
    pub database_url: String,
    /// Pooled database connections (SQLite in memory always uses 1). Default 8.
    pub max_connections: u32,
    /// Kafka, or the in-process log shared with the nodes of `rumor up`.
    pub log: EventLog,
    pub topics: Topics,
    /// Create the topics at start when missing. Default true.
    pub create_topics: bool,
    /// The key of the stored offsets, and the log's consumer group unless
    /// `consumer_group` is set. Bridges sharing a database and a group id
    /// share the work. Default `rumor-bridge`.
    pub group_id: String,
    /// The log's consumer group when it must differ from `group_id`.
    /// Bridges with the same `group_id` and different consumer groups each
    /// read every partition and are fenced by the stored offsets (this is
    /// how tests reproduce a group coordinator that hands one partition to
    /// two members). Default none.
    pub consumer_group: Option<String>,
    pub batch: BatchConfig,
    pub retry: RetryConfig,
    /// Where the HTTP API listens; port 0 picks a free one. Default 127.0.0.1:8480.
    pub http_bind: SocketAddr,
    /// How long `POST /v1/forward` waits for the log to take the request. Default 10 s.
    pub forward_timeout: Duration,
    /// When a partition of the messages topic has had records waiting this
    /// long and no bridge of the group stored any, this bridge leaves the
    /// consumer group and joins it again (see [`crate::stall`]); `None`
    /// turns the watch off. At least [`MIN_STALL_TIMEOUT`]. Default 60 s.
    pub stall_timeout: Option<Duration>,
    /// Test and benchmark hook: see [`CommitHook`]. Default none.
    pub after_commit: Option<CommitHook>,
}

impl std::fmt::Debug for BridgeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BridgeConfig")
            .field("database_url", &self.database_url)
            .field("max_connections", &self.max_connections)
            .field("log", &self.log.describe())
            .field("topics", &self.topics)
            .field("create_topics", &self.create_topics)
            .field("group_id", &self.group_id)
            .field("consumer_group", &self.consumer_group)
            .field("batch", &self.batch)
            .field("retry", &self.retry)
            .field("http_bind", &self.http_bind)
            .field("forward_timeout", &self.forward_timeout)
            .field("stall_timeout", &self.stall_timeout)
            .field("after_commit", &self.after_commit.is_some())
            .finish()
    }
}

impl BridgeConfig {
    /// Defaults around a database and a log.
    pub fn new(database_url: impl Into<String>, log: EventLog) -> Self {
        Self {
            database_url: database_url.into(),
            max_connections: 8,
            log,
            topics: Topics::default(),
            create_topics: true,
            group_id: "rumor-bridge".into(),
            consumer_group: None,
            batch: BatchConfig::default(),
            retry: RetryConfig::default(),
            http_bind: SocketAddr::from(([127, 0, 0, 1], 8480)),
            forward_timeout: Duration::from_secs(10),
            stall_timeout: Some(Duration::from_secs(60)),
            after_commit: None,
        }
    }

    /// The embedded default of `rumor up`: SQLite at `sqlite_path` and the
    /// in-process log the nodes publish to.
    pub fn embedded(sqlite_path: &std::path::Path, log: MemoryLog) -> Self {
        Self::new(format!("sqlite:{}", sqlite_path.display()), EventLog::Memory(log))
    }

    /// Checks the settings that have constraints.
    pub fn validate(&self) -> Result<(), String> {
        if self.group_id.is_empty() {
            return Err("bridge group_id must not be empty".into());
        }
        if self.batch.max_records == 0 {
            return Err("bridge batch.max_records must be at least 1".into());
        }
        if self.batch.max_bytes == 0 {
            return Err("bridge batch.max_bytes must be at least 1".into());
        }
        if self.stall_timeout.is_some_and(|t| t < MIN_STALL_TIMEOUT) {
            return Err(format!(
                "bridge stall_timeout must be at least {MIN_STALL_TIMEOUT:?} (or off): shorter, a bridge that \
                 restarts or rebalances would look stalled"
            ));
        }
        if self.topics.messages.is_empty() || self.topics.forward.is_empty() {
            return Err("bridge topics.messages and topics.forward must not be empty".into());
        }
        if self.topics.messages == self.topics.forward {
            return Err(format!(
                "bridge topics.messages and topics.forward are both {:?}; they must differ",
                self.topics.messages
            ));
        }
        Ok(())
    }
}
