//! Publishing without waiting for the log: a bounded buffer and one
//! background delivery task that retries until every record is in.
//!
//! ```text
//!  publish(rec) ── fits in max_buffered records / bytes? ── no ──> Err(Full): counted, logged
//!        │ yes
//!        v
//!  channel ──> delivery task: enqueue into the producer (up to max_in_flight at once),
//!                             await the oldest; on failure: back off, then enqueue
//!                             every record that failed meanwhile again
//! ```
//!
//! A record leaves the buffer only when the log acknowledged it, so while
//! Kafka is unreachable records accumulate up to the bound and are then
//! refused; callers never block on Kafka. A record the log refuses for good
//! (larger than it takes, say: [`LogError::is_permanent`]) is set aside at
//! once: counted, handed to the set-aside hook with the reason, and never
//! retried, so it cannot hold up the records behind it. A producer that
//! cannot deliver again (fenced by the broker, or failed for good by
//! librdkafka: [`LogError::needs_new_producer`]) is replaced by a new one
//! before the retry.
//!
//! [`Publisher::publish`] returns a [`Delivery`], a future that resolves
//! when the log has the record (or it was set aside): a caller that must
//! not answer before its record is durable awaits it. [`Publisher::healthy`] is false
//! while deliveries fail or the oldest record has waited longer than
//! [`PublisherConfig::stall_after`]: readiness reports it.
//!
//! Order: records are handed to the producer in publish order, and the
//! idempotent producer keeps that order within a partition through its own
//! retries, for as long as it takes by default (no `message.timeout.ms`:
//! [`crate::KafkaConfig::message_timeout`]). A record that failed (its
//! producer failed for good, or was replaced) is enqueued again together
//! with every record that failed with it, in publish order, and no record
//! published after them is taken before they are: a conversation's records
//! reach the log in the order they were published. Delivery is at least
//! once: a record whose answer was lost may be in the log twice, its first
//! copy in order. Order can break only where the producer fails one record
//! and goes on delivering the ones behind it: a finite message timeout, or a
//! record librdkafka refuses to queue (its own queue full, which
//! `max_in_flight` keeps far from).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::{LogError, OutRecord, Pending, Producer};

/// Publisher settings; every field has a default.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublisherConfig {
    /// Records accepted and not yet delivered, at most. Default 100,000.
    pub max_buffered: usize,
    /// Bytes (keys, values, headers) accepted and not yet delivered, at
    /// most. Default 64 MiB.
    pub max_buffered_bytes: usize,
    /// Records handed to the producer at once. Default 1,000.
    pub max_in_flight: usize,
    /// First pause after a failed delivery; doubled up to `max_backoff`. Default 100 ms.
    pub retry_backoff: Duration,
    /// Longest pause between delivery attempts. Default 5 s.
    pub max_backoff: Duration,
    /// The publisher counts as unhealthy when its oldest record has waited
    /// this long. Default 5 s.
    pub stall_after: Duration,
}

impl Default for PublisherConfig {
    fn default() -> Self {
        Self {
            max_buffered: 100_000,
            max_buffered_bytes: 64 << 20,
            max_in_flight: 1_000,
            retry_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            stall_after: Duration::from_secs(5),
        }
    }
}

stats::counters! {
    /// What a [`Publisher`] did since it started.
    PublisherStats;
    /// Records the log acknowledged.
    published,
    /// Delivery attempts that failed and were retried.
    retried,
    /// Records refused because the buffer was full or the publisher stopped.
    refused,
    /// Records the log refused for good (too large, invalid), set aside and not retried.
    set_aside,
    /// Producers replaced by a new one because the log fenced them or they
    /// failed for good.
    producers_renewed,
}

/// Why [`Publisher::publish`] refused a record. The record was not taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The buffer is full: the log has been unreachable or slow for a while.
    #[error(
        "event log buffer full ({records} records / {bytes} bytes waiting, limits {max_records} / {max_bytes}): \
         record for topic {topic:?} refused"
    )]
    Full {
        topic: String,
        records: usize,
        bytes: usize,
        max_records: usize,
        max_bytes: usize,
    },
    /// The delivery task has stopped (its runtime shut down).
    #[error("event log publisher stopped: record for topic {topic:?} refused")]
    Stopped { topic: String },
}

enum Msg {
    Record(OutRecord, oneshot::Sender<Result<(), String>>),
    /// Answered once every record published before it is delivered.
    Flush(oneshot::Sender<()>),
}

/// Called with a record the log refused for good and the reason.
pub type SetAside = Arc<dyn Fn(&OutRecord, &str) + Send + Sync>;

