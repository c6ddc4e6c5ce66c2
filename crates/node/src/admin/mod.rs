//! The admin HTTP endpoint of a node (axum, HTTP/1), one module per route family:
//!
//! | route | module | answer |
//! |---|---|---|
//! | `GET /v1/members?status=` | `cluster` | [`Members`](proto::api::Members): every member this node knows (or those in the given states), and the view checksum |
//! | `GET /v1/ring` | `cluster` | [`Ring`](proto::api::Ring): checksum, workers, and the share of sampled keys each owns |
//! | `GET /metrics` | `metrics` | Prometheus text: membership, transport, mesh, worker and event-log metrics |
//! | `GET /healthz` | `health` | 200 while the gossip task runs |
//! | `GET /readyz` | `health` | 200 once joined; 503 before, while draining, while the event log stalls, and while a role's task is down |
//! | `GET /v1/dead-letters?after=&limit=` | `health` | [`DeadLetters`](proto::api::DeadLetters): what this node set aside, with the reasons |
//! | `POST /v1/send` | `send` | [`SendRequest`](proto::api::SendRequest) in; the reply streamed as NDJSON [`ReplyLine`](proto::api::ReplyLine)s |
//! | `POST /v1/gossip` | `gossip` | [`GossipRequest`](proto::api::GossipRequest) in, [`GossipCreated`](proto::api::GossipCreated) out |
//! | `GET /v1/gossip/{origin}/{seq}` | `gossip` | [`GossipReceipt`](proto::api::GossipReceipt): when this node received it, or 404 |
//! | `GET /v1/keys` | `keys` | [`KeyIds`](proto::api::KeyIds): the gossip keys' ids, the primary first |
//! | `POST /v1/keys/{install,use,remove}` | `keys` | one step of a key rotation on this node |
//! | `POST /v1/fault/isolate` | `fault` | cuts or restores this node's gossip traffic; 403 unless allowed |
//! | `POST /v1/fault/delay` | `fault` | delays this node's outbound gossip traffic, or restores it; 403 unless allowed |
//! | `GET /openapi.json` | | the OpenAPI document of these routes ([`ROUTES`]) |
//!
//! The bodies are the types of `rumor.api.v1` (crates/proto), in the proto3
//! JSON mapping, shared with [`crate::client`] and with clients in other
//! languages. The endpoint changes cluster state (gossip, keys): bind it to a
//! private interface (the default is 127.0.0.1).

mod cluster;
mod fault;
mod gossip;
mod health;
mod keys;
mod metrics;
mod send;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use axum::routing::{get, post};
use proto::openapi::{Body, PAGE_AFTER, PAGE_LIMIT, Param, Route};
use tokio::net::TcpListener;

use crate::dead_letters::DeadLetters;
use crate::gossip::GossipHandle;
use crate::mesh::Router;
use crate::node::{CounterSource, Readiness};

pub use cluster::OWNERSHIP_SAMPLE;

/// State shared by the admin handlers and the node that serves them.
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) gossip: GossipHandle,
    pub(crate) router: Router,
    started: Instant,
    /// Set once a graceful shutdown began; readiness turns off.
    draining: AtomicBool,
    /// Gossip messages seen, for `rumor gossip`.
    receipts: gossip::Receipts,
    /// What readiness depends on besides gossip and the event log.
    readiness: Vec<Arc<dyn Readiness>>,
    /// Counters of other parts of the process, for `/metrics`.
    pub(crate) counters: Vec<Arc<dyn CounterSource>>,
    /// Records set aside, for `GET /v1/dead-letters`.
    dead_letters: Arc<DeadLetters>,
    /// Whether `POST /v1/fault/isolate` is allowed.
    fault_injection: bool,
    /// Why a task the node cannot work without ended, once one did.
    failure: tokio::sync::watch::Sender<Option<String>>,
}

impl Shared {
    /// Shared state, and a task recording gossip message receipts that ends
    /// with the gossip task.
    pub(crate) fn new(
        gossip: GossipHandle,
        router: Router,
        readiness: Vec<Arc<dyn Readiness>>,
        counters: Vec<Arc<dyn CounterSource>>,
        dead_letters: Arc<DeadLetters>,
        fault_injection: bool,
    ) -> Arc<Self> {
        let shared = Arc::new(Self {
            gossip,
            router,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            receipts: gossip::Receipts::default(),
            readiness,
            counters,
            dead_letters,
            fault_injection,
            failure: tokio::sync::watch::Sender::new(None),
        });
        gossip::record_receipts(&shared);
        shared
    }

    pub(crate) fn dead_letters(&self) -> &Arc<DeadLetters> {
        &self.dead_letters
    }

    /// Records that a task the node cannot work without ended: readiness
    /// turns off for good, the failure is counted and logged.
    pub(crate) fn fail(&self, why: String) {
        tracing::error!("{why}; the node is not ready and should be restarted");
        self.failure.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why);
            }
            first
        });
    }

    pub(crate) fn failure(&self) -> tokio::sync::watch::Receiver<Option<String>> {
        self.failure.subscribe()
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// `Err(why)` while the node should not get traffic.
    pub(crate) fn ready(&self) -> Result<(), String> {
        if let Some(why) = self.failure.borrow().as_ref() {
            Err(format!("failed: {why}"))
        } else if self.draining.load(Ordering::Relaxed) {
            Err("draining".into())
        } else if !self.gossip.view().borrow().joined {
            Err("not joined".into())
        } else if let Some(Err(why)) = self.router.worker().and_then(|w| w.sink()).map(|s| s.health()) {
            Err(format!("event log: {why}"))
        } else {
            self.readiness.iter().try_for_each(|r| r.ready())
        }
    }
}

