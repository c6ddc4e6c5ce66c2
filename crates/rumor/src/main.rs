//! `rumor`: the one command-line binary. It parses flags and calls into the
//! library crates; nothing here is protocol logic.

use std::path::PathBuf;
use std::time::Duration;

mod up;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand, ValueEnum};
use sim::bench::{self, Impl};
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
    /// Run the whole system locally: a gateway, a forward node and workers on 127.0.0.1.
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
    },
    /// Run a membership scenario in the deterministic simulator and print its figures.
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
        #[arg(long)]
        seed: Option<u64>,
        /// Which implementation to simulate.
        #[arg(long, value_enum, default_value_t = ImplArg::Lifeguard)]
        r#impl: ImplArg,
    },
    /// Create a gossip message in a simulated cluster and watch it spread.
    Playground {
        /// Cluster size.
        #[arg(long, default_value_t = 50)]
        nodes: usize,
        /// Datagram loss, 0 to 1.
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        /// Seed; the same seed replays the same run.
        #[arg(long)]
        seed: Option<u64>,
    },
    /// Benchmarks that write reports under docs/benchmarks/.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand, Debug)]
enum BenchCommand {
    /// SWIM + Lifeguard vs Lifeguard off vs foca, in the simulator.
    Membership {
        /// A short smoke run instead of the full benchmark (about 20 minutes).
        #[arg(long)]
        quick: bool,
        /// Seed of every run.
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Where to write the report.
        #[arg(long, default_value = "docs/benchmarks/membership.md")]
        out: PathBuf,
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

/// Logs to stderr; `RUMOR_LOG` sets the level (error, warn, info, debug, trace; default warn).
fn init_logging() {
    let level = std::env::var("RUMOR_LOG")
        .ok()
        .and_then(|l| l.parse::<tracing_subscriber::filter::LevelFilter>().ok())
        .unwrap_or(tracing_subscriber::filter::LevelFilter::WARN);
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).init();
}

/// A seed from the clock when none is given; it is printed, so the run can be replayed.
fn seed_or_new(seed: Option<u64>) -> u64 {
    seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    init_logging();
    match cli.command {
        Command::Up { workers, base_port, exit_after } => {
            if workers == 0 {
                bail!("--workers must be at least 1");
            }
            let opts = up::UpOptions { workers, base_port, exit_after: exit_after.map(Duration::from_secs) };
            let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
            rt.block_on(up::run(opts))?;
        }
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
            let seed = seed_or_new(seed);
            println!("seed {seed}");
            let report = scenario::run_impl(&sc, seed, r#impl.into(), nodes);
            print!("{}", report.render(&name));
        }
        Command::Playground { nodes, loss, seed } => {
            if !(0.0..=1.0).contains(&loss) {
                bail!("--loss must be between 0 and 1, got {loss}");
            }
            let seed = seed_or_new(seed);
            println!(
                "seed {seed}: {nodes} simulated nodes, {:.0}% loss; node n{} creates a gossip message",
                loss * 100.0,
                nodes / 2
            );
            let mut last = 0;
            for (t, k) in scenario::playground(nodes, loss, seed) {
                if k != last {
                    println!("{t:>7.2}s  {k:>5}/{nodes} {}", "#".repeat(k * 50 / nodes.max(1)));
                    last = k;
                }
            }
        }
        Command::Bench {
            what: BenchCommand::Membership { quick, seed, out },
        } => {
            let opts = if quick {
                bench::Options::quick(seed)
            } else {
                bench::Options::full(seed)
            };
            let command = format!(
                "rumor bench membership{} --seed {seed}",
                if quick { " --quick" } else { "" }
            );
            let report = bench::report(&opts, &command, |line| eprintln!("{line}"));
            if let Some(dir) = out.parent() {
                std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            }
            std::fs::write(&out, &report).with_context(|| format!("writing {}", out.display()))?;
            println!("wrote {}", out.display());
        }
    }
    Ok(())
}
