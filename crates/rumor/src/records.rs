//! The binary's glue between mesh nodes and the event log (Kafka, or the
//! in-process log of `rumor up`):
//!
//! ```text
//!  worker ── RecordSink ──> LogSink ── Publisher (bounded, retrying) ──> messages topic ──> bridge
//!  bridge ── POST /v1/forward ──> forward topic ──> Forwarder (forward role) ── Router::send ──> owner
//! ```
//!
//! Node stays free of Kafka: it only knows the [`RecordSink`] trait.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use events::codec;
use events::publisher::Publisher;
use events::{ConsumerEvent, EventLog, Topics};
use node::mesh;
use node::router::Router;
use node::worker::{FinalReply, RecordSink};
use proto::events::MessageRecord;
use proto::mesh::Envelope;
use tokio::sync::watch;
use tokio_stream::StreamExt;

/// Publishes what a worker processed to the messages topic.
#[derive(Debug)]
pub(crate) struct LogSink {
    publisher: Publisher,
    topic: String,
}

impl LogSink {
    pub(crate) fn new(publisher: Publisher, topics: &Topics) -> Self {
        Self {
            publisher,
            topic: topics.messages.clone(),
        }
    }

    fn publish(&self, rec: MessageRecord) {
        let id = rec.id.clone();
        // The publisher counts a refusal (buffer full); say which message.
        if let Err(e) = self.publisher.publish(codec::message_record(&self.topic, &rec)) {
            tracing::error!(message = %id, kind = ?rec.kind(), "record not published: {e}");
        }
    }
}

fn source_of(msg: &Envelope) -> String {
    if msg.source.is_empty() {
        "client".into()
    } else {
        msg.source.clone()
    }
}

impl RecordSink for LogSink {
    fn inbound(&self, worker: &str, msg: &Envelope) {
        self.publish(MessageRecord {
            source: source_of(msg),
            ..codec::inbound(worker, msg)
        });
    }

    fn reply(&self, worker: &str, msg: &Envelope, reply: &FinalReply) {
        let rec = codec::reply(
            worker,
            msg,
            reply.data.clone(),
            reply.chunks,
            reply.error.clone(),
            reply.truncated,
        );
        self.publish(MessageRecord {
            source: source_of(msg),
            ..rec
        });
    }

    fn health(&self) -> Result<(), String> {
        self.publisher.health()
    }

    fn metrics(&self) -> Vec<(&'static str, &'static str, u64, bool)> {
        let st = self.publisher.stats();
        vec![
            ("published", "Records the event log acknowledged.", st.published, true),
            (
                "retried",
                "Deliveries to the event log that failed and were retried.",
                st.retried,
                true,
            ),
            (
                "refused",
                "Records refused because the buffer was full (the log unreachable too long).",
                st.refused,
                true,
            ),
            (
                "buffered",
                "Records waiting for the event log.",
                self.publisher.buffered() as u64,
                false,
            ),
            (
                "buffered_bytes",
                "Bytes waiting for the event log.",
                self.publisher.buffered_bytes() as u64,
                false,
            ),
        ]
    }
}

/// What a forwarder did, for its log line at shutdown and for tests.
#[derive(Debug, Default)]
pub(crate) struct ForwardStats {
    pub(crate) routed: AtomicU64,
    pub(crate) failed: AtomicU64,
    pub(crate) undecodable: AtomicU64,
}

/// The forward role: consumes the forward topic and routes each request to
/// its owner like a client message, until `stop` turns true.
///
/// At least once: a record's offset is committed only after its reply ended
/// (or it could not be decoded). A request redelivered after a crash keeps its
/// id, so the owner's de-duplication window answers it without processing it
/// twice while the id is remembered. The reply is published by the worker, so
/// the forwarder only drains it.
pub(crate) async fn run_forwarder(
    router: Router,
    log: EventLog,
    topics: Topics,
    group: String,
    stats: Arc<ForwardStats>,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let mut consumer = log.consumer(&group, &[&topics.forward])?;
    loop {
        let event = tokio::select! {
            e = consumer.recv() => e?,
            _ = stop.wait_for(|s| *s) => return Ok(()),
        };
        match event {
            // Both logs start an assigned partition at the group's committed
            // offset (or the beginning): where this role left off.
            ConsumerEvent::Assigned(_) => {}
            ConsumerEvent::Revoked(_) => {}
            ConsumerEvent::Record(rec) => {
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
                            Ok(()) => stats.routed.fetch_add(1, Ordering::Relaxed),
                            Err(e) => {
                                tracing::warn!(message = %id, "forwarded message not answered: {e}");
                                stats.failed.fetch_add(1, Ordering::Relaxed)
                            }
                        };
                    }
                    Err(e) => {
                        tracing::warn!(topic = %tp.topic, partition = tp.partition, offset = rec.offset, "skipping an undecodable forward request: {e}");
                        stats.undecodable.fetch_add(1, Ordering::Relaxed);
                    }
                }
                consumer.commit(&[(tp, rec.offset + 1)])?;
            }
        }
    }
}

async fn drain(reply: Result<node::worker::ReplyStream, tonic::Status>) -> Result<(), String> {
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