/// Whether a published record is in the log: resolves `Ok` once the log
/// acknowledged it, `Err(why)` when it was set aside or the publisher
/// stopped first. Dropping it changes nothing about the delivery.
#[derive(Debug)]
pub struct Delivery(oneshot::Receiver<Result<(), String>>);

impl std::future::Future for Delivery {
    type Output = Result<(), String>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        std::pin::Pin::new(&mut self.0)
            .poll(cx)
            .map(|r| r.unwrap_or_else(|_| Err("the publisher stopped before the record was delivered".into())))
    }
}

struct Shared {
    cfg: PublisherConfig,
    set_aside: SetAside,
    counters: Counters,
    buffered: AtomicUsize,
    buffered_bytes: AtomicUsize,
    /// The last delivery error, until a delivery succeeds.
    failing: Mutex<Option<String>>,
    /// Since when the oldest record in flight has been waiting.
    oldest: Mutex<Option<Instant>>,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared").field("cfg", &self.cfg).finish_non_exhaustive()
    }
}

impl Shared {
    fn release(&self, size: usize) {
        self.buffered.fetch_sub(1, Ordering::Relaxed);
        self.buffered_bytes.fetch_sub(size, Ordering::Relaxed);
    }
}

/// The non-blocking front of a [`Producer`]; see the [module docs](self).
/// Clones share the buffer; the delivery task ends when the last clone is
/// dropped and the buffer is empty.
#[derive(Clone)]
pub struct Publisher {
    tx: mpsc::UnboundedSender<Msg>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Publisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Publisher")
            .field("buffered", &self.buffered())
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl Publisher {
    /// Starts the delivery task on the current tokio runtime; records the
    /// log refuses for good are logged and dropped.
    pub fn spawn(producer: Producer, cfg: PublisherConfig) -> Self {
        Self::spawn_with(
            producer,
            cfg,
            Arc::new(|rec: &OutRecord, why: &str| {
                tracing::error!(topic = %rec.topic, key = %rec.key, bytes = rec.size(), "record set aside: {why}");
            }),
        )
    }

    /// [`Publisher::spawn`], handing records the log refuses for good to
    /// `set_aside` with the reason.
    pub fn spawn_with(producer: Producer, cfg: PublisherConfig, set_aside: SetAside) -> Self {
        // Unbounded, because the bound is enforced by `publish` in records
        // and bytes before sending, which a bounded channel cannot do.
        let (tx, rx) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            cfg,
            set_aside,
            counters: Counters::default(),
            buffered: AtomicUsize::new(0),
            buffered_bytes: AtomicUsize::new(0),
            failing: Mutex::new(None),
            oldest: Mutex::new(None),
        });
        tokio::spawn(deliver(producer, rx, shared.clone()));
        Self { tx, shared }
    }

    /// Takes `rec` for delivery, or refuses it at once when the buffer is
    /// full; a refusal is counted and logged. The [`Delivery`] says when the
    /// log has it.
    pub fn publish(&self, rec: OutRecord) -> Result<Delivery, PublishError> {
        let s = &self.shared;
        let size = rec.size();
        let records = s.buffered.fetch_add(1, Ordering::Relaxed);
        let bytes = s.buffered_bytes.fetch_add(size, Ordering::Relaxed);
        if records >= s.cfg.max_buffered || bytes + size > s.cfg.max_buffered_bytes {
            s.release(size);
            return Err(self.refuse(PublishError::Full {
                topic: rec.topic,
                records,
                bytes,
                max_records: s.cfg.max_buffered,
                max_bytes: s.cfg.max_buffered_bytes,
            }));
        }
        let (done, delivery) = oneshot::channel();
        if let Err(mpsc::error::SendError(msg)) = self.tx.send(Msg::Record(rec, done)) {
            s.release(size);
            let topic = match msg {
                Msg::Record(rec, _) => rec.topic,
                Msg::Flush(_) => String::new(),
            };
            return Err(self.refuse(PublishError::Stopped { topic }));
        }
        Ok(Delivery(delivery))
    }

    fn refuse(&self, e: PublishError) -> PublishError {
        let n = self.shared.counters.refused.fetch_add(1, Ordering::Relaxed) + 1;
        // Every refusal is counted; the log names the first of a run and
        // then every 1,000th, so a long outage does not flood it.
        if n == 1 || n.is_multiple_of(1000) {
            tracing::error!(refused_total = n, "{e}");
        }
        e
    }

    /// Waits until every record published before this call is delivered,
    /// at most `timeout`; false when time ran out.
    pub async fn flush(&self, timeout: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Msg::Flush(tx)).is_err() {
            return self.buffered() == 0;
        }
        matches!(tokio::time::timeout(timeout, rx).await, Ok(Ok(())))
    }

    /// What it did so far.
    pub fn stats(&self) -> PublisherStats {
        self.shared.counters.read()
    }

    /// Records accepted and not yet delivered.
    pub fn buffered(&self) -> usize {
        self.shared.buffered.load(Ordering::Relaxed)
    }

    /// Bytes accepted and not yet delivered.
    pub fn buffered_bytes(&self) -> usize {
        self.shared.buffered_bytes.load(Ordering::Relaxed)
    }

    /// Whether records are getting through; see [`Publisher::health`].
    pub fn healthy(&self) -> bool {
        self.health().is_ok()
    }

    /// `Ok` while deliveries succeed and no record waited longer than
    /// `stall_after`; otherwise why not, for a readiness answer.
    pub fn health(&self) -> Result<(), String> {
        let s = &self.shared;
        if let Some(e) = s.failing.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
            return Err(format!(
                "event log deliveries failing ({} records buffered): {e}",
                self.buffered()
            ));
        }
        if let Some(since) = *s.oldest.lock().unwrap_or_else(|e| e.into_inner())
            && since.elapsed() >= s.cfg.stall_after
        {
            return Err(format!(
                "event log stalled: oldest record waiting {:.1} s ({} records buffered)",
                since.elapsed().as_secs_f64(),
                self.buffered()
            ));
        }
        Ok(())
    }
}

