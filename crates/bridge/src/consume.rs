//! The consume loop: messages topic to database, in batches, with the
//! consumer's offsets stored in the same transaction as the rows.
//!
//! ```text
//!  Assigned(ps) ──> read stored next offsets ──> seek each partition there
//!                   (no stored offset: the log's low watermark)
//!  Record(r)    ──> r.offset <  position: already stored, skip
//!                   r.offset >  position: seek back to position (accepted on the
//!                                         second time: the log lost those records)
//!                   r.offset == position: decode ─ ok ──> row        ┐ into the batch,
//!                                                └ error ─> dead letter┘ position += 1
//!  batch full (records, bytes), or max_wait after its first record and no record ready:
//!      Store::write: CAS stored offsets, insert rows and dead letters, commit
//!        ├─ committed ──> [crash hook] ──> commit offsets to the log (lag reporting only)
//!        ├─ fenced    ──> another consumer advanced a partition: drop the batch,
//!        │                re-read stored offsets, seek there
//!        └─ db error  ──> retry with backoff; after `attempts`, row by row
//!                         (a row still refused becomes a dead letter)
//!  stall watch: stalled ──> write the batch, forget every partition, rejoin
//!                           the group as a new member (crate::stall)
//!               stalled again within 3 × stall_timeout of each of the
//!               last 2 rejoins ──> read every partition alone, without the
//!                                  group, for 10 × stall_timeout; then rejoin
//! ```
//!
//! A record that was already waiting when a write ended has waited since the
//! write began: its batch's `max_wait` counts from then. So a loop that falls
//! behind writes what has queued up as soon as it has read it, instead of
//! waiting `max_wait` on top of every write.
//!
//! The database, not the log's group coordinator, decides what is stored:
//! two bridges reading one partition both try, one commits, the other is
//! fenced and re-seeks, so there are no duplicates and no gaps. That is what
//! makes reading alone safe: a group whose coordinator hands out nothing
//! however often its members rejoin (seen once, with tansu on a machine
//! overloaded for minutes) no longer stops the bridge; every bridge that
//! reads alone reads every partition, and the fencing sorts them out.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use events::{Consumer, ConsumerEvent, Record, SeekTo, TopicPartition, codec};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use crate::config::{BatchConfig, BridgeConfig, CommitHook, CommitInfo, RetryConfig};
use crate::metrics::count;
use crate::store::{Batch, DeadLetter, MessageRow, PartitionBatch, Usage, Written};
use crate::{BridgeError, Shared};

/// Where a partition stands.
#[derive(Debug)]
struct Part {
    /// The stored next offset as last read or written; `None`: no row yet.
    stored: Option<i64>,
    /// The offset the next record must have.
    position: i64,
    /// The position a seek went back to because of a jump in offsets; a
    /// second jump from there is accepted.
    reseeked_at: Option<i64>,
}

/// The consume loop's settings and state; owned by its task.
pub(crate) struct Loop {
    pub(crate) shared: Arc<Shared>,
    pub(crate) consumer: Consumer,
    pub(crate) topic: String,
    pub(crate) batch_cfg: BatchConfig,
    pub(crate) retry: RetryConfig,
    pub(crate) after_commit: Option<CommitHook>,
    /// Partitions the stall watch found stalled.
    stalled: mpsc::Receiver<crate::stall::Stalled>,
    /// The stall watch's timeout (`None`: no watch).
    stall_timeout: Option<Duration>,
    /// Rejoins in a row each followed by a stall within [`STREAK_WINDOW`]
    /// stall timeouts, and when the last one was.
    rejoin_streak: u32,
    last_rejoin: Option<Instant>,
    /// While reading alone: when to go back to the group.
    alone_until: Option<Instant>,
    pub(crate) shutdown: watch::Receiver<bool>,
    parts: BTreeMap<TopicPartition, Part>,
    batch: Batch,
    /// Offsets of the first record of each partition in the batch.
    firsts: BTreeMap<TopicPartition, i64>,
    batch_bytes: usize,
    batch_started: Option<Instant>,
    /// The spans of the traced records in the batch, by partition, each in
    /// its message's trace: from when the record was read until its batch
    /// was committed (or the partition went to another consumer).
    spans: BTreeMap<TopicPartition, Vec<tracing::Span>>,
    /// An event found ready right after a write, handled next.
    peeked: Option<Result<ConsumerEvent, events::LogError>>,
    /// When the write before `peeked` began (`peeked` is a record).
    ready_since: Option<Instant>,
    batches: u64,
}

