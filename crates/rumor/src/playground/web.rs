//! The playground's HTTP server: the page (built by Vite from
//! `crates/rumor/web`, embedded in the binary) and the JSON API it and the
//! `rumor playground` subcommands use.
//!
//! The API is private to the binary and its page, so its bodies are plain
//! serde types here rather than `rumor.api.v1` messages.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use proto::api::{Members, Ring};
use proto::edge::Reply;
use serde::{Deserialize, Serialize};
use tokio::task::JoinSet;

use super::cluster::{self, Cluster, Process, unix_ms};
use super::sim::{self, SimHandle};

const INDEX_HTML: &str = include_str!("../../web/dist/index.html");
const APP_JS: &str = include_str!("../../web/dist/assets/app.js");
const APP_CSS: &str = include_str!("../../web/dist/assets/app.css");

/// How often the cluster's state is gathered for the page.
pub(crate) const REFRESH: Duration = Duration::from_millis(250);

/// Messages the page is shown, newest last.
const MAX_FLOWS: usize = 30;

/// What the server shares between requests.
pub(crate) struct Shared {
    pub(crate) mode: Mode,
}

pub(crate) enum Mode {
    Cluster(Box<Live>),
    Sim(SimHandle),
}

/// A live cluster and what was last gathered from it.
pub(crate) struct Live {
    pub(crate) cluster: tokio::sync::Mutex<Cluster>,
    pub(crate) gathered: Mutex<Gathered>,
    pub(crate) flows: Mutex<VecDeque<Flow>>,
    pub(crate) membership: membership::Config,
    pub(crate) preset: String,
    /// The event log and the bridge, described for the page.
    pub(crate) log: String,
    /// Where configs and logs are, and what workers answer with, for the page.
    dir: String,
    backend: Option<String>,
    /// The API key the playground uses at the gateways' edge.
    edge_key: String,
    /// Messages sent through the playground, for the page to tell new ones.
    sent: AtomicU64,
    /// The simulator's spread prediction, by cluster size.
    predictions: Mutex<HashMap<usize, Vec<f64>>>,
}

impl Live {
    pub(crate) fn new(cluster: Cluster, membership: membership::Config, preset: String, log: String) -> Self {
        let settings = cluster.settings();
        Live {
            dir: settings.dir.display().to_string(),
            backend: settings
                .backend
                .as_ref()
                .map(|(url, model)| format!("{model} at {url}")),
            edge_key: cluster.edge_key.clone(),
            sent: AtomicU64::new(0),
            cluster: tokio::sync::Mutex::new(cluster),
            gathered: Mutex::default(),
            flows: Mutex::default(),
            membership,
            preset,
            log,
            predictions: Mutex::default(),
        }
    }
}

/// One node as the page lists it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NodeRow {
    name: String,
    role: &'static str,
    process: Process,
    isolated: bool,
    delay_ms: u32,
    starts: u32,
    admin: String,
    edge: Option<String>,
}

/// What was gathered from every running node at `t`.
#[derive(Debug, Default)]
pub(crate) struct Gathered {
    t: u64,
    nodes: Vec<NodeRow>,
    actions: Vec<(u64, String)>,
    views: BTreeMap<String, Members>,
    rings: BTreeMap<String, Ring>,
    /// Messages each worker accepted since it started.
    accepted: BTreeMap<String, u64>,
}

/// A message the playground sent, and who answered.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Flow {
    t: u64,
    key: String,
    gateway: String,
    worker: String,
    ms: u64,
}

pub(crate) fn routes(shared: Arc<Shared>) -> Router {
    Router::new()
        .route(
            "/",
            get(|| async { ([(header::CONTENT_TYPE, "text/html; charset=utf-8")], INDEX_HTML) }),
        )
        .route(
            "/assets/app.js",
            get(|| async { ([(header::CONTENT_TYPE, "text/javascript; charset=utf-8")], APP_JS) }),
        )
        .route(
            "/assets/app.css",
            get(|| async { ([(header::CONTENT_TYPE, "text/css; charset=utf-8")], APP_CSS) }),
        )
        .route("/api/info", get(info))
        .route("/api/state", get(state))
        .route("/api/nodes/{name}/{action}", post(node_action))
        .route("/api/workers", post(add_worker))
        .route("/api/keys/rotate", post(rotate_key))
        .route("/api/gossip", post(gossip))
        .route("/api/send", post(send))
        .route("/api/owner", get(owner))
        .route("/api/sim/frames/{k}", get(sim_frame))
        .layer(axum::middleware::from_fn(local_only))
        .with_state(shared)
}

