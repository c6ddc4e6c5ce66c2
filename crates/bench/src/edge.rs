//! `rumor-bench edge`: the client edge measured on loopback, next to
//! baselines measured in the same run; `rumor-bench edge-load`: the same
//! load driver against any running gateway.
//!
//! ```text
//!  bench process                                             peer process (`dataplane-peer`)
//!  load ─> Router::send ─────────────────────── mesh gRPC ─> worker node (echo processor)
//!  load ─ws─> edge (in this process) ─> Router ─ mesh gRPC ─> worker node
//!  load ─ws─> bare axum WebSocket echo (in this process)
//!  idle connections, watchers ─ws─> `rumor node` gateway processes ─> worker node
//! ```
//!
//! The router path is what `rumor-bench dataplane` measures; the edge path
//! adds only the edge (WebSocket, JSON frames, auth, limits) on the same
//! router in the same process, so their ratio is the edge's cost. The bare
//! echo answers each message with the same frames the edge sends and no
//! mesh behind it: the cost of the WebSocket machinery alone. Idle memory
//! per connection and watcher fan-out are measured on separate gateway
//! processes, whose resident memory is read from `/proc`.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::extract::WebSocketUpgrade;
use axum::extract::ws::{Message as AxMessage, WebSocket};
use futures_util::{SinkExt as _, StreamExt as _};
use gateway::{ApiKey, Auth, Edge, EdgeConfig, Limits, key_hash};
use node::crypto::Key;
use node::mesh::{self, Router};
use node::{Node, NodeConfig, Role, Roles};
use proto::bytes::Bytes;
use proto::mesh::Envelope;
use serde_json::{Value, json};
use tokio::net::TcpSocket;
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use crate::dataplane::{KEY_VAR, Proc};
use crate::report::proc::status_kib;
use crate::report::{Machine, median, met, percentile_of, table};

/// The edge's goals (the client-edge issue).
const GOAL_RATIO: f64 = 0.85;
const GOAL_ADDED_P99_MS: f64 = 1.0;
const GOAL_IDLE_KIB: f64 = 16.0;
const GOAL_IDLE_CONNECTIONS: usize = 50_000;
const GOAL_WATCH_P99_MS: f64 = 100.0;
/// The API key of the benchmark's edges.
const TOKEN: &str = "rumor-bench-edge-key";
/// Concurrent connections of the closed-loop steps, one message in flight each.
const CONCURRENCY: [usize; 2] = [16, 256];

type Ws = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// What `rumor-bench edge` measures.
#[derive(Debug, Clone)]
pub struct Options {
    pub duration: Duration,
    pub warmup: Duration,
    pub rounds: usize,
    /// Idle connections held by one gateway process.
    pub idle: usize,
    /// Watchers of one conversation, over two gateway processes.
    pub watchers: usize,
    pub out: PathBuf,
    pub command: String,
}

impl Options {
    pub fn new(
        duration_s: f64,
        rounds: usize,
        idle: usize,
        watchers: usize,
        quick: bool,
        out: PathBuf,
    ) -> anyhow::Result<Self> {
        if !(duration_s > 0.0 && duration_s <= 3600.0) || rounds == 0 {
            bail!("--duration must be in (0, 3600] seconds and --rounds at least 1");
        }
        let mut command = String::from("rumor-bench edge");
        if quick {
            command.push_str(" --quick");
        } else {
            let _ = write!(
                command,
                " --duration {duration_s} --rounds {rounds} --idle {idle} --watchers {watchers}"
            );
        }
        if out != std::path::Path::new("docs/benchmarks/edge.md") {
            let _ = write!(command, " --out {}", out.display());
        }
        Ok(if quick {
            Self {
                duration: Duration::from_millis(500),
                warmup: Duration::from_millis(200),
                rounds: 1,
                idle: 300,
                watchers: 40,
                out,
                command,
            }
        } else {
            Self {
                duration: Duration::from_secs_f64(duration_s),
                warmup: Duration::from_secs(1),
                rounds,
                idle,
                watchers,
                out,
                command,
            }
        })
    }
}

// ---------------------------------------------------------------------------------------------
// WebSocket clients.

/// Connects to `addr`'s `/v1/ws` from `source` (several loopback sources
/// give more than one port range's worth of connections).
async fn connect(addr: SocketAddr, source: Option<IpAddr>, token: &str) -> anyhow::Result<Ws> {
    let socket = TcpSocket::new_v4()?;
    if let Some(ip) = source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    let mut req = format!("ws://{addr}/v1/ws").into_client_request()?;
    req.headers_mut()
        .insert("authorization", format!("Bearer {token}").parse()?);
    let (ws, _) = tokio_tungstenite::client_async(req, MaybeTlsStream::Plain(stream)).await?;
    Ok(ws)
}

/// The kind of a server frame, read from its first key without parsing.
fn kind(text: &str) -> &str {
    text.get(2..).and_then(|t| t.split('"').next()).unwrap_or("")
}

/// Latencies of one message: to the first chunk and to done, µs.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    first: Vec<f64>,
    pub(crate) done: Vec<f64>,
    pub(crate) errors: BTreeMap<String, usize>,
}

impl Tally {
    fn merge(&mut self, o: Tally) {
        self.first.extend(o.first);
        self.done.extend(o.done);
        for (k, v) in o.errors {
            *self.errors.entry(k).or_default() += v;
        }
    }

    fn error(&mut self, code: impl Into<String>) {
        *self.errors.entry(code.into()).or_default() += 1;
    }
}

