//! The admin HTTP endpoint of a node (axum, HTTP/1):
//!
//! | route | answer |
//! |---|---|
//! | `GET /v1/members` | every member this node knows: name, address, status, incarnation, roles, capacity, services |
//! | `GET /v1/ring` | ring checksum, workers, and the share of sampled keys each owns |
//! | `GET /metrics` | Prometheus text format: membership, transport, mesh and worker counters, gauges |
//! | `GET /healthz` | 200 while the gossip task runs |
//! | `GET /readyz` | 200 once joined; 503 before, and while draining |
//! | `POST /v1/send` | `{key, payload, id?, timeout_ms?}`: routes a message, streams the reply as NDJSON [`ReplyLine`]s |
//! | `POST /v1/gossip` | `{payload}`: creates a gossip message, returns its id |
//! | `GET /v1/gossip/{origin}/{seq}` | when this node received that gossip message, or 404 |
//! | `GET /v1/keys` | ids of the gossip keys, the primary first (never the keys) |
//! | `POST /v1/keys/{install,use,remove}` | `{key}`: one step of a key rotation on this node |
//! | `POST /v1/fault/isolate` | `{isolated}`: cuts or restores this node's gossip traffic; 403 unless started with fault injection |
//!
//! The admin endpoint changes cluster state (gossip, keys): bind it to a
//! private interface (the default is 127.0.0.1).
//! The JSON bodies are the types of this module, shared with [`crate::client`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fmt::Write as _;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use membership::{Event, Status};
use proto::mesh::{Envelope, ReplyChunk};
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio::sync::broadcast::error::RecvError;
use tokio_stream::StreamExt;

use crate::crypto::KeyringError;
use crate::gossip::{CommandError, GossipHandle};
use crate::mesh;
use crate::mesh::Router;

/// Keys sampled to estimate each worker's share of the ring.
pub const OWNERSHIP_SAMPLE: usize = 4096;

/// Gossip message receipts remembered for `GET /v1/gossip/...`.
const MAX_RECEIPTS: usize = 4096;

/// One member, as `GET /v1/members` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// Unique node name.
    pub name: String,
    /// Gossip address.
    pub addr: String,
    /// `alive`, `suspect`, `dead` or `left`.
    pub status: String,
    /// The member's incarnation number.
    pub incarnation: u64,
    /// Roles from its gossip metadata.
    pub roles: Vec<String>,
    /// Advertised capacity (0 for non-workers).
    pub capacity: u32,
    /// Service name to address (`mesh`, `admin`).
    pub services: BTreeMap<String, String>,
}

/// The body of `GET /v1/members`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    /// The answering node.
    pub node: String,
    /// It has joined a cluster.
    pub joined: bool,
    /// Every known member, the answering node included, sorted by name.
    pub members: Vec<MemberInfo>,
}

/// One worker on the ring.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingWorker {
    /// Worker name.
    pub name: String,
    /// Its mesh address.
    pub mesh: String,
    /// Its advertised capacity (the ring weight).
    pub capacity: u32,
    /// Fraction of [`OWNERSHIP_SAMPLE`] sampled keys it owns.
    pub share: f64,
}

/// The body of `GET /v1/ring`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingInfo {
    /// The answering node.
    pub node: String,
    /// The table checksum, 16 hex digits: equal on nodes with the same view.
    pub checksum: String,
    /// The owners, sorted by name.
    pub workers: Vec<RingWorker>,
    /// How many keys the shares were estimated from.
    pub sampled_keys: usize,
}

/// The body of `POST /v1/send`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SendRequest {
    /// Conversation key.
    pub key: String,
    /// Message content (UTF-8).
    pub payload: String,
    /// Message id; a new one when absent. Resending with the same id is
    /// de-duplicated by the worker.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Time the mesh has to answer; the mesh default when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// An explicit error in a reply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorInfo {
    /// gRPC status code number.
    pub code: u32,
    /// Its name, e.g. `Unavailable`.
    pub name: String,
    /// What happened.
    pub message: String,
}