/// The page's API kills processes and sends messages with the playground's
/// own credential: it answers only requests addressed to a loopback name
/// (a page of another site that rebinds its name to 127.0.0.1 is refused),
/// and takes changes only as JSON (which another site's form cannot post).
async fn local_only(req: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or_default();
    let name = match host.rsplit_once(':') {
        Some((name, port)) if port.bytes().all(|b| b.is_ascii_digit()) => name,
        _ => host,
    };
    if !matches!(name, "127.0.0.1" | "localhost" | "[::1]") {
        return bad(
            StatusCode::FORBIDDEN,
            format!("the playground answers only on loopback, not {host:?}"),
        );
    }
    let json = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|h| h.to_str().ok())
        .is_some_and(|t| t.starts_with("application/json"));
    if req.method() == axum::http::Method::POST && !json {
        return bad(StatusCode::UNSUPPORTED_MEDIA_TYPE, "send changes as application/json");
    }
    next.run(req).await
}

type Shr = State<Arc<Shared>>;

fn bad(status: StatusCode, why: impl std::fmt::Display) -> Response {
    (status, Json(serde_json::json!({ "error": why.to_string() }))).into_response()
}

fn live(s: &Shared) -> Option<&Live> {
    match &s.mode {
        Mode::Cluster(l) => Some(l),
        Mode::Sim(_) => None,
    }
}

fn not_live() -> Response {
    bad(
        StatusCode::NOT_FOUND,
        "this playground runs the simulator, not a cluster",
    )
}

async fn info(State(s): Shr) -> Response {
    match &s.mode {
        Mode::Cluster(l) => Json(serde_json::json!({
            "mode": "cluster",
            "preset": l.preset,
            "log": l.log,
            "dir": l.dir,
            "backend": l.backend,
            "slow_ms": slow_default(&l.membership),
        }))
        .into_response(),
        Mode::Sim(run) => match run.info().await {
            Some(info) => Json(serde_json::json!({ "mode": "sim", "sim": info })).into_response(),
            None => bad(StatusCode::INTERNAL_SERVER_ERROR, "the simulation stopped"),
        },
    }
}

/// Gathers every running node's view, ring and worker count, forever.
pub(crate) async fn gather(shared: Arc<Shared>) {
    let Mode::Cluster(l) = &shared.mode else { return };
    loop {
        let started = Instant::now();
        // An action holds the cluster while a node starts or an admin call
        // runs; the views are gathered meanwhile with the roster of the
        // last look.
        let roster = match l.cluster.try_lock() {
            Ok(mut c) => {
                c.reap();
                let nodes: Vec<NodeRow> = c
                    .nodes
                    .values()
                    .map(|n| NodeRow {
                        name: n.name.clone(),
                        role: n.role,
                        process: n.process,
                        isolated: n.isolated,
                        delay_ms: n.delay_ms,
                        starts: n.starts,
                        admin: n.admin.clone(),
                        edge: n.edge.clone(),
                    })
                    .collect();
                Some((nodes, c.actions.iter().cloned().collect::<Vec<_>>()))
            }
            Err(_) => None,
        };
        let (mut nodes, actions) = roster.unwrap_or_else(|| {
            let g = l.gathered.lock().unwrap_or_else(|e| e.into_inner());
            (g.nodes.clone(), g.actions.clone())
        });
        nodes.sort_by_key(|n| (role_rank(n.role), n.name.len(), n.name.clone()));
        let mut asks = JoinSet::new();
        for n in nodes.iter().filter(|n| n.process == Process::Running) {
            let (name, admin, worker) = (n.name.clone(), n.admin.clone(), n.role == "worker");
            asks.spawn(async move {
                let node = cluster::glance(&admin);
                let view = node.members().await.ok();
                let ring = node.ring().await.ok();
                let accepted = if worker { accepted(&node).await } else { None };
                (name, view, ring, accepted)
            });
        }
        let mut g = Gathered {
            t: unix_ms(),
            nodes,
            actions,
            ..Gathered::default()
        };
        while let Some(Ok((name, view, ring, accepted))) = asks.join_next().await {
            if let Some(v) = view {
                g.views.insert(name.clone(), v);
            }
            if let Some(r) = ring {
                g.rings.insert(name.clone(), r);
            }
            if let Some(a) = accepted {
                g.accepted.insert(name, a);
            }
        }
        *l.gathered.lock().unwrap_or_else(|e| e.into_inner()) = g;
        tokio::time::sleep(REFRESH.saturating_sub(started.elapsed())).await;
    }
}

