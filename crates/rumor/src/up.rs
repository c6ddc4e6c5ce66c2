//! `rumor up`: a whole local cluster in one process, on loopback.
//!
//! A gateway, a forward node and workers, each a full node (encrypted gossip,
//! mesh gRPC, admin HTTP), form one cluster on 127.0.0.1. It prints where
//! everything listens, sends one message through the gateway's admin API to
//! show the data plane working, passes a gossip message from the forward node
//! to the workers, and then reports membership changes until Ctrl-C or
//! SIGTERM, when every node leaves gracefully.
//!
//! The gateway serves the client edge (WebSocket, HTTP, OpenAI-compatible)
//! on 127.0.0.1:8080 by default, without authentication since it listens on
//! loopback only, and says so loudly.
//!
//! The bridge runs in the same process on its embedded defaults: the
//! in-process event log instead of Kafka and SQLite instead of PostgreSQL,
//! through the same code as `rumor bridge`. Workers publish every message and
//! reply to the log, the bridge stores them, and the forward node routes what
//! the bridge's `POST /v1/forward` injects.
//!
//! Workers echo by default. With `--model PATH` they answer with a real
//! model: `rumor up` starts llama.cpp's server on that GGUF file (and stops
//! it at the end); with `--backend URL`, with an OpenAI-compatible server
//! already running. Either way each worker runs the `openai` processor,
//! keeps each conversation's history, and rebuilds it from the embedded
//! bridge when a conversation moves to it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::Arc;

use anyhow::Context;
use bridge::BridgeConfig;
use events::{EventLog, MemoryLog, PublisherConfig, Topics};
use membership::Event;
use node::client::AdminClient;
use node::crypto::Key;
use node::{NodeConfig, Role, Roles};
use processors::Echo;
use proto::api::SendRequest;
use server::{EventsConfig, Server, ServerConfig};

/// What `rumor up` starts.
#[derive(Debug, Clone)]
pub(crate) struct UpOptions {
    pub(crate) workers: usize,
    pub(crate) base_port: u16,
    pub(crate) exit_after: Option<Duration>,
    /// Port of the embedded bridge's HTTP API; 0 picks a free one.
    pub(crate) bridge_port: u16,
    /// Port of the gateway's client edge on 127.0.0.1; 0 picks a free one.
    pub(crate) edge_port: u16,
    /// What workers answer with; `None`: they echo.
    pub(crate) model: Option<Model>,
}

/// A real model for the workers.
#[derive(Debug, Clone)]
pub(crate) enum Model {
    /// A GGUF file, served by a llama.cpp server that `rumor up` starts.
    Gguf {
        path: std::path::PathBuf,
        llama_server: std::path::PathBuf,
    },
    /// The base URL of an OpenAI-compatible server already running.
    Backend(String),
}

/// The backend's base URL and model id for the workers, and the model
/// server when one was started for them; `(None, None)` when they echo.
pub(crate) async fn workers_backend(
    model: Option<&Model>,
) -> anyhow::Result<(Option<(String, String)>, Option<Started>)> {
    let Some(m) = model else { return Ok((None, None)) };
    let (url, id, started) = model_backend(m).await?;
    println!("workers answer with model {id} at {url}");
    Ok((Some((url, id)), started))
}