/// Sends one message on `ws` and reads its frames to the end.
async fn exchange(ws: &mut Ws, conversation: &str, n: u64, text: &str) -> Result<(Instant, Instant), String> {
    let frame = json!({"send": {"conversation": conversation, "client_id": n.to_string(), "text": text}});
    ws.send(Message::text(frame.to_string()))
        .await
        .map_err(|e| format!("send: {e}"))?;
    let mut first = None;
    loop {
        let m = ws
            .next()
            .await
            .ok_or("connection closed")?
            .map_err(|e| format!("read: {e}"))?;
        let Message::Text(t) = m else { continue };
        match kind(&t) {
            "chunk" => {
                first.get_or_insert_with(Instant::now);
            }
            "done" => {
                let now = Instant::now();
                return Ok((first.unwrap_or(now), now));
            }
            "error" => {
                let v: Value = serde_json::from_str(&t).unwrap_or_default();
                return Err(v["error"]["code"].as_str().unwrap_or("ERROR").to_owned());
            }
            _ => {}
        }
    }
}

/// Where the load goes.
#[derive(Clone)]
pub(crate) enum Target {
    Router(Router),
    Ws(SocketAddr),
}

/// Closed loop: `conc` connections (or router callers), each sending its
/// next message when the previous reply is done.
pub(crate) async fn closed_loop(
    target: &Target,
    conc: usize,
    warmup: Duration,
    duration: Duration,
    text: &str,
) -> (Tally, f64) {
    let start = Instant::now();
    let from = start + warmup;
    let end = from + duration;
    let mut tasks = Vec::new();
    for c in 0..conc {
        let (target, text) = (target.clone(), text.to_owned());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            let key = format!("closed-{conc}-{c}");
            let mut ws = match &target {
                Target::Ws(addr) => match connect(*addr, None, TOKEN).await {
                    Ok(ws) => Some(ws),
                    Err(e) => {
                        t.error(format!("connect: {e}"));
                        return t;
                    }
                },
                Target::Router(_) => None,
            };
            let mut n = 0u64;
            while Instant::now() < end {
                n += 1;
                let sent = Instant::now();
                let r = match (&target, ws.as_mut()) {
                    (Target::Router(router), _) => via_router(router, &key, &text).await,
                    (Target::Ws(_), Some(ws)) => exchange(ws, &key, n, &text).await,
                    _ => unreachable!(),
                };
                match r {
                    Ok((first, done)) if done >= from && done <= end => {
                        t.first.push(first.duration_since(sent).as_secs_f64() * 1e6);
                        t.done.push(done.duration_since(sent).as_secs_f64() * 1e6);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        t.error(e);
                        tokio::time::sleep(Duration::from_millis(1)).await;
                    }
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            all.merge(t);
        }
    }
    let rate = all.done.len() as f64 / duration.as_secs_f64();
    (all, rate)
}

/// The same message straight into the router.
async fn via_router(router: &Router, key: &str, text: &str) -> Result<(Instant, Instant), String> {
    let env = Envelope {
        id: mesh::new_message_id(),
        key: key.to_owned(),
        payload: Bytes::copy_from_slice(text.as_bytes()),
        ..Default::default()
    };
    let mut rx = router.send(env).await.map_err(|s| s.code().to_string())?.into_inner();
    let mut first = None;
    loop {
        match rx.recv().await {
            Some(Ok(chunk)) => {
                if let Some(e) = chunk.error {
                    return Err(format!("code {}", e.code));
                }
                if !chunk.data.is_empty() {
                    first.get_or_insert_with(Instant::now);
                }
                if chunk.last {
                    let now = Instant::now();
                    return Ok((first.unwrap_or(now), now));
                }
            }
            Some(Err(s)) => return Err(s.code().to_string()),
            None => return Err("ended without a final chunk".into()),
        }
    }
}

/// Open loop: messages at `rate` in total over `conns` connections, sent on
/// schedule whatever the replies do; latency counts from the intended send
/// time (no coordinated omission).
async fn open_loop(
    target: &Target,
    rate: f64,
    conns: usize,
    warmup: Duration,
    duration: Duration,
    text: &str,
) -> Tally {
    let start = Instant::now() + Duration::from_millis(20);
    let from = start + warmup;
    let end = from + duration;
    let per_conn = Duration::from_secs_f64(conns as f64 / rate.max(1.0));
    let mut tasks = Vec::new();
    for c in 0..conns {
        let (target, text) = (target.clone(), text.to_owned());
        // Connections start evenly spread over one interval.
        let offset = per_conn.mul_f64(c as f64 / conns as f64);
        tasks.push(tokio::spawn(async move {
            let key = format!("open-{c}");
            let mut t = Tally::default();
            match target {
                Target::Router(router) => {
                    let mut inner = Vec::new();
                    let mut at = start + offset;
                    while at < end {
                        tokio::time::sleep_until(at.into()).await;
                        let (router, key, text) = (router.clone(), key.clone(), text.clone());
                        let sent = at;
                        inner.push(tokio::spawn(
                            async move { (sent, via_router(&router, &key, &text).await) },
                        ));
                        at += per_conn;
                    }
                    for h in inner {
                        if let Ok((sent, r)) = h.await {
                            record(&mut t, sent, from, end, r);
                        }
                    }
                }
                Target::Ws(addr) => {
                    let ws = match connect(addr, None, TOKEN).await {
                        Ok(ws) => ws,
                        Err(e) => {
                            t.error(format!("connect: {e}"));
                            return t;
                        }
                    };
                    let (mut sink, mut stream) = ws.split();
                    let sent_at: Arc<Mutex<InFlight>> = Arc::default();
                    let writer = {
                        let sent_at = sent_at.clone();
                        async move {
                            let mut at = start + offset;
                            let mut n = 0u64;
                            while at < end {
                                tokio::time::sleep_until(at.into()).await;
                                n += 1;
                                sent_at.lock().await.insert(n, (at, None));
                                let f =
                                    json!({"send": {"conversation": key, "client_id": n.to_string(), "text": text}});
                                if sink.send(Message::text(f.to_string())).await.is_err() {
                                    break;
                                }
                                at += per_conn;
                            }
                            sink
                        }
                    };
                    let reader = async {
                        let mut t = Tally::default();
                        let deadline = end + Duration::from_secs(5);
                        while let Ok(Some(Ok(m))) = tokio::time::timeout_at(deadline.into(), stream.next()).await {
                            let Message::Text(text) = m else { continue };
                            let k = kind(&text);
                            if !matches!(k, "chunk" | "done" | "error") {
                                continue;
                            }
                            let v: Value = serde_json::from_str(&text).unwrap_or_default();
                            let Some(n) = v[k]["client_id"].as_str().and_then(|s| s.parse::<u64>().ok()) else {
                                continue;
                            };
                            let now = Instant::now();
                            let mut map = sent_at.lock().await;
                            match k {
                                "chunk" => {
                                    if let Some(e) = map.get_mut(&n) {
                                        e.1.get_or_insert(now);
                                    }
                                }
                                "done" => {
                                    if let Some((sent, first)) = map.remove(&n) {
                                        record(&mut t, sent, from, end, Ok((first.unwrap_or(now), now)));
                                    }
                                }
                                _ => {
                                    map.remove(&n);
                                    t.error(v["error"]["code"].as_str().unwrap_or("ERROR").to_owned());
                                }
                            }
                            if now > end && map.is_empty() {
                                break;
                            }
                        }
                        t
                    };
                    let (_sink, got) = tokio::join!(writer, reader);
                    t.merge(got);
                }
            }
            t
        }));
    }
    let mut all = Tally::default();
    for task in tasks {
        if let Ok(t) = task.await {
            all.merge(t);
        }
    }
    all
}

/// Messages in flight on one connection: when each was due, and when its
/// first chunk came.
type InFlight = BTreeMap<u64, (Instant, Option<Instant>)>;

fn record(t: &mut Tally, sent: Instant, from: Instant, end: Instant, r: Result<(Instant, Instant), String>) {
    match r {
        Ok((first, done)) => {
            if sent >= from && sent < end {
                t.first.push(first.saturating_duration_since(sent).as_secs_f64() * 1e6);
                t.done.push(done.saturating_duration_since(sent).as_secs_f64() * 1e6);
            }
        }
        Err(e) => t.error(e),
    }
}

// ---------------------------------------------------------------------------------------------
// The bare WebSocket echo.

/// Answers each send frame with the frames the edge sends for an echo
/// reply in three chunks: accepted, the chunks, done.
async fn bare_echo() -> anyhow::Result<SocketAddr> {
    let app = axum::Router::new().route(
        "/v1/ws",
        axum::routing::get(|ws: WebSocketUpgrade| async move { ws.on_upgrade(bare_echo_socket) }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        let _ = tcp.set_nodelay(true);
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

async fn bare_echo_socket(mut ws: WebSocket) {
    while let Some(Ok(m)) = ws.recv().await {
        let AxMessage::Text(t) = m else { continue };
        let Ok(v) = serde_json::from_str::<Value>(&t) else {
            continue;
        };
        let s = &v["send"];
        let (conv, cid, text) = (
            s["conversation"].as_str().unwrap_or(""),
            s["client_id"].as_str().unwrap_or(""),
            s["text"].as_str().unwrap_or(""),
        );
        let id = mesh::new_message_id();
        let mut frames = vec![json!({"accepted": {"conversation": conv, "client_id": cid, "message_id": id}})];
        let size = text.len().div_ceil(3).max(1);
        let mut seq = 0;
        for piece in text.as_bytes().chunks(size) {
            seq += 1;
            frames.push(json!({"chunk": {"conversation": conv, "client_id": cid, "message_id": id,
                "text": String::from_utf8_lossy(piece), "worker": "bare-echo", "position": {"epoch": "e", "seq": seq.to_string()}}}));
        }
        frames.push(
            json!({"done": {"conversation": conv, "client_id": cid, "message_id": id, "worker": "bare-echo",
            "position": {"epoch": "e", "seq": (seq + 1).to_string()}}}),
        );
        for f in frames {
            if ws.send(AxMessage::text(f.to_string())).await.is_err() {
                return;
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Gateway processes.

/// The hard limit on open files of a process (`/proc/PID/limits`).
fn nofile_hard(pid: u32) -> Option<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(4)?.parse().ok()
}

/// Raises a process's soft limit on open files (ours or a child's) to its
/// hard limit with util-linux's `prlimit`: many connections need many
/// descriptors. Raising the hard limit itself needs CAP_SYS_RESOURCE, which
/// a container may not have; the hard limit then caps the connections.
fn raise_nofile(pid: u32) -> anyhow::Result<u64> {
    let hard = nofile_hard(pid).context("reading the open-files limit")?;
    let ok = Command::new("prlimit")
        .args(["--pid", &pid.to_string(), &format!("--nofile={hard}:{hard}")])
        .status()
        .context("running prlimit (util-linux)")?
        .success();
    if !ok {
        bail!("prlimit could not raise the open-files limit of pid {pid} to {hard}");
    }
    Ok(hard)
}

fn edge_file(dir: &std::path::Path, name: &str) -> anyhow::Result<PathBuf> {
    let path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &path,
        format!(
            "[edge]\nmax_connections = 1000000\nmax_connections_per_credential = 1000000\n\
             messages_per_second = 1000000\nburst = 1000000\n\n[[edge.api_keys]]\nname = \"bench\"\nsha256 = \"{}\"\n",
            key_hash(TOKEN)
        ),
    )?;
    Ok(path)
}

/// A `rumor node` gateway joined through `seed`, with environment `env`,
/// once a message goes through its edge; the process and the edge's address.
pub(crate) async fn gateway_process(
    name: &str,
    seed: SocketAddr,
    key: &str,
    dir: &std::path::Path,
    env: &[(&str, &str)],
) -> anyhow::Result<(Proc, SocketAddr)> {
    let mut cmd = Command::new(crate::rumor_exe()?);
    cmd.arg("node")
        .arg("--config")
        .arg(edge_file(dir, name)?)
        .args(["--name", name, "--roles", "gateway", "--seeds", &seed.to_string()])
        .args(["--gossip-bind", "127.0.0.1:0", "--mesh-bind", "127.0.0.1:0"])
        .args(["--admin-bind", "127.0.0.1:0", "--edge-bind", "127.0.0.1:0"])
        .env("RUMOR_KEYS", key)
        .env_remove("RUMOR_SEEDS")
        .env_remove("RUMOR_NAME")
        .envs(env.iter().copied());
    let p = Proc::spawn(name, cmd).await?;
    raise_nofile(p.pid())?;
    let edge: SocketAddr = p.field("edge")?.parse()?;
    // Ready once a message goes through it.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Ok(mut ws) = connect(edge, None, TOKEN).await
            && exchange(&mut ws, "ready", 1, "ready?").await.is_ok()
        {
            break;
        }
        if Instant::now() > deadline {
            bail!("{name} did not answer within 15 s");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok((p, edge))
}

// ---------------------------------------------------------------------------------------------
// Idle connections and watchers.

#[derive(Debug, Default)]
struct Idle {
    target: usize,
    held: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    secs_to_open: f64,
    first_error: Option<String>,
}

impl Idle {
    fn kib_per_conn(&self) -> f64 {
        self.rss_after_kib.saturating_sub(self.rss_before_kib) as f64 / self.held.max(1) as f64
    }
}

/// Opens `n` connections (each says hello) to `edge` from several loopback
/// sources, holds them, and reads the gateway's resident memory.
async fn idle_connections(edge: SocketAddr, gateway_pid: u32, n: usize) -> Idle {
    let mut r = Idle {
        target: n,
        rss_before_kib: status_kib(gateway_pid, "VmRSS").unwrap_or(0),
        ..Idle::default()
    };
    let started = Instant::now();
    let held = Arc::new(AtomicUsize::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let errors = Arc::new(std::sync::Mutex::new(None::<String>));
    let failed = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let mut tasks = Vec::with_capacity(n);
    for i in 0..n {
        // 20,000 connections per source address stays inside one port range.
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2 + (i / 20_000) as u8));
        let (held, stop, errors, permits, failed) = (
            held.clone(),
            stop.clone(),
            errors.clone(),
            permits.clone(),
            failed.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let fail = |e: String| {
                failed.fetch_add(1, Ordering::Relaxed);
                errors.lock().unwrap().get_or_insert(e);
            };
            let mut ws = match connect(edge, Some(source), TOKEN).await {
                Ok(ws) => ws,
                Err(e) => return fail(e.to_string()),
            };
            let hello = json!({"hello": {"versions": [1], "client": "rumor-bench"}});
            if ws.send(Message::text(hello.to_string())).await.is_err() || ws.next().await.is_none() {
                return fail("no welcome".into());
            }
            drop(permit);
            held.fetch_add(1, Ordering::Relaxed);
            // Reading answers the gateway's pings.
            while !stop.load(Ordering::Relaxed) {
                match tokio::time::timeout(Duration::from_millis(500), ws.next()).await {
                    Ok(Some(Ok(_))) | Err(_) => {}
                    _ => break,
                }
            }
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    let mut last = Instant::now();
    loop {
        let (h, f) = (held.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
        if h + f >= n || Instant::now() > deadline {
            break;
        }
        if last.elapsed() > Duration::from_secs(2) {
            eprintln!("  idle: {h} of {n} connections held, {f} failed");
            last = Instant::now();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    r.secs_to_open = started.elapsed().as_secs_f64();
    // Let the gateway settle (buffers of the handshakes freed).
    tokio::time::sleep(Duration::from_secs(2)).await;
    r.held = held.load(Ordering::Relaxed);
    r.rss_after_kib = status_kib(gateway_pid, "VmRSS").unwrap_or(0);
    r.first_error = errors.lock().unwrap().clone();
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.abort();
    }
    r
}

#[derive(Debug, Default)]
struct Watch {
    watchers: usize,
    messages: usize,
    /// Per (chunk, watcher): arrival minus the chunk's first arrival at any
    /// client, µs.
    spread_us: Vec<f64>,
    /// Per (chunk, watcher): arrival minus the send, µs.
    from_send_us: Vec<f64>,
    missing: usize,
}

/// `watchers` connections over `edges` watch one conversation; a sender on
/// the first edge sends `messages`; every chunk's arrival at every watcher
/// is timed.
async fn watch_fanout(edges: &[SocketAddr], watchers: usize, messages: usize, text: &str) -> anyhow::Result<Watch> {
    let conversation = "bench-watched";
    let arrivals: Arc<std::sync::Mutex<Vec<(u64, Instant)>>> = Arc::default();
    let ready = Arc::new(AtomicUsize::new(0));
    let permits = Arc::new(tokio::sync::Semaphore::new(256));
    let expected = Arc::new(AtomicU64::new(u64::MAX));
    let mut tasks = Vec::new();
    for i in 0..watchers {
        let edge = edges[i % edges.len()];
        let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2 + (i / 20_000) as u8));
        let (arrivals, ready, permits, expected) = (arrivals.clone(), ready.clone(), permits.clone(), expected.clone());
        tasks.push(tokio::spawn(async move {
            let permit = permits.acquire_owned().await;
            let Ok(mut ws) = connect(edge, Some(source), TOKEN).await else {
                return;
            };
            let w = json!({"watch": {"conversation": conversation}});
            if ws.send(Message::text(w.to_string())).await.is_err() {
                return;
            }
            drop(permit);
            let mut mine = Vec::new();
            let mut ends = 0u64;
            while let Ok(Some(Ok(m))) = tokio::time::timeout(Duration::from_secs(30), ws.next()).await {
                let Message::Text(t) = m else { continue };
                match kind(&t) {
                    "watching" => {
                        ready.fetch_add(1, Ordering::Relaxed);
                    }
                    "event" => {
                        // Read without parsing the JSON: one process holds
                        // every watcher, and its own backlog must not pass
                        // for the gateways' delay.
                        let now = Instant::now();
                        let seq: u64 = t
                            .split("\"seq\":\"")
                            .nth(1)
                            .and_then(|r| r.split('"').next())
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0);
                        if t.contains("\"chunk\":{") {
                            mine.push((seq, now));
                        } else if t.contains("\"end\":{") {
                            ends += 1;
                            if ends >= expected.load(Ordering::Relaxed) {
                                break;
                            }
                        }
                    }
                    _ => {}
                }
            }
            arrivals.lock().unwrap().extend(mine);
        }));
    }
    let deadline = Instant::now() + Duration::from_secs(300);
    while ready.load(Ordering::Relaxed) < watchers && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let watching = ready.load(Ordering::Relaxed);
    eprintln!("  watch: {watching} of {watchers} watchers subscribed");
    expected.store(messages as u64, Ordering::Relaxed);
    // The sender: its own chunk arrivals are a reference too.
    let mut sender = connect(edges[0], None, TOKEN).await?;
    let mut sends = Vec::new();
    for n in 0..messages {
        let sent = Instant::now();
        exchange(&mut sender, conversation, n as u64, text)
            .await
            .map_err(|e| anyhow::anyhow!("watched message {n}: {e}"))?;
        sends.push(sent);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for t in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(30), t).await;
    }
    let arrivals = std::mem::take(&mut *arrivals.lock().unwrap());
    // Chunks are numbered in the conversation's one sequence: 3 chunks and
    // message and end events per message, so a chunk's message is found by
    // the first send before its earliest arrival.
    let mut first: BTreeMap<u64, Instant> = BTreeMap::new();
    for &(seq, at) in &arrivals {
        first.entry(seq).and_modify(|f| *f = (*f).min(at)).or_insert(at);
    }
    let mut w = Watch {
        watchers: watching,
        messages,
        ..Watch::default()
    };
    for &(seq, at) in &arrivals {
        w.spread_us.push(at.duration_since(first[&seq]).as_secs_f64() * 1e6);
        let sent = sends
            .iter()
            .rev()
            .find(|s| **s <= first[&seq])
            .copied()
            .unwrap_or(first[&seq]);
        w.from_send_us.push(at.duration_since(sent).as_secs_f64() * 1e6);
    }
    w.missing = (first.len() * watching).saturating_sub(arrivals.len());
    w.spread_us.sort_by(f64::total_cmp);
    w.from_send_us.sort_by(f64::total_cmp);
    Ok(w)
}

// ---------------------------------------------------------------------------------------------
// The report.

#[derive(Debug, Default)]
struct Results {
    /// Closed-loop rates per (path, concurrency), one per round.
    rates: BTreeMap<(&'static str, usize), Vec<f64>>,
    /// Closed-loop latency at the highest concurrency, per path (last round).
    closed: BTreeMap<&'static str, Tally>,
    /// Open loop at half the edge's peak.
    half_rate: f64,
    open: BTreeMap<&'static str, Tally>,
    idle: Idle,
    /// The open-files limit that caps the idle connections.
    nofile: u64,
    watch: Watch,
    secs: f64,
}

const ROUTER: &str = "router (Router::send)";
const EDGE: &str = "edge (WebSocket, JSON)";
const BARE: &str = "bare axum WebSocket echo";

pub async fn run(o: Options) -> anyhow::Result<()> {
    let machine = Machine::read();
    let started = Instant::now();
    let nofile = raise_nofile(std::process::id())?;
    // Each idle connection is a descriptor in this process and in the
    // gateway's; leave room for everything else.
    let idle = o
        .idle
        .min(usize::try_from(nofile).unwrap_or(usize::MAX).saturating_sub(1000));
    let key = Key::generate().to_base64();
    let dir = std::env::temp_dir().join(format!("rumor-bench-edge-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;

    let mut cmd = Command::new(std::env::current_exe()?);
    cmd.args(["dataplane-peer", "--chunks", "3"]).env(KEY_VAR, &key);
    let peer = Proc::spawn("peer (worker)", cmd).await?;
    let seed: SocketAddr = peer.field("gossip")?.parse()?;

    // The gateway node and its edge, in this process.
    let mut cfg = NodeConfig::new("bench-gateway");
    cfg.roles = Roles::of(&[Role::Gateway]);
    cfg.gossip.keys = vec![key.clone()];
    cfg.gossip.seeds = vec![seed];
    cfg.drain_timeout = Duration::from_secs(1);
    let node = Node::start(cfg).await.context("starting the gateway")?;
    tokio::time::timeout(Duration::from_secs(15), async {
        node.wait_joined().await?;
        while node.router().table().ring().len() != 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    })
    .await
    .context("the gateway did not see the worker within 15 s")??;
    let edge_config = EdgeConfig {
        auth: Auth::new(
            &[ApiKey {
                name: "bench".into(),
                sha256: key_hash(TOKEN),
                prefix: String::new(),
                watch_only: false,
            }],
            None,
        )?,
        limits: Limits {
            messages_per_second: 1_000_000,
            burst: 1_000_000,
            ..Limits::default()
        },
        ..EdgeConfig::default()
    };
    let edge = Edge::start(
        "bench-gateway",
        edge_config,
        "127.0.0.1:0".parse()?,
        node.router().clone(),
        node.gossip().view(),
        node.readiness(),
    )
    .await?;
    let bare = bare_echo().await?;
    let targets = [
        (ROUTER, Target::Router(node.router().clone())),
        (EDGE, Target::Ws(edge.addr())),
        (BARE, Target::Ws(bare)),
    ];
    let text = "x".repeat(256);
    for (name, t) in &targets {
        let (tally, _) = closed_loop(t, 1, Duration::ZERO, Duration::from_millis(50), &text).await;
        if !tally.errors.is_empty() {
            bail!("{name}: {:?}", tally.errors);
        }
    }

    let mut res = Results::default();
    for round in 0..o.rounds {
        for &conc in &CONCURRENCY {
            let mut order: Vec<&(&str, Target)> = targets.iter().collect();
            if round % 2 == 1 {
                order.reverse();
            }
            for (name, t) in order {
                let (tally, rate) = closed_loop(t, conc, o.warmup, o.duration, &text).await;
                eprintln!(
                    "round {}/{} closed loop {conc:>3} connections {name:<26} {rate:>8.0} msg/s  p99 done {:.2} ms  errors {:?}",
                    round + 1,
                    o.rounds,
                    pct_ms(&tally.done, 0.99),
                    tally.errors
                );
                res.rates.entry((name, conc)).or_default().push(rate);
                if conc == CONCURRENCY[CONCURRENCY.len() - 1] {
                    res.closed.insert(name, tally);
                }
            }
        }
    }
    let peak = median(res.rates[&(EDGE, CONCURRENCY[1])].iter().copied());
    res.half_rate = (peak / 2.0).max(10.0);
    for (name, t) in &targets[..2] {
        let tally = open_loop(t, res.half_rate, 64, o.warmup, o.duration * 2, &text).await;
        eprintln!(
            "open loop {:.0} msg/s {name:<26} p50 {:.2} ms p99 {:.2} ms errors {:?}",
            res.half_rate,
            pct_ms(&tally.done, 0.50),
            pct_ms(&tally.done, 0.99),
            tally.errors
        );
        res.open.insert(name, tally);
    }
    edge.shutdown().await;

    // Idle connections and watchers on gateway processes.
    let (gw1, edge1) = gateway_process("bench-gw-1", seed, &key, &dir, &[]).await?;
    eprintln!("idle: opening {idle} connections to {edge1} (pid {})", gw1.pid());
    res.idle = idle_connections(edge1, gw1.pid(), idle).await;
    res.nofile = nofile;
    eprintln!(
        "idle: {} held, {:.1} KiB each ({:?})",
        res.idle.held,
        res.idle.kib_per_conn(),
        res.idle.first_error
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (_gw2, edge2) = gateway_process("bench-gw-2", seed, &key, &dir, &[]).await?;
    eprintln!("watch: {} watchers over two gateways", o.watchers);
    res.watch = watch_fanout(&[edge1, edge2], o.watchers, 20, "watched reply").await?;
    eprintln!(
        "watch: spread p99 {:.1} ms, missing {}",
        pct_ms(&res.watch.spread_us, 0.99),
        res.watch.missing
    );
    res.secs = started.elapsed().as_secs_f64();
    drop(peer);
    let _ = std::fs::remove_dir_all(&dir);
    let text = render(&o, &machine, &res);
    crate::report::write(&o.out, &text)?;
    println!("wrote {}", o.out.display());
    Ok(())
}

fn pct_ms(values: &[f64], p: f64) -> f64 {
    percentile_of(values, p).map_or(f64::NAN, |us| us / 1000.0)
}

fn render(o: &Options, m: &Machine, r: &Results) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "# The client edge\n");
    let _ = writeln!(w, "Command: `{}` (release build; {:.0} s).\n", o.command, r.secs);
    let _ = writeln!(w, "Machine: {}.\n", m.line());
    let _ = writeln!(
        w,
        "What runs: one worker node (echo, 3 chunks) in a peer process; in the bench process a gateway node \
         whose router is driven directly (the router path, as `rumor-bench dataplane` measures it), its edge \
         driven over WebSocket with JSON frames, and a bare axum WebSocket echo that answers with the same \
         frames and no mesh. Messages carry 256 bytes; one message in flight per connection in the closed \
         loop. Each step runs {:.1} s after {:.1} s of warm-up, {} rounds, paths alternating in ABBA order.\n",
        o.duration.as_secs_f64(),
        o.warmup.as_secs_f64(),
        o.rounds
    );
    let _ = writeln!(w, "## Throughput (closed loop; median of rounds)\n");
    let mut rows = Vec::new();
    for &conc in &CONCURRENCY {
        let router = median(r.rates[&(ROUTER, conc)].iter().copied());
        for name in [ROUTER, EDGE, BARE] {
            let rate = median(r.rates[&(name, conc)].iter().copied());
            rows.push(vec![
                conc.to_string(),
                name.to_owned(),
                format!("{rate:.0}"),
                format!("{:.0}%", 100.0 * rate / router),
            ]);
        }
    }
    table(&mut w, &["connections", "path", "msg/s", "of router"], rows);
    let mut rows = Vec::new();
    for name in [ROUTER, EDGE, BARE] {
        let t = &r.closed[name];
        rows.push(vec![
            name.to_owned(),
            format!("{:.2}", pct_ms(&t.first, 0.5)),
            format!("{:.2}", pct_ms(&t.first, 0.99)),
            format!("{:.2}", pct_ms(&t.done, 0.5)),
            format!("{:.2}", pct_ms(&t.done, 0.99)),
            format!("{:.2}", pct_ms(&t.done, 0.999)),
            format!("{:?}", t.errors),
        ]);
    }
    let _ = writeln!(w, "\nLatency at {} connections, last round (ms):\n", CONCURRENCY[1]);
    table(
        &mut w,
        &[
            "path",
            "first chunk p50",
            "first chunk p99",
            "done p50",
            "done p99",
            "done p99.9",
            "errors",
        ],
        rows,
    );
    let _ = writeln!(
        w,
        "\n## Latency at half of the edge's peak ({:.0} msg/s, open loop, 64 connections)\n",
        r.half_rate
    );
    let mut rows = Vec::new();
    for name in [ROUTER, EDGE] {
        let t = &r.open[name];
        rows.push(vec![
            name.to_owned(),
            format!("{:.2}", pct_ms(&t.first, 0.5)),
            format!("{:.2}", pct_ms(&t.done, 0.5)),
            format!("{:.2}", pct_ms(&t.done, 0.99)),
            format!("{:.2}", pct_ms(&t.done, 0.999)),
            format!("{:?}", t.errors),
        ]);
    }
    table(
        &mut w,
        &[
            "path",
            "first chunk p50",
            "done p50",
            "done p99",
            "done p99.9",
            "errors",
        ],
        rows,
    );
    let ratio = median(r.rates[&(EDGE, CONCURRENCY[1])].iter().copied())
        / median(r.rates[&(ROUTER, CONCURRENCY[1])].iter().copied());
    let added = pct_ms(&r.open[EDGE].done, 0.99) - pct_ms(&r.open[ROUTER].done, 0.99);
    let _ = writeln!(w, "\n## Idle connections\n");
    let i = &r.idle;
    let _ = writeln!(
        w,
        "A separate `rumor node` gateway process; connections from 127.0.0.2 and up, each after a hello. \
         {} of {} held, opened in {:.1} s; gateway resident memory {:.1} MiB before, {:.1} MiB after: \
         **{:.1} KiB per idle connection**.{}{}\n",
        i.held,
        i.target,
        i.secs_to_open,
        i.rss_before_kib as f64 / 1024.0,
        i.rss_after_kib as f64 / 1024.0,
        i.kib_per_conn(),
        i.first_error
            .as_ref()
            .map(|e| format!(" First error: {e}."))
            .unwrap_or_default(),
        if i.target < o.idle {
            format!(
                " Asked for {}; this machine caps open files per process at {} (hard limit, and no \
                 CAP_SYS_RESOURCE to raise it), so no process here can hold more.",
                o.idle, r.nofile
            )
        } else {
            String::new()
        }
    );
    let wt = &r.watch;
    let _ = writeln!(w, "## One conversation, many watchers\n");
    let _ = writeln!(
        w,
        "{} watchers over two gateway processes (half on each) watch one conversation; a client on the first \
         gateway sends {} messages, 200 ms apart. For every chunk at every watcher: its arrival after the \
         same chunk's first arrival at any client (the fan-out spread), and after the message was sent. \
         Chunks missing at some watcher: {}.\n",
        wt.watchers, wt.messages, wt.missing
    );
    table(
        &mut w,
        &["measure", "p50 ms", "p99 ms", "p99.9 ms", "max ms"],
        [("spread", &wt.spread_us), ("from send", &wt.from_send_us)]
            .into_iter()
            .map(|(n, v)| {
                vec![
                    n.to_owned(),
                    format!("{:.2}", pct_ms(v, 0.5)),
                    format!("{:.2}", pct_ms(v, 0.99)),
                    format!("{:.2}", pct_ms(v, 0.999)),
                    format!("{:.2}", pct_ms(v, 1.0)),
                ]
            }),
    );
    let _ = writeln!(w, "\n## Goals\n");
    let idle_ok = i.held >= GOAL_IDLE_CONNECTIONS && i.kib_per_conn() <= GOAL_IDLE_KIB;
    let watch_p99 = pct_ms(&wt.from_send_us, 0.99);
    let rows = vec![
        vec![
            format!("edge msg/s at least {:.0}% of the router path", GOAL_RATIO * 100.0),
            format!("{:.0}%", ratio * 100.0),
            met(ratio >= GOAL_RATIO).to_owned(),
        ],
        vec![
            format!("p99 added by the edge under {GOAL_ADDED_P99_MS} ms at half of peak"),
            format!("{added:.2} ms"),
            met(added < GOAL_ADDED_P99_MS).to_owned(),
        ],
        vec![
            format!("{GOAL_IDLE_CONNECTIONS} idle connections at no more than {GOAL_IDLE_KIB} KiB each"),
            format!("{} held, {:.1} KiB each", i.held, i.kib_per_conn()),
            met(idle_ok).to_owned(),
        ],
        vec![
            format!("10,000 watchers over two gateways: each chunk to all, p99 under {GOAL_WATCH_P99_MS} ms"),
            format!("{} watchers, p99 {watch_p99:.1} ms from the send", wt.watchers),
            met(wt.watchers >= 10_000 && watch_p99 < GOAL_WATCH_P99_MS && wt.missing == 0).to_owned(),
        ],
    ];
    table(&mut w, &["goal", "measured", "verdict"], rows);
    let us = |name| 1e6 / median(r.rates[&(name, CONCURRENCY[1])].iter().copied());
    let (router_us, edge_us, bare_us) = (us(ROUTER), us(EDGE), us(BARE));
    let _ = writeln!(
        w,
        "\n## What the figures say\n\n At {} connections the machine is saturated, so the time per \
         message is what a message costs on its 2 cores: {router_us:.0} µs through the router, \
         {edge_us:.0} µs through the edge, {bare_us:.0} µs for the bare WebSocket echo. The edge adds \
         {:.0} µs to the router path; the bare echo, which is only a WebSocket round trip with the same \
         JSON frames (its client in this process, as the edge's is), costs {bare_us:.0} µs by itself. So \
         most of what the edge adds is the WebSocket exchange, paid on both ends here because the load \
         generator shares the cores. The 85% goal would allow {:.0} µs. The idle and watcher goals are \
         checked at the sizes this machine allows (open files per process: {}); memory per connection \
         and fan-out delay are measured at those sizes.",
        CONCURRENCY[1],
        edge_us - router_us,
        router_us / GOAL_RATIO - router_us,
        r.nofile
    );
    w
}

// ---------------------------------------------------------------------------------------------
// `rumor-bench edge-load`: drive any running gateway.

/// What `rumor-bench edge-load` does.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub edge: SocketAddr,
    pub token: String,
    pub connections: usize,
    /// Messages per second per connection; 0: closed loop.
    pub rate: f64,
    /// Watchers per conversation (each conversation is one connection's).
    pub watchers: usize,
    pub duration: Duration,
    /// The gateway's pid, to read its resident memory.
    pub gateway_pid: Option<u32>,
}

/// Drives `o.edge` and prints what it measured.
pub async fn load(o: LoadOptions) -> anyhow::Result<()> {
    if !o.edge.ip().is_loopback() {
        bail!(
            "edge-load drives gateways on this machine's loopback only, not {}",
            o.edge
        );
    }
    let _ = raise_nofile(std::process::id());
    let text = "x".repeat(256);
    let target = Target::Ws(o.edge);
    // Watchers first, so they see every message.
    let watch_events = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::new();
    for c in 0..o.connections {
        for i in 0..o.watchers {
            let (events, edge, token) = (watch_events.clone(), o.edge, o.token.clone());
            let conversation = if o.rate > 0.0 {
                format!("open-{c}")
            } else {
                format!("closed-{}-{c}", o.connections)
            };
            let source = IpAddr::V4(Ipv4Addr::new(127, 0, 1, 2 + ((c * o.watchers + i) / 20_000) as u8));
            watchers.push(tokio::spawn(async move {
                let Ok(mut ws) = connect(edge, Some(source), &token).await else {
                    return;
                };
                let w = json!({"watch": {"conversation": conversation}});
                let _ = ws.send(Message::text(w.to_string())).await;
                while let Some(Ok(_)) = ws.next().await {
                    events.fetch_add(1, Ordering::Relaxed);
                }
            }));
        }
    }
    let progress = {
        let (events, pid) = (watch_events.clone(), o.gateway_pid);
        tokio::spawn(async move {
            let started = Instant::now();
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let rss = pid
                    .and_then(|p| status_kib(p, "VmRSS"))
                    .map(|k| format!(", gateway RSS {:.1} MiB", k as f64 / 1024.0))
                    .unwrap_or_default();
                eprintln!(
                    "  {:>4.0} s: {} watch events{rss}",
                    started.elapsed().as_secs_f64(),
                    events.load(Ordering::Relaxed)
                );
            }
        })
    };
    let (tally, rate) = if o.rate > 0.0 {
        let t = open_loop(
            &target,
            o.rate * o.connections as f64,
            o.connections,
            Duration::ZERO,
            o.duration,
            &text,
        )
        .await;
        let r = t.done.len() as f64 / o.duration.as_secs_f64();
        (t, r)
    } else {
        closed_loop(&target, o.connections, Duration::ZERO, o.duration, &text).await
    };
    progress.abort();
    println!("connections held: {} (+{} watchers)", o.connections, watchers.len());
    println!("messages per second: {rate:.0}");
    for (name, v) in [("first chunk", &tally.first), ("done", &tally.done)] {
        println!(
            "latency to {name}: p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms",
            pct_ms(v, 0.5),
            pct_ms(v, 0.99),
            pct_ms(v, 0.999)
        );
    }
    println!("watch events received: {}", watch_events.load(Ordering::Relaxed));
    println!("errors by code: {:?}", tally.errors);
    if let Some(k) = o.gateway_pid.and_then(|p| status_kib(p, "VmRSS")) {
        println!("gateway resident memory: {:.1} MiB", k as f64 / 1024.0);
    }
    for w in watchers {
        w.abort();
    }
    Ok(())
}
