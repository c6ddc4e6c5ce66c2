//! A cluster in this process (workers, gateways with their edge, and on
//! request a forward node and an embedded bridge) and clients for its edge.

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use events::{EventLog, MemoryLog, PublisherConfig, Topics};
use futures_util::{SinkExt as _, StreamExt as _};
use gateway::{ApiKey, Auth, Edge, EdgeConfig, JwtConfig, Limits, key_hash};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes;
use node::{NodeConfig, Role, Roles};
use proto::Message as _;
use proto::edge::{ClientFrame, ErrorCode, ServerFrame, client_frame, server_frame};
use serde_json::Value;
use server::{EventsConfig, Server, ServerConfig};
use tokio::net::TcpStream;
pub use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// API keys of the test edge.
pub const APP_KEY: &str = "test-key-app";
pub const TENANT_KEY: &str = "test-key-tenant";
pub const WATCH_KEY: &str = "test-key-watch";
pub const AUDIENCE: &str = "rumor-test";
const HS_SECRET: [u8; 32] = [42; 32];

/// How long a test waits for anything.
pub const LIMIT: Duration = Duration::from_secs(20);

pub fn auth() -> Auth {
    let key = |name: &str, key: &str, prefix: &str, watch_only| ApiKey {
        name: name.into(),
        sha256: key_hash(key),
        prefix: prefix.into(),
        watch_only,
    };
    let jwt = JwtConfig {
        hs256_secret: Some(HS_SECRET.to_vec()),
        rs256_public_pem: Some(include_str!("../data/jwt-test-rsa.pub.pem").into()),
        audience: AUDIENCE.into(),
        issuer: None,
    };
    Auth::new(
        &[
            key("app", APP_KEY, "", false),
            key("tenant", TENANT_KEY, "t1/", false),
            key("watcher", WATCH_KEY, "", true),
        ],
        Some(&jwt),
    )
    .unwrap()
}

pub fn unix_now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()
}

pub fn jwt_hs256(claims: &Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
        claims,
        &jsonwebtoken::EncodingKey::from_secret(&HS_SECRET).unwrap(),
    )
    .unwrap()
}

pub fn jwt_rs256(claims: &Value) -> String {
    let key = jsonwebtoken::EncodingKey::from_rsa_pem(include_bytes!("../data/jwt-test-rsa.key.pem")).unwrap();
    jsonwebtoken::encode(&jsonwebtoken::Header::new(jsonwebtoken::Algorithm::RS256), claims, &key).unwrap()
}

/// What a test cluster runs.
#[derive(Debug, Clone)]
pub struct Setup {
    pub workers: usize,
    pub gateways: usize,
    pub echo_chunks: usize,
    pub echo_delay: Duration,
    pub limits: Limits,
    pub resume_grace: Duration,
    /// A forward node and an embedded bridge (SQLite, in-process log); the
    /// edges fill gaps from its history.
    pub bridge: bool,
}

impl Default for Setup {
    fn default() -> Self {
        Self {
            workers: 2,
            gateways: 1,
            echo_chunks: 3,
            echo_delay: Duration::ZERO,
            limits: Limits::default(),
            resume_grace: Duration::from_secs(10),
            bridge: false,
        }
    }
}

pub struct Cluster {
    pub workers: Vec<Server>,
    pub gateways: Vec<Server>,
    pub forward: Option<Server>,
    pub bridge: Option<bridge::Bridge>,
    _db: Option<Scratch>,
}

pub struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut p = self.0.clone().into_os_string();
            p.push(suffix);
            let _ = std::fs::remove_file(p);
        }
    }
}

fn nanos() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_nanos()
}