/// A process `rumor up` or `rumor playground` started (a model server, a
/// broker), killed when dropped.
pub(crate) struct Started(pub(crate) std::process::Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The base URL and model id to send workers to, and the server process
/// when `rumor up` started one.
async fn model_backend(model: &Model) -> anyhow::Result<(String, String, Option<Started>)> {
    let (url, started) = match model {
        Model::Backend(url) => (url.trim_end_matches('/').to_owned(), None),
        Model::Gguf { path, llama_server } => {
            anyhow::ensure!(path.is_file(), "--model {}: no such file", path.display());
            let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
            let log = std::env::temp_dir().join(format!("rumor-up-llama-{}.log", std::process::id()));
            let out = std::fs::File::create(&log)?;
            println!(
                "starting {} on {} (port {port}; its log: {})",
                llama_server.display(),
                path.display(),
                log.display()
            );
            // The model's name in /v1/models and gossip: the file's name.
            let alias = path
                .file_stem()
                .map_or_else(|| "model".into(), |s| s.to_string_lossy().into_owned());
            let child = std::process::Command::new(llama_server)
                .arg("--model")
                .arg(path)
                .args(["--alias", &alias])
                .args(["--host", "127.0.0.1", "--port", &port.to_string()])
                // Four conversations decode at once, each slot with 4,096
                // tokens, and prompts are cached so follow-ups reuse them.
                .args(["--parallel", "4", "--ctx-size", "16384", "--cache-prompt", "--metrics"])
                .stdout(out.try_clone()?)
                .stderr(out)
                .spawn()
                .with_context(|| {
                    format!(
                        "starting {} (install llama.cpp, pass --llama-server BIN, or run scripts/llama-server and \
                         use --backend)",
                        llama_server.display()
                    )
                })?;
            let mut started = Started(child);
            let health = AdminClient::new(format!("127.0.0.1:{port}")).with_timeout(Duration::from_secs(2));
            let deadline = Instant::now() + Duration::from_secs(300);
            loop {
                if let Some(status) = started.0.try_wait()? {
                    anyhow::bail!("{} exited ({status}); see {}", llama_server.display(), log.display());
                }
                if health.get_json::<serde_json::Value>("/health").await.is_ok() {
                    break;
                }
                anyhow::ensure!(
                    Instant::now() < deadline,
                    "{} did not answer within 300 s; see {}",
                    llama_server.display(),
                    log.display()
                );
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            (format!("http://127.0.0.1:{port}/v1"), Some(started))
        }
    };
    let rest = url
        .strip_prefix("http://")
        .with_context(|| format!("--backend {url}: give an http:// URL"))?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let models: serde_json::Value = AdminClient::new(authority.to_owned())
        .with_timeout(Duration::from_secs(5))
        .get_json(&format!("{path}/models"))
        .await
        .with_context(|| format!("no OpenAI-compatible server answers at {url}"))?;
    let id = models["data"][0]["id"]
        .as_str()
        .with_context(|| format!("{url}/models lists no model"))?
        .to_owned();
    Ok((url, id, started))
}

/// Three consecutive ports per node from `base` (gossip, mesh, admin), or 0.
fn port(base: u16, node: usize, which: u16) -> anyhow::Result<u16> {
    if base == 0 {
        return Ok(0);
    }
    u16::try_from(node * 3)
        .ok()
        .and_then(|off| base.checked_add(off)?.checked_add(which))
        .context("--base-port is too high for this many nodes")
}

pub(crate) async fn run(opts: UpOptions) -> anyhow::Result<()> {
    let (backend, _model_server) = workers_backend(opts.model.as_ref()).await?;
    // The event log and the bridge, embedded.
    let memlog = MemoryLog::new();
    let log = EventLog::Memory(memlog.clone());
    let topics = Topics::default();
    log.create_topics(&topics.specs()).await?;
    let db = std::env::temp_dir().join(format!("rumor-up-{}.db", std::process::id()));
    let _db_files = Scratch(db.clone());
    let mut bridge_cfg = BridgeConfig::embedded(&db, memlog);
    bridge_cfg.http_bind = SocketAddr::from(([127, 0, 0, 1], opts.bridge_port));
    let bridge = bridge::start(bridge_cfg)
        .await
        .context("starting the embedded bridge")?;

    let mut plan = vec![
        ("gateway-1".to_owned(), Role::Gateway),
        ("forward-1".to_owned(), Role::Forward),
    ];
    plan.extend((1..=opts.workers).map(|i| (format!("worker-{i}"), Role::Worker)));
    // One generated key for the whole local cluster: gossip is encrypted even on a laptop.
    let key = Key::generate().to_base64();
    let mut servers: Vec<Server> = Vec::new();
    let started = Instant::now();
    for (i, (name, role)) in plan.iter().enumerate() {
        let at = |which| -> anyhow::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], port(opts.base_port, i, which)?)))
        };
        let mut cfg = NodeConfig::new(name.clone());
        cfg.gossip.bind = at(0)?;
        cfg.mesh_bind = at(1)?;
        cfg.admin_bind = at(2)?;
        cfg.gossip.keys = vec![key.clone()];
        cfg.roles = Roles::of(&[*role]);
        if *role == Role::Worker {
            let processor: Arc<dyn node::Processor> = match &backend {
                None => Arc::new(Echo::default()),
                Some((url, id)) => Arc::new(processors::OpenAi::new(processors::OpenAiConfig {
                    name: "llama".into(),
                    base_url: url.clone(),
                    model: id.clone(),
                    system_prompt: "You are a helpful assistant. Answer briefly.".into(),
                    max_tokens: 128,
                    history: Some(bridge.addr().to_string()),
                    ..processors::OpenAiConfig::default()
                })?),
            };
            cfg.processor = Some(processor);
        }
        cfg.worker.capacity = 64;
        cfg.drain_timeout = Duration::from_secs(2);
        cfg.gossip.seeds = servers
            .first()
            .map(|s| vec![s.node().addrs().gossip])
            .unwrap_or_default();
        let mut server = ServerConfig::new(cfg);
        if *role == Role::Gateway {
            // Loopback only, so no credentials: said loudly below. `rumor
            // node` never runs an edge without them.
            let edge = gateway::EdgeConfig {
                auth: gateway::Auth::anonymous(),
                history: Some(bridge.addr().to_string()),
                ..Default::default()
            };
            server.edge = Some((SocketAddr::from(([127, 0, 0, 1], opts.edge_port)), edge));
        }
        // Every node shares the in-process log; each worker has its own publisher.
        server.events = Some(EventsConfig {
            log: log.clone(),
            topics: topics.clone(),
            create_topics: false,
            forward_group: "rumor-forward".into(),
            // The in-process log hands every consumer every partition:
            // there is no coordinator to strand one.
            forward_stall_timeout: None,
            publisher: PublisherConfig::default(),
        });
        let started = server::start(server)
            .await
            .with_context(|| format!("starting {name}"))?;
        // One join at a time: each newcomer then pulls a state that holds
        // every node before it, instead of waiting for gossip to repair the
        // view of nodes that joined in the same instant.
        started.node().wait_joined().await.context("joining")?;
        servers.push(started);
    }
    let nodes: Vec<&node::Node> = servers.iter().map(Server::node).collect();
    let total = nodes.len();
    // Views usually agree within a second; a member whose join the
    // dissemination missed waits for the view-digest repair (about 10 s).
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let converged = nodes.iter().all(|n| n.gossip().view().borrow().live().count() == total);
        let sums: std::collections::BTreeSet<u64> = nodes.iter().map(|n| n.router().table().checksum()).collect();
        let rings_full = nodes.iter().all(|n| n.router().table().ring().len() == opts.workers);
        if converged && sums.len() == 1 && rings_full {
            break;
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "the local cluster did not converge within 30 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!(
        "rumor: {total} nodes formed one cluster in {} ms (gossip encrypted with a generated AES-256-GCM key)",
        started.elapsed().as_millis()
    );
    println!();
    println!(
        "  {:<11} {:<8} {:<17} {:<17} {:<17} capacity",
        "node", "role", "gossip", "mesh (grpc)", "admin (http)"
    );
    for n in &nodes {
        let a = n.addrs();
        let me = n.gossip().view().borrow().local.clone();
        println!(
            "  {:<11} {:<8} {:<17} {:<17} {:<17} {}",
            n.name(),
            me.meta.roles.join(","),
            a.gossip.to_string(),
            a.mesh.to_string(),
            a.admin.to_string(),
            me.meta.capacity
        );
    }
    println!(
        "ring checksum {:016x} over {} workers",
        nodes[0].router().table().checksum(),
        opts.workers
    );
    println!(
        "bridge (embedded: in-process event log, SQLite at {}) http={}",
        db.display(),
        bridge.addr()
    );
    println!();

    // The data plane: one message through the gateway's admin API, as `rumor send` does it.
    let gateway = nodes[0].addrs().admin.to_string();
    let req = SendRequest {
        key: "conversation-1".into(),
        payload: "hello through the mesh".into(),
        id: None,
        // A small model on a busy laptop may take a while to answer.
        timeout_ms: Some(if backend.is_some() { 120_000 } else { 5000 }),
        source: None,
    };
    let sent = Instant::now();
    let lines = AdminClient::new(gateway.clone())
        .send(&req, |_| {})
        .await
        .context("sending the demo message")?;
    let last = lines.last().expect("a reply ends with a terminal line");
    match &last.error {
        None => println!(
            "message {} for key {:?} through gateway-1: reply {:?} from {} in {:.1} ms ({} chunks)",
            last.id,
            req.key,
            lines.iter().map(|l| l.data.as_str()).collect::<String>(),
            last.worker,
            sent.elapsed().as_secs_f64() * 1e3,
            lines.len()
        ),
        Some(e) => println!("message {} failed: {}: {}", last.id, e.name, e.message),
    }
    // Every message and reply reaches the database through the event log.
    let stored = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match bridge.store().history(&req.key, 0, 10).await {
                Ok(rows) if rows.len() >= 2 => return Ok(rows),
                Ok(_) => tokio::time::sleep(Duration::from_millis(20)).await,
                Err(e) => return Err(e),
            }
        }
    })
    .await;
    match stored {
        Ok(Ok(rows)) => {
            println!(
                "the bridge stored {} records of {:?} (message and reply) in SQLite",
                rows.len(),
                req.key
            );
            // What the model's answer cost, as stored with the reply.
            if let Some(u) = rows.iter().find_map(|r| r.usage.as_ref()) {
                println!(
                    "  the reply's usage: model {}, {} prompt tokens ({} from the cache), {} completion tokens, \
                     first token after {} ms",
                    u.model, u.prompt_tokens, u.cached_tokens, u.completion_tokens, u.first_token_ms
                );
            }
        }
        Ok(Err(e)) => println!("the bridge could not read its history: {e}"),
        Err(_) => println!("the bridge has not stored the demo message yet"),
    }
    let b = bridge.addr();
    if let Some(edge) = servers[0].edge() {
        let e = edge.addr();
        println!();
        println!("client edge on gateway-1: http://{e} (WebSocket ws://{e}/v1/ws, OpenAI-compatible http://{e}/v1)");
        println!("  WARNING: the edge runs WITHOUT AUTHENTICATION: it listens on loopback only, for trying rumor out.");
        println!("  `rumor node` never does; see docs/protocol.md for API keys and JWTs.");
        println!("  stream a reply (server-sent events):");
        println!(
            "    curl -N -H 'accept: text/event-stream' -H 'content-type: application/json' \\\n      -d '{{\"text\":\"hello\"}}' http://{e}/v1/conversations/demo/messages"
        );
        println!("  WebSocket (JSON frames), for example with websocat:");
        println!(
            "    echo '{{\"send\":{{\"conversation\":\"demo\",\"client_id\":\"1\",\"text\":\"hi\"}}}}' | websocat ws://{e}/v1/ws"
        );
        println!("  any OpenAI SDK (Python shown):");
        let model = backend.as_ref().map_or("echo", |(_, id)| id.as_str());
        println!(
            "    python3 -c 'from openai import OpenAI; c = OpenAI(base_url=\"http://{e}/v1\", api_key=\"local\"); \\\n      print(c.chat.completions.create(model=\"{model}\", messages=[{{\"role\": \"user\", \"content\": \"hi\"}}]).choices[0].message.content)'"
        );
        println!();
    }
    println!("  try: rumor send --admin {gateway} --key conversation-2 \"hi\"");
    println!("       rumor status --admin {gateway}");
    println!("       curl http://{b}/v1/conversations/{}/messages", req.key);
    println!(
        "       curl -X POST http://{b}/v1/forward -H 'content-type: application/json' -d '{{\"key\":\"conversation-3\",\"payload\":\"from outside\"}}'"
    );
    println!();

    // The origin notes' first test: a gossip message from the forward node to the workers.
    let mut receivers: Vec<_> = nodes.iter().map(|n| n.gossip().events()).collect();
    let sent = Instant::now();
    let (origin, seq) = nodes[1]
        .gossip()
        .broadcast(membership::Bytes::from_static(b"hello from forward-1"))
        .await
        .context("broadcast")?;
    let mut arrived: BTreeMap<String, Duration> = BTreeMap::new();
    for (n, rx) in nodes.iter().zip(receivers.iter_mut()).skip(2) {
        let wait = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Ok(Event::UserMessage { origin: o, seq: s, .. }) if o == origin && s == seq => return true,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return false,
                }
            }
        });
        if wait.await.unwrap_or(false) {
            arrived.insert(n.name().to_owned(), sent.elapsed());
        }
    }
    println!("gossip message {origin}#{seq} from forward-1:");
    for (name, t) in &arrived {
        println!("  reached {name:<10} within {:.1} ms", t.as_secs_f64() * 1e3);
    }
    println!();
    println!("running; membership changes follow. Ctrl-C leaves the cluster gracefully.");

    let mut events = nodes[0].gossip().events();
    let watch = async {
        loop {
            match events.recv().await {
                Ok(Event::MemberUp(m)) => println!("up: {} at {}", m.name, m.addr),
                Ok(Event::MemberDown { name, left }) => println!("{}: {name}", if left { "left" } else { "failed" }),
                Ok(Event::MemberSuspect { name, .. }) => println!("suspect: {name}"),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    };
    let stop = async {
        match opts.exit_after {
            Some(d) => tokio::time::sleep(d).await,
            None => crate::commands::terminated().await,
        }
    };
    tokio::select! {
        () = watch => {}
        () = stop => {}
    }
    println!("leaving...");
    drop(nodes);
    // Workers first, then the entry nodes, so nothing routes to a departed worker.
    while let Some(s) = servers.pop() {
        let name = s.node().name().to_owned();
        let stopped = s.shutdown().await;
        if stopped.unpublished > 0 {
            println!("warning: {name} left {} records unpublished", stopped.unpublished);
        }
    }
    // Give the bridge a moment to store the last records before it stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    bridge.shutdown().await.context("stopping the bridge")?;
    println!("stopped");
    Ok(())
}

/// The embedded bridge's SQLite files, removed when `rumor up` ends however
/// it ends (the database, its write-ahead log and its shared memory).
struct Scratch(std::path::PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        for suffix in ["", "-wal", "-shm"] {
            let mut path = self.0.clone().into_os_string();
            path.push(suffix);
            let _ = std::fs::remove_file(path);
        }
    }
}
