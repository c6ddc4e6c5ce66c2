//! The worker side of the mesh contract: per-conversation FIFO processing, a
//! window of recent message ids for de-duplication, and a bounded in-flight
//! limit.
//!
//! ```text
//!  submit(envelope) ──lock──> dedup window ─ duplicate? ──> cached reply / ALREADY_EXISTS
//!                              in flight >= capacity? ────> RESOURCE_EXHAUSTED
//!                              lanes[key].push_back(job)
//!                              (no lane task for key? spawn one)
//!
//!  lane task for key: loop { pop front job (or remove the lane and stop);
//!                            run the Processor in its own task until it returns,
//!                            the caller goes away or the deadline passes;
//!                            send `last` or `error` }
//! ```
//!
//! One lane task exists per conversation with queued work, so one
//! conversation's messages are processed one at a time in arrival order and
//! different conversations run concurrently. Arrival order is the order in
//! which [`Worker::submit`] took the lock.
//!
//! # De-duplication
//!
//! A message is its id within its conversation: the same id in two
//! conversations names two messages (as in the bridge's unique key). The
//! window remembers the last [`WorkerConfig::dedup_window`] completed
//! messages, with their reply when it is at most
//! [`WorkerConfig::max_cached_reply_bytes`]. A duplicate id is never processed
//! twice:
//! - of a completed message with a cached reply: the reply is replayed, each
//!   chunk marked `replayed`;
//! - of a completed message whose reply was too large to keep, or of a message
//!   still in flight: `ALREADY_EXISTS` naming the id.
//!
//! A message that failed (processor error, deadline) or was cancelled is
//! forgotten, so the sender may retry it under the same id.
//!
//! # Cancellation
//!
//! When the receiver of a reply stream is dropped (the caller disconnected
//! or cancelled), the processor's future is dropped at once and nothing more
//! is sent; see [`crate::processor`]. A message still queued when its caller
//! leaves is not processed at all.

use std::collections::{HashMap, VecDeque};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use proto::bytes::Bytes;
use proto::mesh::{Envelope, Error as WireError, ReplyChunk};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Code, Status};

use tracing::Instrument as _;

use proto::mesh::conversation_event::Event as EventKind;
use proto::mesh::{EventEnd, EventMessage, Position, Usage};

use crate::conversation::{Log, LogLimits, Logs, Subscription};
use crate::processor::{FinalReply, Histogram, Latencies, ProcessError, Processor, Replies, abandoned};

/// A stream of reply chunks for one message.
///
/// It ends after exactly one chunk with `last` or `error` set, or after an
/// `Err` item: first, when the message was refused before processing started
/// (for example its deadline passed in the queue), or after some chunks when
/// the processor panicked.
pub type ReplyStream = ReceiverStream<Result<ReplyChunk, Status>>;

/// Resolves when a record is in the event log (`Ok`), or will never be
/// (`Err(why)`: set aside, or the log's publisher stopped).
pub type Recorded = Pin<Box<dyn Future<Output = Result<(), String>> + Send>>;

/// A record that is durable at once (a sink that keeps nothing).
pub fn recorded() -> Recorded {
    Box::pin(std::future::ready(Ok(())))
}

/// Where a worker reports what it processed: the seam to the event log
/// (Kafka, or the embedded log of `rumor up`), which the binary plugs in.
///
/// Both calls happen on the lane task, in conversation order, and must not
/// block: an implementation queues the record (bounded) and counts what it
/// cannot queue, it never waits for a broker. The [`Recorded`] they return
/// says when the record is durable; the worker holds a reply's final chunk
/// until the message's and the reply's records are (see
/// [`WorkerConfig::wait_for_records`]), so a message that was answered is
/// never missing from the log after this node crashes.
pub trait RecordSink: Send + Sync + fmt::Debug + 'static {
    /// Processing of `msg` is starting (it was not expired in the queue).
    fn inbound(&self, worker: &str, msg: &Envelope) -> Recorded;
    /// Processing of `msg` ended with `reply`.
    fn reply(&self, worker: &str, msg: &Envelope, reply: &FinalReply) -> Recorded;
    /// `Err(why)` while records cannot be delivered (the log is unreachable
    /// or its buffer is stalled): the node reports not ready, though it keeps
    /// serving. Default: always healthy.
    fn health(&self) -> Result<(), String> {
        Ok(())
    }
    /// Counters and gauges for the node's metrics: `(name, help, value,
    /// is_counter)`, names without the `rumor_events_` prefix. Default none.
    fn metrics(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        Vec::new()
    }
}