impl std::fmt::Debug for Loop {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loop")
            .field("topic", &self.topic)
            .finish_non_exhaustive()
    }
}

/// Rejoins without result before a bridge reads alone.
const REJOINS_BEFORE_ALONE: u32 = 2;
/// A stall within this many stall timeouts of a rejoin means the rejoin
/// did not help.
const STREAK_WINDOW: u32 = 3;
/// How long a bridge reads alone, in stall timeouts, before it tries the
/// group again.
const ALONE_FOR: u32 = 10;

/// How a write attempt loop ended without a result.
enum Aborted {
    ShuttingDown,
}

impl Loop {
    pub(crate) fn new(
        shared: Arc<Shared>,
        consumer: Consumer,
        cfg: &BridgeConfig,
        stalled: mpsc::Receiver<crate::stall::Stalled>,
        shutdown: watch::Receiver<bool>,
    ) -> Self {
        let group = shared.group.clone();
        Self {
            shared,
            consumer,
            topic: cfg.topics.messages.clone(),
            batch_cfg: cfg.batch.clone(),
            retry: cfg.retry.clone(),
            after_commit: cfg.after_commit.clone(),
            stalled,
            stall_timeout: cfg.stall_timeout,
            rejoin_streak: 0,
            last_rejoin: None,
            alone_until: None,
            shutdown,
            parts: BTreeMap::new(),
            batch: Batch {
                group,
                partitions: BTreeMap::new(),
            },
            firsts: BTreeMap::new(),
            batch_bytes: 0,
            batch_started: None,
            spans: BTreeMap::new(),
            peeked: None,
            ready_since: None,
            batches: 0,
        }
    }

    /// Runs until shutdown (writing the batch in progress first) or until
    /// the crash hook fires.
    pub(crate) async fn run(mut self) -> Result<(), BridgeError> {
        loop {
            if let Some(ev) = self.peeked.take() {
                self.on_event(ev).await?;
                continue;
            }
            let deadline = self.batch_started.map(|t| t + self.batch_cfg.max_wait);
            let mut shutdown = self.shutdown.clone();
            tokio::select! {
                biased;
                // The guard `wait_for` returns is not `Send`: drop it at once.
                _ = async { drop(shutdown.wait_for(|s| *s).await) } => {
                    if !self.batch.is_empty() {
                        // One round of attempts: what is not stored now is
                        // read again at the next start.
                        let _ = self.flush(true).await;
                    }
                    return Ok(());
                }
                // Before the deadline: a record that is ready joins the batch
                // even when the deadline has passed.
                Some(stalled) = self.stalled.recv() => self.on_stall(stalled).await?,
                _ = tokio::time::sleep_until(self.alone_until.unwrap_or_else(Instant::now)), if self.alone_until.is_some() => {
                    tracing::info!(group = %self.shared.group, "bridge: done reading alone; joining the consumer group again");
                    self.rejoin().await?;
                }
                ev = self.consumer.recv() => self.on_event(ev).await?,
                _ = tokio::time::sleep_until(deadline.unwrap_or_else(Instant::now)), if deadline.is_some() => {
                    self.flush(false).await?;
                }
            }
        }
    }

