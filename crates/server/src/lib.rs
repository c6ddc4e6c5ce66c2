//! One rumor node process, assembled from its config: the node itself
//! (gossip, mesh, admin; crates/node), and around it what its roles need
//! from the event log. `rumor node` and `rumor up` both call [`start`].
//!
//! ```text
//!  ServerConfig ──start──> Node (gossip, router, worker with its processor, admin)
//!                          ├─ worker role + event log: Publisher ─ LogSink (records of every message and reply)
//!                          ├─ forward role + event log: Forwarder (forward topic -> Router::send)
//!                          └─ gateway role: Edge (the client edge: WebSocket, HTTP, OpenAI-compatible)
//!  Server::shutdown: drain the edge, stop the forwarder, leave and drain the node, flush the publisher
//! ```
//!
//! Nothing here waits for Kafka to be up: records wait in the publisher's
//! bounded buffer, and readiness reports a stalled log.

pub mod file;
mod forward;
mod records;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway::{Edge, EdgeConfig};

use events::publisher::{Publisher, PublisherConfig, SetAside};
use events::{EventLog, LogError, OutRecord, Topics};
use node::node::{NodeError, ShutdownReport};
use node::{Node, NodeConfig, Role};

pub use forward::{ForwardHealth, ForwardStats, Forwarder};
pub use records::LogSink;

/// Where a node's roles meet the event log.
#[derive(Debug, Clone)]
pub struct EventsConfig {
    /// Kafka, or the in-process log.
    pub log: EventLog,
    /// The messages and forward topics.
    pub topics: Topics,
    /// Create missing topics at start (best effort: the broker may be down).
    pub create_topics: bool,
    /// The forward role's consumer group.
    pub forward_group: String,
    /// How long a forward-topic partition's records may wait while nobody
    /// in the group commits before the forwarder rejoins the group; `None`:
    /// never (see the forward module's docs).
    pub forward_stall_timeout: Option<Duration>,
    /// The worker's publisher buffer.
    pub publisher: PublisherConfig,
}

/// Everything one node process runs.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// The node: its roles, processor, addresses and protocol settings.
    pub node: NodeConfig,
    /// The event log; `None` publishes nothing and forwards nothing.
    pub events: Option<EventsConfig>,
    /// Longest time a shutdown waits for the worker's records to be
    /// published after the node drained. Default 5 s.
    pub flush_timeout: Duration,
    /// The client edge of a gateway node: its address and settings. Used
    /// with the gateway role; `None` runs the role without an edge (its
    /// messages enter through the admin API only).
    pub edge: Option<(SocketAddr, EdgeConfig)>,
}

impl ServerConfig {
    /// A server for `node` without an event log.
    pub fn new(node: NodeConfig) -> Self {
        Self {
            node,
            events: None,
            flush_timeout: Duration::from_secs(5),
            edge: None,
        }
    }
}

/// Why [`start`] failed. Nothing is left running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The node did not start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// A message or reply the node accepts would not fit in a record the
    /// event log takes, so it could be answered and never stored.
    #[error(
        "{setting} ({value} bytes) and the record's other fields ({overhead} bytes) do not fit in a record \
         of the event log (at most {limit} bytes): lower {setting}, or raise events.max_record_bytes \
         together with the brokers' message.max.bytes"
    )]
    Limits {
        /// The setting that is too large.
        setting: &'static str,
        /// Its value.
        value: usize,
        /// Bytes a record needs beyond the payload.
        overhead: usize,
        /// The log's record limit.
        limit: usize,
    },
    /// The client edge did not start.
    #[error("edge: {0}")]
    Edge(#[from] gateway::StartError),
    /// The event log could not be set up (a client could not be made).
    #[error("event log ({log}): {source}")]
    Log {
        /// The log, described.
        log: String,
        /// Why.
        source: LogError,
    },
}

/// A running node process; see [`start`].
#[derive(Debug)]
pub struct Server {
    node: Node,
    publisher: Option<Publisher>,
    forwarder: Option<Forwarder>,
    edge: Option<Edge>,
    flush_timeout: Duration,
}

/// How a shutdown went.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stopped {
    /// The node's leave and drain.
    pub node: ShutdownReport,
    /// Records of the worker not published when the flush timeout ended.
    pub unpublished: usize,
    /// What the forward role did, with it.
    pub forwarded: Option<ForwardStats>,
}

impl Stopped {
    /// True when everything in flight was finished and recorded.
    pub fn clean(&self) -> bool {
        self.node.drained && self.unpublished == 0
    }
}