/// Worker settings. Every field has a default (see [`WorkerConfig::default`]).
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// Messages queued or being processed at once, over all conversations;
    /// one more gets `RESOURCE_EXHAUSTED` so the router can try the next
    /// owner. Advertise it as the gossip metadata's `capacity`. Default 256.
    pub capacity: usize,
    /// Completed message ids remembered for de-duplication. Default 10,000.
    pub dedup_window: usize,
    /// Largest reply (data bytes plus 32 per chunk) kept for replay to a
    /// duplicate; larger replies are remembered by id only. Default 64 KiB.
    pub max_cached_reply_bytes: usize,
    /// Reply chunks buffered per message before the processor waits for the
    /// caller to read. Default 16.
    pub chunk_buffer: usize,
    /// What the conversations' event logs keep for watchers.
    pub log_limits: LogLimits,
    /// How long a reply's final chunk waits for the message's and the
    /// reply's records to be in the event log, while the log is healthy:
    /// then a message that was answered survives a crash of this node (the
    /// cost is one acknowledgement of the log per reply; see
    /// docs/benchmarks/dataplane.md). A reply whose records take longer is
    /// sent anyway, and later replies do not wait until a record gets
    /// through again; while the log is unreachable no reply waits. Those
    /// replies' records stay buffered and are counted in
    /// `replies_unrecorded`. `None` never waits. Default 1 s.
    pub wait_for_records: Option<Duration>,
    /// Largest reply handed whole to the [`RecordSink`]; a longer one is
    /// reported truncated. Default 960 KiB, which fits in a Kafka record of
    /// Kafka's default size limit with the record's other fields.
    pub max_recorded_reply_bytes: usize,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            capacity: 256,
            dedup_window: 10_000,
            max_cached_reply_bytes: 64 * 1024,
            chunk_buffer: 16,
            max_recorded_reply_bytes: 960 * 1024,
            wait_for_records: Some(Duration::from_secs(1)),
            log_limits: LogLimits::default(),
        }
    }
}

// Relaxed atomics: each counter stands alone, and lane tasks count without taking the state lock.
stats::counters! {
    /// The worker's counters, for metrics. Monotonic since start.
    WorkerStats;
    /// Messages accepted into a conversation queue.
    accepted,
    /// Messages whose processor finished successfully.
    completed,
    /// Messages whose processor failed, panicked or ran past the deadline.
    failed,
    /// Messages cancelled because their caller went away (disconnected or
    /// cancelled) before the reply ended; the processor was stopped.
    cancelled,
    /// Messages whose deadline passed while they were queued (not processed).
    expired,
    /// Duplicates answered from the window with the cached reply.
    duplicates_replayed,
    /// Duplicates answered with `ALREADY_EXISTS`.
    duplicates_refused,
    /// Messages refused because the worker was at capacity.
    over_capacity,
    /// Messages refused because the worker was leaving (routed to the next owner).
    refused_draining,
    /// Conversation lanes that failed (a bug outside the processor); their
    /// queued messages were failed with an error and the lane restarted.
    lane_failures,
    /// Replies whose final chunk waited for their records to be in the event log.
    replies_recorded_first,
    /// Replies sent before their records were in the event log (the log was
    /// unhealthy or slower than `wait_for_records`); a crash of this node
    /// then could lose the records.
    replies_unrecorded,
}

/// A handle to one worker. Cheap to clone; all clones share the queues.
#[derive(Clone)]
pub struct Worker {
    inner: Arc<Inner>,
}

impl fmt::Debug for Worker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Worker")
            .field("name", &self.inner.name)
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

struct Inner {
    name: Arc<str>,
    config: WorkerConfig,
    processor: Arc<dyn Processor>,
    sink: Option<Arc<dyn RecordSink>>,
    /// Set when the node leaves: new messages are refused.
    draining: AtomicBool,
    /// Each conversation's numbered events, for watchers.
    logs: Logs,
    /// Set when a reply's records took longer than `wait_for_records`;
    /// replies do not wait until a record gets through again.
    records_slow: Arc<AtomicBool>,
    /// The conversations whose answered messages have records not yet in
    /// the event log: this worker keeps taking their messages (see
    /// [`Worker::holds_records_of`]).
    unrecorded: Arc<Unrecorded>,
    /// Guards the queues, the in-flight count and the window together, so
    /// that the duplicate check, the capacity check and the enqueue are one
    /// atomic step. Held only for map operations, never across an await.
    state: Mutex<State>,
    counters: Counters,
    /// Time messages waited in their conversation's queue.
    queued: Histogram,
    /// Time the processor took per message.
    processing: Histogram,
}

