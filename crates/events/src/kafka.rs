//! The event log on Kafka, through librdkafka (`rdkafka`).
//!
//! ```text
//!  KafkaProducer: FutureProducer, enable.idempotence=true, acks=all
//!      enqueue(rec) ──> librdkafka queue ──(its own retries, in order, until delivered)──> broker
//!                            └── KafkaPending resolves with (partition, offset) or the error
//!
//!  KafkaConsumer: StreamConsumer, enable.auto.commit=false, auto.offset.reset=earliest
//!      recv() ──poll──> librdkafka ──rebalance callback (in the poll)──> RebalanceContext
//!                                                                         │ Revoked / Assigned
//!      recv() returns those events first, then records  <──── channel ───┘
//! ```
//!
//! The rebalance callbacks run inside the consumer's poll, so an assignment
//! reaches the caller before any record of the newly assigned partitions;
//! `Assigned` is sent after librdkafka applied the assignment, so the caller
//! can seek at once. Seeks, watermark queries and topic creation block in
//! librdkafka and run on tokio's blocking pool. Watermarks and partition
//! lists come from a second client that is in no group, so a
//! [`KafkaConsumer::rejoin`] leaves nothing of the old member behind.
//!
//! librdkafka logs go to `tracing` (target `librdkafka`).

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::ClientContext;
use rdkafka::config::{ClientConfig, RDKafkaLogLevel};
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use rdkafka::{Offset, TopicPartitionList};
use tokio::sync::mpsc;

use crate::{ConsumerEvent, Delivered, LogError, OutRecord, Record, SeekTo, TopicPartition, TopicSpec};

/// How to reach Kafka, and the client settings rumor does not fix itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `bootstrap.servers`: comma-separated `host:port` list.
    pub brokers: String,
    /// `client.id` of every client. Default `rumor`.
    pub client_id: String,
    /// How long the producer keeps trying to deliver a record before it
    /// reports a failure (`message.timeout.ms`), after which the
    /// [`crate::Publisher`] retries it. Default `None`: for as long as it
    /// takes. The idempotent producer then keeps a partition's records in
    /// order through any outage, while a record that times out is retried
    /// behind records the producer went on delivering, out of order. The
    /// publisher's health reports records that wait too long either way.
    pub message_timeout: Option<Duration>,
    /// `session.timeout.ms` of consumers: how long a silent group member
    /// keeps its partitions. Default 10 s.
    pub session_timeout: Duration,
    /// Time limit of blocking requests (topic creation, seek, watermarks). Default 10 s.
    pub request_timeout: Duration,
    /// The largest record the producer sends (`message.max.bytes`); the
    /// brokers' own `message.max.bytes` must be at least this. A larger
    /// record is refused for good and set aside. Default 1,000,000, Kafka's
    /// default.
    pub max_record_bytes: usize,
    /// Extra librdkafka properties for every client (security settings, for example).
    pub properties: BTreeMap<String, String>,
    /// Extra librdkafka properties for producers (`linger.ms`, `compression.type`, ...).
    /// `enable.idempotence` and `acks` are fixed and cannot be overridden.
    pub producer: BTreeMap<String, String>,
    /// Extra librdkafka properties for consumers. `enable.auto.commit` is
    /// fixed and cannot be overridden.
    pub consumer: BTreeMap<String, String>,
}

impl KafkaConfig {
    /// Defaults for a cluster reachable at `brokers`.
    pub fn new(brokers: impl Into<String>) -> Self {
        Self {
            brokers: brokers.into(),
            client_id: "rumor".into(),
            message_timeout: None,
            session_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(10),
            max_record_bytes: crate::DEFAULT_MAX_RECORD_BYTES,
            properties: BTreeMap::new(),
            producer: BTreeMap::new(),
            consumer: BTreeMap::new(),
        }
    }

