//! `rumor playground`: a real local cluster, each node a separate `rumor
//! node` process, and a web page that shows it live and lets you break it;
//! or, with `--sim`, the deterministic simulator with thousands of nodes.
//!
//! `rumor playground` serves the page and prints its URL. Every control on
//! the page is also a subcommand (`rumor playground kill worker-2`, ...) that
//! asks the running playground's API, so scripts can do what a visitor does.
//!
//! The event log: with `--kafka ADDR` workers publish every message and reply
//! there and the bridge (in this process, on SQLite) stores them and serves
//! history; without it the playground starts a tansu broker (in memory) when
//! `tansu` is installed, and otherwise runs without an event log and says so.

mod cluster;
mod sim;
mod web;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;
use node::client::AdminClient;

use crate::up::{Model, Started, workers_backend};

/// What `rumor playground` starts.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    pub(crate) workers: usize,
    pub(crate) bind: SocketAddr,
    pub(crate) preset: String,
    pub(crate) kafka: Option<String>,
    pub(crate) no_log: bool,
    pub(crate) model: Option<Model>,
    /// `Some((nodes, seed))`: the simulator instead of a cluster.
    pub(crate) sim: Option<(usize, u64)>,
}

/// The subcommands: one control of the page each.
#[derive(Subcommand, Debug)]
pub(crate) enum Op {
    /// Print the nodes and their states, as one node sees them.
    Status {
        /// The node whose view to show (default: the first gateway).
        #[arg(long)]
        view: Option<String>,
    },
    /// Kill a node (SIGKILL).
    Kill { node: String },
    /// Stop a node gracefully (SIGTERM: it leaves).
    Stop { node: String },
    /// Start a node again, at new addresses.
    Restart { node: String },
    /// Cut a node's gossip traffic off.
    Isolate { node: String },
    /// Repair a node's network after `isolate`.
    Repair { node: String },
    /// Delay a node's outbound gossip traffic (0 restores the link). Its acks
    /// must come later than the probe period (1 s with the LAN preset) for the
    /// others to suspect it.
    Slow {
        node: String,
        /// Milliseconds; default: half again the preset's probe period.
        #[arg(long)]
        ms: Option<u32>,
    },
    /// Start one more worker.
    AddWorker,
    /// Remove a worker: it leaves gracefully and hands its share on.
    RemoveWorker { node: String },
    /// Rotate the gossip key on every running node.
    RotateKey,
    /// Create a gossip message and print when each node received it, beside the
    /// simulator's prediction.
    Gossip {
        /// The node that creates it (default: the first gateway).
        #[arg(long)]
        from: Option<String>,
        #[arg(default_value = "hello from the playground")]
        text: String,
    },
    /// Send a message to a conversation and print the reply and the worker that answered.
    Send {
        #[arg(long)]
        key: String,
        text: String,
    },
    /// Print the worker that owns a conversation key.
    Owner { key: String },
}

fn preset_config(preset: &str) -> anyhow::Result<membership::Config> {
    Ok(match preset {
        "lan" => membership::Config::lan(),
        "wan" => membership::Config::wan(),
        "test" => membership::Config::for_tests(),
        other => anyhow::bail!("unknown preset {other:?}; known: lan, wan, test"),
    })
}

fn find_tansu() -> Option<PathBuf> {
    let home = std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo/bin/tansu"));
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join("tansu"))
        .chain(home)
        .find(|p| p.is_file())
}

/// Starts tansu with in-memory storage on a free port of 127.0.0.1.
async fn start_tansu(bin: &std::path::Path, dir: &std::path::Path) -> anyhow::Result<(Started, String)> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("tcp://127.0.0.1:{port}");
    let log = std::fs::File::create(dir.join("tansu.log"))?;
    let child = std::process::Command::new(bin)
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(["--listener-url", &url, "--advertised-listener-url", &url])
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    let broker = Started(child);
    let addr = format!("127.0.0.1:{port}");
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(&addr).await.is_ok() {
            return Ok((broker, addr));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    anyhow::bail!(
        "tansu did not listen on {addr} within 10 s; see {}",
        dir.join("tansu.log").display()
    )
}