#[derive(Default)]
struct State {
    /// Queued jobs per conversation key. A key is present exactly while its
    /// lane task runs.
    lanes: HashMap<String, VecDeque<Job>>,
    /// Queued plus processing messages.
    in_flight: usize,
    window: Window,
    /// The cancel switch of each queued or processing message.
    cancels: HashMap<MessageKey, Arc<CancelSwitch>>,
}

struct Job {
    envelope: Envelope,
    /// When the worker accepted it.
    accepted: Instant,
    deadline: Instant,
    tx: mpsc::Sender<Result<ReplyChunk, Status>>,
    cancel: Arc<CancelSwitch>,
    /// The conversation's event log, where the message was numbered.
    log: Arc<Log>,
}

/// Set by an explicit cancel (`Worker::cancel`): the message is dropped
/// whether its caller is still there or not.
#[derive(Debug, Default)]
struct CancelSwitch {
    on: AtomicBool,
    notify: tokio::sync::Notify,
}

impl CancelSwitch {
    fn flip(&self) {
        self.on.store(true, Ordering::Relaxed);
        self.notify.notify_waiters();
    }

    async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            if self.on.load(Ordering::Relaxed) {
                return;
            }
            notified.await;
        }
    }
}

enum Seen {
    InFlight,
    /// Completed; the reply, when it was small enough to keep.
    Done(Option<Arc<[ReplyChunk]>>),
}

/// Where a message came from, as records and events say it: `client` for a
/// gateway's client (the envelope leaves it empty), else the forward node's
/// source.
pub fn source_of(env: &Envelope) -> String {
    if env.source.is_empty() {
        "client".into()
    } else {
        env.source.clone()
    }
}

/// A message's identity: its id within its conversation. The same id in
/// two conversations names two messages, as in the bridge's unique key
/// (conversation key, message id, kind).
type MessageKey = (String, String);

fn message_key(env: &Envelope) -> MessageKey {
    (env.key.clone(), env.id.clone())
}

/// Recent messages. In-flight ones are bounded by the capacity; completed
/// ones by `dedup_window`, oldest evicted first.
#[derive(Default)]
struct Window {
    ids: HashMap<MessageKey, Seen>,
    completed: VecDeque<MessageKey>,
    /// Data bytes of the replies the completed ones keep.
    reply_bytes: usize,
}

fn reply_bytes(reply: Option<&Arc<[ReplyChunk]>>) -> usize {
    reply.map_or(0, |r| r.iter().map(|c| c.data.len()).sum())
}

impl Window {
    fn complete(&mut self, id: &MessageKey, reply: Option<Arc<[ReplyChunk]>>, limit: usize) {
        if let Some(seen) = self.ids.get_mut(id) {
            self.reply_bytes += reply_bytes(reply.as_ref());
            *seen = Seen::Done(reply);
            self.completed.push_back(id.clone());
        }
        while self.completed.len() > limit {
            if let Some(old) = self.completed.pop_front()
                && let Some(Seen::Done(reply)) = self.ids.remove(&old)
            {
                self.reply_bytes -= reply_bytes(reply.as_ref());
            }
        }
    }
}

/// What a worker remembers beyond the messages it holds, for metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Remembered {
    /// Completed messages in the de-duplication window.
    pub messages: usize,
    /// Data bytes of the replies the window keeps to replay.
    pub reply_bytes: usize,
    /// Conversations with an event log.
    pub conversations: usize,
    /// Bytes the event logs hold, each log's fixed overhead included.
    pub log_bytes: u64,
}

impl Worker {
    /// A worker named `name` (its gossip name, stamped on reply chunks)
    /// running `processor`.
    pub fn new(name: impl Into<String>, config: WorkerConfig, processor: Arc<dyn Processor>) -> Self {
        let name: String = name.into();
        Self {
            inner: Arc::new(Inner {
                logs: Logs::new(&name, config.log_limits),
                name: name.into(),
                config,
                processor,
                sink: None,
                draining: AtomicBool::new(false),
                records_slow: Arc::default(),
                unrecorded: Arc::default(),
                state: Mutex::new(State::default()),
                counters: Counters::default(),
                queued: stats::prom::seconds(),
                processing: stats::prom::seconds(),
            }),
        }
    }

