//! `rumor`: the one command-line binary. It parses flags and calls into the
//! library crates; nothing here is protocol logic.

use std::path::PathBuf;
use std::time::Duration;

mod bridge_cmd;
mod commands;
mod playground;
mod telemetry;
mod up;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use proto::api::KeyOperation;
use server::file::{FileConfig, Overrides};
use sim::scenario;

#[derive(Parser, Debug)]
#[command(
    name = "rumor",
    version,
    about = "A gossip-based message-forwarding mesh for AI workloads"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the whole system locally: a gateway, a forward node and workers on 127.0.0.1,
    /// each a full node (gossip, mesh, admin).
    Up {
        /// Number of worker nodes.
        #[arg(long, default_value_t = 3)]
        workers: usize,
        /// First gossip port (the others follow); 0 picks free ports.
        #[arg(long, default_value_t = 0)]
        base_port: u16,
        /// Leave and exit after this many seconds instead of waiting for Ctrl-C.
        #[arg(long)]
        exit_after: Option<u64>,
        /// Port of the embedded bridge's HTTP API (history, inject); 0 picks a free one.
        #[arg(long, default_value_t = 0)]
        bridge_port: u16,
        /// Port of the gateway's client edge (WebSocket, HTTP, OpenAI-compatible) on 127.0.0.1;
        /// 0 picks a free one.
        #[arg(long, default_value_t = 8080)]
        edge_port: u16,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Run one mesh node (gossip, mesh gRPC, admin HTTP) until Ctrl-C or SIGTERM.
    Node {
        /// TOML config file (see docs/config.md); without it, defaults plus environment and flags.
        #[arg(long)]
        config: Option<PathBuf>,
        /// Node name (overrides `name`, RUMOR_NAME).
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated roles: gateway, forward, worker (overrides `roles`, RUMOR_ROLES).
        #[arg(long, value_delimiter = ',')]
        roles: Option<Vec<String>>,
        /// Comma-separated seed gossip addresses (overrides `seeds`, RUMOR_SEEDS).
        #[arg(long, value_delimiter = ',')]
        seeds: Option<Vec<String>>,
        /// Gossip bind address (overrides `bind.gossip`, RUMOR_GOSSIP_BIND).
        #[arg(long)]
        gossip_bind: Option<String>,
        /// Mesh bind address (overrides `bind.mesh`, RUMOR_MESH_BIND).
        #[arg(long)]
        mesh_bind: Option<String>,
        /// Admin HTTP bind address (overrides `bind.admin`, RUMOR_ADMIN_BIND).
        #[arg(long)]
        admin_bind: Option<String>,
        /// Client edge bind address of a gateway (overrides `bind.edge`, RUMOR_EDGE_BIND).
        #[arg(long)]
        edge_bind: Option<String>,
        /// Advertised gossip address (overrides `advertise`, RUMOR_ADVERTISE).
        #[arg(long)]
        advertise: Option<String>,
        /// Membership preset: lan, wan, test (overrides `membership.preset`, RUMOR_PRESET).
        #[arg(long)]
        preset: Option<String>,
        /// Leave and exit, as on SIGTERM, when stdin ends: for a parent process
        /// (`rumor playground`) that holds the pipe, so its nodes never outlive it.
        #[arg(long, hide = true)]
        exit_on_eof: bool,
    },
    /// Run the bridge: the messages topic into PostgreSQL (or SQLite), history and inject APIs over HTTP.
    Bridge {
        /// TOML config file (see docs/config.md); without it, defaults plus environment and flags.
        #[arg(long)]
        config: Option<PathBuf>,
        /// postgres://... or sqlite:... (overrides `database_url`, RUMOR_DATABASE_URL).
        #[arg(long)]
        database_url: Option<String>,
        /// Kafka bootstrap servers (overrides `brokers`, RUMOR_KAFKA_BROKERS).
        #[arg(long)]
        brokers: Option<String>,
        /// HTTP API bind address (overrides `http_bind`, RUMOR_BRIDGE_HTTP_BIND).
        #[arg(long)]
        http_bind: Option<String>,
        /// Consumer group and key of the stored offsets (overrides `group_id`).
        #[arg(long)]
        group_id: Option<String>,
        /// Test hook: abort the process right after the Nth database commit.
        #[arg(long, hide = true)]
        crash_after_batch: Option<u64>,
    },
    /// Make a new API key for a gateway's client edge: prints the key (give it to the client) and the
    /// `[[edge.api_keys]]` entry with its SHA-256 (put it in the gateway's config).
    Key {
        /// The key's name, for limits and logs.
        #[arg(long, default_value = "app")]
        name: String,
        /// Conversation keys the key may use start with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// The key may watch conversations but not send.
        #[arg(long)]
        watch_only: bool,
    },
    /// Show a node's view: members and the ring checksum.
    Status {
        /// Admin address of any node.
        #[arg(long, default_value = "127.0.0.1:7948")]
        admin: String,
    },
    /// Send a message for a conversation key through a node and print the streamed reply.
    Send {
        /// Admin address of the node the message enters at.
        #[arg(long, default_value = "127.0.0.1:7948")]
        admin: String,
        /// Conversation key.
        #[arg(long)]
        key: String,
        /// Time the mesh has to answer, in milliseconds.
        #[arg(long, default_value_t = 10_000)]
        timeout_ms: u64,
        /// The message.
        message: String,
    },
    /// Create a gossip message at a node and print which members have it and when.
    Gossip {
        /// Admin address of the node that creates the message.
        #[arg(long, default_value = "127.0.0.1:7948")]
        admin: String,
        /// How long to wait for every live member, in milliseconds.
        #[arg(long, default_value_t = 5_000)]
        wait_ms: u64,
        /// The message (at most 1 KiB).
        message: String,
    },
    /// List or rotate gossip keys: install the new key everywhere, then use it, then remove the old one.
    Keys {
        /// Admin address of a node.
        #[arg(long, default_value = "127.0.0.1:7948")]
        admin: String,
        /// Apply to every live member (through their admin addresses), not just this node.
        #[arg(long)]
        all: bool,
        #[command(subcommand)]
        op: Option<KeyOp>,
    },
    /// Start a local cluster of separate processes (a gateway, a forward node, workers) and serve a
    /// web page that shows it live and lets you break it; or, with --sim, the simulator. The
    /// subcommands are the page's controls, for scripts.
    Playground {
        #[command(subcommand)]
        op: Option<playground::Op>,
        /// Where the page and its API listen; the subcommands ask the playground there.
        #[arg(long, default_value = "127.0.0.1:7900", global = true)]
        addr: String,
        /// Number of workers.
        #[arg(long, default_value_t = 5)]
        workers: usize,
        /// Membership preset of the nodes (lan, wan, test).
        #[arg(long, default_value = "lan")]
        preset: String,
        /// Kafka bootstrap servers for the event log; without it the playground starts tansu
        /// (in memory) when it is installed.
        #[arg(long, value_name = "HOST:PORT")]
        kafka: Option<String>,
        /// Run without an event log (and so without the bridge).
        #[arg(long, conflicts_with = "kafka")]
        no_log: bool,
        #[command(flatten)]
        model: ModelArgs,
        /// Show the deterministic simulator instead of a real cluster.
        #[arg(long)]
        sim: bool,
        /// Simulated nodes (--sim).
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// The simulation's seed (--sim); the same seed replays the same run.
        #[arg(long, default_value_t = 7)]
        seed: u64,
    },
    /// Run a membership scenario in the deterministic simulator and print its figures,
    /// or `spread`: create a gossip message in a simulated cluster and watch it spread.
    Sim {
        /// Scenario name: steady, crash, join, gossip, loss, slow, partition, restart, churn, spread.
        scenario: String,
        /// Cluster size.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Minutes of simulated steady state.
        #[arg(long, default_value_t = 2)]
        minutes: u64,
        /// Seed; the same seed replays the same run.
        #[arg(long)]
        seed: Option<u64>,
        /// Datagram loss, 0 to 1 (`spread` only; the other scenarios set their own).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Turn Lifeguard off, for comparison (foca is compared in `rumor-bench sim`).
        #[arg(long)]
        no_lifeguard: bool,
    },
}