struct InFlight {
    rec: OutRecord,
    /// Told when the record is delivered or set aside.
    done: oneshot::Sender<Result<(), String>>,
    /// Position in publish order, for flushes.
    seq: u64,
    since: Instant,
    pending: Pending,
    /// Which producer it was last handed to: 0 for the first, one more for
    /// each replacement.
    producer: u64,
}

enum Step {
    /// The oldest record in flight has its answer.
    Done(Result<crate::Delivered, LogError>),
    Msg(Option<Msg>),
    Retry,
}

/// The delivery task: see the [module docs](self).
async fn deliver(mut producer: Producer, mut rx: mpsc::UnboundedReceiver<Msg>, shared: Arc<Shared>) {
    let cfg = shared.cfg.clone();
    let mut in_flight: VecDeque<InFlight> = VecDeque::new();
    // Records whose delivery failed, in the order they failed, waiting for
    // `retry_at` to be enqueued again all together: one back-off per
    // failed attempt of the log, not one per record.
    let mut waiting: VecDeque<InFlight> = VecDeque::new();
    let mut retry_at: Option<Instant> = None;
    // Why the producer must be replaced before the next retry, if it must,
    // and how many times it was (records of a replaced producer fail with
    // its errors, which say nothing about the new one).
    let mut renew: Option<String> = None;
    let mut generation: u64 = 0;
    // Records in flight on a replaced producer: they fail when it closes
    // and are retried. Until they are, new records wait, so as not to pass
    // them on the new producer.
    let mut stale: usize = 0;
    let mut flushes: Vec<(u64, oneshot::Sender<()>)> = Vec::new();
    let mut accepted: u64 = 0;
    let mut closed = false;
    let mut backoff = cfg.retry_backoff;
    loop {
        note_oldest(&shared, &in_flight, &waiting);
        let pending = || in_flight.iter().chain(&waiting);
        if !flushes.is_empty() {
            let oldest = pending().map(|f| f.seq).min().unwrap_or(u64::MAX);
            let (done, left): (Vec<_>, Vec<_>) = std::mem::take(&mut flushes)
                .into_iter()
                .partition(|(seq, _)| *seq < oldest);
            flushes = left;
            for (_, tx) in done {
                let _ = tx.send(());
            }
        }
        if closed && in_flight.is_empty() && waiting.is_empty() {
            return;
        }
        // Records published after a failed one wait until it is enqueued
        // again, so that they cannot reach the log before it.
        let can_take = !closed && waiting.is_empty() && stale == 0 && in_flight.len() < cfg.max_in_flight.max(1);
        let step = {
            let front = in_flight.front_mut();
            let has_front = front.is_some();
            let retry = retry_at.unwrap_or_else(Instant::now);
            tokio::select! {
                biased;
                r = async { match front { Some(f) => (&mut f.pending).await, None => std::future::pending().await } }, if has_front => Step::Done(r),
                () = tokio::time::sleep_until(retry), if retry_at.is_some() => Step::Retry,
                m = rx.recv(), if can_take => Step::Msg(m),
            }
        };
        match step {
            Step::Done(r) => {
                let Some(f) = in_flight.pop_front() else { continue };
                if f.producer != generation {
                    stale -= 1;
                }
                match r {
                    Ok(_) => {
                        shared.release(f.rec.size());
                        shared.counters.published.fetch_add(1, Ordering::Relaxed);
                        // Before the publisher hears of it: health read right
                        // after the last delivery must not see it waiting.
                        note_oldest(&shared, &in_flight, &waiting);
                        let _ = f.done.send(Ok(()));
                        if backoff != cfg.retry_backoff {
                            tracing::info!("event log deliveries succeed again");
                        }
                        *shared.failing.lock().unwrap_or_else(|e| e.into_inner()) = None;
                        backoff = cfg.retry_backoff;
                    }
                    Err(e) if e.is_permanent() => {
                        // Never deliverable: set aside, and on to the next record.
                        shared.release(f.rec.size());
                        shared.counters.set_aside.fetch_add(1, Ordering::Relaxed);
                        let why = format!("the event log refused it for good: {e}");
                        (shared.set_aside)(&f.rec, &why);
                        note_oldest(&shared, &in_flight, &waiting);
                        let _ = f.done.send(Err(why));
                    }
                    Err(e) => {
                        shared.counters.retried.fetch_add(1, Ordering::Relaxed);
                        if renew.is_none()
                            && f.producer == generation
                            && let Some(why) = producer
                                .fatal_error()
                                .or_else(|| e.needs_new_producer().then(|| e.to_string()))
                        {
                            renew = Some(why);
                        }
                        if retry_at.is_none() {
                            tracing::warn!(topic = %f.rec.topic, buffered = shared.buffered.load(Ordering::Relaxed),
                                "event log delivery failed, retrying in {backoff:?}: {e}");
                            retry_at = Some(Instant::now() + backoff);
                            backoff = (backoff * 2).min(cfg.max_backoff);
                        }
                        *shared.failing.lock().unwrap_or_else(|e| e.into_inner()) = Some(e.to_string());
                        waiting.push_back(f);
                    }
                }
            }
            Step::Retry => {
                retry_at = None;
                if let Some(why) = renew.take()
                    && renew_producer(&mut producer, &why, &shared)
                {
                    generation += 1;
                    stale = in_flight.len();
                }
                for mut f in waiting.drain(..) {
                    f.pending = enqueue(&producer, &f.rec);
                    f.producer = generation;
                    in_flight.push_back(f);
                }
            }
            Step::Msg(None) => closed = true,
            Step::Msg(Some(Msg::Flush(tx))) => flushes.push((accepted, tx)),
            Step::Msg(Some(Msg::Record(rec, done))) => {
                accepted += 1;
                in_flight.push_back(InFlight {
                    pending: enqueue(&producer, &rec),
                    rec,
                    done,
                    seq: accepted,
                    since: Instant::now(),
                    producer: generation,
                });
            }
        }
    }
}