    /// The same worker reporting every message it processes, and its final
    /// reply, to `sink`. Call before the first [`Worker::submit`].
    pub fn with_sink(self, sink: Arc<dyn RecordSink>) -> Self {
        let inner =
            Arc::try_unwrap(self.inner).unwrap_or_else(|_| panic!("Worker::with_sink after the worker was cloned"));
        Self {
            inner: Arc::new(Inner {
                sink: Some(sink),
                ..inner
            }),
        }
    }

    /// The record sink, if the worker has one.
    pub fn sink(&self) -> Option<&Arc<dyn RecordSink>> {
        self.inner.sink.as_ref()
    }

    /// The processor that answers its messages.
    pub fn processor(&self) -> &Arc<dyn Processor> {
        &self.inner.processor
    }

    /// The worker's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The configured capacity.
    pub fn capacity(&self) -> usize {
        self.inner.config.capacity
    }

    /// Stops message `id` of conversation `key` at once, queued or being
    /// processed, whether its caller is still there or not; its reply ends
    /// with `CANCELLED`. False when the worker does not hold it.
    pub fn cancel(&self, key: &str, id: &str) -> bool {
        let st = self.inner.lock();
        match st.cancels.get(&(key.to_owned(), id.to_owned())) {
            Some(switch) => {
                switch.flip();
                true
            }
            None => false,
        }
    }

    /// Subscribes to conversation `key`'s events after `after`; see
    /// [`crate::conversation`].
    pub fn watch(&self, key: &str, after: Option<&Position>) -> Subscription {
        self.inner.logs.get(key).subscribe(after)
    }

    /// Refuses every new message from now on (`UNAVAILABLE`, so a router
    /// tries the next owner) while the ones it holds finish.
    pub fn drain(&self) {
        self.inner.draining.store(true, Ordering::Relaxed);
    }

    /// True while a reply of conversation `key` answered here has records
    /// (the message's or the reply's) that are not yet in the event log.
    /// The router then keeps the conversation's messages here whatever the
    /// ring says: the records of one conversation reach the log in the order
    /// one worker sent them, so a later message answered elsewhere while
    /// these wait would be stored before them.
    pub fn holds_records_of(&self, key: &str) -> bool {
        self.inner.unrecorded.holds(key)
    }

    /// Conversations with answered messages whose records are not yet in
    /// the event log (see [`Worker::holds_records_of`]).
    pub fn conversations_unrecorded(&self) -> usize {
        self.inner.unrecorded.len()
    }

    /// Messages queued or being processed now.
    pub fn in_flight(&self) -> usize {
        self.inner.lock().in_flight
    }

