//! `rumor-bench`: the benchmarks that write reports under docs/benchmarks/.
//! Build with `--release`; the data-plane benchmark also starts the `rumor`
//! binary of the same profile (see [`bench::rumor_exe`]).

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use bench::membership::{self, Impl};
use clap::{Parser, Subcommand, ValueEnum};
use sim::scenario;

#[derive(Parser, Debug)]
#[command(name = "rumor-bench", version, about = "rumor's benchmarks: each writes a report")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// SWIM + Lifeguard vs Lifeguard off vs foca, in the simulator (~55 min).
    Membership {
        /// A short smoke run instead of the full benchmark.
        #[arg(long)]
        quick: bool,
        /// Seed of every run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write the report.
        #[arg(long, default_value = "docs/benchmarks/membership.md")]
        out: PathBuf,
    },
    /// Gateway -> worker -> back on loopback against a bare tonic echo, and the idle footprint of 5 nodes (~5 min).
    Dataplane {
        /// Measured seconds of each step (after a 1 s warm-up).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Rounds; each runs every step once.
        #[arg(long, default_value_t = 5)]
        rounds: usize,
        /// A smoke run of a few seconds instead of the full benchmark.
        #[arg(long)]
        quick: bool,
        /// Where to write the report.
        #[arg(long, default_value = "docs/benchmarks/dataplane.md")]
        out: PathBuf,
        /// The Kafka-protocol broker for the cost of answering after the records are in the log.
        #[arg(long, env = "RUMOR_TEST_KAFKA", default_value = "127.0.0.1:9092")]
        brokers: String,
    },
    /// Kafka into PostgreSQL through the bridge at batch sizes 100/1,000/5,000 against COPY, and produce-to-row latency (~9 min).
    Bridge {
        /// Records of each throughput step.
        #[arg(long, default_value_t = 200_000)]
        records: usize,
        /// Rounds; each runs every step once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// A smoke run of a few seconds instead of the full benchmark.
        #[arg(long)]
        quick: bool,
        /// PostgreSQL URL of a user that may create databases; the bench uses its own database `rumor_bench_bridge`.
        #[arg(
            long,
            env = "RUMOR_TEST_DATABASE_URL",
            default_value = "postgres://postgres@127.0.0.1:5432/test"
        )]
        database_url: String,
        /// Kafka bootstrap servers.
        #[arg(long, env = "RUMOR_TEST_KAFKA", default_value = "127.0.0.1:9092")]
        brokers: String,
        /// Where to write the report.
        #[arg(long, default_value = "docs/benchmarks/bridge.md")]
        out: PathBuf,
    },
    /// Many `rumor node` processes on this host: do they converge and stay converged? (1,000 nodes: ~15 min)
    Overload {
        /// Processes in all.
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        /// Start this many at once, wait for them to converge, then add waves (default: all at once).
        #[arg(long)]
        base: Option<usize>,
        /// Processes per wave.
        #[arg(long, default_value_t = 50)]
        wave: usize,
        /// Least seconds between waves (a wave is added when the bench looks at the cluster).
        #[arg(long, default_value_t = 5)]
        wave_every: u64,
        /// Nodes asked for their view besides the first.
        #[arg(long, default_value_t = 10)]
        sample: usize,
        /// Seconds to wait for convergence.
        #[arg(long, default_value_t = 900)]
        limit: u64,
        /// Seconds the cluster must stay converged.
        #[arg(long, default_value_t = 120)]
        hold: u64,
        /// Where to write the report.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// The client edge against the router path and a bare axum WebSocket echo; idle connections; watchers (~3 min).
    Edge {
        /// Measured seconds of each step (after a 1 s warm-up).
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Rounds; each runs every step once.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Idle connections held by one gateway process.
        #[arg(long, default_value_t = 50_000)]
        idle: usize,
        /// Watchers of one conversation over two gateway processes.
        #[arg(long, default_value_t = 10_000)]
        watchers: usize,
        /// A smoke run of a few seconds instead of the full benchmark.
        #[arg(long)]
        quick: bool,
        /// Where to write the report.
        #[arg(long, default_value = "docs/benchmarks/edge.md")]
        out: PathBuf,
    },
    /// A cluster exporting every message's spans over OTLP against the same cluster untraced (~1 min).
    Traces {
        /// Measured seconds of each step.
        #[arg(long, default_value_t = 5.0)]
        duration: f64,
        /// Rounds; each runs every cluster once.
        #[arg(long, default_value_t = 6)]
        rounds: usize,
        /// WebSocket connections in the closed loop.
        #[arg(long, default_value_t = 16)]
        connections: usize,
        /// A smoke run of a few seconds instead of the full benchmark.
        #[arg(long)]
        quick: bool,
        /// Where to write the report.
        #[arg(long, default_value = "docs/benchmarks/traces.md")]
        out: PathBuf,
    },
    /// Real models: overhead against llama.cpp direct, cache affinity of ring vs round-robin vs least-loaded over three llama.cpp servers, 100,000 conversations' memory (~15 min; builds llama.cpp once).
    Ai {
        /// Streamed completions each way in the overhead step.
        #[arg(long, default_value_t = 100)]
        overhead_requests: usize,
        #[arg(long, default_value_t = 32)]
        conversations: usize,
        #[arg(long, default_value_t = 8)]
        turns: usize,
        /// Conversations in flight at once.
        #[arg(long, default_value_t = 6)]
        concurrency: usize,
        /// Tokens per answer in the affinity step.
        #[arg(long, default_value_t = 32)]
        max_tokens: u32,
        #[arg(long, default_value_t = 100_000)]
        memory_conversations: usize,
        /// The memory step's context budget, in bytes.
        #[arg(long, default_value_t = 8 * 1024 * 1024)]
        memory_budget: usize,
        /// Three running llama.cpp servers' base URLs (comma-separated); default: start them.
        #[arg(long, value_delimiter = ',')]
        servers: Vec<String>,
        /// A smoke run instead of the full benchmark.
        #[arg(long)]
        quick: bool,
        /// Where to write the report.
        #[arg(long, default_value = "docs/benchmarks/ai.md")]
        out: PathBuf,
    },
    /// Drives a running gateway's edge: C connections, R messages per second each (0: closed loop), W watchers per conversation, D seconds.
    EdgeLoad {
        /// The gateway's edge address (loopback only).
        #[arg(long, default_value = "127.0.0.1:8080")]
        edge: std::net::SocketAddr,
        /// A credential of the edge (API key or JWT).
        #[arg(long, env = "RUMOR_EDGE_TOKEN", default_value = "")]
        token: String,
        #[arg(long, short = 'c', default_value_t = 16)]
        connections: usize,
        #[arg(long, short = 'r', default_value_t = 0.0)]
        rate: f64,
        #[arg(long, short = 'w', default_value_t = 0)]
        watchers: usize,
        #[arg(long, short = 'd', default_value_t = 10.0)]
        duration: f64,
        /// The gateway's pid, to report its resident memory.
        #[arg(long)]
        gateway_pid: Option<u32>,
    },
    /// A membership scenario in the simulator with any implementation, foca included, for comparison.
    Sim {
        /// Scenario name: steady, crash, join, gossip, loss, slow, partition, restart, churn.
        scenario: String,
        /// Cluster size.
        #[arg(long, default_value_t = 100)]
        nodes: usize,
        /// Minutes of simulated steady state.
        #[arg(long, default_value_t = 2)]
        minutes: u64,
        /// Seed; the same seed replays the same run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Which implementation to simulate.
        #[arg(long, value_enum, default_value_t = ImplArg::Lifeguard)]
        r#impl: ImplArg,
    },
    /// The far end of `dataplane`, started by it: a worker node and a bare echo service.
    #[command(hide = true)]
    DataplanePeer {
        /// Reply data chunks.
        #[arg(long, default_value_t = 3)]
        chunks: usize,
    },
}