/// Serves the admin API on `listener` until `shutdown` completes; requests in
/// progress (streamed replies among them) are allowed to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/members", get(cluster::members))
        .route("/v1/ring", get(cluster::ring))
        .route("/metrics", get(metrics::metrics))
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/v1/send", post(send::send))
        .route("/v1/gossip", post(gossip::create))
        .route("/v1/gossip/{origin}/{seq}", get(gossip::receipt))
        .route("/v1/keys", get(keys::list))
        .route("/v1/keys/{op}", post(keys::change))
        .route("/v1/dead-letters", get(health::dead_letters))
        .route("/v1/fault/isolate", post(fault::isolate))
        .route("/v1/fault/delay", post(fault::delay))
        .route("/openapi.json", get(openapi))
        .with_state(shared);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

type Shr = axum::extract::State<Arc<Shared>>;

/// The admin API's routes, for its OpenAPI document (`GET /openapi.json`).
pub const ROUTES: &[Route] = &[
    Route {
        method: "get",
        path: "/v1/members",
        summary: "Every member this node knows, or those in the given states, and the view checksum",
        params: &[MEMBER_STATUS],
        request: Body::None,
        ok: (200, Body::Json("Members")),
        errors: &[400],
    },
    Route {
        method: "get",
        path: "/v1/ring",
        summary: "The ring as this node sees it, and each worker's share",
        params: &[],
        request: Body::None,
        ok: (200, Body::Json("Ring")),
        errors: &[],
    },
    Route {
        method: "get",
        path: "/metrics",
        summary: "Prometheus metrics",
        params: &[],
        request: Body::None,
        ok: (200, Body::Text),
        errors: &[503],
    },
    Route {
        method: "get",
        path: "/healthz",
        summary: "200 while the gossip task runs",
        params: &[],
        request: Body::None,
        ok: (200, Body::Text),
        errors: &[503],
    },
    Route {
        method: "get",
        path: "/readyz",
        summary: "200 while the node should get traffic",
        params: &[],
        request: Body::None,
        ok: (200, Body::Text),
        errors: &[503],
    },
    Route {
        method: "post",
        path: "/v1/send",
        summary: "Send a message into the mesh; the reply streams as NDJSON lines",
        params: &[],
        request: Body::Json("SendRequest"),
        ok: (200, Body::Ndjson("ReplyLine")),
        errors: &[400, 409, 415, 422, 500, 503, 504],
    },
    Route {
        method: "post",
        path: "/v1/gossip",
        summary: "Create a gossip message",
        params: &[],
        request: Body::Json("GossipRequest"),
        ok: (200, Body::Json("GossipCreated")),
        errors: &[400, 415, 422],
    },
    Route {
        method: "get",
        path: "/v1/gossip/{origin}/{seq}",
        summary: "When this node received a gossip message",
        params: &[GOSSIP_ORIGIN, GOSSIP_SEQ],
        request: Body::None,
        ok: (200, Body::Json("GossipReceipt")),
        errors: &[400, 404],
    },
    Route {
        method: "get",
        path: "/v1/keys",
        summary: "The gossip keys' ids, the primary first",
        params: &[],
        request: Body::None,
        ok: (200, Body::Json("KeyIds")),
        errors: &[400, 503],
    },
    Route {
        method: "post",
        path: "/v1/keys/{op}",
        summary: "One step of a key rotation: install, use or remove",
        params: &[KEY_OP],
        request: Body::Json("KeyRequest"),
        ok: (200, Body::Json("KeyIds")),
        errors: &[400, 404, 415, 422, 503],
    },
    Route {
        method: "get",
        path: "/v1/dead-letters",
        summary: "What this node set aside, with the reasons",
        params: &[PAGE_AFTER, PAGE_LIMIT],
        request: Body::None,
        ok: (200, Body::Json("DeadLetters")),
        errors: &[400],
    },
    Route {
        method: "post",
        path: "/v1/fault/isolate",
        summary: "Cut or restore this node's gossip (tests only)",
        params: &[],
        request: Body::Json("Isolate"),
        ok: (200, Body::Json("Isolate")),
        errors: &[400, 403, 415, 422],
    },
    Route {
        method: "post",
        path: "/v1/fault/delay",
        summary: "Delay or restore this node's outbound gossip traffic (tests only)",
        params: &[],
        request: Body::Json("LinkDelay"),
        ok: (200, Body::Json("LinkDelay")),
        errors: &[400, 403, 415, 422],
    },
];

const GOSSIP_ORIGIN: Param = Param {
    name: "origin",
    location: "path",
    kind: "string",
    description: "The node that created it",
    values: &[],
};
const GOSSIP_SEQ: Param = Param {
    name: "seq",
    location: "path",
    kind: "integer",
    description: "Its sequence number there",
    values: &[],
};
const MEMBER_STATUS: Param = Param {
    name: "status",
    location: "query",
    kind: "string",
    description: "The states to list, one comma-separated list: alive, suspect, dead, left (all when absent)",
    values: &[],
};
const KEY_OP: Param = Param {
    name: "op",
    location: "path",
    kind: "string",
    description: "install, use or remove",
    values: &["install", "use", "remove"],
};

async fn openapi() -> axum::Json<serde_json::Value> {
    axum::Json(proto::openapi::document(
        "rumor node admin API",
        "A node's admin API: cluster state, messages into the mesh, gossip messages, gossip keys.",
        ROUTES,
    ))
}