/// Gateways first, then forward nodes, then workers.
fn role_rank(role: &str) -> u8 {
    match role {
        "gateway" => 0,
        "forward" => 1,
        _ => 2,
    }
}

/// `rumor_worker_accepted_total` from a worker's metrics.
async fn accepted(node: &node::client::AdminClient) -> Option<u64> {
    let text = node.metrics().await.ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("rumor_worker_accepted_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

#[derive(Debug, Deserialize)]
struct ViewQuery {
    view: Option<String>,
}

/// The default point of view (and creator of gossip messages): the first
/// running gateway, else the first running node.
fn default_view(g: &Gathered) -> String {
    let running = || g.nodes.iter().filter(|n| n.process == Process::Running);
    running()
        .find(|n| n.role == "gateway")
        .or_else(|| running().next())
        .map(|n| n.name.clone())
        .unwrap_or_default()
}

/// The running nodes of the last look, as (name, admin, edge).
fn running(l: &Live) -> Vec<(String, String, Option<String>)> {
    let g = l.gathered.lock().unwrap_or_else(|e| e.into_inner());
    g.nodes
        .iter()
        .filter(|n| n.process == Process::Running)
        .map(|n| (n.name.clone(), n.admin.clone(), n.edge.clone()))
        .collect()
}

/// The delay of a slowed link when none is given: half again the preset's
/// probe period, so that acks come back after the prober gave up.
fn slow_default(m: &membership::Config) -> u32 {
    u32::try_from(m.probe_interval.as_millis() * 3 / 2).unwrap_or(u32::MAX)
}

async fn state(State(s): Shr, Query(q): Query<ViewQuery>) -> Response {
    let Some(l) = live(&s) else { return not_live() };
    let g = l.gathered.lock().unwrap_or_else(|e| e.into_inner());
    let view_name = q.view.filter(|v| !v.is_empty()).unwrap_or_else(|| default_view(&g));
    let view = g.views.get(&view_name);
    let nodes: Vec<serde_json::Value> = g
        .nodes
        .iter()
        .map(|n| {
            let seen = view.and_then(|v| v.members.iter().find(|m| m.name == n.name));
            let status = seen.map_or("unknown", |m| m.status().short_name());
            serde_json::json!({
                "name": n.name,
                "role": n.role,
                "process": n.process,
                "isolated": n.isolated,
                "delay_ms": n.delay_ms,
                "starts": n.starts,
                "admin": n.admin,
                "edge": n.edge,
                "status": status,
                "incarnation": seen.map(|m| m.incarnation),
                "accepted": g.accepted.get(&n.name),
                "ring_checksum": g.rings.get(&n.name).map(|r| r.checksum.clone()),
            })
        })
        .collect();
    let checksums: std::collections::BTreeSet<&str> = g.rings.values().map(|r| r.checksum.as_str()).collect();
    let flows: Vec<Flow> = l
        .flows
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let actions: Vec<serde_json::Value> = g
        .actions
        .iter()
        .map(|(t, text)| serde_json::json!({ "t": t, "text": text }))
        .collect();
    Json(serde_json::json!({
        "t": g.t,
        "view": view_name,
        "view_answers": view.is_some(),
        "nodes": nodes,
        "ring": g.rings.get(&view_name),
        "rings_agree": checksums.len() <= 1,
        "flows": flows,
        "sent": l.sent.load(Ordering::Relaxed),
        "actions": actions,
    }))
    .into_response()
}

#[derive(Debug, Default, Deserialize)]
struct ActionQuery {
    /// For `slow`: the delay in milliseconds (0 restores the link).
    ms: Option<u32>,
}

async fn node_action(
    State(s): Shr,
    Path((name, action)): Path<(String, String)>,
    Query(q): Query<ActionQuery>,
) -> Response {
    let Some(l) = live(&s) else { return not_live() };
    let mut c = l.cluster.lock().await;
    let done = match action.as_str() {
        "kill" => c.kill(&name).await,
        "stop" => c.stop(&name).await,
        "restart" => c.restart(&name).await,
        "isolate" => c.isolate(&name, true).await,
        "repair" => c.isolate(&name, false).await,
        "slow" => c.slow(&name, q.ms.unwrap_or_else(|| slow_default(&l.membership))).await,
        other => {
            return bad(
                StatusCode::NOT_FOUND,
                format!("unknown action {other:?}; known: kill, stop, restart, isolate, repair, slow"),
            );
        }
    };
    match done {
        Ok(()) => Json(serde_json::json!({ "node": name, "done": action })).into_response(),
        Err(e) => bad(StatusCode::CONFLICT, format!("{e:#}")),
    }
}

async fn add_worker(State(s): Shr) -> Response {
    let Some(l) = live(&s) else { return not_live() };
    match l.cluster.lock().await.add_worker().await {
        Ok(name) => Json(serde_json::json!({ "node": name, "done": "start" })).into_response(),
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

async fn rotate_key(State(s): Shr) -> Response {
    let Some(l) = live(&s) else { return not_live() };
    match l.cluster.lock().await.rotate_key().await {
        Ok(id) => Json(serde_json::json!({ "key_id": id })).into_response(),
        Err(e) => bad(StatusCode::INTERNAL_SERVER_ERROR, format!("{e:#}")),
    }
}

#[derive(Debug, Deserialize)]
struct GossipBody {
    /// The node that creates it; default: the first gateway.
    #[serde(default)]
    from: String,
    #[serde(default)]
    text: String,
}

/// When one node received the gossip message, in ms after it was created.
#[derive(Debug, Serialize)]
struct Receipt {
    node: String,
    ms: i64,
}

async fn gossip(State(s): Shr, Json(body): Json<GossipBody>) -> Response {
    let Some(l) = live(&s) else { return not_live() };
    let running: Vec<(String, String)> = running(l).into_iter().map(|(n, a, _)| (n, a)).collect();
    let from = if body.from.is_empty() {
        default_view(&l.gathered.lock().unwrap_or_else(|e| e.into_inner()))
    } else {
        body.from
    };
    let Some((_, admin)) = running.iter().find(|(n, _)| *n == from) else {
        return bad(StatusCode::CONFLICT, format!("{from:?} is not running"));
    };
    let text = if body.text.is_empty() {
        "hello from the playground".into()
    } else {
        body.text
    };
    let created = match cluster::client(admin).gossip(&text).await {
        Ok(c) => c,
        Err(e) => return bad(StatusCode::BAD_GATEWAY, e),
    };
    // Every running node is asked until it has it, for at most 10 s.
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut receipts: BTreeMap<String, i64> = BTreeMap::new();
    while receipts.len() < running.len() && Instant::now() < deadline {
        for (name, admin) in &running {
            if receipts.contains_key(name) {
                continue;
            }
            if let Ok(Some(r)) = cluster::client(admin)
                .gossip_receipt(&created.origin, created.seq)
                .await
            {
                receipts.insert(name.clone(), r.received_unix_ms as i64 - created.created_unix_ms as i64);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let missing: Vec<&String> = running
        .iter()
        .map(|(n, _)| n)
        .filter(|n| !receipts.contains_key(*n))
        .collect();
    let mut receipts: Vec<Receipt> = receipts.into_iter().map(|(node, ms)| Receipt { node, ms }).collect();
    receipts.sort_by_key(|r| r.ms);
    let n = running.len();
    let cfg = l.membership.clone();
    let cached = l.predictions.lock().unwrap_or_else(|e| e.into_inner()).get(&n).cloned();
    let prediction = match cached {
        Some(p) => p,
        None => {
            let p = tokio::task::spawn_blocking(move || sim::spread_prediction(&cfg, n, 21))
                .await
                .unwrap_or_default();
            l.predictions
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(n, p.clone());
            p
        }
    };
    Json(serde_json::json!({
        "origin": created.origin,
        "seq": created.seq,
        "from": from,
        "text": text,
        "nodes": n,
        "receipts": receipts,
        "missing": missing,
        "prediction": prediction,
    }))
    .into_response()
}

#[derive(Debug, Deserialize)]
struct SendBody {
    key: String,
    text: String,
}

async fn send(State(s): Shr, Json(body): Json<SendBody>) -> Response {
    let Some(l) = live(&s) else { return not_live() };
    let Some((gateway, _, Some(edge))) = running(l).into_iter().find(|(_, _, edge)| edge.is_some()) else {
        return bad(StatusCode::CONFLICT, "no gateway is running");
    };
    let credential = l.edge_key.clone();
    let started = Instant::now();
    let path = format!("/v1/conversations/{}/messages", percent_encode(&body.key));
    let edge_client = node::client::AdminClient::new(edge)
        .with_timeout(Duration::from_secs(120))
        .with_bearer(credential);
    let msg = serde_json::json!({ "text": body.text, "client_id": format!("playground-{}", unix_ms()) });
    match edge_client.post_json::<Reply>(&path, &msg).await {
        Ok(reply) => {
            let flow = Flow {
                t: unix_ms(),
                key: body.key.clone(),
                gateway: gateway.clone(),
                worker: reply.worker.clone(),
                ms: started.elapsed().as_millis() as u64,
            };
            let mut flows = l.flows.lock().unwrap_or_else(|e| e.into_inner());
            if flows.len() >= MAX_FLOWS {
                flows.pop_front();
            }
            flows.push_back(flow.clone());
            l.sent.fetch_add(1, Ordering::Relaxed);
            Json(serde_json::json!({ "reply": reply, "gateway": gateway, "ms": flow.ms })).into_response()
        }
        Err(e) => bad(StatusCode::BAD_GATEWAY, e),
    }
}

/// `key` as one URL path segment or query value: unreserved characters as
/// they are, every other byte percent-encoded.
pub(super) fn percent_encode(key: &str) -> String {
    let mut out = String::with_capacity(key.len());
    for b in key.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[derive(Debug, Deserialize)]
struct OwnerQuery {
    key: String,
    view: Option<String>,
}

/// The worker owning `key` on the ring of the chosen node's view: the same
/// function of the same member set that every node's router computes.
async fn owner(State(s): Shr, Query(q): Query<OwnerQuery>) -> Response {
    let Some(l) = live(&s) else { return not_live() };
    let g = l.gathered.lock().unwrap_or_else(|e| e.into_inner());
    let view = q.view.filter(|v| !v.is_empty()).unwrap_or_else(|| default_view(&g));
    let Some(ring) = g.rings.get(&view) else {
        return bad(StatusCode::CONFLICT, format!("{view} does not answer"));
    };
    let members: Vec<rumor_ring::Member> = ring
        .workers
        .iter()
        .map(|w| rumor_ring::Member::new(w.name.clone(), w.capacity))
        .collect();
    let table = rumor_ring::Ring::new(&members);
    Json(serde_json::json!({
        "key": q.key,
        "view": view,
        "owner": table.owner(q.key.as_bytes()),
        "checksum": format!("{:016x}", table.checksum()),
        "view_checksum": ring.checksum,
    }))
    .into_response()
}

async fn sim_frame(State(s): Shr, Path(k): Path<usize>) -> Response {
    let Mode::Sim(run) = &s.mode else {
        return bad(
            StatusCode::NOT_FOUND,
            "this playground runs a real cluster, not the simulator",
        );
    };
    match run.frame(k).await {
        Some(f) => Json(f).into_response(),
        None => bad(
            StatusCode::NOT_FOUND,
            format!("frame {k} is past the last ({})", sim::MAX_FRAMES - 1),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_become_one_path_segment() {
        assert_eq!(percent_encode("chat-1_a.b~"), "chat-1_a.b~");
        assert_eq!(percent_encode("a/b c?é"), "a%2Fb%20c%3F%C3%A9");
    }
}
