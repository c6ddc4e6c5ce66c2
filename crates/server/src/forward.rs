//! The forward role: messages injected from outside come back into the mesh.
//!
//! ```text
//!  bridge ── POST /v1/forward ──> forward topic ──> Forwarder ── Router::send ──> owner
//! ```
//!
//! At least once: a record's offset is committed only after its reply ended
//! (or it could not be decoded). A request redelivered after a crash keeps
//! its id, so the owner's de-duplication window answers it without
//! processing it twice while the id is remembered. The worker publishes the
//! reply, so the forwarder only drains it.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use events::{ConsumerEvent, EventLog, LogError, Topics, codec};
use node::mesh;
use node::mesh::Router;
use node::worker::ReplyStream;
use proto::mesh::Envelope;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::StreamExt;
use tracing::Instrument as _;

// Relaxed atomics: each counter stands alone; only the forwarding task writes them.
stats::counters! {
    /// What a forwarder did since it started.
    ForwardStats;
    /// Injected messages routed and answered.
    routed,
    /// Injected messages that ended without a complete reply.
    failed,
    /// Records of the forward topic that did not decode, skipped.
    undecodable,
}

/// The running forward role: consumes the forward topic and routes each request.
#[derive(Debug)]
pub struct Forwarder {
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), LogError>>,
    counters: Arc<Counters>,
}

impl Forwarder {
    /// Starts consuming `topics.forward` in consumer group `group` and
    /// routing each request through `router`.
    pub fn spawn(router: Router, log: &EventLog, topics: &Topics, group: &str) -> Result<Forwarder, LogError> {
        let consumer = log.consumer(group, &[&topics.forward])?;
        let (stop, stopped) = watch::channel(false);
        let counters = Arc::new(Counters::default());
        let span = tracing::info_span!("forward", node = %router.name());
        let task = tokio::spawn(run(router, consumer, stopped, counters.clone()).instrument(span));
        Ok(Forwarder { stop, task, counters })
    }

    /// What it did so far.
    pub fn stats(&self) -> ForwardStats {
        self.counters.read()
    }

    /// Stops taking new records, lets the one in progress end, and returns
    /// why the loop ended early, if it did.
    pub async fn stop(self) -> (ForwardStats, Result<(), String>) {
        let _ = self.stop.send(true);
        let ended = match self.task.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(format!("the event log failed: {e}")),
            Err(e) => Err(format!("the forwarding task failed: {e}")),
        };
        (self.counters.read(), ended)
    }
}

async fn run(
    router: Router,
    mut consumer: events::Consumer,
    mut stop: watch::Receiver<bool>,
    counters: Arc<Counters>,
) -> Result<(), LogError> {
    loop {
        let event = tokio::select! {
            e = consumer.recv() => e?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        let ConsumerEvent::Record(rec) = event else {
            // Both logs start an assigned partition at the group's committed
            // offset (or the beginning): where this role left off.
            continue;
        };
        let tp = rec.tp();
        match codec::decode_forward(&rec) {
            Ok(req) => {
                let timeout = match req.timeout_ms {
                    0 => router.config().default_timeout,
                    ms => Duration::from_millis(ms),
                };
                let env = Envelope {
                    id: if req.id.is_empty() {
                        mesh::new_message_id()
                    } else {
                        req.id
                    },
                    key: req.key,
                    payload: req.payload,
                    deadline_unix_ms: mesh::deadline_in(timeout),
                    source: if req.source.is_empty() {
                        "forward".into()
                    } else {
                        req.source
                    },
                    ..Envelope::default()
                };
                let id = env.id.clone();
                match drain(router.send(env).await).await {
                    Ok(()) => counters.routed.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        tracing::warn!(message = %id, "forwarded message not answered: {e}");
                        counters.failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
            Err(e) => {
                tracing::warn!(topic = %tp.topic, partition = tp.partition, offset = rec.offset, "skipping an undecodable forward request: {e}");
                counters.undecodable.fetch_add(1, Ordering::Relaxed);
            }
        }
        consumer.commit(&[(tp, rec.offset + 1)])?;
    }
}

async fn drain(reply: Result<ReplyStream, tonic::Status>) -> Result<(), String> {
    let mut stream = reply.map_err(|s| format!("{}: {}", s.code(), s.message()))?;
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
