//! Scenarios as data: a list of operations run against a [`Cluster`], each
//! step logged with the simulated time, so a run reads like a script and
//! replays exactly from its seed.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use membership::Config;

use crate::cluster::{Cluster, Cpu, NetConfig};
use crate::protocol::{Protocol, Rumor};

/// One step of a scenario.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    /// Starts `nodes` nodes, ten every 100 ms (as a deployment would roll
    /// them out); each joins through node 0.
    Start {
        /// How many.
        nodes: usize,
    },
    /// Adds one node that joins through node 0, and watches it.
    Join,
    /// Lets simulated time pass.
    Wait(Duration),
    /// Runs until every up node sees exactly the up nodes, or `limit` passes.
    Converge {
        /// Give up after this long.
        limit: Duration,
    },
    /// Kills a node without a word, and watches it.
    Crash(usize),
    /// Restarts a crashed node under the same name, at a new address if asked.
    Restart {
        /// Which node.
        node: usize,
        /// Give it a new address.
        new_addr: bool,
    },
    /// A node leaves gracefully.
    Leave(usize),
    /// Sets uniform datagram loss.
    Loss(f64),
    /// Sets the loss of one directed link.
    LinkLoss {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// Probability of loss.
        loss: f64,
    },
    /// Sets the one-way latency of one directed link.
    LinkLatency {
        /// Sender.
        from: usize,
        /// Receiver.
        to: usize,
        /// Latency.
        latency: Duration,
    },
    /// Makes a node handle packets late (`None` restores it).
    Slow {
        /// Which node.
        node: usize,
        /// Extra delay for each packet it handles (0.5x to 1.5x of this).
        delay: Option<Duration>,
    },
    /// Splits the up nodes into two halves (lower and upper indices).
    Split {
        /// Block both directions, or only lower -> upper.
        two_way: bool,
    },
    /// Removes all partitions.
    Repair,
    /// A node starts a gossip message with this id.
    Broadcast {
        /// Sender.
        node: usize,
        /// Message id.
        id: u64,
    },
    /// Every node shares `cpu` from now on (`None`: handling is instant).
    Cpu(Option<Cpu>),
    /// Churn: every `every`, crash one random up node and restart one crashed node.
    Churn {
        /// Interval between churn events.
        every: Duration,
        /// For how long.
        duration: Duration,
    },
}

/// A named scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Name, printed in the report.
    pub name: String,
    /// Network settings at the start.
    pub net: NetConfig,
    /// The steps.
    pub ops: Vec<Op>,
}

/// What a scenario run produced.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed; rerunning with it gives the same report.
    pub seed: u64,
    /// One line per step, prefixed with simulated time.
    pub log: Vec<String>,
    /// Final figures as (name, value) rows.
    pub figures: Vec<(String, String)>,
}

impl Report {
    /// The report as text: seed, log and a table of figures.
    pub fn render(&self, name: &str) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "scenario {name}, seed {} (replay with --seed {})",
            self.seed, self.seed
        );
        for l in &self.log {
            let _ = writeln!(s, "  {l}");
        }
        let w = self.figures.iter().map(|(k, _)| k.len()).max().unwrap_or(0);
        for (k, v) in &self.figures {
            let _ = writeln!(s, "  {k:<w$}  {v}");
        }
        s
    }
}

/// Runs `scenario` with rumor nodes configured by `cfg`.
pub fn run_rumor(scenario: &Scenario, seed: u64, cfg: Config) -> Report {
    let cluster = Cluster::new(seed, scenario.net.clone(), move |spec| Rumor::new(cfg.clone(), spec));
    run(scenario, cluster)
}

/// The spread of one gossip message through `n` rumor nodes: (seconds, nodes that have it).
pub fn spread(n: usize, loss: f64, seed: u64) -> Vec<(f64, usize)> {
    let net = NetConfig {
        loss,
        ..NetConfig::default()
    };
    let mut c = Cluster::new(seed, net, |spec| Rumor::new(Config::lan(), spec));
    for k in 0..n {
        if k > 0 && k % 10 == 0 {
            c.run_for(Duration::from_millis(100));
        }
        c.add_node(&[0]);
    }
    c.run_until_cond(Duration::from_millis(100), Duration::from_secs(600), |c| c.converged());
    let t0 = c.now();
    c.broadcast(n / 2, 1, 64);
    let mut timeline = vec![(0.0, 1)];
    let step = Duration::from_millis(100);
    while timeline.last().is_some_and(|&(t, k)| k < n && t < 60.0) {
        c.run_for(step);
        timeline.push(((c.now() - t0).as_secs_f64(), c.message_receivers(1)));
    }
    timeline
}

