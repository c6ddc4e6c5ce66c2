//! The forward role: messages injected from outside come back into the mesh.
//!
//! ```text
//!  bridge ── POST /v1/forward ──> forward topic ──> Forwarder ── Router::send ──> owner
//! ```
//!
//! At least once: a record's offset is committed only after its reply ended,
//! or after it was set aside for good. A request redelivered after a crash
//! keeps its id, so the owner's de-duplication window answers it without
//! processing it twice while the id is remembered. The worker publishes the
//! reply, so the forwarder only drains it.
//!
//! Every record is checked by the shared rules (`proto::rules`) before it is
//! routed. One that can never be routed (undecodable, a field no rule
//! allows, refused by the mesh as invalid) is set aside with its reason (the
//! node's dead letters) and the records behind it go on. One the mesh cannot
//! take now (no owner, owner busy, deadline passed before an owner took it)
//! is retried with backoff until it is taken: nothing injected is dropped
//! because the mesh was down.
//!
//! A supervisor runs the loop: if it fails or panics, readiness turns off,
//! the record it was on is set aside (so it cannot panic again), and the
//! loop restarts with backoff.
//!
//! A stall watch (the rule is [`events::stall`]) looks at the partitions
//! this forwarder does not hold: one whose records wait while the group's
//! committed offset stands still for `stall_timeout` makes the loop leave
//! the group and join it again as a new member, after the record in
//! progress. The cause seen is the broker's coordinator: tansu 0.6, after
//! an outage during which a member's JoinGroup requests timed out, kept a
//! partition assigned to a member no consumer held, so nothing injected on
//! it was routed until the process restarted. A partition this forwarder
//! holds never counts, however long the mesh makes it wait. The cost of the
//! rule: with several forward nodes in one group, a partition another
//! forwarder holds while the mesh cannot take its record (no owner for its
//! key) looks stalled too, and the rejoin rebalances the group once per
//! timeout; at least once makes that harmless, a record taken over in the
//! middle is routed again and the owner's de-duplication window answers it.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use events::consumer::WatermarkReader;
use events::stall::Stalled;
use events::{ConsumerEvent, EventLog, LogError, Record, TopicPartition, Topics, codec};
use node::dead_letters::{self, DeadLetters};
use node::mesh::{self, Router};
use node::node::{CounterSource, Readiness};
use node::worker::ReplyStream;
use proto::events::ForwardRequest;
use proto::mesh::Envelope;
use proto::rules::{self, FieldError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tonic::Code;
use tracing::Instrument as _;

// Relaxed atomics: each counter stands alone; only the forwarding tasks write them.
stats::counters! {
    /// What a forwarder did since it started.
    ForwardStats;
    /// Injected messages routed and answered.
    routed,
    /// Injected messages whose reply ended in an error (the worker recorded it).
    failed,
    /// Records set aside because they can never be routed (undecodable, a
    /// field the rules refuse, refused by the mesh as invalid).
    set_aside,
    /// Attempts the mesh could not take yet (no owner, busy, deadline), retried.
    retries,
    /// Times the forwarding loop failed or panicked and was restarted.
    restarts,
    /// Times the stall watch had this forwarder leave its consumer group and
    /// join it again (a partition's records waited while nobody committed).
    group_rejoins,
}

/// The forward role's state and counters, for the node's readiness and
/// metrics.
#[derive(Debug, Default)]
pub struct ForwardHealth {
    down: Mutex<Option<String>>,
    counters: Counters,
}

impl ForwardHealth {
    fn set(&self, why: Option<String>) {
        *lock(&self.down) = why;
    }
}

impl Readiness for ForwardHealth {
    fn ready(&self) -> Result<(), String> {
        match &*lock(&self.down) {
            None => Ok(()),
            Some(why) => Err(format!("forward role: {why}")),
        }
    }
}

impl CounterSource for ForwardHealth {
    fn counters(&self) -> (&'static str, Vec<(&'static str, &'static str, u64)>) {
        ("rumor_forward_", self.counters.read().fields())
    }
}

/// Locks a mutex whose data stays whole even if a holder panicked.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The running forward role: consumes the forward topic and routes each request.
#[derive(Debug)]
pub struct Forwarder {
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
    shared: Arc<Shared>,
}

/// What the loop and its supervisor share.
#[derive(Debug)]
struct Shared {
    router: Router,
    log: EventLog,
    topics: Topics,
    group: String,
    /// How long a partition's records may wait with the committed offset
    /// still before the loop rejoins the group; `None`: never.
    stall_timeout: Option<Duration>,
    dead_letters: Arc<DeadLetters>,
    health: Arc<ForwardHealth>,
    /// The record being routed now, for the supervisor to set aside if the
    /// loop panics on it.
    current: Mutex<Option<Record>>,
}

/// First pause before a retry or a restart; doubled up to [`MAX_BACKOFF`].
const BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl Forwarder {
    /// Starts consuming `topics.forward` in consumer group `group` and
    /// routing each request through `router`. Records that can never be
    /// routed go to `dead_letters`; `health` reports the loop's state and
    /// counts. With a `stall_timeout`, a partition of the group that nobody
    /// makes progress on for that long makes it rejoin the group.
    pub fn spawn(
        router: Router,
        log: &EventLog,
        topics: &Topics,
        group: &str,
        stall_timeout: Option<Duration>,
        dead_letters: Arc<DeadLetters>,
        health: Arc<ForwardHealth>,
    ) -> Forwarder {
        let (stop, stopped) = watch::channel(false);
        let span = tracing::info_span!("forward", node = %router.name());
        let shared = Arc::new(Shared {
            router,
            log: log.clone(),
            topics: topics.clone(),
            group: group.to_owned(),
            stall_timeout,
            dead_letters,
            health,
            current: Mutex::new(None),
        });
        let task = tokio::spawn(supervise(shared.clone(), stopped).instrument(span));
        Forwarder { stop, task, shared }
    }

    /// What it did so far.
    pub fn stats(&self) -> ForwardStats {
        self.shared.health.counters.read()
    }

    /// Stops taking new records and lets the one in progress end (a record
    /// still waiting for the mesh is left uncommitted, for the next
    /// forwarder).
    pub async fn stop(self) -> ForwardStats {
        let _ = self.stop.send(true);
        let _ = self.task.await;
        self.shared.health.counters.read()
    }
}

/// Runs the loop until stopped, restarting it after a failure or a panic.
async fn supervise(shared: Arc<Shared>, stop: watch::Receiver<bool>) {
    let mut backoff = BACKOFF;
    loop {
        let consumer = match shared.log.consumer(&shared.group, &[&shared.topics.forward]) {
            Ok(c) => c,
            Err(e) => {
                shared
                    .health
                    .set(Some(format!("no consumer of the forward topic: {e}")));
                if pause(&stop, &mut backoff).await {
                    return;
                }
                continue;
            }
        };
        shared.health.set(None);
        let run = tokio::spawn(run(shared.clone(), consumer, stop.clone()).in_current_span());
        let why = match run.await {
            Ok(Ok(())) => return,
            Ok(Err(e)) => format!("the event log failed: {e}"),
            Err(e) => {
                let why = format!("the forwarding loop panicked: {e}");
                // Whatever it was on would panic again: set it aside.
                let current = lock(&shared.current).take();
                if let Some(rec) = current {
                    set_aside(&shared, &rec, &why);
                    if let Ok(consumer) = shared.log.consumer(&shared.group, &[&shared.topics.forward]) {
                        let _ = consumer.commit(&[(rec.tp(), rec.offset + 1)]);
                    }
                }
                why
            }
        };
        shared.health.counters.restarts.fetch_add(1, Ordering::Relaxed);
        tracing::error!("{why}; restarting in {backoff:?}");
        shared.health.set(Some(why));
        if pause(&stop, &mut backoff).await {
            return;
        }
    }
}

/// Waits `backoff` (then doubles it) unless stopped first; true when stopped.
async fn pause(stop: &watch::Receiver<bool>, backoff: &mut Duration) -> bool {
    let mut stop = stop.clone();
    let stopped = tokio::select! {
        _ = stop.wait_for(|s| *s) => true,
        () = tokio::time::sleep(*backoff) => false,
    };
    *backoff = (*backoff * 2).min(MAX_BACKOFF);
    stopped
}

/// What the forwarding loop takes next.
enum Next {
    Event(ConsumerEvent),
    /// Partitions the stall watch found stalled.
    Stalled(Stalled),
}

/// Partitions this forwarder holds now.
type Held = Arc<Mutex<BTreeSet<TopicPartition>>>;

async fn run(
    shared: Arc<Shared>,
    mut consumer: events::Consumer,
    mut stop: watch::Receiver<bool>,
) -> Result<(), LogError> {
    let held = Held::default();
    let (stalled_tx, mut stalled) = mpsc::channel(1);
    let _watch = shared.stall_timeout.map(|timeout| {
        let watch = watch_stalls(
            consumer.watermark_reader(),
            shared.topics.forward.clone(),
            timeout,
            held.clone(),
            stalled_tx,
        );
        AbortOnDrop(tokio::spawn(watch.in_current_span()))
    });
    loop {
        // The rejoin is awaited outside the select: a stop signal's guard
        // must not be held across it.
        let next = tokio::select! {
            e = consumer.recv() => Next::Event(e?),
            Some(parts) = stalled.recv() => Next::Stalled(parts),
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let event = match next {
            Next::Stalled(parts) => {
                rejoin(&shared, &mut consumer, &held, parts).await;
                continue;
            }
            Next::Event(event) => event,
        };
        let rec = match event {
            // Both logs start an assigned partition at the group's committed
            // offset (or the beginning): where this role left off.
            ConsumerEvent::Assigned(tps) => {
                lock(&held).extend(tps);
                continue;
            }
            ConsumerEvent::Revoked(tps) => {
                lock(&held).retain(|tp| !tps.contains(tp));
                continue;
            }
            ConsumerEvent::Record(rec) => rec,
        };
        *lock(&shared.current) = Some(rec.clone());
        let done = forward(&shared, &rec, &stop).await;
        *lock(&shared.current) = None;
        if !done {
            // Stopped while the mesh could not take it: not committed, so
            // the next forwarder of the partition routes it.
            return Ok(());
        }
        consumer.commit(&[(rec.tp(), rec.offset + 1)])?;
    }
}

/// Leaves the group and joins it again as a new member, unless the group
/// handed this forwarder one of the `stalled` partitions since the watch
/// looked (then it is moving again).
async fn rejoin(shared: &Shared, consumer: &mut events::Consumer, held: &Held, stalled: Stalled) {
    let stalled: Vec<TopicPartition> = stalled.into_iter().map(|(tp, _)| tp).collect();
    if stalled.iter().any(|tp| lock(held).contains(tp)) {
        return;
    }
    tracing::warn!(
        ?stalled,
        "forward: records wait on partitions no forwarder commits; leaving the consumer group and joining it again"
    );
    match consumer.rejoin().await {
        Ok(()) => {
            // The old member's partitions are gone without a Revoked event.
            lock(held).clear();
            shared.health.counters.group_rejoins.fetch_add(1, Ordering::Relaxed);
        }
        Err(e) => tracing::error!("forward: rejoining the consumer group failed, the watch will try again: {e}"),
    }
}

/// Sends the loop the forward topic's partitions this forwarder does not
/// hold whose records waited, with the group's committed offset still, for
/// `timeout` ([`events::stall::watch`]).
async fn watch_stalls(
    reader: WatermarkReader,
    topic: String,
    timeout: Duration,
    held: Held,
    stalled_tx: mpsc::Sender<Stalled>,
) {
    let r = reader.clone();
    let committed = move |parts: Vec<TopicPartition>| {
        let r = r.clone();
        async move { r.committed(&parts).await.ok() }
    };
    // A partition it holds waits for the mesh, not for the group.
    let holds = move |tp: &TopicPartition| lock(&held).contains(tp);
    events::stall::watch(reader, topic, timeout, committed, holds, stalled_tx).await;
}

/// Aborts a task when dropped: the watch ends with the loop it serves.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The envelope a forward request becomes, by the shared rules, and the
/// time it is given from when the mesh takes it.
fn envelope(req: ForwardRequest, default_timeout: Duration) -> Result<(Envelope, Duration), FieldError> {
    rules::message_id("id", &req.id)?;
    rules::key("key", &req.key)?;
    let source = if req.source.is_empty() {
        "forward".to_owned()
    } else {
        req.source
    };
    rules::name("source", &source)?;
    let timeout = match req.timeout_ms {
        0 => default_timeout,
        ms => rules::timeout_ms("timeout_ms", ms)?,
    };
    let env = Envelope {
        id: req.id,
        key: req.key,
        payload: req.payload,
        source,
        // The router's span follows it; one not understood is ignored.
        traceparent: req.traceparent,
        ..Envelope::default()
    };
    Ok((env, timeout))
}

/// Routes one record until it is answered or set aside (true), or until
/// the forwarder stops while the mesh cannot take it (false).
async fn forward(shared: &Shared, rec: &Record, stop: &watch::Receiver<bool>) -> bool {
    let c = &shared.health.counters;
    let (env, timeout) = match codec::decode_forward(rec) {
        Err(e) => return set_aside(shared, rec, &format!("undecodable forward request: {e}")),
        Ok(req) => match envelope(req, shared.router.config().default_timeout) {
            Err(e) => return set_aside(shared, rec, &format!("forward request refused: {e}")),
            Ok(e) => e,
        },
    };
    let mut backoff = BACKOFF;
    loop {
        // A fresh deadline for each attempt: the time the request was given
        // runs from when the mesh takes it.
        let attempt = Envelope {
            deadline_unix_ms: mesh::deadline_in(timeout),
            ..env.clone()
        };
        match shared.router.send(attempt).await {
            Err(status) if permanent(status.code()) => {
                return set_aside(shared, rec, &format!("the mesh refused it: {}", status.message()));
            }
            Err(status) if status.code() == Code::AlreadyExists => {
                // Processed already (a redelivery); its reply is on record.
                c.routed.fetch_add(1, Ordering::Relaxed);
                return true;
            }
            Err(status) => {
                c.retries.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(message = %env.id, "the mesh cannot take a forwarded message yet, retrying in {backoff:?}: {}", status.message());
                if pause(stop, &mut backoff).await {
                    return false;
                }
            }
            Ok(stream) => {
                match drain(stream).await {
                    Ok(()) => c.routed.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(message = %env.id, "forwarded message answered with an error: {e}");
                        c.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                return true;
            }
        }
    }
}

/// Refusals that no retry can change.
fn permanent(code: Code) -> bool {
    matches!(
        code,
        Code::InvalidArgument | Code::OutOfRange | Code::FailedPrecondition | Code::PermissionDenied
    )
}

fn set_aside(shared: &Shared, rec: &Record, reason: &str) -> bool {
    shared.health.counters.set_aside.fetch_add(1, Ordering::Relaxed);
    shared.dead_letters.set_aside(
        dead_letters::Record {
            topic: &rec.topic,
            position: Some((rec.partition, rec.offset)),
            key: rec.key.as_deref(),
            value: &rec.value,
        },
        reason,
    );
    true
}

async fn drain(mut stream: ReplyStream) -> Result<(), String> {
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
        if let Some(e) = chunk.error {
            return Err(format!("code {}: {}", e.code, e.message));
        }
        if chunk.last {
            return Ok(());
        }
    }
    Err("reply ended without a last chunk".into())
}