impl Cluster {
    pub async fn start(setup: Setup) -> Cluster {
        let log = MemoryLog::new();
        let topics = Topics::default();
        let events = setup.bridge.then(|| EventsConfig {
            log: EventLog::Memory(log.clone()),
            topics: topics.clone(),
            create_topics: true,
            forward_group: "forward".into(),
            forward_stall_timeout: None,
            publisher: PublisherConfig::default(),
        });
        let (bridge, db) = if setup.bridge {
            EventLog::Memory(log.clone())
                .create_topics(&topics.specs())
                .await
                .unwrap();
            let path = std::env::temp_dir().join(format!("rumor-edge-test-{}-{}.db", std::process::id(), nanos()));
            let mut cfg = bridge::BridgeConfig::embedded(&path, log.clone());
            cfg.http_bind = SocketAddr::from(([127, 0, 0, 1], 0));
            (Some(bridge::start(cfg).await.unwrap()), Some(Scratch(path)))
        } else {
            (None, None)
        };
        let mut seed: Option<SocketAddr> = None;
        let node = |name: String, role: Role, seed: Option<SocketAddr>| {
            let mut c = NodeConfig::new(name);
            c.gossip.membership = membership::Config::for_tests();
            c.mesh = node::mesh::MeshConfig::for_tests();
            c.roles = Roles::of(&[role]);
            c.drain_timeout = Duration::from_secs(2);
            c.gossip.seeds = seed.into_iter().collect();
            if role == Role::Worker {
                c.processor = Some(Arc::new(processors::Echo {
                    chunks: setup.echo_chunks,
                    delay: setup.echo_delay,
                }));
            }
            let mut s = ServerConfig::new(c);
            s.events = events.clone();
            if role == Role::Gateway {
                let edge = EdgeConfig {
                    auth: auth(),
                    limits: setup.limits,
                    resume_grace: setup.resume_grace,
                    heartbeat: Duration::from_secs(2),
                    history: bridge.as_ref().map(|b| b.addr().to_string()),
                    drain_timeout: Duration::from_secs(2),
                    ..EdgeConfig::default()
                };
                s.edge = Some((SocketAddr::from(([127, 0, 0, 1], 0)), edge));
            }
            s
        };
        let mut workers = Vec::new();
        for i in 1..=setup.workers {
            let s = server::start(node(format!("worker-{i}"), Role::Worker, seed))
                .await
                .unwrap();
            seed.get_or_insert(s.node().addrs().gossip);
            workers.push(s);
        }
        let mut gateways = Vec::new();
        for i in 1..=setup.gateways {
            gateways.push(
                server::start(node(format!("gateway-{i}"), Role::Gateway, seed))
                    .await
                    .unwrap(),
            );
        }
        let forward = if setup.bridge {
            Some(
                server::start(node("forward-1".into(), Role::Forward, seed))
                    .await
                    .unwrap(),
            )
        } else {
            None
        };
        let c = Cluster {
            workers,
            gateways,
            forward,
            bridge,
            _db: db,
        };
        c.converge().await;
        c
    }

    pub fn servers(&self) -> impl Iterator<Item = &Server> {
        self.workers.iter().chain(&self.gateways).chain(&self.forward)
    }