pub(crate) async fn run(opts: Options) -> anyhow::Result<()> {
    let cfg = preset_config(&opts.preset)?;
    anyhow::ensure!(
        opts.bind.ip().is_loopback(),
        "--addr {}: the playground serves loopback only (its page kills processes and holds the cluster's keys)",
        opts.bind
    );
    let listener = tokio::net::TcpListener::bind(opts.bind)
        .await
        .with_context(|| format!("binding the playground's page to {}", opts.bind))?;
    let url = format!("http://{}/", listener.local_addr()?);

    if let Some((nodes, seed)) = opts.sim {
        anyhow::ensure!(nodes >= 2, "--nodes must be at least 2");
        let run = sim::SimHandle::start(nodes, seed, opts.preset.clone(), cfg);
        let shared = Arc::new(web::Shared {
            mode: web::Mode::Sim(run),
        });
        println!(
            "playground: simulator mode, {nodes} nodes, seed {seed}, preset {}",
            opts.preset
        );
        println!("playground listening {url}");
        flush();
        serve(listener, shared).await?;
        return Ok(());
    }

    let dir = std::env::temp_dir().join(format!("rumor-playground-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    let (backend, _model_server) = workers_backend(opts.model.as_ref()).await?;
    // The event log and the bridge.
    let mut _broker = None;
    let brokers = match (&opts.kafka, opts.no_log) {
        (Some(k), _) => Some(k.clone()),
        (None, true) => None,
        (None, false) => match find_tansu() {
            Some(bin) => {
                let (b, addr) = start_tansu(&bin, &dir).await?;
                _broker = Some(b);
                Some(addr)
            }
            None => None,
        },
    };
    // Topics and consumer groups of this run only: a shared broker's other
    // users never see the playground's records, nor it theirs.
    let topics = format!("rumor-playground-{}", std::process::id());
    let mut bridge = None;
    let log = match &brokers {
        Some(addr) => {
            let db = dir.join("bridge.db");
            let mut c = bridge::BridgeConfig::new(
                format!("sqlite:{}", db.display()),
                events::EventLog::Kafka(events::KafkaConfig::new(addr)),
            );
            c.http_bind = SocketAddr::from(([127, 0, 0, 1], 0));
            c.topics.messages = format!("{topics}.messages");
            c.topics.forward = format!("{topics}.forward");
            c.group_id = format!("{topics}.bridge");
            let b = bridge::start(c).await.context("starting the bridge")?;
            let desc = format!("Kafka at {addr}, bridge at {} on SQLite ({})", b.addr(), db.display());
            bridge = Some(b);
            desc
        }
        None => "none: no Kafka (pass --kafka or install tansu); messages are not stored".to_owned(),
    };
    let settings = cluster::Settings {
        exe: std::env::current_exe().context("finding this binary")?,
        dir: dir.clone(),
        preset: opts.preset.clone(),
        brokers,
        topics,
        bridge: bridge.as_ref().map(|b| b.addr().to_string()),
        backend,
    };
    println!(
        "playground: starting a gateway, a forward node and {} workers",
        opts.workers
    );
    println!("playground: event log {log}");
    println!("playground: node configs and logs in {}", dir.display());
    let cluster = match cluster::Cluster::start(settings, opts.workers).await {
        Ok(c) => c,
        Err(e) => {
            // The nodes started so far are killed as the cluster is dropped;
            // the directory stays, for the logs the error points to.
            if let Some(b) = bridge {
                let _ = b.shutdown().await;
            }
            return Err(e);
        }
    };
    let shared = Arc::new(web::Shared {
        mode: web::Mode::Cluster(Box::new(web::Live::new(cluster, cfg, opts.preset.clone(), log))),
    });
    let gatherer = tokio::spawn(web::gather(shared.clone()));
    println!("playground listening {url}");
    flush();
    let served = serve(listener, shared.clone()).await;
    gatherer.abort();
    println!("playground: stopping every node");
    if let web::Mode::Cluster(l) = &shared.mode {
        l.cluster.lock().await.shutdown().await;
    }
    if let Some(b) = bridge {
        b.shutdown().await.context("stopping the bridge")?;
    }
    let _ = std::fs::remove_dir_all(&dir);
    served
}

fn flush() {
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}

async fn serve(listener: tokio::net::TcpListener, shared: Arc<web::Shared>) -> anyhow::Result<()> {
    axum::serve(listener, web::routes(shared))
        .with_graceful_shutdown(crate::commands::terminated())
        .await
        .context("serving the playground")
}

/// Runs one subcommand against the playground at `addr`.
pub(crate) async fn op(addr: &str, op: Op) -> anyhow::Result<()> {
    let c = AdminClient::new(addr.to_owned()).with_timeout(Duration::from_secs(130));
    let post = |path: String| {
        let c = c.clone();
        async move { c.post_json::<serde_json::Value>(&path, &serde_json::json!({})).await }
    };
    let out = match op {
        Op::Status { view } => {
            let path = format!("/api/state?view={}", web::percent_encode(&view.unwrap_or_default()));
            let s: serde_json::Value = c.get_json(&path).await?;
            println!("as {} sees it:", s["view"].as_str().unwrap_or("?"));
            for n in s["nodes"].as_array().into_iter().flatten() {
                println!(
                    "  {:<12} {:<8} {:<8} process {}{}{}",
                    n["name"].as_str().unwrap_or("?"),
                    n["role"].as_str().unwrap_or("?"),
                    n["status"].as_str().unwrap_or("?"),
                    n["process"].as_str().unwrap_or("?"),
                    if n["isolated"].as_bool() == Some(true) {
                        ", cut off"
                    } else {
                        ""
                    },
                    match n["delay_ms"].as_u64() {
                        Some(ms) if ms > 0 => format!(", link +{ms} ms"),
                        _ => String::new(),
                    },
                );
            }
            return Ok(());
        }
        Op::Kill { node } => post(node_path(&node, "kill")).await?,
        Op::Stop { node } | Op::RemoveWorker { node } => post(node_path(&node, "stop")).await?,
        Op::Restart { node } => post(node_path(&node, "restart")).await?,
        Op::Isolate { node } => post(node_path(&node, "isolate")).await?,
        Op::Repair { node } => post(node_path(&node, "repair")).await?,
        Op::Slow { node, ms } => {
            let ms = ms.map(|ms| format!("?ms={ms}")).unwrap_or_default();
            post(format!("/api/nodes/{}/slow{ms}", web::percent_encode(&node))).await?
        }
        Op::AddWorker => post("/api/workers".into()).await?,
        Op::RotateKey => post("/api/keys/rotate".into()).await?,
        Op::Gossip { from, text } => {
            let body = serde_json::json!({ "from": from.unwrap_or_default(), "text": text });
            let g: serde_json::Value = c.post_json("/api/gossip", &body).await?;
            println!(
                "gossip message {}#{} from {}:",
                g["origin"].as_str().unwrap_or("?"),
                g["seq"],
                g["from"].as_str().unwrap_or("?")
            );
            let prediction = g["prediction"].as_array().cloned().unwrap_or_default();
            let receipts = g["receipts"].as_array().cloned().unwrap_or_default();
            for (i, r) in receipts.iter().enumerate() {
                let ms = r["ms"].as_i64().unwrap_or(0);
                // When the simulator expects the (i+1)-th node to have it.
                let expected = prediction.get(i).and_then(serde_json::Value::as_f64);
                println!(
                    "  {:<12} {:>6} ms   (simulator: node {} of {} by {} ms)",
                    r["node"].as_str().unwrap_or("?"),
                    ms,
                    i + 1,
                    prediction.len(),
                    expected.map_or("-".into(), |e| format!("{e:.0}"))
                );
            }
            for m in g["missing"].as_array().into_iter().flatten() {
                println!("  {:<12} not received", m.as_str().unwrap_or("?"));
            }
            return Ok(());
        }
        Op::Send { key, text } => {
            let r: serde_json::Value = c
                .post_json("/api/send", &serde_json::json!({ "key": key, "text": text }))
                .await?;
            println!(
                "{} (answered by {} through {} in {} ms)",
                r["reply"]["text"].as_str().unwrap_or(""),
                r["reply"]["worker"].as_str().unwrap_or("?"),
                r["gateway"].as_str().unwrap_or("?"),
                r["ms"]
            );
            return Ok(());
        }
        Op::Owner { key } => {
            let path = format!("/api/owner?key={}", web::percent_encode(&key));
            let r: serde_json::Value = c.get_json(&path).await?;
            println!(
                "{key} is owned by {} (ring as {} sees it)",
                r["owner"].as_str().unwrap_or("nobody"),
                r["view"].as_str().unwrap_or("?")
            );
            return Ok(());
        }
    };
    println!("{out}");
    Ok(())
}

/// The API path of `action` on node `name`.
fn node_path(name: &str, action: &str) -> String {
    format!("/api/nodes/{}/{action}", web::percent_encode(name))
}