/// One line of a `POST /v1/send` reply (newline-delimited JSON). The reply
/// ends with exactly one line that has `last` true or an `error`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyLine {
    /// The message id.
    pub id: String,
    /// Chunk number: 0, 1, 2, ...
    pub seq: u64,
    /// The worker that processed the message.
    #[serde(default)]
    pub worker: String,
    /// Reply data (UTF-8, lossy).
    #[serde(default)]
    pub data: String,
    /// The final chunk of a successful reply.
    #[serde(default)]
    pub last: bool,
    /// Replayed from the worker's de-duplication window.
    #[serde(default)]
    pub replayed: bool,
    /// The reply failed: this line ends it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

impl ReplyLine {
    /// True for the line that ends a reply.
    pub fn is_terminal(&self) -> bool {
        self.last || self.error.is_some()
    }
}

/// The body of `POST /v1/gossip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipRequest {
    /// Message content (UTF-8), at most the protocol's `max_user_payload`.
    pub payload: String,
}

/// The answer to `POST /v1/gossip`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipCreated {
    /// The node that created it.
    pub origin: String,
    /// Its sequence number at that node: `(origin, seq)` is the id.
    pub seq: u64,
    /// Creation time, unix milliseconds.
    pub created_unix_ms: u64,
}

/// The answer to `GET /v1/gossip/{origin}/{seq}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GossipReceipt {
    /// The answering node.
    pub node: String,
    /// When it received the message, unix milliseconds.
    pub received_unix_ms: u64,
}

/// The body of `POST /v1/keys/{op}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRequest {
    /// A 32-byte key in standard base64.
    pub key: String,
}

/// The answer of the key endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyIds {
    /// Key ids (hex), the primary first.
    pub keys: Vec<String>,
}

/// State shared by the admin handlers and [`crate::node::Node`].
#[derive(Debug)]
pub(crate) struct Shared {
    pub(crate) gossip: GossipHandle,
    pub(crate) router: Router,
    started: Instant,
    /// Set once a graceful shutdown began; readiness turns off.
    draining: AtomicBool,
    /// Gossip messages seen, for `rumor gossip`. A plain mutex: held only to
    /// insert or look up.
    receipts: Mutex<Receipts>,
    /// Whether `POST /v1/fault/isolate` is allowed (`NodeConfig::fault_injection`).
    fault_injection: bool,
}

#[derive(Debug, Default)]
struct Receipts {
    at: HashMap<(String, u64), u64>,
    order: VecDeque<(String, u64)>,
}

impl Receipts {
    fn record(&mut self, origin: String, seq: u64, unix_ms: u64) {
        let id = (origin, seq);
        if self.at.contains_key(&id) {
            return;
        }
        if self.order.len() >= MAX_RECEIPTS
            && let Some(old) = self.order.pop_front()
        {
            self.at.remove(&old);
        }
        self.order.push_back(id.clone());
        self.at.insert(id, unix_ms);
    }
}

impl Shared {
    /// Shared state, and a task recording gossip message receipts that ends
    /// with the gossip task.
    pub(crate) fn new(gossip: GossipHandle, router: Router, fault_injection: bool) -> Arc<Self> {
        let mut events = gossip.events();
        let shared = Arc::new(Self {
            gossip,
            router,
            started: Instant::now(),
            draining: AtomicBool::new(false),
            receipts: Mutex::default(),
            fault_injection,
        });
        let weak = Arc::downgrade(&shared);
        tokio::spawn(async move {
            loop {
                match events.recv().await {
                    Ok(Event::UserMessage { origin, seq, .. }) => {
                        let Some(s) = weak.upgrade() else { return };
                        s.receipts.lock().unwrap().record(origin, seq, now_ms());
                    }
                    Ok(_) | Err(RecvError::Lagged(_)) => {}
                    Err(RecvError::Closed) => return,
                }
            }
        });
        shared
    }