    /// What the worker remembers now: its de-duplication window and its
    /// conversations' event logs, both bounded by its configuration.
    pub fn remembered(&self) -> Remembered {
        let (messages, reply_bytes) = {
            let st = self.inner.lock();
            (st.window.completed.len(), st.window.reply_bytes)
        };
        Remembered {
            messages,
            reply_bytes,
            conversations: self.inner.logs.len(),
            log_bytes: self.inner.logs.bytes(),
        }
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> WorkerStats {
        self.inner.counters.read()
    }

    /// The worker's latency histograms, for `/metrics` (`rumor_worker_{name}`).
    pub fn latencies(&self) -> Latencies {
        vec![
            (
                "queued_seconds",
                "Time messages waited behind earlier messages of their conversation.",
                self.inner.queued.clone(),
            ),
            (
                "processing_seconds",
                "Time the processor took per message it ran to its own end (answered or failed), from its start to its return; cancelled and expired runs are not counted.",
                self.inner.processing.clone(),
            ),
        ]
    }

    /// Queues `envelope` behind the earlier messages of its conversation and
    /// returns its reply stream; processing must start before `deadline`.
    ///
    /// Refusals change no state: `RESOURCE_EXHAUSTED` at capacity,
    /// `ALREADY_EXISTS` for a duplicate that cannot be replayed. A duplicate
    /// of a completed message with a cached reply gets that reply, replayed.
    pub fn submit(&self, envelope: Envelope, deadline: Instant) -> Result<ReplyStream, Status> {
        let inner = &self.inner;
        let mut st = inner.lock();
        if inner.draining.load(Ordering::Relaxed) {
            inner.counters.refused_draining.fetch_add(1, Ordering::Relaxed);
            return Err(Status::unavailable(format!(
                "worker {} is leaving and takes no new messages; try the next owner",
                inner.name
            )));
        }
        match st.window.ids.get(&message_key(&envelope)) {
            Some(Seen::Done(Some(reply))) => {
                inner.counters.duplicates_replayed.fetch_add(1, Ordering::Relaxed);
                return Ok(replay(reply));
            }
            Some(Seen::Done(None)) => {
                inner.counters.duplicates_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::already_exists(format!(
                    "message {} was already processed by {}; its reply is too large to replay",
                    envelope.id, inner.name
                )));
            }
            Some(Seen::InFlight) => {
                inner.counters.duplicates_refused.fetch_add(1, Ordering::Relaxed);
                return Err(Status::already_exists(format!(
                    "message {} is already being processed by {}",
                    envelope.id, inner.name
                )));
            }
            None => {}
        }
        if st.in_flight >= inner.config.capacity {
            inner.counters.over_capacity.fetch_add(1, Ordering::Relaxed);
            return Err(Status::resource_exhausted(format!(
                "worker {} is at capacity ({} messages in flight)",
                inner.name, st.in_flight
            )));
        }
        let (tx, rx) = mpsc::channel(inner.config.chunk_buffer.max(1));
        st.in_flight += 1;
        st.window.ids.insert(message_key(&envelope), Seen::InFlight);
        let cancel = Arc::new(CancelSwitch::default());
        st.cancels.insert(message_key(&envelope), cancel.clone());
        inner.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let key = envelope.key.clone();
        // The message takes its place in the conversation's events now, in
        // arrival order, under the same lock as the queue.
        let log = inner.logs.get(&key);
        log.append(EventKind::Message(EventMessage {
            id: envelope.id.clone(),
            // A copy of its own: the envelope's payload is a slice of the
            // buffer it was decoded from, which the log would keep alive.
            payload: Bytes::copy_from_slice(&envelope.payload),
            source: source_of(&envelope),
            origin: envelope.origin.clone(),
            format: envelope.format.clone(),
        }));
        let job = Job {
            envelope,
            accepted: Instant::now(),
            deadline,
            tx,
            cancel,
            log,
        };
        match st.lanes.get_mut(&key) {
            Some(queue) => queue.push_back(job),
            None => {
                st.lanes.insert(key.clone(), VecDeque::from([job]));
                // A root: the lane outlives the message that started it, and
                // a parent would be held open (and exported late) with it.
                let span = tracing::info_span!(parent: None, "lane", worker = %self.inner.name, key = %key);
                tokio::spawn(run_lane(self.inner.clone(), key).instrument(span));
            }
        }
        Ok(ReceiverStream::new(rx))
    }
}

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the maps half-updated
        // in a way that matters more than stopping the worker would.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Ends a job: frees its capacity and records (or forgets) its id.
    fn finish(&self, id: &MessageKey, reply: Option<Option<Arc<[ReplyChunk]>>>) {
        let mut st = self.lock();
        st.in_flight -= 1;
        st.cancels.remove(id);
        match reply {
            Some(reply) => st.window.complete(id, reply, self.config.dedup_window),
            None => {
                st.window.ids.remove(id);
            }
        }
    }
}

fn replay(reply: &[ReplyChunk]) -> ReplyStream {
    let (tx, rx) = mpsc::channel(reply.len().max(1));
    for chunk in reply {
        let mut chunk = chunk.clone();
        chunk.replayed = true;
        // Cannot fail: the channel has room for every chunk and `rx` is alive.
        let _ = tx.try_send(Ok(chunk));
    }
    ReceiverStream::new(rx)
}

/// Processes one conversation's queue in order until it is empty.
async fn run_lane(inner: Arc<Inner>, key: String) {
    let mut guard = LaneGuard {
        inner: inner.clone(),
        key: key.clone(),
        current: None,
    };
    loop {
        let job = {
            let mut st = inner.lock();
            match st.lanes.get_mut(&key).and_then(VecDeque::pop_front) {
                Some(job) => job,
                None => {
                    st.lanes.remove(&key);
                    guard.key.clear();
                    return;
                }
            }
        };
        guard.current = Some((message_key(&job.envelope), job.tx.clone()));
        run_job(&inner, job).await;
        guard.current = None;
    }
}