    fn base(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &self.brokers)
            .set("client.id", &self.client_id);
        for (k, v) in &self.properties {
            c.set(k, v);
        }
        c
    }

    fn check_fixed(extra: &BTreeMap<String, String>, fixed: &[&str], what: &str) -> Result<(), LogError> {
        match fixed.iter().find(|k| extra.contains_key(**k)) {
            Some(k) => Err(LogError::Config(format!(
                "kafka {what} property {k:?} is fixed by rumor and cannot be set"
            ))),
            None => Ok(()),
        }
    }
}

/// Sends librdkafka's log lines and global errors to `tracing`, and (for
/// consumers) forwards rebalances to [`KafkaConsumer::recv`].
#[derive(Debug)]
pub struct RebalanceContext {
    /// Unbounded: the callback runs inside librdkafka's poll and must not
    /// block; there are at most a few events per rebalance.
    events: Option<mpsc::UnboundedSender<ConsumerEvent>>,
}

impl ClientContext for RebalanceContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg | RDKafkaLogLevel::Alert | RDKafkaLogLevel::Critical | RDKafkaLogLevel::Error => {
                tracing::error!(target: "librdkafka", "{fac}: {message}")
            }
            RDKafkaLogLevel::Warning => tracing::warn!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => tracing::info!(target: "librdkafka", "{fac}: {message}"),
            RDKafkaLogLevel::Debug => tracing::debug!(target: "librdkafka", "{fac}: {message}"),
        }
    }

    fn error(&self, error: KafkaError, reason: &str) {
        tracing::warn!(target: "librdkafka", %error, "{reason}");
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl ConsumerContext for RebalanceContext {
    fn pre_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(tpl), Some(tx)) = (rebalance, &self.events) {
            let _ = tx.send(ConsumerEvent::Revoked(partitions(tpl)));
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match (rebalance, &self.events) {
            (Rebalance::Assign(tpl), Some(tx)) => {
                let _ = tx.send(ConsumerEvent::Assigned(partitions(tpl)));
            }
            (Rebalance::Error(e), _) => tracing::warn!(error = %e, "kafka rebalance failed"),
            _ => {}
        }
    }
}

/// An idempotent Kafka producer (`enable.idempotence=true`, `acks=all`).
#[derive(Clone)]
pub struct KafkaProducer {
    inner: FutureProducer<RebalanceContext>,
    /// What it was made from, for [`KafkaProducer::renewed`].
    config: ClientConfig,
}

impl std::fmt::Debug for KafkaProducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaProducer").finish_non_exhaustive()
    }
}

impl KafkaProducer {
    /// A producer for `cfg` (connects lazily).
    pub fn new(cfg: &KafkaConfig) -> Result<Self, LogError> {
        KafkaConfig::check_fixed(
            &cfg.producer,
            &["enable.idempotence", "acks", "message.max.bytes"],
            "producer",
        )?;
        let mut c = cfg.base();
        // A worker answers once its records are acknowledged, so a record
        // waits at most 1 ms for others to batch with (under load, records
        // batch anyway while earlier requests are in flight).
        // librdkafka's 0 is no limit.
        let timeout_ms = cfg.message_timeout.map_or(0, |t| t.as_millis().max(1));
        c.set("message.timeout.ms", timeout_ms.to_string())
            .set("message.max.bytes", cfg.max_record_bytes.to_string())
            .set("linger.ms", "1");
        for (k, v) in &cfg.producer {
            c.set(k, v);
        }
        c.set("enable.idempotence", "true").set("acks", "all");
        Self::from_config(c)
    }

    fn from_config(config: ClientConfig) -> Result<Self, LogError> {
        let inner = config
            .create_with_context(RebalanceContext { events: None })
            .map_err(LogError::kafka("creating the producer"))?;
        Ok(Self { inner, config })
    }

    /// A new producer with the same settings, hence a new producer id from
    /// the broker: what a producer the broker fences, or that failed for
    /// good, needs to deliver again (see [`LogError::needs_new_producer`]).
    pub fn renewed(&self) -> Result<Self, LogError> {
        Self::from_config(self.config.clone())
    }