/// What workers of `rumor up` and `rumor playground` answer with.
#[derive(clap::Args, Debug)]
struct ModelArgs {
    /// Workers answer with a real model: a GGUF file, served by llama.cpp's
    /// `llama-server` (see --llama-server), started and stopped with the cluster.
    #[arg(long, value_name = "PATH", conflicts_with = "backend")]
    model: Option<PathBuf>,
    /// The llama.cpp server binary for --model.
    #[arg(long, value_name = "BIN", default_value = "llama-server")]
    llama_server: PathBuf,
    /// Workers answer with an OpenAI-compatible server that is already running,
    /// e.g. http://127.0.0.1:8081/v1 (scripts/llama-server starts one); without
    /// --model or --backend they echo.
    #[arg(long, value_name = "URL")]
    backend: Option<String>,
}

impl ModelArgs {
    fn model(self) -> Option<up::Model> {
        match (self.model, self.backend) {
            (Some(path), _) => Some(up::Model::Gguf {
                path,
                llama_server: self.llama_server,
            }),
            (None, Some(url)) => Some(up::Model::Backend(url)),
            (None, None) => None,
        }
    }
}

#[derive(Subcommand, Debug)]
enum KeyOp {
    /// List key ids (the default).
    List,
    /// Install a key for decryption (rotation step 1, on every node).
    Install {
        /// 32 bytes in standard base64.
        key: String,
    },
    /// Make an installed key the primary (step 2, once every node has it).
    Use {
        /// 32 bytes in standard base64.
        key: String,
    },
    /// Remove a key that is not the primary (step 3).
    Remove {
        /// 32 bytes in standard base64.
        key: String,
    },
}

