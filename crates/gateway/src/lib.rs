//! rumor's client edge: what applications speak to a gateway node.
//!
//! | route | module | what |
//! |---|---|---|
//! | `GET /v1/ws` | `ws.rs` | WebSocket: JSON or protobuf frames, many conversations per connection, watch, resume, cancel |
//! | `POST /v1/conversations/{key}/messages` | `http.rs` | one message; the reply as JSON, or as server-sent events |
//! | `POST /v1/chat/completions`, `GET /v1/models` | `openai.rs` | the OpenAI-compatible API |
//! | `GET /v1/cluster` | `http.rs` | members, roles, ring and models, for clients that show status |
//! | `GET /healthz`, `/readyz`, `/metrics` | `http.rs` | for operators |
//!
//! docs/protocol.md describes the protocol; the frames are
//! `rumor.edge.v1` (crates/proto). Every message goes through
//! [`Router::send`] like any other entering the mesh; watching goes to the
//! conversation's owner through [`Router::watch`], shared per conversation
//! by a hub on each gateway (`watch.rs`).
//!
//! ```text
//!  client ──auth──limits──> edge ──Router::send──> owner (worker) ──reply chunks──> client
//!                            └─watch─> hub ──Router::watch──> owner's conversation log
//! ```

pub mod auth;
pub mod config;
pub mod frames;
mod http;
pub mod limits;
mod message;
mod openai;
mod stats;
mod watch;
mod ws;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use membership::Member;
use node::gossip::View;
use node::mesh::Router;
use tokio::net::TcpListener;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;

pub use auth::{ApiKey, Auth, AuthConfigError, Credential, JwtConfig, key_hash, new_api_key};
pub use config::{EdgeConfig, Limits};
pub use openai::CONVERSATION_HEADER;
pub use stats::EdgeStats;
pub use ws::VERSIONS;

use limits::{Gate, Rates};

/// Whether the node behind the edge should get traffic: `Err(why)` when
/// not. `/readyz` answers from it.
pub type Readiness = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// State shared by every connection and request.
pub(crate) struct Shared {
    pub(crate) name: String,
    pub(crate) config: EdgeConfig,
    pub(crate) router: Router,
    pub(crate) view: signal::Receiver<View>,
    ready: Readiness,
    pub(crate) gate: Arc<Gate>,
    pub(crate) rates: Rates,
    pub(crate) hubs: Arc<watch::Hubs>,
    pub(crate) counters: stats::Counters,
    pub(crate) latency: stats::Latency,
    /// Set when a graceful shutdown begins.
    pub(crate) stopping: signal::Receiver<bool>,
    /// Messages in flight through the edge, for the drain.
    pub(crate) in_flight: AtomicUsize,
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn count(&self, which: impl Fn(&stats::Counters) -> &AtomicU64) {
        which(&self.counters).fetch_add(1, Ordering::Relaxed);
    }

    /// `Err(why)` while the edge should get no traffic.
    pub(crate) fn ready(&self) -> Result<(), String> {
        if *self.stopping.borrow() {
            return Err("draining".into());
        }
        (self.ready)()
    }

    /// Live members with the worker role, from the gossip view.
    pub(crate) fn workers(&self) -> Vec<Member> {
        self.view
            .borrow()
            .live()
            .filter(|m| m.meta.has_role("worker") && m.meta.capacity > 0)
            .cloned()
            .collect()
    }

    /// The models the live workers serve (their `models` tag), each with
    /// the workers serving it, sorted.
    pub(crate) fn models(&self) -> Vec<(String, Vec<String>)> {
        let mut models: std::collections::BTreeMap<String, Vec<String>> = Default::default();
        for w in self.workers() {
            for m in w.meta.tags.get("models").map(String::as_str).unwrap_or("").split(',') {
                let m = m.trim();
                if !m.is_empty() {
                    models.entry(m.to_owned()).or_default().push(w.name.clone());
                }
            }
        }
        models.into_iter().collect()
    }
}

/// Why an edge did not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Its address could not be bound.
    #[error("binding the edge address {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// No credential could ever be accepted.
    #[error(
        "the edge has no credentials: configure edge.api_keys or edge.jwt (only `rumor up` runs without authentication)"
    )]
    NoCredentials,
}

/// A running edge; see [`Edge::start`].
#[derive(Debug)]
pub struct Edge {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop: signal::Sender<bool>,
    task: JoinHandle<()>,
}

impl Edge {
    /// Binds `addr` and serves the edge of node `name` over its `router`
    /// and gossip `view`; `ready` says whether the node should get traffic.
    pub async fn start(
        name: &str,
        config: EdgeConfig,
        addr: SocketAddr,
        router: Router,
        view: signal::Receiver<View>,
        ready: Readiness,
    ) -> Result<Edge, StartError> {
        if config.auth.is_closed() {
            return Err(StartError::NoCredentials);
        }
        let listener = TcpListener::bind(addr)
            .await
            .map_err(|source| StartError::Bind { addr, source })?;
        let addr = listener.local_addr().unwrap_or(addr);
        let (stop, stopping) = signal::channel(false);
        let shared = Arc::new(Shared {
            name: name.to_owned(),
            gate: Gate::new(config.limits),
            rates: Rates::new(&config.limits),
            hubs: watch::Hubs::new(router.clone(), config.history.clone(), config.watch_buffer),
            config,
            router,
            view,
            ready,
            counters: Default::default(),
            latency: Default::default(),
            stopping: stopping.clone(),
            in_flight: AtomicUsize::new(0),
        });
        let app = http::routes(shared.clone());
        let task = tokio::spawn({
            let shared = shared.clone();
            async move {
                let shutdown = wait_true(stopping);
                // Reply chunks are small frames: no Nagle delay.
                let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
                    let _ = tcp.set_nodelay(true);
                });
                if let Err(e) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
                    tracing::error!(edge = %shared.name, "the edge server failed: {e}");
                }
            }
        });
        // Forget the rates of credentials that went quiet, now and then.
        tokio::spawn({
            let shared = Arc::downgrade(&shared);
            async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    let Some(s) = shared.upgrade() else { return };
                    s.rates.shrink();
                }
            }
        });
        tracing::info!(%addr, auth = ?shared.config.auth, "edge listening");
        Ok(Edge {
            shared,
            addr,
            stop,
            task,
        })
    }

    /// Where the edge listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The counters.
    pub fn stats(&self) -> EdgeStats {
        self.shared.counters.read()
    }

    /// Connections held now.
    pub fn connections(&self) -> usize {
        self.shared.gate.held()
    }

    /// Stops gracefully: readiness turns off and new connections and
    /// messages are refused; messages in flight get up to the drain timeout
    /// to finish; then every connection is closed with 1001 ("going away")
    /// so its client reconnects to another gateway.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        let deadline = tokio::time::Instant::now() + self.shared.config.drain_timeout;
        while self.shared.in_flight.load(Ordering::Relaxed) > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let abort = self.task.abort_handle();
        if tokio::time::timeout_at(deadline + Duration::from_secs(1), self.task)
            .await
            .is_err()
        {
            abort.abort();
        }
    }
}

async fn wait_true(mut rx: signal::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}