/// Cleans up after a lane task that panicked (a bug outside the processor,
/// whose panics are caught in its own task): the message it was on and the
/// ones queued behind it are failed with an explicit error and their
/// capacity freed, and the lane is removed, so the conversation's next
/// message starts a fresh lane instead of waiting forever.
struct LaneGuard {
    inner: Arc<Inner>,
    /// Empty once the lane ended normally.
    key: String,
    /// The message being processed, and its caller.
    current: Option<(MessageKey, mpsc::Sender<Result<ReplyChunk, Status>>)>,
}

impl Drop for LaneGuard {
    fn drop(&mut self) {
        if !std::thread::panicking() || self.key.is_empty() {
            return;
        }
        self.inner.counters.lane_failures.fetch_add(1, Ordering::Relaxed);
        tracing::error!(worker = %self.inner.name, key = %self.key, "a conversation's lane failed; its queued messages are failed");
        let fail = |tx: &mpsc::Sender<Result<ReplyChunk, Status>>, id: &str| {
            let _ = tx.try_send(Err(Status::internal(format!(
                "message {id}: the worker's lane for its conversation failed; it was not answered"
            ))));
        };
        if let Some((current, tx)) = self.current.take() {
            self.inner.finish(&current, None);
            self.inner.counters.failed.fetch_add(1, Ordering::Relaxed);
            fail(&tx, &current.1);
        }
        let queued = self.inner.lock().lanes.remove(&self.key).unwrap_or_default();
        for job in queued {
            self.inner.finish(&message_key(&job.envelope), None);
            self.inner.counters.failed.fetch_add(1, Ordering::Relaxed);
            fail(&job.tx, &job.envelope.id);
        }
    }
}

