//! rumor's bridge: the messages topic into a database, conversation history
//! over HTTP, and an inject API back into the mesh through the forward topic.
//!
//! ```text
//!  workers ──MessageRecord──> messages topic ──> consume loop ──one transaction per batch──> database
//!                                                 (rows + next offsets, fenced)              │
//!  GET /v1/conversations/{key}/messages  <──────────────────────────────────────────────────┘
//!  POST /v1/forward ──ForwardRequest──> forward topic ──> forward nodes ──> mesh
//! ```
//!
//! - [`store`]: PostgreSQL or SQLite through `sqlx`, migrations embedded and
//!   run at start (a schema newer than the binary is refused), batches
//!   written idempotently with the consumer's offsets in the same transaction.
//! - [`consume`]: the loop that batches records, seeks to the stored offsets
//!   on assignment, dead-letters what it cannot decode or store, and commits
//!   to the log's group only for lag reporting.
//! - [`stall`]: the watch that has the loop rejoin the consumer group when
//!   a partition's records wait and no bridge stores any.
//! - [`api`]: the HTTP API (axum).
//!
//! The same code runs for `rumor bridge` (Kafka and PostgreSQL) and in
//! `rumor up` (the in-process log and SQLite):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use bridge::BridgeConfig;
//! use events::{EventLog, KafkaConfig, MemoryLog};
//!
//! // Embedded: share the MemoryLog with the nodes' publishers.
//! let log = MemoryLog::new();
//! let mut cfg = BridgeConfig::embedded(std::path::Path::new("rumor.db"), log.clone());
//! cfg.http_bind = "127.0.0.1:0".parse()?;
//! let bridge = bridge::start(cfg).await?;
//! println!("history at http://{}/v1/conversations/conv-1/messages", bridge.addr());
//! bridge.shutdown().await?;
//!
//! // Production.
//! let cfg = BridgeConfig::new("postgres://rumor@db/rumor", EventLog::Kafka(KafkaConfig::new("kafka:9092")));
//! let bridge = bridge::start(cfg).await?;
//! # bridge.shutdown().await?; Ok(()) }
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use events::{LogError, Producer, TopicPartition, Topics, consumer::WatermarkReader};
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub mod api;
pub mod config;
pub mod consume;
pub mod metrics;
pub mod stall;
pub mod store;

pub use config::{BatchConfig, BridgeConfig, CommitHook, CommitInfo, MIN_STALL_TIMEOUT, RetryConfig};
pub use metrics::BridgeStats;
pub use store::Store;