    async fn on_event(&mut self, ev: Result<ConsumerEvent, events::LogError>) -> Result<(), BridgeError> {
        match ev {
            Ok(ConsumerEvent::Assigned(tps)) => self.assign(tps).await,
            Ok(ConsumerEvent::Revoked(tps)) => self.revoke(&tps),
            Ok(ConsumerEvent::Record(rec)) => {
                self.accept(rec).await;
                if self.batch.len() >= self.batch_cfg.max_records || self.batch_bytes >= self.batch_cfg.max_bytes {
                    self.flush(false).await?;
                }
            }
            Err(e) => {
                tracing::warn!("bridge: reading the messages topic: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
        Ok(())
    }

    /// Answers the stall watch, after writing the batch in progress: not
    /// at all if this bridge stored one of the partitions since the watch
    /// looked (a slow write, not a stranded partition); else by rejoining
    /// the group, or, once rejoins in a row have not helped, by reading
    /// every partition alone.
    async fn on_stall(&mut self, stalled: crate::stall::Stalled) -> Result<(), BridgeError> {
        self.flush(false).await?;
        let moved = stalled.iter().any(|(tp, seen)| {
            self.parts
                .get(tp)
                .is_some_and(|p| p.stored.unwrap_or(-1) > seen.unwrap_or(-1))
        });
        if moved {
            tracing::debug!(
                ?stalled,
                "bridge: this bridge stored a partition the stall watch reported; not rejoining"
            );
            return Ok(());
        }
        let now = Instant::now();
        let window = self.stall_timeout.unwrap_or_default() * STREAK_WINDOW;
        self.rejoin_streak = match self.last_rejoin {
            Some(t) if now.duration_since(t) < window => self.rejoin_streak + 1,
            _ => 0,
        };
        let partitions: Vec<&TopicPartition> = stalled.iter().map(|(tp, _)| tp).collect();
        if self.rejoin_streak >= REJOINS_BEFORE_ALONE && self.alone_until.is_none() {
            tracing::warn!(
                ?partitions,
                group = %self.shared.group,
                rejoins = self.rejoin_streak,
                "bridge: records still wait in these partitions after rejoining the consumer group; \
                 reading every partition alone, without the group"
            );
            self.read_alone().await
        } else {
            tracing::warn!(
                ?partitions,
                group = %self.shared.group,
                "bridge: records have waited in these partitions and no bridge of the group stored any; \
                 leaving the consumer group and joining it again"
            );
            self.rejoin().await
        }
    }

    /// Leaves the consumer group (or stops reading alone) and joins it
    /// again as a new member; the new member's assignment seeks to the
    /// stored offsets as at a start.
    async fn rejoin(&mut self) -> Result<(), BridgeError> {
        self.last_rejoin = Some(Instant::now());
        if let Err(e) = self.consumer.rejoin().await {
            tracing::error!("bridge: rejoining the consumer group: {e}; keeping the current member");
            return Ok(());
        }
        count(&self.shared.counters.group_rejoins, 1);
        self.set_alone(None);
        self.forget_partitions();
        Ok(())
    }

    /// Leaves the consumer group and reads every partition of the topic
    /// without it, for [`ALONE_FOR`] stall timeouts.
    async fn read_alone(&mut self) -> Result<(), BridgeError> {
        self.last_rejoin = Some(Instant::now());
        let all = match self.shared.watermarks.partitions(&self.topic).await {
            Ok(all) if !all.is_empty() => all,
            Ok(_) | Err(_) => {
                tracing::error!("bridge: the topic's partitions could not be read; staying in the group");
                return Ok(());
            }
        };
        if let Err(e) = self.consumer.read_alone(&all).await {
            tracing::error!("bridge: reading alone: {e}; keeping the current member");
            return Ok(());
        }
        count(&self.shared.counters.reads_alone, 1);
        let until = Instant::now() + self.stall_timeout.unwrap_or_default() * ALONE_FOR;
        self.set_alone(Some(until));
        self.forget_partitions();
        Ok(())
    }

    fn set_alone(&mut self, until: Option<Instant>) {
        self.alone_until = until;
        self.shared
            .reading_alone
            .store(until.is_some(), std::sync::atomic::Ordering::Relaxed);
    }

    /// After the consumer changed: what it held is gone without a
    /// `Revoked` event, and an `Assigned` for the new one follows.
    fn forget_partitions(&mut self) {
        // A record read ahead belongs to the old consumer's assignment.
        self.peeked = None;
        self.ready_since = None;
        let all: Vec<TopicPartition> = self.parts.keys().cloned().collect();
        self.revoke(&all);
        // Signals sent while this one waited are about the old consumer.
        while self.stalled.try_recv().is_ok() {}
    }

    /// Reads the stored offsets, retrying while the database fails.
    async fn stored_offsets(&mut self) -> Option<BTreeMap<TopicPartition, i64>> {
        let mut backoff = self.retry.backoff;
        loop {
            match self.shared.store.offsets(&self.shared.group).await {
                Ok(o) => {
                    self.shared.set_db_failing(None);
                    return Some(o);
                }
                Err(e) => {
                    count(&self.shared.counters.db_errors, 1);
                    self.shared.set_db_failing(Some(format!("reading stored offsets: {e}")));
                    tracing::warn!("bridge: reading stored offsets failed, retrying in {backoff:?}: {e}");
                    if self.pause(backoff).await.is_err() {
                        return None;
                    }
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
    }

    /// Sleeps, unless shutdown comes first.
    async fn pause(&mut self, d: Duration) -> Result<(), Aborted> {
        tokio::select! {
            _ = tokio::time::sleep(d) => Ok(()),
            _ = async { drop(self.shutdown.wait_for(|s| *s).await) } => Err(Aborted::ShuttingDown),
        }
    }

    async fn seek(&mut self, tp: &TopicPartition, offset: i64) {
        count(&self.shared.counters.seeks, 1);
        // librdkafka can refuse a seek on a partition whose fetching has not
        // started yet (just after an assignment): try a few times.
        for attempt in 1..=3 {
            match self.consumer.seek(tp, SeekTo::Offset(offset)).await {
                Ok(()) => return,
                Err(e) if attempt == 3 => {
                    // Not fatal: records that do not continue from the
                    // position are skipped or trigger another seek.
                    count(&self.shared.counters.seek_errors, 1);
                    tracing::warn!("bridge: seeking {tp} to {offset}: {e}");
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn assign(&mut self, tps: Vec<TopicPartition>) {
        let tps: Vec<_> = tps.into_iter().filter(|tp| tp.topic == self.topic).collect();
        if tps.is_empty() {
            return;
        }
        tracing::info!(partitions = ?tps, "bridge: partitions assigned");
        let Some(stored) = self.stored_offsets().await else {
            return;
        };
        for tp in tps {
            let (stored, position) = match stored.get(&tp) {
                Some(&s) => (Some(s), s),
                None => {
                    let low = self.consumer.watermarks(&tp).await.map(|(low, _)| low).unwrap_or(0);
                    (None, low)
                }
            };
            self.parts.insert(
                tp.clone(),
                Part {
                    stored,
                    position,
                    reseeked_at: None,
                },
            );
            self.shared.set_position(&tp, Some(position));
            self.seek(&tp, position).await;
        }
    }

    fn revoke(&mut self, tps: &[TopicPartition]) {
        tracing::info!(partitions = ?tps, "bridge: partitions revoked");
        for tp in tps {
            self.parts.remove(tp);
            self.firsts.remove(tp);
            self.shared.set_position(tp, None);
            for span in self.spans.remove(tp).unwrap_or_default() {
                span.record("outcome", "partition revoked; its next owner stores it");
            }
            if let Some(pb) = self.batch.partitions.remove(tp) {
                // The next owner reads them again from the stored offset.
                self.batch_bytes = self
                    .batch_bytes
                    .saturating_sub(pb.rows.iter().map(|r| r.raw.len()).sum::<usize>());
            }
        }
        if self.batch.is_empty() {
            self.reset_batch();
        }
    }

    async fn accept(&mut self, rec: Record) {
        let tp = rec.tp();
        let Some(part) = self.parts.get_mut(&tp) else {
            count(&self.shared.counters.unassigned_records, 1);
            return;
        };
        if rec.offset < part.position {
            count(&self.shared.counters.stale_records, 1);
            return;
        }
        if rec.offset > part.position {
            if part.reseeked_at != Some(part.position) {
                let at = part.position;
                part.reseeked_at = Some(at);
                tracing::info!("bridge: {tp} jumped from offset {at} to {}; seeking back", rec.offset);
                self.seek(&tp, at).await;
                return;
            }
            count(&self.shared.counters.offset_gaps, 1);
            tracing::error!(
                "bridge: {tp}: offsets {} to {} are not in the log any more (deleted before they were stored?)",
                part.position,
                rec.offset - 1
            );
        }
        part.position = rec.offset + 1;
        part.reseeked_at = None;
        let expected = part.stored;
        let pb = self
            .batch
            .partitions
            .entry(tp.clone())
            .or_insert_with(|| PartitionBatch {
                expected,
                ..Default::default()
            });
        self.firsts.entry(tp).or_insert(rec.offset);
        pb.next = rec.offset + 1;
        self.batch_bytes += rec.size();
        if self.batch_started.is_none() {
            self.batch_started = Some(self.ready_since.take().unwrap_or_else(Instant::now));
        }
        count(&self.shared.counters.records, 1);
        match codec::decode_message(&rec) {
            Ok(m) => {
                if !m.traceparent.is_empty() {
                    let span = tracing::info_span!(
                        "store",
                        otel.kind = "consumer",
                        id = %m.id,
                        kind = m.kind().as_str_name(),
                        partition = rec.partition,
                        offset = rec.offset,
                        outcome = tracing::field::Empty,
                    );
                    stats::trace::follow(&span, &m.traceparent);
                    self.spans.entry(rec.tp()).or_default().push(span);
                }
                pb.rows.push(MessageRow {
                    message_id: m.id,
                    kind: m.kind,
                    conversation_key: m.key,
                    payload: m.payload.to_vec(),
                    worker: m.worker,
                    origin: m.origin,
                    source: m.source,
                    error_code: m.error.as_ref().map(|e| e.code as i32),
                    error_message: m.error.map(|e| e.message),
                    chunks: m.chunks as i64,
                    truncated: m.truncated,
                    created_unix_ms: m.created_unix_ms as i64,
                    deadline_unix_ms: m.deadline_unix_ms as i64,
                    topic: rec.topic,
                    partition: rec.partition,
                    offset: rec.offset,
                    usage: m.usage.map(|u| Usage {
                        prompt_tokens: u.prompt_tokens.into(),
                        completion_tokens: u.completion_tokens.into(),
                        cached_tokens: u.cached_tokens.into(),
                        first_token_ms: u.first_token_ms.into(),
                        backend: u.backend,
                        model: u.model,
                    }),
                    raw: rec.value,
                })
            }
            Err(e) => {
                tracing::warn!(
                    "bridge: {}/{} offset {}: dead letter: {e}",
                    rec.topic,
                    rec.partition,
                    rec.offset
                );
                pb.dead.push(DeadLetter {
                    topic: rec.topic,
                    partition: rec.partition,
                    offset: rec.offset,
                    key: rec.key.map(|k| k.to_vec()),
                    error: format!("decoding: {e}"),
                    raw: rec.value.to_vec(),
                })
            }
        }
    }

    fn reset_batch(&mut self) {
        self.spans.clear();
        self.batch.partitions.clear();
        self.firsts.clear();
        self.batch_bytes = 0;
        self.batch_started = None;
    }

    /// Writes the batch; `last`: one round of attempts only (at shutdown).
    async fn flush(&mut self, last: bool) -> Result<(), BridgeError> {
        if self.batch.is_empty() {
            self.reset_batch();
            return Ok(());
        }
        let started = Instant::now();
        let written = match self.write(last).await {
            Ok(w) => w,
            Err(Aborted::ShuttingDown) => return Ok(()),
        };
        let batch = std::mem::replace(
            &mut self.batch,
            Batch {
                group: self.shared.group.clone(),
                partitions: BTreeMap::new(),
            },
        );
        let firsts = std::mem::take(&mut self.firsts);
        let spans = std::mem::take(&mut self.spans);
        let records = batch.len();
        self.reset_batch();
        match written {
            Written::Committed {
                inserted,
                duplicates,
                dead,
            } => {
                for span in spans.values().flatten() {
                    span.record("outcome", "committed");
                }
                let c = &self.shared.counters;
                count(&c.batches, 1);
                count(&c.rows_inserted, inserted);
                count(&c.duplicates, duplicates);
                count(&c.dead_letters, dead);
                self.shared.batch_records.observe(records as f64);
                self.shared.batch_seconds.observe(started.elapsed().as_secs_f64());
                let offsets: Vec<(TopicPartition, i64)> =
                    batch.partitions.iter().map(|(tp, pb)| (tp.clone(), pb.next)).collect();
                for (tp, next) in &offsets {
                    if let Some(part) = self.parts.get_mut(tp) {
                        part.stored = Some(*next);
                    }
                    self.shared.set_position(tp, Some(*next));
                }
                self.batches += 1;
                if let Some(hook) = &self.after_commit {
                    let info = CommitInfo {
                        batch: self.batches,
                        records,
                        offsets: offsets.clone(),
                    };
                    if hook(&info) {
                        return Err(BridgeError::Crashed(info.batch));
                    }
                }
                if let Err(e) = self.consumer.commit(&offsets) {
                    count(&self.shared.counters.log_commit_errors, 1);
                    tracing::debug!("bridge: committing offsets to the log (for lag reporting): {e}");
                }
            }
            Written::Fenced(fenced) => {
                count(&self.shared.counters.fence_conflicts, 1);
                for (tp, spans) in &spans {
                    let outcome = if fenced.contains(tp) {
                        "another consumer stored it first"
                    } else {
                        "rolled back with a partition another consumer had stored; read again"
                    };
                    for span in spans {
                        span.record("outcome", outcome);
                    }
                }
                tracing::info!(
                    partitions = ?fenced,
                    "bridge: another consumer stored these partitions first; re-reading from the stored offsets"
                );
                let Some(stored) = self.stored_offsets().await else {
                    return Ok(());
                };
                for tp in batch.partitions.keys() {
                    let Some(first) = firsts.get(tp).copied() else { continue };
                    let Some(part) = self.parts.get_mut(tp) else { continue };
                    part.stored = stored.get(tp).copied();
                    part.position = part.stored.unwrap_or(first);
                    part.reseeked_at = None;
                    let at = part.position;
                    self.shared.set_position(tp, Some(at));
                    self.seek(tp, at).await;
                }
            }
        }
        if !last {
            // Polled once, without waiting: a record already here queued
            // up during the write (recv is cancel-safe).
            if let Ok(ev) = tokio::time::timeout(Duration::ZERO, self.consumer.recv()).await {
                self.ready_since = matches!(ev, Ok(ConsumerEvent::Record(_))).then_some(started);
                self.peeked = Some(ev);
            }
        }
        Ok(())
    }

    /// Attempts the write; see the module docs for the retry policy.
    async fn write(&mut self, last: bool) -> Result<Written, Aborted> {
        let mut backoff = self.retry.backoff;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let row_by_row = attempt > self.retry.attempts;
            let r = if row_by_row {
                self.shared.store.write_row_by_row(&self.batch).await
            } else {
                self.shared.store.write(&self.batch).await
            };
            match r {
                Ok(w) => {
                    self.shared.set_db_failing(None);
                    return Ok(w);
                }
                Err(e) => {
                    count(&self.shared.counters.db_errors, 1);
                    self.shared
                        .set_db_failing(Some(format!("writing a batch of {} records: {e}", self.batch.len())));
                    tracing::warn!(
                        attempt,
                        row_by_row,
                        "bridge: writing a batch of {} records failed, retrying in {backoff:?}: {e}",
                        self.batch.len()
                    );
                    if last && attempt > self.retry.attempts {
                        return Err(Aborted::ShuttingDown);
                    }
                    if !last && self.pause(backoff).await.is_err() {
                        return Err(Aborted::ShuttingDown);
                    }
                    if last {
                        tokio::time::sleep(backoff).await;
                    }
                    backoff = (backoff * 2).min(self.retry.max_backoff);
                }
            }
        }
    }
}

impl Shared {
    fn set_position(&self, tp: &TopicPartition, next: Option<i64>) {
        let mut p = self.positions.lock().unwrap_or_else(|e| e.into_inner());
        match next {
            Some(n) => p.insert(tp.clone(), n),
            None => p.remove(tp),
        };
    }

    fn set_db_failing(&self, why: Option<String>) {
        *self.db_failing.lock().unwrap_or_else(|e| e.into_inner()) = why;
    }

    /// Why the last database operation of the loop failed, until one succeeds.
    pub(crate) fn db_failing(&self) -> Option<String> {
        self.db_failing.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