/// A seed from the clock when none is given; it is printed, so the run can be replayed.
fn seed_or_new(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

/// The text of a config file.
fn read_config(path: &std::path::Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading config file {}", path.display()))
}

/// Runs the command; an error is printed once, with its causes on one line
/// and no backtrace (it is the user's input, not a bug), and the exit status
/// is 1.
fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("rumor: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = runtime()?;
    // Inside the runtime: the trace exporter starts its tasks on it.
    let entered = rt.enter();
    let serves = matches!(
        cli.command,
        Command::Up { .. } | Command::Node { .. } | Command::Bridge { .. }
    );
    let traces = telemetry::init(serves)?;
    let result = dispatch(cli, &rt);
    if let Some(traces) = traces {
        // The last spans, before the runtime that exports them stops.
        traces.shutdown();
    }
    drop(entered);
    result
}

fn dispatch(cli: Cli, rt: &tokio::runtime::Runtime) -> anyhow::Result<()> {
    match cli.command {
        Command::Up {
            workers,
            base_port,
            exit_after,
            bridge_port,
            edge_port,
            model,
        } => {
            if workers == 0 {
                bail!("--workers must be at least 1");
            }
            let model = model.model();
            let opts = up::UpOptions {
                workers,
                base_port,
                exit_after: exit_after.map(Duration::from_secs),
                bridge_port,
                edge_port,
                model,
            };
            rt.block_on(up::run(opts))?;
        }
        Command::Node {
            config,
            name,
            roles,
            seeds,
            gossip_bind,
            mesh_bind,
            admin_bind,
            edge_bind,
            advertise,
            preset,
            exit_on_eof,
        } => {
            let mut file = match &config {
                Some(path) => {
                    FileConfig::parse(&read_config(path)?).with_context(|| format!("config file {}", path.display()))?
                }
                None => FileConfig::default(),
            };
            file.apply_env(|k| std::env::var(k).ok())?;
            file.apply(Overrides {
                name,
                roles,
                seeds,
                gossip_bind,
                mesh_bind,
                admin_bind,
                edge_bind,
                advertise,
                preset,
            });
            let server_config = file.into_server_config()?;
            rt.block_on(commands::node(server_config, exit_on_eof))?;
        }
        Command::Bridge {
            config,
            database_url,
            brokers,
            http_bind,
            group_id,
            crash_after_batch,
        } => {
            let flags = bridge_cmd::BridgeFlags {
                database_url,
                brokers,
                http_bind,
                group_id,
                crash_after_batch,
            };
            let cfg = bridge_cmd::BridgeFile::load(config.as_deref())?.into_config(|k| std::env::var(k).ok(), flags)?;
            rt.block_on(bridge_cmd::run(cfg))?;
        }
        Command::Key {
            name,
            prefix,
            watch_only,
        } => {
            let key = gateway::new_api_key();
            println!("API key (give it to the client; it is not stored anywhere):\n  {key}\n");
            println!("For the gateway's config file:\n");
            println!(
                "[[edge.api_keys]]\nname = {name:?}\nsha256 = \"{}\"",
                gateway::key_hash(&key)
            );
            if !prefix.is_empty() {
                println!("prefix = {prefix:?}");
            }
            if watch_only {
                println!("watch_only = true");
            }
        }
        Command::Status { admin } => rt.block_on(commands::status(&admin))?,
        Command::Send {
            admin,
            key,
            timeout_ms,
            message,
        } => rt.block_on(commands::send(&admin, key, message, Duration::from_millis(timeout_ms)))?,
        Command::Keys { admin, all, op } => {
            let op = match op {
                None | Some(KeyOp::List) => None,
                Some(KeyOp::Install { key }) => Some((KeyOperation::Install, key)),
                Some(KeyOp::Use { key }) => Some((KeyOperation::Use, key)),
                Some(KeyOp::Remove { key }) => Some((KeyOperation::Remove, key)),
            };
            rt.block_on(commands::keys(&admin, op, all))?
        }
        Command::Gossip {
            admin,
            wait_ms,
            message,
        } => rt.block_on(commands::gossip(&admin, message, Duration::from_millis(wait_ms)))?,
        Command::Playground {
            op,
            addr,
            workers,
            preset,
            kafka,
            no_log,
            model,
            sim,
            nodes,
            seed,
        } => match op {
            Some(op) => rt.block_on(playground::op(&addr, op))?,
            None => {
                if workers == 0 {
                    bail!("--workers must be at least 1");
                }
                let model = model.model();
                let opts = playground::Options {
                    workers,
                    bind: addr
                        .parse()
                        .with_context(|| format!("--addr {addr:?} is not an address (host:port)"))?,
                    preset,
                    kafka,
                    no_log,
                    model,
                    sim: sim.then_some((nodes, seed)),
                };
                rt.block_on(playground::run(opts))?
            }
        },
        Command::Sim {
            scenario: name,
            nodes,
            minutes,
            seed,
            loss,
            no_lifeguard,
        } => {
            let seed = seed_or_new(seed);
            if name == "spread" {
                spread(nodes, loss, seed)?;
                return Ok(());
            }
            let Some(sc) = scenario::builtin(&name, nodes, minutes) else {
                bail!(
                    "unknown scenario {name:?}; known: {}, spread",
                    scenario::BUILTIN.join(", ")
                );
            };
            println!("seed {seed}");
            let config = membership::Config {
                lifeguard: !no_lifeguard,
                ..membership::Config::lan()
            };
            let report = scenario::run_rumor(&sc, seed, config);
            print!("{}", report.render(&name));
        }
    }
    Ok(())
}

/// `rumor sim spread`: one gossip message spreading through a simulated cluster, as a text animation.
fn spread(nodes: usize, loss: f64, seed: u64) -> anyhow::Result<()> {
    if !(0.0..=1.0).contains(&loss) {
        bail!("--loss must be between 0 and 1, got {loss}");
    }
    println!(
        "seed {seed}: {nodes} simulated nodes, {:.0}% loss; node n{} creates a gossip message",
        loss * 100.0,
        nodes / 2
    );
    let mut last = 0;
    for (t, k) in scenario::spread(nodes, loss, seed) {
        if k != last {
            println!("{t:>7.2}s  {k:>5}/{nodes} {}", "#".repeat(k * 50 / nodes.max(1)));
            last = k;
        }
    }
    Ok(())
}