    /// Purges every record still queued or in flight, so that each one's
    /// delivery future resolves with a purge error, and waits (at most 30 s)
    /// until librdkafka has handed out those answers. Dropping a producer
    /// waits only 500 ms for them, and a record whose answer is not handed
    /// out would never resolve. Blocks.
    pub fn close(self) {
        use rdkafka::producer::{Producer as _, PurgeConfig};
        self.inner.purge(PurgeConfig::default().queue().inflight());
        if let Err(e) = self.inner.flush(Timeout::After(Duration::from_secs(30))) {
            tracing::warn!("a replaced Kafka producer did not hand out every answer: {e}");
        }
    }

    /// librdkafka's fatal error, once it raised one: the producer then
    /// refuses every record for good.
    pub fn fatal_error(&self) -> Option<String> {
        use rdkafka::producer::Producer as _;
        self.inner
            .client()
            .fatal_error()
            .map(|(code, why)| format!("{code:?}: {why}"))
    }

    /// Hands `rec` to librdkafka; see [`crate::Producer::enqueue`].
    pub fn enqueue(&self, rec: &OutRecord) -> Result<KafkaPending, LogError> {
        let mut headers = OwnedHeaders::new_with_capacity(rec.headers.len());
        for (k, v) in &rec.headers {
            headers = headers.insert(Header {
                key: k.as_str(),
                value: Some(&v[..]),
            });
        }
        let record = FutureRecord::to(&rec.topic)
            .key(rec.key.as_bytes())
            .payload(&rec.value[..])
            .headers(headers);
        match self.inner.send_result(record) {
            Ok(f) => Ok(KafkaPending(f)),
            Err((e, _)) => Err(LogError::Kafka {
                op: "enqueueing a record",
                source: e,
            }),
        }
    }
}

/// A record librdkafka is delivering.
pub struct KafkaPending(DeliveryFuture);

impl std::fmt::Debug for KafkaPending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaPending").finish_non_exhaustive()
    }
}

impl std::future::Future for KafkaPending {
    type Output = Result<Delivered, LogError>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        Pin::new(&mut self.0).poll(cx).map(|r| match r {
            Ok(Ok(d)) => Ok(Delivered {
                partition: d.partition,
                offset: d.offset,
            }),
            Ok(Err((source, _))) => Err(LogError::Kafka {
                op: "delivering a record",
                source,
            }),
            Err(_) => Err(LogError::Kafka {
                op: "delivering a record",
                source: KafkaError::Canceled,
            }),
        })
    }
}

type Inner = StreamConsumer<RebalanceContext>;

/// How long [`KafkaConsumer::rejoin`] waits for the old member to close.
pub const REJOIN_CLOSE_WAIT: Duration = Duration::from_secs(10);

/// A Kafka consumer-group member; see the [module docs](self).
pub struct KafkaConsumer {
    inner: Arc<Inner>,
    events: mpsc::UnboundedReceiver<ConsumerEvent>,
    /// A record received together with a rebalance event, returned after it.
    stashed: Option<Record>,
    /// What a rejoin creates the next member from.
    config: ClientConfig,
    topics: Vec<String>,
    meta: KafkaWatermarks,
}

impl std::fmt::Debug for KafkaConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaConsumer").finish_non_exhaustive()
    }
}