/// How one processor run ended.
enum Outcome {
    /// `process` returned.
    Returned(Result<(), ProcessError>),
    /// Cancelled (why): its caller went away and nobody watches, or explicitly.
    Cancelled(&'static str),
    /// The deadline passed first.
    Expired,
}

/// Ends a reply in the conversation's events (watchers learn how it ended).
fn end_event(inner: &Inner, log: &Log, id: &str, error: Option<WireError>) -> Position {
    end_event_with(inner, log, id, error, None)
}

fn end_event_with(inner: &Inner, log: &Log, id: &str, error: Option<WireError>, usage: Option<Usage>) -> Position {
    log.append(EventKind::End(EventEnd {
        id: id.to_owned(),
        worker: inner.name.to_string(),
        error,
        usage,
    }))
}

async fn run_job(inner: &Arc<Inner>, job: Job) {
    let Job {
        mut envelope,
        accepted,
        deadline,
        tx,
        cancel,
        log,
    } = job;
    let id = envelope.id.clone();
    let mkey = message_key(&envelope);
    let queued = accepted.elapsed();
    inner.queued.observe(queued.as_secs_f64());
    // The message's span at this worker, in the trace of the router that
    // handed it over; the processor's spans, the records and so the
    // bridge's write are its children.
    let span = tracing::info_span!(
        "process",
        id = %id,
        worker = %inner.name,
        queued_ms = queued.as_millis() as u64,
        outcome = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
    );
    envelope.traceparent = stats::trace::adopt(&span, &envelope.traceparent);
    // The span ends when the job does, after the records and the last chunk.
    let _end = stats::trace::EndAtDrop(span.clone());
    let ended = |outcome: &str, failed: bool| {
        span.record("outcome", outcome);
        if failed {
            span.record("otel.status_code", "error");
        }
    };
    if Instant::now() >= deadline {
        ended("expired while queued", true);
        inner.counters.expired.fetch_add(1, Ordering::Relaxed);
        inner.finish(&mkey, None);
        let why = format!("message {id}: deadline passed while queued at {}", inner.name);
        end_event(inner, &log, &id, Some(wire_error(Code::DeadlineExceeded, &why)));
        let _ = tx.send(Err(Status::deadline_exceeded(why))).await;
        return;
    }
    let grace = Duration::from_millis(u64::from(envelope.resume_grace_ms));
    if cancel.on.load(Ordering::Relaxed) || (tx.is_closed() && log.watchers() == 0 && grace.is_zero()) {
        // Cancelled, or its caller left while it was queued, may not come
        // back and nobody watches the conversation: nothing to do.
        ended("cancelled while queued", false);
        inner.counters.cancelled.fetch_add(1, Ordering::Relaxed);
        inner.finish(&mkey, None);
        end_event(
            inner,
            &log,
            &id,
            Some(wire_error(Code::Cancelled, "cancelled before it was processed")),
        );
        let _ = tx.try_send(Err(Status::cancelled(format!("message {id} was cancelled"))));
        return;
    }
    let record = inner.sink.as_ref().map(|_| inner.config.max_recorded_reply_bytes);
    let mut out = Replies::new(
        id.clone(),
        inner.name.clone(),
        tx,
        inner.config.max_cached_reply_bytes,
        record,
        log.clone(),
        grace,
    );
    let inbound_recorded = inner.sink.as_ref().map(|sink| sink.inbound(&inner.name, &envelope));
    // Kept for the sink's reply record; the processor task gets its own copy
    // (an `Envelope` clone shares the payload's bytes).
    let recorded_env = inner.sink.as_ref().map(|_| envelope.clone());
    // The processor runs in its own task so that a panic in it fails this one
    // message instead of killing the lane and stranding the conversation.
    // `panic_tx` outlives the task to say so to the caller; `abandoned`
    // completes when nobody reads the reply any more (its caller left and
    // nobody watches the conversation), so the processor is dropped then.
    let panic_tx = out.tx.clone();
    let caller = out.tx.clone();
    let watched = log.clone();
    let processor = inner.processor.clone();
    let started = Instant::now();
    let task = tokio::spawn(
        async move {
            let outcome = tokio::select! {
                r = processor.process(&envelope, &mut out) => Outcome::Returned(r),
                () = abandoned(&caller, &watched, grace) => Outcome::Cancelled("cancelled: the caller went away"),
                () = cancel.wait() => Outcome::Cancelled("cancelled"),
                () = tokio::time::sleep_until(deadline) => Outcome::Expired,
            };
            (outcome, out)
        }
        .instrument(span.clone()),
    );
    let (outcome, mut out) = match task.await {
        Ok(done) => done,
        Err(_panic) => {
            ended("the processor panicked", true);
            inner.counters.failed.fetch_add(1, Ordering::Relaxed);
            let why = format!("message {id}: the processor at {} panicked", inner.name);
            end_event(inner, &log, &id, Some(wire_error(Code::Internal, &why)));
            let _ = panic_tx.send(Err(Status::internal(why))).await;
            inner.finish(&mkey, None);
            if let (Some(sink), Some(env)) = (&inner.sink, &recorded_env) {
                let reply = FinalReply {
                    error: Some((Code::Internal as u32, "the processor panicked".into())),
                    ..FinalReply::default()
                };
                drop(sink.reply(&inner.name, env, &reply));
            }
            return;
        }
    };
    drop(panic_tx);
    // A processor that stopped because nobody reads any more was cancelled,
    // not failed.
    let outcome = match outcome {
        Outcome::Returned(Err(e)) if e.code == Code::Cancelled && out.is_cancelled() => {
            Outcome::Cancelled("cancelled: the caller went away")
        }
        o => o,
    };
    let result = match outcome {
        Outcome::Returned(r) => {
            // Only a processor that ran to its own end is timed: cancelled
            // and expired runs say nothing about the backend.
            inner.processing.observe(started.elapsed().as_secs_f64());
            r
        }
        Outcome::Expired => Err(ProcessError::new(
            Code::DeadlineExceeded,
            format!("message {id}: deadline passed during processing at {}", inner.name),
        )),
        Outcome::Cancelled(why) => {
            ended(why, false);
            // Forgotten, so a retry under the same id is processed afresh.
            inner.counters.cancelled.fetch_add(1, Ordering::Relaxed);
            inner.finish(&mkey, None);
            let error = wire_error(Code::Cancelled, why);
            let position = end_event(inner, &log, &id, Some(error.clone()));
            if let (Some(sink), Some(env), Some(mut reply)) = (&inner.sink, &recorded_env, out.recorded.take()) {
                reply.error = Some((Code::Cancelled as u32, why.into()));
                reply.usage = out.usage.clone();
                drop(sink.reply(&inner.name, env, &reply));
            }
            // An explicit cancel: a caller still there hears how it ended.
            let mut terminal = out.terminal(Some(error));
            terminal.position = Some(position);
            let _ = out.tx.try_send(Ok(terminal));
            return;
        }
    };
    // The window is updated before the final chunk goes out, so a caller
    // that has seen the end of the reply and retries always finds it there.
    let mut terminal = match result {
        Ok(()) => {
            ended("answered", false);
            let last = out.terminal(None);
            out.keep(&last);
            inner.counters.completed.fetch_add(1, Ordering::Relaxed);
            inner.finish(&mkey, Some(out.kept.take().map(Arc::from)));
            last
        }
        Err(e) => {
            ended(&format!("failed: {:?}: {}", e.code, e.message), true);
            inner.counters.failed.fetch_add(1, Ordering::Relaxed);
            inner.finish(&mkey, None);
            out.terminal(Some(WireError {
                code: e.code as u32,
                message: e.message,
            }))
        }
    };
    if let (Some(sink), Some(env), Some(mut reply)) = (&inner.sink, &recorded_env, out.recorded.take()) {
        reply.error = terminal.error.as_ref().map(|e| (e.code, e.message.clone()));
        reply.usage = terminal.usage.clone();
        let reply_recorded = sink.reply(&inner.name, env, &reply);
        terminal.records_pending = wait_for_records(
            inner,
            sink.as_ref(),
            &env.key,
            inbound_recorded,
            reply_recorded,
            deadline,
        )
        .await;
    }
    terminal.position = Some(end_event_with(
        inner,
        &log,
        &id,
        terminal.error.clone(),
        terminal.usage.clone(),
    ));
    let _ = out.tx.send(Ok(terminal)).await;
}

fn wire_error(code: Code, message: &str) -> WireError {
    WireError {
        code: code as u32,
        message: message.to_owned(),
    }
}

/// Holds the final chunk until the message's and the reply's records are
/// in the event log, while the log is healthy and for at most
/// [`WorkerConfig::wait_for_records`] (and never past the deadline). True
/// when the reply goes out with its records still on their way: conversation
/// `key` is then held here until they are in the log (or given up on).
async fn wait_for_records(
    inner: &Inner,
    sink: &dyn RecordSink,
    key: &str,
    inbound: Option<Recorded>,
    reply: Recorded,
    deadline: Instant,
) -> bool {
    let c = &inner.counters;
    let Some(limit) = inner.config.wait_for_records else {
        // Configured never to wait, and so never to hold a conversation.
        return false;
    };
    let slow = inner.records_slow.clone();
    let mut both: Recorded = Box::pin(async move {
        let inbound = match inbound {
            Some(r) => r.await,
            None => Ok(()),
        };
        inbound.and(reply.await)
    });
    // While the log is down or slow, answering now beats answering late.
    if sink.health().is_ok() && !slow.load(Ordering::Relaxed) {
        let until = deadline.min(Instant::now() + limit);
        match tokio::time::timeout_at(until, &mut both).await {
            Ok(Ok(())) => {
                c.replies_recorded_first.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            // Set aside for good: nothing of it will reach the log later.
            Ok(Err(_)) => {
                c.replies_unrecorded.fetch_add(1, Ordering::Relaxed);
                return false;
            }
            Err(_) => slow.store(true, Ordering::Relaxed),
        }
    }
    c.replies_unrecorded.fetch_add(1, Ordering::Relaxed);
    // The records are still on their way: the conversation stays here until
    // they arrive, and the first that gets through ends a slow spell.
    let held = inner.unrecorded.hold(key);
    tokio::spawn(async move {
        if both.await.is_ok() {
            slow.store(false, Ordering::Relaxed);
        }
        drop(held);
    });
    true
}

/// Conversations with records on their way to the event log, counted per
/// conversation (several replies may wait at once). Asked about every
/// message the worker's node routes, so the usual answer (nothing held, the
/// log is up) is read from a flag without taking the lock.
#[derive(Debug, Default)]
struct Unrecorded {
    map: Mutex<HashMap<String, usize>>,
    /// `!map.is_empty()`, updated under the lock.
    any: AtomicBool,
}

impl Unrecorded {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, usize>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn holds(&self, key: &str) -> bool {
        self.any.load(Ordering::Acquire) && self.lock().contains_key(key)
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    /// Holds `key` until the returned guard is dropped.
    fn hold(self: &Arc<Self>, key: &str) -> Held {
        let mut map = self.lock();
        *map.entry(key.to_owned()).or_default() += 1;
        self.any.store(true, Ordering::Release);
        Held(self.clone(), key.to_owned())
    }
}

/// One reply's records on their way; dropping it lets the conversation go.
struct Held(Arc<Unrecorded>, String);

impl Drop for Held {
    fn drop(&mut self) {
        let mut map = self.0.lock();
        if let Some(n) = map.get_mut(&self.1) {
            *n -= 1;
            if *n == 0 {
                map.remove(&self.1);
                self.0.any.store(!map.is_empty(), Ordering::Release);
            }
        }
    }
}