/// Runs `scenario` on `cluster`.
pub fn run<P: Protocol>(scenario: &Scenario, mut c: Cluster<P>) -> Report {
    let wall = Instant::now();
    let mut log = Vec::new();
    let mut say = |c: &Cluster<P>, msg: String| log.push(format!("[{:>9.3}s] {msg}", c.now().as_secs_f64()));
    let mut rng_state = c.seed() ^ 0x9e37_79b9_7f4a_7c15;
    let mut pick = move |n: usize| {
        // SplitMix64: a scenario-level choice that does not disturb the cluster's own random stream.
        rng_state = rng_state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = rng_state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        ((z ^ (z >> 31)) % n.max(1) as u64) as usize
    };
    let mut watched = Vec::new();
    let mut broadcasts = Vec::new();
    for op in &scenario.ops {
        match op {
            Op::Start { nodes } => {
                for k in 0..*nodes {
                    if k > 0 && k % 10 == 0 {
                        c.run_for(Duration::from_millis(100));
                    }
                    c.add_node(&[0]);
                }
                say(&c, format!("started {nodes} nodes"));
            }
            Op::Join => {
                let i = c.add_node(&[0]);
                c.watch(i);
                watched.push(i);
                say(&c, format!("n{i} joins"));
            }
            Op::Wait(d) => {
                c.run_for(*d);
                say(&c, format!("waited {d:?}"));
            }
            Op::Converge { limit } => {
                let start = c.now();
                match c.run_until_cond(Duration::from_millis(100), *limit, |c| c.converged()) {
                    Some(t) => say(&c, format!("converged after {:.1}s", (t - start).as_secs_f64())),
                    None => say(&c, format!("NOT converged after {limit:?}")),
                }
            }
            Op::Crash(i) => {
                c.crash(*i);
                c.watch(*i);
                watched.push(*i);
                say(&c, format!("n{i} crashed"));
            }
            Op::Restart { node, new_addr } => {
                c.restart(*node, *new_addr, &[0]);
                c.watch(*node);
                say(&c, format!("n{node} restarted at {}", c.addr(*node)));
            }
            Op::Leave(i) => {
                c.leave(*i);
                c.watch(*i);
                watched.push(*i);
                say(&c, format!("n{i} leaves"));
            }
            Op::Loss(p) => {
                c.net_mut().loss = *p;
                say(&c, format!("loss set to {:.1}%", p * 100.0));
            }
            Op::LinkLoss { from, to, loss } => {
                c.set_link_loss(*from, *to, *loss);
                say(&c, format!("loss n{from}->n{to} set to {:.1}%", loss * 100.0));
            }
            Op::LinkLatency { from, to, latency } => {
                c.set_link_latency(*from, *to, *latency);
                say(&c, format!("latency n{from}->n{to} set to {latency:?}"));
            }
            Op::Slow { node, delay } => {
                c.set_slow(*node, *delay);
                say(&c, format!("n{node} slow: {delay:?}"));
            }
            Op::Split { two_way } => {
                let up = c.up_nodes();
                let (a, b) = up.split_at(up.len() / 2);
                c.partition(a, b, *two_way);
                say(
                    &c,
                    format!("partitioned {} | {} (two-way: {two_way})", a.len(), b.len()),
                );
            }
            Op::Repair => {
                c.repair();
                say(&c, "partition repaired".to_owned());
            }
            Op::Cpu(cpu) => {
                c.set_cpu(cpu.clone());
                match cpu {
                    Some(cpu) => say(&c, format!("every node shares {} cores ({:?})", cpu.cores, cpu.order)),
                    None => say(&c, "handling is instant".to_owned()),
                }
            }
            Op::Broadcast { node, id } => {
                c.broadcast(*node, *id, 64);
                broadcasts.push(*id);
                say(&c, format!("n{node} broadcasts message {id}"));
            }
            Op::Churn { every, duration } => {
                let end = c.now() + *duration;
                let mut crashed: Vec<usize> = Vec::new();
                let mut events = 0;
                while c.now() < end {
                    c.run_for(*every);
                    let up = c.up_nodes();
                    if up.len() > 2 {
                        // Node 0 is the seed; keep it.
                        let victim = up[1 + pick(up.len() - 1)];
                        c.crash(victim);
                        crashed.push(victim);
                    }
                    if crashed.len() > 1 {
                        let back = crashed.remove(pick(crashed.len() - 1));
                        c.restart(back, pick(2) == 0, &[0]);
                    }
                    events += 1;
                }
                say(
                    &c,
                    format!("churned {events} times, {} nodes still down", crashed.len()),
                );
            }
        }
    }
    let mut figures = vec![
        ("nodes up".to_owned(), c.up_count().to_string()),
        ("converged".to_owned(), c.converged().to_string()),
        ("unseen pairs".to_owned(), c.unseen().to_string()),
        (
            "false-positive episodes".to_owned(),
            c.obs.false_positive_episodes.to_string(),
        ),
        (
            "false-positive declarations".to_owned(),
            c.obs.false_positive_declarations.to_string(),
        ),
    ];
    for i in watched {
        if let Some(w) = c.watch_status(i) {
            let rel = |t: Option<Duration>| match t {
                Some(t) => format!("{:.2}s", (t - w.since).as_secs_f64()),
                None => "never".to_owned(),
            };
            figures.push((
                format!("n{i}"),
                format!(
                    "first suspect {}, first down {}, all down {}, all up {}",
                    rel(w.first_suspect),
                    rel(w.first_down),
                    rel(w.all_down),
                    rel(w.all_up)
                ),
            ));
        }
    }
    for id in broadcasts {
        let v = match c.obs.message_complete.get(&id) {
            Some(t) => format!("reached every node at {:.2}s", t.as_secs_f64()),
            None => "did not reach every node".to_owned(),
        };
        figures.push((format!("message {id}"), v));
    }
    if !c.cpu_used().is_zero() {
        figures.push((
            "CPU used".to_owned(),
            format!(
                "{:.1}s ({:.2} cores on average)",
                c.cpu_used().as_secs_f64(),
                c.cpu_used().as_secs_f64() / c.now().as_secs_f64().max(1e-9)
            ),
        ));
    }
    figures.push(("events processed".to_owned(), c.events_processed.to_string()));
    figures.push(("simulated time".to_owned(), format!("{:.1}s", c.now().as_secs_f64())));
    figures.push(("wall time".to_owned(), format!("{:.2}s", wall.elapsed().as_secs_f64())));
    Report {
        seed: c.seed(),
        log,
        figures,
    }
}