impl KafkaConsumer {
    /// Joins `group` and subscribes to `topics`.
    pub fn new(cfg: &KafkaConfig, group: &str, topics: &[&str]) -> Result<Self, LogError> {
        // A static member (group.instance.id) would get its old assignment
        // back on a rejoin instead of a new one.
        KafkaConfig::check_fixed(
            &cfg.consumer,
            &["enable.auto.commit", "group.id", "group.instance.id"],
            "consumer",
        )?;
        let mut c = cfg.base();
        c.set("group.id", group)
            .set("session.timeout.ms", cfg.session_timeout.as_millis().to_string())
            .set("auto.offset.reset", "earliest")
            // A fetch waits at most this long for new records. Kafka answers
            // as soon as a record arrives, but a broker that holds fetches
            // longer adds up to this to every record's way into the
            // database: with tansu 0.6 and librdkafka's default of 500 ms,
            // `rumor-bench bridge` read 54k records/s from a full topic; with
            // 50 ms, 227k/s.
            .set("fetch.wait.max.ms", "50")
            .set("enable.auto.offset.store", "false")
            .set("enable.partition.eof", "false");
        for (k, v) in &cfg.consumer {
            c.set(k, v);
        }
        c.set("enable.auto.commit", "false");
        let (inner, events) = Self::create(&c)?;
        // The metadata client names the group, so that it can read the
        // group's committed offsets; it never subscribes, so it never joins
        // the group, and it never commits.
        let meta: BaseConsumer<RebalanceContext> = cfg
            .base()
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .create_with_context(RebalanceContext { events: None })
            .map_err(LogError::kafka("creating the metadata client"))?;
        let consumer = Self {
            inner,
            events,
            stashed: None,
            config: c,
            topics: topics.iter().map(|t| (*t).to_owned()).collect(),
            meta: KafkaWatermarks {
                client: Arc::new(meta),
                timeout: cfg.request_timeout,
            },
        };
        consumer.subscribe()?;
        Ok(consumer)
    }

    /// A new consumer, not in the group until it subscribes.
    fn create(config: &ClientConfig) -> Result<(Arc<Inner>, mpsc::UnboundedReceiver<ConsumerEvent>), LogError> {
        let (tx, events) = mpsc::unbounded_channel();
        let inner: Inner = config
            .create_with_context(RebalanceContext { events: Some(tx) })
            .map_err(LogError::kafka("creating the consumer"))?;
        Ok((Arc::new(inner), events))
    }

    fn subscribe(&self) -> Result<(), LogError> {
        let topics: Vec<&str> = self.topics.iter().map(String::as_str).collect();
        self.inner.subscribe(&topics).map_err(LogError::kafka("subscribing"))
    }

    /// Leaves the group and joins it again as a new member, with a new
    /// member id: whatever the coordinator kept of the old one (an
    /// assignment it never handed over) goes with it. Every partition the
    /// old member had is revoked without a `Revoked` event (the caller
    /// forgets them); the new member's `Assigned` follows as after a start.
    ///
    /// The old member is closed first ([`REJOIN_CLOSE_WAIT`] at most). An
    /// error means no new consumer could be created, and the old member is
    /// kept.
    pub async fn rejoin(&mut self) -> Result<(), LogError> {
        let (inner, events) = Self::create(&self.config)?;
        self.replace(inner, events).await;
        // The same topics were subscribed to at the start: this fails only
        // if librdkafka itself fails, and the caller's next rejoin retries.
        if let Err(e) = self.subscribe() {
            tracing::error!("kafka: the new consumer-group member could not subscribe: {e}");
        }
        Ok(())
    }