    pub(crate) fn set_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    fn ready(&self) -> Result<(), String> {
        if self.draining.load(Ordering::Relaxed) {
            Err("draining".into())
        } else if !self.gossip.view().borrow().joined {
            Err("not joined".into())
        } else if let Some(Err(why)) = self.router.worker().and_then(|w| w.sink()).map(|s| s.health()) {
            Err(format!("event log: {why}"))
        } else {
            Ok(())
        }
    }
}

fn now_ms() -> u64 {
    mesh::unix_ms(SystemTime::now())
}

/// Serves the admin API on `listener` until `shutdown` completes; requests in
/// progress (streamed replies among them) are allowed to finish.
pub(crate) async fn serve(
    listener: TcpListener,
    shared: Arc<Shared>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = axum::Router::new()
        .route("/v1/members", get(members))
        .route("/v1/ring", get(ring))
        .route("/metrics", get(metrics))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/v1/send", post(send))
        .route("/v1/gossip", post(create_gossip))
        .route("/v1/gossip/{origin}/{seq}", get(gossip_receipt))
        .route("/v1/keys", get(list_keys))
        .route("/v1/keys/{op}", post(change_keys))
        .route("/v1/fault/isolate", post(isolate))
        .with_state(shared);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

type Shr = State<Arc<Shared>>;

fn status_name(s: Status) -> &'static str {
    match s {
        Status::Alive => "alive",
        Status::Suspect => "suspect",
        Status::Dead => "dead",
        Status::Left => "left",
    }
}