#[derive(ValueEnum, Clone, Copy, Debug)]
enum ImplArg {
    Lifeguard,
    NoLifeguard,
    Foca,
}

impl From<ImplArg> for Impl {
    fn from(a: ImplArg) -> Impl {
        match a {
            ImplArg::Lifeguard => Impl::Lifeguard,
            ImplArg::NoLifeguard => Impl::NoLifeguard,
            ImplArg::Foca => Impl::Foca,
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting tokio")
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_max_level(tracing_subscriber::filter::LevelFilter::WARN)
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Membership { quick, seed, out } => {
            let opts = if quick {
                membership::Options::quick(seed)
            } else {
                membership::Options::full(seed)
            };
            let command = format!(
                "rumor-bench membership{} --seed {seed}",
                if quick { " --quick" } else { "" }
            );
            let report = membership::report(&opts, &command, |line| eprintln!("{line}"));
            bench::report::write(&out, &report)?;
            println!("wrote {}", out.display());
        }
        Command::Dataplane {
            duration,
            rounds,
            quick,
            out,
            brokers,
        } => runtime()?.block_on(bench::dataplane::run(bench::dataplane::Options::new(
            duration, rounds, quick, out, brokers,
        )?))?,
        Command::Bridge {
            records,
            rounds,
            quick,
            database_url,
            brokers,
            out,
        } => runtime()?.block_on(bench::bridge::run(bench::bridge::Options::new(
            records,
            rounds,
            quick,
            database_url,
            brokers,
            out,
        )?))?,
        Command::Sim {
            scenario: name,
            nodes,
            minutes,
            seed,
            r#impl,
        } => {
            let Some(sc) = scenario::builtin(&name, nodes, minutes) else {
                bail!("unknown scenario {name:?}; known: {}", scenario::BUILTIN.join(", "));
            };
            println!("seed {seed}");
            let report = membership::run_scenario(&sc, seed, r#impl.into(), nodes);
            print!("{}", report.render(&name));
        }
        Command::Edge {
            duration,
            rounds,
            idle,
            watchers,
            quick,
            out,
        } => runtime()?.block_on(bench::edge::run(bench::edge::Options::new(
            duration, rounds, idle, watchers, quick, out,
        )?))?,
        Command::Traces {
            duration,
            rounds,
            connections,
            quick,
            out,
        } => runtime()?.block_on(bench::traces::run(bench::traces::Options::new(
            duration,
            rounds,
            connections,
            quick,
            out,
        )))?,
        Command::EdgeLoad {
            edge,
            token,
            connections,
            rate,
            watchers,
            duration,
            gateway_pid,
        } => runtime()?.block_on(bench::edge::load(bench::edge::LoadOptions {
            edge,
            token,
            connections,
            rate,
            watchers,
            duration: Duration::from_secs_f64(duration),
            gateway_pid,
        }))?,
        Command::Ai {
            overhead_requests,
            conversations,
            turns,
            concurrency,
            max_tokens,
            memory_conversations,
            memory_budget,
            servers,
            quick,
            out,
        } => {
            let mut command = "rumor-bench ai".to_owned();
            if quick {
                command.push_str(" --quick");
            }
            let full = bench::ai::Options {
                overhead_requests,
                conversations,
                turns,
                concurrency,
                max_tokens,
                memory_conversations,
                memory_budget,
                servers,
                out,
                command,
            };
            // A smoke run: every step, a few seconds each.
            let o = if quick {
                bench::ai::Options {
                    overhead_requests: 10,
                    conversations: 6,
                    turns: 3,
                    concurrency: 3,
                    max_tokens: 16,
                    memory_conversations: 5_000,
                    memory_budget: 256 * 1024,
                    ..full
                }
            } else {
                full
            };
            runtime()?.block_on(bench::ai::run(o))?;
        }
        Command::Overload {
            nodes,
            base,
            wave,
            wave_every,
            sample,
            limit,
            hold,
            out,
        } => runtime()?.block_on(bench::overload::run(bench::overload::Options {
            nodes,
            waves: base.map(|base| bench::overload::Waves {
                base,
                wave,
                every: Duration::from_secs(wave_every),
            }),
            sample,
            limit: Duration::from_secs(limit),
            hold: Duration::from_secs(hold),
            out,
        }))?,
        Command::DataplanePeer { chunks } => runtime()?.block_on(bench::dataplane::peer(chunks))?,
    }
    Ok(())
}