    /// Leaves the group and reads `partitions` without one (a manual
    /// assignment), each from the group's committed offset, else the
    /// earliest. An `Assigned` with them follows, as after a rebalance.
    /// Commits still name the group; a coordinator that has members may
    /// refuse them. [`rejoin`](Self::rejoin) goes back to the group. An
    /// error means nothing changed.
    pub async fn read_alone(&mut self, partitions: &[TopicPartition]) -> Result<(), LogError> {
        let mut tpl = TopicPartitionList::with_capacity(partitions.len());
        for tp in partitions {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Stored)
                .map_err(LogError::kafka("assigning partitions"))?;
        }
        let (inner, events) = Self::create(&self.config)?;
        inner.assign(&tpl).map_err(LogError::kafka("assigning partitions"))?;
        // A manual assignment makes no rebalance: announce it as one.
        if let Some(tx) = &inner.context().events {
            let _ = tx.send(ConsumerEvent::Assigned(partitions.to_vec()));
        }
        self.replace(inner, events).await;
        Ok(())
    }

    /// Makes `inner` the consumer, closing the old one first (librdkafka
    /// sends LeaveGroup and waits a few seconds at most for the answer), so
    /// that the coordinator does not have to time it out; after
    /// [`REJOIN_CLOSE_WAIT`] it goes on even if the old one is still closing.
    async fn replace(&mut self, inner: Arc<Inner>, events: mpsc::UnboundedReceiver<ConsumerEvent>) {
        let old = std::mem::replace(&mut self.inner, inner);
        self.events = events;
        self.stashed = None;
        let closing = tokio::task::spawn_blocking(move || drop(old));
        if tokio::time::timeout(REJOIN_CLOSE_WAIT, closing).await.is_err() {
            tracing::warn!(
                "kafka: the old consumer-group member is still closing after {REJOIN_CLOSE_WAIT:?}; going on"
            );
        }
    }

    /// See [`crate::Consumer::recv`].
    pub async fn recv(&mut self) -> Result<ConsumerEvent, LogError> {
        if let Ok(ev) = self.events.try_recv() {
            return Ok(ev);
        }
        if let Some(rec) = self.stashed.take() {
            return Ok(ConsumerEvent::Record(rec));
        }
        tokio::select! {
            biased;
            Some(ev) = self.events.recv() => Ok(ev),
            msg = self.inner.recv() => {
                let msg = msg.map_err(LogError::kafka("receiving a record"))?;
                let rec = Record {
                    topic: msg.topic().to_owned(),
                    partition: msg.partition(),
                    offset: msg.offset(),
                    key: msg.key().map(|k| k.to_vec().into()),
                    value: msg.payload().map(|v| v.to_vec().into()).unwrap_or_default(),
                    headers: msg
                        .headers()
                        .map(|h| {
                            h.iter()
                                .map(|h| (h.key.to_owned(), h.value.map(|v| v.to_vec().into()).unwrap_or_default()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    timestamp_ms: msg.timestamp().to_millis(),
                };
                // A rebalance served during this poll goes first.
                match self.events.try_recv() {
                    Ok(ev) => {
                        self.stashed = Some(rec);
                        Ok(ev)
                    }
                    Err(_) => Ok(ConsumerEvent::Record(rec)),
                }
            }
        }
    }

    /// See [`crate::Consumer::seek`]. A record stashed behind a rebalance
    /// event is dropped when it belongs to the partition.
    pub async fn seek(&mut self, tp: &TopicPartition, to: SeekTo) -> Result<(), LogError> {
        if self.stashed.as_ref().is_some_and(|r| r.tp() == *tp) {
            self.stashed = None;
        }
        let offset = match to {
            SeekTo::Beginning => Offset::Beginning,
            SeekTo::Offset(o) => Offset::Offset(o),
        };
        let inner = self.inner.clone();
        let tp2 = tp.clone();
        let timeout = self.meta.timeout;
        tokio::task::spawn_blocking(move || inner.seek(&tp2.topic, tp2.partition, offset, timeout))
            .await
            .map_err(|e| LogError::Config(format!("seek task failed: {e}")))?
            .map_err(LogError::kafka("seeking"))
    }

    /// See [`crate::Consumer::commit`].
    pub fn commit(&self, offsets: &[(TopicPartition, i64)]) -> Result<(), LogError> {
        if offsets.is_empty() {
            return Ok(());
        }
        let mut tpl = TopicPartitionList::with_capacity(offsets.len());
        for (tp, next) in offsets {
            tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*next))
                .map_err(LogError::kafka("committing offsets"))?;
        }
        self.inner
            .commit(&tpl, CommitMode::Async)
            .map_err(LogError::kafka("committing offsets"))
    }

    /// See [`crate::Consumer::watermarks`].
    pub async fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), LogError> {
        self.watermark_reader().watermarks(tp).await
    }

    pub(crate) fn watermark_reader(&self) -> KafkaWatermarks {
        self.meta.clone()
    }
}

/// Asks the broker for watermarks, partitions and the group's committed
/// offsets through a client of its own that is no member of the group.
#[derive(Clone)]
pub struct KafkaWatermarks {
    client: Arc<BaseConsumer<RebalanceContext>>,
    timeout: Duration,
}

impl std::fmt::Debug for KafkaWatermarks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaWatermarks").finish_non_exhaustive()
    }
}