/// Starts a node with its roles: with the worker role and an event log, a
/// publisher and the sink that records every message and reply; with the
/// forward role and an event log, the forwarder.
pub async fn start(mut config: ServerConfig) -> Result<Server, StartError> {
    let roles = config.node.roles;
    let events = config.events.take();
    let log_error = |ev: &EventsConfig, source| StartError::Log {
        log: ev.log.describe(),
        source,
    };
    if let Some(ev) = &events {
        check_limits(&config.node, ev)?;
    }
    let publisher = match &events {
        Some(ev) if roles.has(Role::Worker) => {
            let producer = ev.log.producer().map_err(|e| log_error(ev, e))?;
            let dead_letters = config.node.dead_letters.clone();
            let set_aside: SetAside = Arc::new(move |rec: &OutRecord, why: &str| {
                dead_letters.set_aside(
                    node::dead_letters::Record {
                        topic: &rec.topic,
                        position: None,
                        key: Some(rec.key.as_bytes()),
                        value: &rec.value,
                    },
                    why,
                );
            });
            let publisher = Publisher::spawn_with(producer, ev.publisher.clone(), set_aside);
            config.node.record_sink = Some(Arc::new(LogSink::new(publisher.clone(), &ev.topics)));
            Some(publisher)
        }
        _ => None,
    };
    if let Some(ev) = events.as_ref().filter(|ev| ev.create_topics)
        && let Err(e) = ev.log.create_topics(&ev.topics.specs()).await
    {
        tracing::warn!("creating topics on {}: {e}", ev.log.describe());
    }
    let forward_health = Arc::new(ForwardHealth::default());
    let forwards = events.as_ref().filter(|_| roles.has(Role::Forward));
    if forwards.is_some() {
        config.node.readiness.push(forward_health.clone());
        config.node.counters.push(forward_health.clone());
    }
    let dead_letters = config.node.dead_letters.clone();
    let edge_config = config.edge.take().filter(|_| roles.has(Role::Gateway));
    let node = Node::start(config.node).await?;
    let edge = match edge_config {
        Some((addr, edge_config)) => {
            let started = Edge::start(
                node.name(),
                edge_config,
                addr,
                node.router().clone(),
                node.gossip().view(),
                node.readiness(),
            )
            .await;
            match started {
                Ok(edge) => Some(edge),
                Err(gateway::StartError::NoCredentials) => {
                    tracing::warn!(
                        "the gateway role runs without its client edge: no credentials are configured \
                         (edge.api_keys or edge.jwt); messages enter through the admin API only"
                    );
                    None
                }
                Err(e) => {
                    node.shutdown().await;
                    return Err(e.into());
                }
            }
        }
        None => None,
    };
    let forwarder = forwards.map(|ev| {
        Forwarder::spawn(
            node.router().clone(),
            &ev.log,
            &ev.topics,
            &ev.forward_group,
            ev.forward_stall_timeout,
            dead_letters,
            forward_health,
        )
    });
    Ok(Server {
        node,
        publisher,
        forwarder,
        edge,
        flush_timeout: config.flush_timeout,
    })
}

/// The limits agree end to end: every message the mesh accepts, and every
/// reply the worker records, fits in a record the event log takes.
fn check_limits(node: &NodeConfig, ev: &EventsConfig) -> Result<(), StartError> {
    let limit = ev.log.max_record_bytes();
    let overhead = events::RECORD_OVERHEAD;
    let mut sizes = vec![("mesh.max_envelope_bytes", node.mesh.max_envelope_bytes)];
    if node.roles.has(Role::Worker) {
        sizes.push(("worker.max_recorded_reply_bytes", node.worker.max_recorded_reply_bytes));
    }
    for (setting, value) in sizes {
        if value.saturating_add(overhead) > limit {
            return Err(StartError::Limits {
                setting,
                value,
                overhead,
                limit,
            });
        }
    }
    Ok(())
}

impl Server {
    /// The node.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// The client edge, if the node runs one.
    pub fn edge(&self) -> Option<&Edge> {
        self.edge.as_ref()
    }

    /// The forward role's counters, if the node forwards.
    pub fn forward_stats(&self) -> Option<ForwardStats> {
        self.forwarder.as_ref().map(Forwarder::stats)
    }

    /// Leaves gracefully: the client edge refuses new messages, lets those
    /// in flight finish and closes its connections (1001, so clients
    /// reconnect elsewhere); the forward role stops taking injected messages
    /// and finishes the one in progress; the node leaves the cluster and
    /// drains its worker, and the worker's records are flushed to the log.
    pub async fn shutdown(self) -> Stopped {
        if let Some(edge) = self.edge {
            edge.shutdown().await;
        }
        let forwarded = match self.forwarder {
            Some(f) => Some(f.stop().await),
            None => None,
        };
        let node = self.node.shutdown().await;
        let unpublished = match self.publisher {
            Some(p) if !p.flush(self.flush_timeout).await => p.buffered(),
            _ => 0,
        };
        Stopped {
            node,
            unpublished,
            forwarded,
        }
    }
}

/// Completes on Ctrl-C or SIGTERM: when a process should leave gracefully.
pub async fn terminated() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