/// Records since when the oldest record not yet delivered has waited.
fn note_oldest(shared: &Shared, in_flight: &VecDeque<InFlight>, waiting: &VecDeque<InFlight>) {
    *shared.oldest.lock().unwrap_or_else(|e| e.into_inner()) = in_flight.iter().chain(waiting).map(|f| f.since).min();
}

/// Replaces `producer` with a new one (a new producer id from the broker)
/// because of `why`; true when it did. Records still in flight on the old
/// one fail when it is closed, and are retried on the new one. Kept on
/// failure: the next failed delivery tries again.
fn renew_producer(producer: &mut Producer, why: &str, shared: &Shared) -> bool {
    match producer.renewed() {
        None => false,
        Some(Ok(new)) => {
            shared.counters.producers_renewed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!("event log producer replaced by a new one: the old one cannot deliver again ({why})");
            let old = std::mem::replace(producer, new);
            // Closing waits for librdkafka: not on the runtime's threads.
            tokio::task::spawn_blocking(move || old.close());
            true
        }
        Some(Err(e)) => {
            tracing::error!("event log producer cannot deliver again ({why}) and replacing it failed: {e}");
            false
        }
    }
}

/// An enqueue that fails at once (librdkafka's queue full, for example)
/// becomes a failed delivery, retried like any other.
fn enqueue(producer: &Producer, rec: &OutRecord) -> Pending {
    producer.enqueue(rec).unwrap_or_else(|e| Pending::Ready(Some(Err(e))))
}