impl KafkaWatermarks {
    /// Runs `query` on the client off the runtime's threads, then serves
    /// what librdkafka queued for it meanwhile.
    async fn call<T: Send + 'static>(
        &self,
        what: &'static str,
        query: impl FnOnce(&BaseConsumer<RebalanceContext>, Duration) -> rdkafka::error::KafkaResult<T> + Send + 'static,
    ) -> Result<T, LogError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        tokio::task::spawn_blocking(move || {
            let r = query(&client, timeout);
            serve_events(&client);
            r
        })
        .await
        .map_err(|e| LogError::Config(format!("{what} task failed: {e}")))?
        .map_err(LogError::kafka(what))
    }

    pub(crate) async fn watermarks(&self, tp: &TopicPartition) -> Result<(i64, i64), LogError> {
        let tp = tp.clone();
        self.call("fetching watermarks", move |c, timeout| {
            c.fetch_watermarks(&tp.topic, tp.partition, timeout)
        })
        .await
    }

    /// The partitions of `topic`, from the broker's metadata.
    pub(crate) async fn partitions(&self, topic: &str) -> Result<Vec<TopicPartition>, LogError> {
        let name = topic.to_owned();
        let meta = self
            .call("fetching metadata", move |c, timeout| {
                c.fetch_metadata(Some(&name), timeout)
            })
            .await?;
        let t = meta
            .topics()
            .iter()
            .find(|t| t.name() == topic)
            .ok_or_else(|| LogError::Config(format!("topic {topic:?} is not in the broker's metadata")))?;
        if let Some(e) = t.error() {
            return Err(LogError::Config(format!(
                "topic {topic:?}: the broker says {:?}",
                RDKafkaErrorCode::from(e)
            )));
        }
        Ok(t.partitions()
            .iter()
            .map(|p| TopicPartition::new(topic, p.id()))
            .collect())
    }

    /// The group's committed next offsets for `partitions`, from its
    /// coordinator; a partition without one is left out.
    pub(crate) async fn committed(
        &self,
        partitions: &[TopicPartition],
    ) -> Result<BTreeMap<TopicPartition, i64>, LogError> {
        let mut tpl = TopicPartitionList::with_capacity(partitions.len());
        for tp in partitions {
            tpl.add_partition(&tp.topic, tp.partition);
        }
        let got = self
            .call("fetching committed offsets", move |c, timeout| {
                c.committed_offsets(tpl, timeout)
            })
            .await?;
        Ok(got
            .elements()
            .iter()
            .filter_map(|e| match e.offset() {
                Offset::Offset(o) => Some((TopicPartition::new(e.topic(), e.partition()), o)),
                _ => None,
            })
            .collect())
    }
}

/// Serves what librdkafka queued for a client nobody polls otherwise (its
/// log lines and errors go to `tracing` from here), so it cannot pile up.
fn serve_events(client: &BaseConsumer<RebalanceContext>) {
    for _ in 0..1_000 {
        if client.poll(Duration::ZERO).is_none() {
            return;
        }
    }
}

/// Creates the topics that do not exist; see [`crate::EventLog::create_topics`].
pub(crate) async fn create_topics(cfg: &KafkaConfig, topics: &[TopicSpec]) -> Result<(), LogError> {
    let admin: AdminClient<RebalanceContext> = cfg
        .base()
        .create_with_context(RebalanceContext { events: None })
        .map_err(LogError::kafka("creating the admin client"))?;
    let new: Vec<NewTopic<'_>> = topics
        .iter()
        .map(|t| NewTopic::new(&t.name, t.partitions, TopicReplication::Fixed(t.replication)))
        .collect();
    let opts = AdminOptions::new()
        .request_timeout(Some(cfg.request_timeout))
        .operation_timeout(Some(Timeout::After(cfg.request_timeout)));
    let results = admin
        .create_topics(new.iter(), &opts)
        .await
        .map_err(LogError::kafka("creating topics"))?;
    for r in results {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => {
                return Err(LogError::CreateTopic {
                    topic,
                    reason: code.to_string(),
                });
            }
        }
    }
    Ok(())
}