/// The built-in scenarios, by name, for `n` nodes running `minutes` of steady state.
pub fn builtin(name: &str, n: usize, minutes: u64) -> Option<Scenario> {
    let n = n.max(3);
    let converge = Op::Converge {
        limit: Duration::from_secs(600),
    };
    let steady = Duration::from_secs(60 * minutes);
    let ops = match name {
        "steady" => vec![Op::Start { nodes: n }, converge, Op::Wait(steady)],
        "crash" => vec![
            Op::Start { nodes: n },
            converge.clone(),
            Op::Crash(n / 2),
            Op::Wait(steady),
        ],
        "join" => vec![Op::Start { nodes: n }, converge.clone(), Op::Join, Op::Wait(steady)],
        "gossip" => vec![
            Op::Start { nodes: n },
            converge,
            Op::Broadcast { node: 1, id: 1 },
            Op::Wait(steady),
        ],
        "loss" => vec![Op::Start { nodes: n }, converge, Op::Loss(0.10), Op::Wait(steady)],
        "slow" => vec![
            Op::Start { nodes: n },
            converge,
            Op::Slow {
                node: 1,
                delay: Some(Duration::from_millis(1500)),
            },
            Op::Wait(steady),
        ],
        "partition" => vec![
            Op::Start { nodes: n },
            converge.clone(),
            Op::Split { two_way: true },
            Op::Wait(Duration::from_secs(120)),
            Op::Repair,
            converge,
        ],
        "restart" => vec![
            Op::Start { nodes: n },
            converge.clone(),
            Op::Crash(n / 2),
            Op::Wait(Duration::from_secs(60)),
            Op::Restart {
                node: n / 2,
                new_addr: true,
            },
            converge,
        ],
        "churn" => vec![
            Op::Start { nodes: n },
            converge.clone(),
            Op::Churn {
                every: Duration::from_secs(10),
                duration: steady,
            },
            Op::Wait(Duration::from_secs(120)),
            converge,
        ],
        // As many processes as `n` on one 2-core host, started together.
        "overload" => vec![
            Op::Cpu(Some(Cpu::shared_host(2.0, n))),
            Op::Start { nodes: n },
            converge,
            Op::Wait(steady),
        ],
        _ => return None,
    };
    Some(Scenario {
        name: name.to_owned(),
        net: NetConfig::default(),
        ops,
    })
}

/// Names accepted by [`builtin`].
pub const BUILTIN: &[&str] = &[
    "steady",
    "crash",
    "join",
    "gossip",
    "loss",
    "slow",
    "partition",
    "restart",
    "churn",
    "overload",
];
