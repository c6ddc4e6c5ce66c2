//! The worker's records on the event log (Kafka, or the in-process log of
//! `rumor up`):
//!
//! ```text
//!  worker ── RecordSink ──> LogSink ── Publisher (bounded, retrying) ──> messages topic ──> bridge
//! ```
//!
//! Node stays free of Kafka: it only knows the [`RecordSink`] trait.

use events::Topics;
use events::codec;
use events::publisher::Publisher;
use node::processor::FinalReply;
use node::worker::{RecordSink, Recorded};
use proto::events::MessageRecord;
use proto::mesh::Envelope;

/// Publishes what a worker processed to the messages topic: a
/// `MessageRecord` for every message it starts and one for its final reply.
#[derive(Debug)]
pub struct LogSink {
    publisher: Publisher,
    topic: String,
}

impl LogSink {
    /// A sink publishing to `topics.messages` through `publisher`.
    pub fn new(publisher: Publisher, topics: &Topics) -> Self {
        Self {
            publisher,
            topic: topics.messages.clone(),
        }
    }

    fn publish(&self, rec: MessageRecord) -> Recorded {
        match self.publisher.publish(codec::message_record(&self.topic, &rec)) {
            Ok(delivery) => Box::pin(delivery),
            Err(e) => {
                // The publisher counts a refusal (buffer full); say which message.
                tracing::error!(message = %rec.id, kind = ?rec.kind(), "record not published: {e}");
                Box::pin(std::future::ready(Err(e.to_string())))
            }
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
    fn inbound(&self, worker: &str, msg: &Envelope) -> Recorded {
        self.publish(MessageRecord {
            source: source_of(msg),
            ..codec::inbound(worker, msg)
        })
    }

    fn reply(&self, worker: &str, msg: &Envelope, reply: &FinalReply) -> Recorded {
        let rec = codec::reply(
            worker,
            msg,
            reply.data.clone(),
            reply.chunks,
            reply.error.clone(),
            reply.truncated,
        );
        let usage = reply.usage.as_ref().map(|u| proto::events::Usage {
            prompt_tokens: u.prompt_tokens,
            completion_tokens: u.completion_tokens,
            cached_tokens: u.cached_tokens,
            first_token_ms: u.first_token_ms,
            backend: u.backend.clone(),
            model: u.model.clone(),
        });
        self.publish(MessageRecord {
            source: source_of(msg),
            usage,
            ..rec
        })
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
                "producers_renewed",
                "Kafka producers replaced by a new one because the broker fenced them or they failed for good.",
                st.producers_renewed,
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