    /// Waits until every node sees every other alive and the same full ring.
    pub async fn converge(&self) {
        let total = self.servers().count();
        let workers = self.workers.len();
        tokio::time::timeout(LIMIT, async {
            loop {
                let ok = self.servers().all(|s| {
                    let n = s.node();
                    n.gossip().view().borrow().live().count() == total && n.router().table().ring().len() == workers
                });
                let sums: std::collections::BTreeSet<u64> =
                    self.servers().map(|s| s.node().router().table().checksum()).collect();
                if ok && sums.len() == 1 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the cluster converges");
    }

    pub fn edge(&self, i: usize) -> &Edge {
        self.gateways[i].edge().expect("gateways run an edge")
    }

    pub fn edge_addr(&self, i: usize) -> SocketAddr {
        self.edge(i).addr()
    }

    /// Messages the workers took.
    pub fn mesh_messages(&self) -> u64 {
        self.workers
            .iter()
            .map(|w| w.node().router().worker().unwrap().stats().accepted)
            .sum()
    }

    /// Messages each worker took, in order.
    pub fn per_worker(&self) -> Vec<u64> {
        self.workers
            .iter()
            .map(|w| w.node().router().worker().unwrap().stats().accepted)
            .collect()
    }

    pub fn worker_stats(&self) -> Vec<node::worker::WorkerStats> {
        self.workers
            .iter()
            .map(|w| w.node().router().worker().unwrap().stats())
            .collect()
    }

    /// The worker that owns `key`.
    pub fn owner(&self, key: &str) -> usize {
        let name = self.workers[0].node().router().owner(key).unwrap();
        self.workers.iter().position(|w| w.node().name() == name).unwrap()
    }

    pub async fn ws(&self, gateway: usize, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
        Ws::connect(self.edge_addr(gateway), token).await
    }

    pub async fn post(&self, gateway: usize, path: &str, token: Option<&str>, body: &str) -> (u16, String) {
        let (s, _, b) = http(self.edge_addr(gateway), "POST", path, token, Some(body), None).await;
        (s, b)
    }

    pub async fn post_sse(
        &self,
        gateway: usize,
        path: &str,
        token: Option<&str>,
        body: &str,
    ) -> (u16, hyper::HeaderMap, String) {
        http(
            self.edge_addr(gateway),
            "POST",
            path,
            token,
            Some(body),
            Some("text/event-stream"),
        )
        .await
    }

    pub async fn get(&self, gateway: usize, path: &str, token: Option<&str>) -> (u16, String) {
        let (s, _, b) = http(self.edge_addr(gateway), "GET", path, token, None, None).await;
        (s, b)
    }
}

/// One HTTP/1 request: status, headers and the whole body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
    accept: Option<&str>,
) -> (u16, hyper::HeaderMap, String) {
    let stream = TcpStream::connect(addr).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut req = hyper::Request::builder()
        .method(method)
        .uri(path)
        .header("host", addr.to_string())
        .header("content-type", "application/json");
    if let Some(t) = token {
        req = req.header("authorization", format!("Bearer {t}"));
    }
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let req = req
        .body(Full::new(Bytes::from(body.unwrap_or_default().to_owned())))
        .unwrap();
    let resp = tokio::time::timeout(LIMIT, sender.send_request(req))
        .await
        .unwrap()
        .unwrap();
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let bytes = tokio::time::timeout(LIMIT, resp.into_body().collect())
        .await
        .unwrap()
        .unwrap()
        .to_bytes();
    (status, headers, String::from_utf8_lossy(&bytes).into_owned())
}

/// The events of a server-sent events body: (event name, data).
pub fn sse_events(body: &str) -> Vec<(String, String)> {
    body.split("\n\n")
        .filter_map(|block| {
            let mut name = String::new();
            let mut data = Vec::new();
            for line in block.lines() {
                if let Some(v) = line.strip_prefix("event:") {
                    name = v.trim().to_owned();
                } else if let Some(v) = line.strip_prefix("data:") {
                    data.push(v.trim_start().to_owned());
                }
            }
            (!data.is_empty()).then(|| (name, data.join("\n")))
        })
        .collect()
}

/// A WebSocket client of the edge.
pub struct Ws {
    pub stream: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

/// A reply read from protobuf frames.
#[derive(Debug, Default)]
pub struct ProtoReply {
    pub text: String,
    pub done: bool,
    pub error: Option<ErrorCode>,
}

pub trait FrameExt {
    fn error_code(&self) -> Option<ErrorCode>;
}

impl FrameExt for ServerFrame {
    fn error_code(&self) -> Option<ErrorCode> {
        match &self.frame {
            Some(server_frame::Frame::Error(e)) => ErrorCode::try_from(e.code).ok(),
            _ => None,
        }
    }
}

impl Ws {
    pub async fn connect(addr: SocketAddr, token: Option<&str>) -> Result<Ws, tungstenite::Error> {
        let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
        if let Some(t) = token {
            req.headers_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        let (stream, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Ws { stream })
    }

    pub async fn send(&mut self, v: Value) {
        self.send_text(&v.to_string()).await;
    }

    pub async fn send_text(&mut self, t: &str) {
        self.stream.send(Message::text(t)).await.unwrap();
    }

    pub async fn send_binary(&mut self, b: Vec<u8>) {
        self.stream.send(Message::binary(b)).await.unwrap();
    }

    pub async fn send_frame(&mut self, f: client_frame::Frame) {
        self.send_binary(ClientFrame { frame: Some(f) }.encode_to_vec()).await;
    }

    /// The next data frame, raw.
    pub async fn next_message(&mut self) -> Message {
        loop {
            let m = tokio::time::timeout(LIMIT, self.stream.next())
                .await
                .expect("a frame within the limit")
                .expect("the connection is open")
                .expect("a frame");
            if !matches!(m, Message::Ping(_) | Message::Pong(_)) {
                return m;
            }
        }
    }

    /// The next text frame, as JSON.
    pub async fn next(&mut self) -> Value {
        match self.next_message().await {
            Message::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a text frame, got {other:?}"),
        }
    }

    /// The next binary frame, decoded.
    pub async fn next_proto(&mut self) -> ServerFrame {
        match self.next_message().await {
            Message::Binary(b) => ServerFrame::decode(b).unwrap(),
            other => panic!("expected a binary frame, got {other:?}"),
        }
    }

    /// Every frame about message `client_id`, up to its end; others are
    /// skipped.
    pub async fn reply(&mut self, client_id: &str) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let f = self.next().await;
            let (kind, body) = f.as_object().unwrap().iter().next().unwrap();
            if body["client_id"] != client_id {
                continue;
            }
            let end = kind == "done" || kind == "error";
            frames.push(f.clone());
            if end {
                return frames;
            }
        }
    }

    /// Sends a message in protobuf and reads its reply.
    pub async fn send_proto(&mut self, conversation: &str, client_id: &str, text: &str) -> ProtoReply {
        self.send_frame(client_frame::Frame::Send(proto::edge::Send {
            conversation: conversation.into(),
            client_id: client_id.into(),
            text: text.into(),
            ..Default::default()
        }))
        .await;
        let mut reply = ProtoReply::default();
        loop {
            match self.next_proto().await.frame {
                Some(server_frame::Frame::Chunk(c)) if c.client_id == client_id => reply.text.push_str(&c.text),
                Some(server_frame::Frame::Done(d)) if d.client_id == client_id => {
                    reply.done = true;
                    return reply;
                }
                Some(server_frame::Frame::Error(e)) if e.client_id == client_id => {
                    reply.error = ErrorCode::try_from(e.code).ok();
                    return reply;
                }
                _ => {}
            }
        }
    }

    /// Reads until the server closes: its close code and reason.
    pub async fn closed(&mut self) -> (u16, String) {
        loop {
            match tokio::time::timeout(LIMIT, self.stream.next())
                .await
                .expect("closed within the limit")
            {
                Some(Ok(Message::Close(Some(f)))) => return (u16::from(f.code), f.reason.to_string()),
                Some(Ok(Message::Close(None))) | None => return (u16::from(CloseCode::Status), String::new()),
                Some(Ok(_)) => continue,
                Some(Err(tungstenite::Error::Protocol(_))) | Some(Err(tungstenite::Error::ConnectionClosed)) => {
                    return (1006, String::new());
                }
                Some(Err(e)) => return (1006, e.to_string()),
            }
        }
    }
}