async fn members(State(s): Shr) -> Json<Members> {
    let view = s.gossip.view().borrow().clone();
    let mut members: Vec<MemberInfo> = std::iter::once(&view.local)
        .chain(&view.members)
        .map(|m| MemberInfo {
            name: m.name.clone(),
            addr: m.addr.to_string(),
            status: status_name(m.status).into(),
            incarnation: m.incarnation,
            roles: m.meta.roles.clone(),
            capacity: m.meta.capacity,
            services: m.meta.services.clone(),
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    Json(Members {
        node: s.gossip.name().to_owned(),
        joined: view.joined,
        members,
    })
}

async fn ring(State(s): Shr) -> Json<RingInfo> {
    let table = s.router.table();
    let ring = table.ring();
    let mut owned: HashMap<&str, usize> = HashMap::new();
    if !ring.is_empty() {
        for i in 0..OWNERSHIP_SAMPLE {
            if let Some(owner) = ring.owner(format!("sample-{i}").as_bytes()) {
                *owned.entry(owner).or_default() += 1;
            }
        }
    }
    let mut workers: Vec<RingWorker> = ring
        .members()
        .iter()
        .map(|m| RingWorker {
            name: m.name.clone(),
            mesh: table.addr(&m.name).unwrap_or_default().to_owned(),
            capacity: m.weight,
            share: owned.get(m.name.as_str()).copied().unwrap_or(0) as f64 / OWNERSHIP_SAMPLE as f64,
        })
        .collect();
    workers.sort_by(|a, b| a.name.cmp(&b.name));
    Json(RingInfo {
        node: s.gossip.name().to_owned(),
        checksum: format!("{:016x}", table.checksum()),
        workers,
        sampled_keys: OWNERSHIP_SAMPLE,
    })
}

async fn healthz(State(s): Shr) -> (StatusCode, &'static str) {
    match s.gossip.snapshot().await {
        Ok(_) => (StatusCode::OK, "ok\n"),
        Err(_) => (StatusCode::SERVICE_UNAVAILABLE, "gossip stopped\n"),
    }
}

async fn readyz(State(s): Shr) -> (StatusCode, String) {
    match s.ready() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
    }
}

/// Prometheus text exposition, written by hand: a few dozen lines do not
/// need a metrics library.
struct Prom(String);

impl Prom {
    fn header(&mut self, name: &str, help: &str, kind: &str) {
        let help = help.split_whitespace().collect::<Vec<_>>().join(" ");
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    fn counter(&mut self, name: &str, help: &str, value: u64) {
        self.header(name, help, "counter");
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.0, "{name} {value}");
    }

    fn counters(&mut self, prefix: &str, fields: Vec<(&'static str, &'static str, u64)>) {
        for (name, help, value) in fields {
            self.counter(&format!("{prefix}{name}_total"), help, value);
        }
    }
}

fn membership_fields(st: &membership::Stats) -> Vec<(&'static str, &'static str, u64)> {
    vec![
        (
            "packets_in",
            "Packets handed in (datagrams and stream messages).",
            st.packets_in,
        ),
        ("bytes_in", "Bytes handed in.", st.bytes_in),
        ("packets_out", "Packets produced.", st.packets_out),
        ("bytes_out", "Bytes produced.", st.bytes_out),
        (
            "malformed",
            "Packets that did not decode as a gossip packet.",
            st.malformed,
        ),
        (
            "version_mismatch",
            "Packets from a peer speaking another protocol version.",
            st.version_mismatch,
        ),
        ("oversized", "Packets over the size limit.", st.oversized),
        (
            "invalid",
            "Packets or gossip items with a missing or invalid field.",
            st.invalid,
        ),
        ("misdirected", "Pings addressed to another node name.", st.misdirected),
        ("probes", "Probes started.", st.probes),
        ("probe_failures", "Probes that ended without an ack.", st.probe_failures),
        ("indirect_probes", "Indirect probe requests sent.", st.indirect_probes),
        ("nacks_received", "Nacks received.", st.nacks_received),
        ("refutations", "Suspicions about this node refuted.", st.refutations),
        ("push_pulls", "Push-pull exchanges initiated.", st.push_pulls),
        (
            "digest_syncs",
            "Push-pulls started because this node's view digest differed from its peers'.",
            st.digest_syncs,
        ),
        (
            "suspicions",
            "Times this node marked another member suspect.",
            st.suspicions,
        ),
        (
            "failures_declared",
            "Times this node marked another member dead (failed, not left).",
            st.failures_declared,
        ),
        (
            "user_delivered",
            "User gossip messages delivered to this node.",
            st.user_delivered,
        ),
        (
            "user_duplicates",
            "Duplicate user gossip messages dropped.",
            st.user_duplicates,
        ),
    ]
}

async fn metrics(State(s): Shr) -> Response {
    let Ok(snap) = s.gossip.snapshot().await else {
        return (StatusCode::SERVICE_UNAVAILABLE, "gossip stopped\n").into_response();
    };
    let mut p = Prom(String::with_capacity(8192));
    p.counters("rumor_membership_", membership_fields(&snap.stats));
    p.counters("rumor_transport_", snap.transport.fields());
    p.counters("rumor_mesh_", s.router.stats().fields());
    if let Some(w) = s.router.worker() {
        p.counters("rumor_worker_", w.stats().fields());
        p.gauge(
            "rumor_worker_in_flight",
            "Messages queued or being processed now.",
            w.in_flight(),
        );
        p.gauge(
            "rumor_worker_capacity",
            "Messages the worker accepts at once.",
            w.capacity(),
        );
        for (name, help, value, is_counter) in w.sink().map(|s| s.metrics()).unwrap_or_default() {
            if is_counter {
                p.counter(&format!("rumor_events_{name}_total"), help, value);
            } else {
                p.gauge(&format!("rumor_events_{name}"), help, value);
            }
        }
    }
    p.header(
        "rumor_members",
        "Members this node knows, by status (itself included).",
        "gauge",
    );
    let mut by_status: BTreeMap<&str, usize> = ["alive", "suspect", "dead", "left"]
        .into_iter()
        .map(|k| (k, 0))
        .collect();
    for m in std::iter::once(&snap.view.local).chain(&snap.view.members) {
        *by_status.entry(status_name(m.status)).or_default() += 1;
    }
    for (status, n) in by_status {
        let _ = writeln!(p.0, "rumor_members{{status=\"{status}\"}} {n}");
    }
    p.gauge(
        "rumor_health_score",
        "Lifeguard local health multiplier (0 is healthy).",
        snap.health_score,
    );
    p.gauge(
        "rumor_pending_broadcasts",
        "Gossip updates waiting to be disseminated.",
        snap.pending_broadcasts,
    );
    p.gauge(
        "rumor_ring_workers",
        "Workers on this node's ring.",
        s.router.table().ring().len(),
    );
    p.gauge(
        "rumor_mesh_pooled_peers",
        "Peers with a pooled mesh channel.",
        s.router.pooled_peers().len(),
    );
    p.gauge(
        "rumor_gossip_keys",
        "Gossip keys installed (0 in plaintext mode).",
        snap.keys.map_or(0, |k| k.len()),
    );
    p.gauge(
        "rumor_ready",
        "1 when joined and not draining.",
        u8::from(s.ready().is_ok()),
    );
    p.gauge(
        "rumor_uptime_seconds",
        "Seconds since the node started.",
        format!("{:.3}", s.started.elapsed().as_secs_f64()),
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], p.0).into_response()
}

