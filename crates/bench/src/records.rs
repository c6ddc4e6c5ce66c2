//! What it costs to answer only after a message's records are in the event
//! log (`worker.wait_for_records_ms`): a gateway and a worker in this
//! process, the worker publishing to a real Kafka-protocol broker, measured
//! with the wait on and off in alternating rounds. Part of the data-plane
//! report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use events::{EventLog, KafkaConfig, PublisherConfig, Topics};
use node::{Node, NodeConfig, Role, Roles};
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use server::{EventsConfig, ServerConfig};
use tokio_stream::StreamExt;

use crate::report::{median, percentile};

/// Whether the final chunk waits for the records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Wait {
    /// `wait_for_records_ms = 0`: answer at once.
    Off,
    /// The default: answer once the log has both records.
    On,
}

/// One measured step: messages sent one after another on `conversations`
/// conversations at once, for the step's time.
#[derive(Debug, Clone)]
pub struct Step {
    /// Which setting.
    pub wait: Wait,
    /// Conversations sending at once.
    pub conversations: usize,
    /// Replies per second.
    pub rate: f64,
    /// Time to the final chunk, milliseconds: median and 99th percentile.
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Replies that went out before their records were in the log.
    pub unrecorded: u64,
}

/// Measures both settings for `rounds` rounds of `duration` each, against
/// the broker at `brokers`.
pub async fn measure(brokers: &str, rounds: usize, duration: Duration) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    for round in 0..rounds {
        let order = if round % 2 == 0 {
            [Wait::Off, Wait::On]
        } else {
            [Wait::On, Wait::Off]
        };
        for wait in order {
            for conversations in [1, 16] {
                let step = one_step(brokers, wait, conversations, duration).await?;
                eprintln!(
                    "records round {}/{rounds}: wait {wait:?}, {conversations:>2} conversations: {:.0} msg/s p50 {:.2} ms p99 {:.2} ms, {} unrecorded",
                    round + 1,
                    step.rate,
                    step.p50_ms,
                    step.p99_ms,
                    step.unrecorded
                );
                steps.push(step);
            }
        }
    }
    Ok(steps)
}

async fn one_step(brokers: &str, wait: Wait, conversations: usize, duration: Duration) -> anyhow::Result<Step> {
    let suffix = events::new_message_id().to_lowercase();
    let mut kafka = KafkaConfig::new(brokers);
    kafka.request_timeout = Duration::from_secs(5);
    let events = EventsConfig {
        log: EventLog::Kafka(kafka),
        topics: Topics {
            messages: format!("bench-records-{suffix}"),
            forward: format!("bench-records-fwd-{suffix}"),
            partitions: 2,
            replication: 1,
        },
        create_topics: true,
        forward_group: format!("bench-records-{suffix}"),
        forward_stall_timeout: None,
        publisher: PublisherConfig::default(),
    };
    let mut w = NodeConfig::new("bench-records-worker");
    w.roles = Roles::of(&[Role::Gateway, Role::Worker]);
    w.processor = Some(Arc::new(processors::Echo::default()));
    w.worker.wait_for_records = match wait {
        Wait::Off => None,
        Wait::On => Some(Duration::from_secs(1)),
    };
    let mut s = ServerConfig::new(w);
    s.events = Some(events);
    let server = server::start(s).await.context("starting the recording worker")?;
    let node = server.node();
    tokio::time::timeout(Duration::from_secs(15), async {
        while node.router().table().ring().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .context("the worker did not see itself within 15 s")?;
    // A first message creates the topics' partitions and the producer's connections.
    exchange(node, "warm-up").await?;
    let end = Instant::now() + duration;
    let mut tasks = Vec::new();
    for c in 0..conversations {
        let router = node.router().clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            while Instant::now() < end {
                let sent = Instant::now();
                if send(&router, &format!("records-{c}")).await.is_ok() {
                    lat.push(sent.elapsed().as_secs_f64() * 1e3);
                }
            }
            lat
        }));
    }
    let mut lat = Vec::new();
    for t in tasks {
        lat.extend(t.await.unwrap_or_default());
    }
    lat.sort_by(f64::total_cmp);
    let unrecorded = node.router().worker().map_or(0, |w| w.stats().replies_unrecorded);
    server.shutdown().await;
    Ok(Step {
        wait,
        conversations,
        rate: lat.len() as f64 / duration.as_secs_f64(),
        p50_ms: percentile(&lat, 0.5),
        p99_ms: percentile(&lat, 0.99),
        unrecorded,
    })
}

async fn exchange(node: &Node, key: &str) -> anyhow::Result<()> {
    send(node.router(), key).await.map_err(|e| anyhow::anyhow!("{e}"))
}

async fn send(router: &node::mesh::Router, key: &str) -> Result<(), String> {
    let env = Envelope {
        id: node::mesh::new_message_id(),
        key: key.to_owned(),
        payload: Bytes::from_static(b"a message of a few dozen bytes, echoed back"),
        ..Default::default()
    };
    let mut stream = router.send(env).await.map_err(|s| s.message().to_owned())?;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|s| s.message().to_owned())?;
        if chunk.error.is_some() {
            return Err("error chunk".into());
        }
        if chunk.last {
            return Ok(());
        }
    }
    Err("no final chunk".into())
}

/// The median over rounds of one figure, for one setting and concurrency.
pub fn med(steps: &[Step], wait: Wait, conversations: usize, f: impl Fn(&Step) -> f64) -> f64 {
    median(
        steps
            .iter()
            .filter(|s| s.wait == wait && s.conversations == conversations)
            .map(f),
    )
}