/// Why the bridge failed to start or stopped.
#[derive(Debug, thiserror::Error)]
pub enum BridgeError {
    #[error("bridge config: {0}")]
    Config(String),
    #[error("bridge database: {0}")]
    Open(#[from] store::OpenError),
    #[error("bridge event log ({log}): {source}")]
    Log {
        log: String,
        #[source]
        source: LogError,
    },
    #[error("bridge HTTP API: binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("bridge HTTP API: {0}")]
    Serve(#[source] std::io::Error),
    /// The test hook stopped the consume loop after batch N.
    #[error("bridge consume loop stopped by the crash hook after batch {0}")]
    Crashed(u64),
    #[error("bridge consume loop panicked: {0}")]
    Panicked(String),
}

/// State shared by the consume loop and the HTTP API. The loop is the
/// only writer of the positions and the failure note; the mutexes exist so
/// the API can read a consistent snapshot.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) store: Store,
    pub(crate) producer: Producer,
    pub(crate) topics: Topics,
    pub(crate) group: String,
    pub(crate) forward_timeout: Duration,
    pub(crate) counters: metrics::Counters,
    pub(crate) batch_records: metrics::Histogram,
    pub(crate) batch_seconds: metrics::Histogram,
    /// Next offset to store, per assigned partition (for lag).
    pub(crate) positions: Mutex<BTreeMap<TopicPartition, i64>>,
    pub(crate) watermarks: WatermarkReader,
    /// Why the last database operation of the loop failed, until one succeeds.
    pub(crate) db_failing: Mutex<Option<String>>,
    /// Set when the consume loop ended (with why).
    pub(crate) stopped: Mutex<Option<String>>,
    /// True while the loop reads every partition without the consumer group.
    pub(crate) reading_alone: std::sync::atomic::AtomicBool,
}

/// A running bridge; see [`start`].
#[derive(Debug)]
pub struct Bridge {
    addr: SocketAddr,
    shared: Arc<Shared>,
    shutdown: watch::Sender<bool>,
    consume: JoinHandle<Result<(), BridgeError>>,
    http: JoinHandle<std::io::Result<()>>,
}

/// Starts a bridge: opens (and migrates) the database, creates the topics
/// when asked, joins the consumer group and serves the HTTP API.
pub async fn start(cfg: BridgeConfig) -> Result<Bridge, BridgeError> {
    cfg.validate().map_err(BridgeError::Config)?;
    let log_err = |source| BridgeError::Log {
        log: cfg.log.describe(),
        source,
    };
    let store = Store::open(&cfg.database_url, cfg.max_connections).await?;
    if cfg.create_topics {
        cfg.log.create_topics(&cfg.topics.specs()).await.map_err(log_err)?;
    }
    let producer = cfg.log.producer().map_err(log_err)?;
    let consumer = cfg
        .log
        .consumer(
            cfg.consumer_group.as_deref().unwrap_or(&cfg.group_id),
            &[&cfg.topics.messages],
        )
        .map_err(log_err)?;
    let listener = tokio::net::TcpListener::bind(cfg.http_bind)
        .await
        .map_err(|source| BridgeError::Bind {
            addr: cfg.http_bind,
            source,
        })?;
    let addr = listener.local_addr().map_err(BridgeError::Serve)?;
    let shared = Arc::new(Shared {
        store,
        producer,
        topics: cfg.topics.clone(),
        group: cfg.group_id.clone(),
        forward_timeout: cfg.forward_timeout,
        counters: metrics::Counters::default(),
        batch_records: metrics::batch_records(),
        batch_seconds: metrics::batch_seconds(),
        positions: Mutex::new(BTreeMap::new()),
        watermarks: consumer.watermark_reader(),
        db_failing: Mutex::new(None),
        stopped: Mutex::new(None),
        reading_alone: std::sync::atomic::AtomicBool::new(false),
    });
    let (shutdown, rx) = watch::channel(false);
    let (stalled_tx, stalled) = tokio::sync::mpsc::channel(1);
    if let Some(timeout) = cfg.stall_timeout {
        tokio::spawn(stall::run(
            shared.clone(),
            cfg.topics.messages.clone(),
            timeout,
            stalled_tx,
            rx.clone(),
        ));
    }
    let consume_loop = consume::Loop::new(shared.clone(), consumer, &cfg, stalled, rx.clone());
    let s2 = shared.clone();
    let consume = tokio::spawn(async move {
        let r = consume_loop.run().await;
        let why = match &r {
            Ok(()) => "stopped".to_owned(),
            Err(e) => e.to_string(),
        };
        if let Err(e) = &r {
            tracing::error!("{e}");
        }
        *s2.stopped.lock().unwrap_or_else(|e| e.into_inner()) = Some(why);
        r
    });
    let mut http_rx = rx;
    let http = tokio::spawn(api::serve(listener, shared.clone(), async move {
        let _ = http_rx.wait_for(|s| *s).await;
    }));
    tracing::info!(%addr, log = %cfg.log.describe(), database = shared.store.kind(), "bridge started");
    Ok(Bridge {
        addr,
        shared,
        shutdown,
        consume,
        http,
    })
}

impl Bridge {
    /// Where the HTTP API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// What it did so far.
    pub fn stats(&self) -> BridgeStats {
        self.shared.counters.read()
    }

    /// The partitions of the messages topic assigned to it now.
    pub fn assigned_partitions(&self) -> Vec<TopicPartition> {
        self.shared
            .positions
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }

    /// Its database.
    pub fn store(&self) -> &Store {
        &self.shared.store
    }

    /// Whether the consume loop has ended (shutdown, or the crash hook).
    pub fn consumer_stopped(&self) -> bool {
        self.consume.is_finished()
    }

    /// Stops consuming (writing the batch in progress), lets HTTP requests
    /// in progress finish, and closes the database pool. Returns the consume
    /// loop's error if it had stopped with one.
    pub async fn shutdown(self) -> Result<(), BridgeError> {
        let _ = self.shutdown.send(true);
        let consumed = match self.consume.await {
            Ok(r) => r,
            Err(e) => Err(BridgeError::Panicked(e.to_string())),
        };
        let served = match self.http.await {
            Ok(r) => r.map_err(BridgeError::Serve),
            Err(e) => Err(BridgeError::Panicked(e.to_string())),
        };
        self.shared.store.close().await;
        consumed.and(served)
    }
}