fn error_info(code: tonic::Code, message: String) -> ErrorInfo {
    ErrorInfo {
        code: code as u32,
        name: format!("{code:?}"),
        message,
    }
}

fn line(l: &ReplyLine) -> Bytes {
    let mut v = serde_json::to_vec(l).unwrap_or_default();
    v.push(b'\n');
    Bytes::from(v)
}

fn chunk_line(c: ReplyChunk) -> ReplyLine {
    ReplyLine {
        id: c.id,
        seq: c.seq,
        worker: c.worker,
        data: String::from_utf8_lossy(&c.data).into_owned(),
        last: c.last,
        replayed: c.replayed,
        error: c.error.map(|e| ErrorInfo {
            code: e.code,
            name: format!("{:?}", tonic::Code::from(e.code as i32)),
            message: e.message,
        }),
    }
}

fn http_status(code: tonic::Code) -> StatusCode {
    use tonic::Code;
    match code {
        Code::InvalidArgument | Code::OutOfRange => StatusCode::BAD_REQUEST,
        Code::AlreadyExists => StatusCode::CONFLICT,
        Code::DeadlineExceeded => StatusCode::GATEWAY_TIMEOUT,
        Code::Unavailable | Code::ResourceExhausted => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

fn ndjson(status: StatusCode, body: Body) -> Response {
    (status, [(header::CONTENT_TYPE, "application/x-ndjson")], body).into_response()
}

async fn send(State(s): Shr, Json(req): Json<SendRequest>) -> Response {
    let id = req.id.unwrap_or_else(mesh::new_message_id);
    let timeout = req
        .timeout_ms
        .map(Duration::from_millis)
        .unwrap_or(s.router.config().default_timeout);
    let envelope = Envelope {
        id: id.clone(),
        key: req.key,
        payload: Bytes::from(req.payload),
        deadline_unix_ms: mesh::deadline_in(timeout),
        ..Default::default()
    };
    match s.router.send(envelope).await {
        Err(status) => {
            let l = ReplyLine {
                id,
                seq: 0,
                worker: String::new(),
                data: String::new(),
                last: false,
                replayed: false,
                error: Some(error_info(status.code(), status.message().to_owned())),
            };
            ndjson(http_status(status.code()), Body::from(line(&l)))
        }
        Ok(stream) => {
            // Every item becomes one line; an `Err` item (a refusal after the
            // stream began) becomes the terminal error line.
            let mut next_seq = 0;
            let lines = stream.map(move |item| {
                let l = match item {
                    Ok(c) => {
                        next_seq = c.seq + 1;
                        chunk_line(c)
                    }
                    Err(status) => ReplyLine {
                        id: id.clone(),
                        seq: next_seq,
                        worker: String::new(),
                        data: String::new(),
                        last: false,
                        replayed: false,
                        error: Some(error_info(status.code(), status.message().to_owned())),
                    },
                };
                Ok::<_, std::convert::Infallible>(line(&l))
            });
            ndjson(StatusCode::OK, Body::from_stream(lines))
        }
    }
}

async fn create_gossip(State(s): Shr, Json(req): Json<GossipRequest>) -> Response {
    let created = now_ms();
    match s.gossip.broadcast(Bytes::from(req.payload)).await {
        Ok((origin, seq)) => {
            s.receipts.lock().unwrap().record(origin.clone(), seq, created);
            Json(GossipCreated {
                origin,
                seq,
                created_unix_ms: created,
            })
            .into_response()
        }
        Err(e) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    }
}

async fn gossip_receipt(State(s): Shr, Path((origin, seq)): Path<(String, u64)>) -> Response {
    let at = s.receipts.lock().unwrap().at.get(&(origin, seq)).copied();
    match at {
        Some(received_unix_ms) => Json(GossipReceipt {
            node: s.gossip.name().to_owned(),
            received_unix_ms,
        })
        .into_response(),
        None => (StatusCode::NOT_FOUND, "not received\n").into_response(),
    }
}

fn key_answer(r: Result<Vec<crate::crypto::KeyId>, CommandError<KeyringError>>) -> Response {
    match r {
        Ok(ids) => Json(KeyIds {
            keys: ids.iter().map(ToString::to_string).collect(),
        })
        .into_response(),
        Err(CommandError::Rejected(e)) => (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
        Err(CommandError::Stopped) => (StatusCode::SERVICE_UNAVAILABLE, "gossip stopped\n").into_response(),
    }
}

async fn list_keys(State(s): Shr) -> Response {
    key_answer(s.gossip.keys().await)
}

async fn change_keys(State(s): Shr, Path(op): Path<String>, Json(req): Json<KeyRequest>) -> Response {
    let r = match op.as_str() {
        "install" => s.gossip.install_key(&req.key).await,
        "use" => s.gossip.use_key(&req.key).await,
        "remove" => s.gossip.remove_key(&req.key).await,
        _ => return (StatusCode::NOT_FOUND, "key operations: install, use, remove\n").into_response(),
    };
    if r.is_ok() {
        tracing::info!(op, "gossip keyring changed");
    }
    key_answer(r)
}

/// The body of `POST /v1/fault/isolate`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Isolate {
    /// True cuts the node's gossip traffic, false restores it.
    pub isolated: bool,
}

/// Fault injection for tests: cuts or restores the node's gossip traffic
/// (see [`GossipHandle::set_isolated`]). Refused unless the node was started
/// with fault injection enabled.
async fn isolate(State(s): Shr, Json(req): Json<Isolate>) -> Response {
    if !s.fault_injection {
        let why = "fault injection is disabled on this node; start it with debug.fault_injection = true\n";
        return (StatusCode::FORBIDDEN, why).into_response();
    }
    s.gossip.set_isolated(req.isolated);
    Json(req).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn receipts_keep_the_first_time_and_forget_the_oldest() {
        let mut r = Receipts::default();
        r.record("a".into(), 1, 10);
        r.record("a".into(), 1, 20);
        assert_eq!(r.at[&("a".to_owned(), 1)], 10);
        for i in 0..MAX_RECEIPTS as u64 {
            r.record("b".into(), i, i);
        }
        assert!(!r.at.contains_key(&("a".to_owned(), 1)));
        assert_eq!(r.at.len(), MAX_RECEIPTS);
    }

    #[test]
    fn reply_lines_round_trip_and_know_their_end() {
        let l = ReplyLine {
            id: "x".into(),
            seq: 2,
            worker: "w".into(),
            data: "hi".into(),
            last: true,
            replayed: false,
            error: None,
        };
        let back: ReplyLine = serde_json::from_slice(&line(&l)).unwrap();
        assert_eq!(back, l);
        assert!(back.is_terminal());
    }
}
