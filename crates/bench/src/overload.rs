//! Many `rumor node` processes on one host with far fewer cores than
//! processes: do they converge, and stay converged?
//!
//! The bench starts a seed node, then the others (all at once, or a base
//! cluster and then waves of joiners), each a separate `rumor node` process
//! on 127.0.0.1 with the LAN preset and encrypted gossip. Every few seconds
//! it asks the seed and a fixed sample of nodes how many members they see
//! alive, reads the CPU time of every process from `/proc`, and at the end
//! sums the membership counters (suspicions, failures declared, refutations)
//! of the sampled nodes. The cluster has converged when the seed and every
//! sampled node see every process alive; it must then stay so for the hold
//! time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use node::client::AdminClient;
use node::crypto::Key;
use proto::api::MemberStatus;

use crate::report::{self, Machine, proc};

/// What to run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Processes in all, the seed included.
    pub nodes: usize,
    /// Start `base` processes at once, wait for them to converge, then add
    /// `wave` more every `wave_every` until `nodes`. `None`: all at once.
    pub waves: Option<Waves>,
    /// Nodes asked for their view besides the seed.
    pub sample: usize,
    /// Give up on convergence after this long.
    pub limit: Duration,
    /// Once converged, it must stay so for this long; CPU is read over it.
    pub hold: Duration,
    /// Where to write the report (`None`: print only).
    pub out: Option<PathBuf>,
}

/// Joining in waves.
#[derive(Debug, Clone, Copy)]
pub struct Waves {
    /// Processes started at once first.
    pub base: usize,
    /// Processes per wave after that.
    pub wave: usize,
    /// Least time between waves. A wave is added when the bench looks at
    /// the cluster, so on a saturated host waves come as far apart as the
    /// looks do; the report gives the times.
    pub every: Duration,
}

/// One `rumor node`, killed when dropped.
struct Node {
    child: Child,
    admin: Option<AdminClient>,
    gossip: Option<String>,
    first_line: std::sync::mpsc::Receiver<String>,
}

impl Node {
    fn spawn(exe: &std::path::Path, name: &str, key: &str, seed: Option<&str>) -> anyhow::Result<Node> {
        let mut cmd = Command::new(exe);
        let role = if seed.is_none() { "gateway" } else { "worker" };
        cmd.args(["node", "--name", name, "--roles", role, "--preset", "lan"])
            .args(["--gossip-bind", "127.0.0.1:0", "--mesh-bind", "127.0.0.1:0"])
            .args(["--admin-bind", "127.0.0.1:0"])
            .env("RUMOR_KEYS", key)
            .env("RUST_LOG", "error")
            .env_remove("RUMOR_SEEDS")
            .env_remove("RUMOR_NAME")
            .env_remove("RUMOR_ROLES")
            .env_remove("RUMOR_ADVERTISE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null());
        if let Some(s) = seed {
            cmd.args(["--seeds", s]);
        }
        let mut child = cmd.spawn().with_context(|| format!("spawning {name}"))?;
        let stdout = child.stdout.take().context("child stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        // Reads stdout to the end so the child never blocks on a full pipe.
        std::thread::Builder::new()
            .stack_size(64 * 1024)
            .spawn(move || {
                let mut lines = BufReader::new(stdout).lines();
                if let Some(Ok(line)) = lines.next() {
                    let _ = tx.send(line);
                }
                for _ in lines.by_ref() {}
            })
            .context("stdout reader thread")?;
        Ok(Node {
            child,
            admin: None,
            gossip: None,
            first_line: rx,
        })
    }

    /// Reads where the node listens once it has said so.
    fn poll_started(&mut self) -> bool {
        if self.admin.is_some() {
            return true;
        }
        let Ok(line) = self.first_line.try_recv() else {
            return false;
        };
        let field = |key: &str| {
            let prefix = format!("{key}=");
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(prefix.as_str()))
                .map(str::to_owned)
        };
        self.gossip = field("gossip");
        self.admin = field("admin").map(|a| AdminClient::new(a).with_timeout(Duration::from_secs(10)));
        self.admin.is_some()
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One look at the cluster.
#[derive(Debug, Clone)]
struct Sample {
    at: f64,
    started: usize,
    /// Alive members the seed sees (itself included).
    seed_alive: usize,
    /// Fewest and most alive members a sampled node sees (itself included).
    sample_min: usize,
    sample_max: usize,
    /// Cores the processes kept busy since the previous sample.
    cores: f64,
}

/// Figures of a whole run.
#[derive(Debug, Default)]
struct Run {
    samples: Vec<Sample>,
    converged_at: Option<f64>,
    stayed: Option<bool>,
    quiet_cpu_pct: Vec<f64>,
    rss_mib: Vec<f64>,
    counters: BTreeMap<String, u64>,
    counted_nodes: usize,
    wall: Duration,
}

/// Runs the bench and writes its report.
pub async fn run(o: Options) -> anyhow::Result<()> {
    let exe = crate::rumor_exe()?;
    let machine = Machine::read();
    let run = measure(&exe, &o).await?;
    let text = render(&o, &machine, &run);
    print!("{text}");
    if let Some(out) = &o.out {
        report::write(out, &text)?;
        eprintln!("wrote {}", out.display());
    }
    Ok(())
}

async fn measure(exe: &std::path::Path, o: &Options) -> anyhow::Result<Run> {
    let started_at = Instant::now();
    let key = Key::generate().to_base64();
    let ticks = proc::clock_ticks();
    let mut nodes: Vec<Node> = vec![Node::spawn(exe, "node-0000", &key, None)?];
    let seed_deadline = Instant::now() + Duration::from_secs(20);
    while !nodes[0].poll_started() {
        if Instant::now() > seed_deadline {
            bail!("the seed did not say where it listens within 20 s");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seed = nodes[0].gossip.clone().context("seed gossip address")?;
    let first = o.waves.map_or(o.nodes, |w| w.base.min(o.nodes));
    let spawn_more = |nodes: &mut Vec<Node>, upto: usize| -> anyhow::Result<()> {
        while nodes.len() < upto {
            let name = format!("node-{:04}", nodes.len());
            nodes.push(Node::spawn(exe, &name, &key, Some(&seed))?);
        }
        Ok(())
    };
    spawn_more(&mut nodes, first)?;
    eprintln!("started {first} processes");
    // The sampled nodes: spread over the start order, the seed not among them.
    let picks: Vec<usize> = (1..=o.sample).map(|k| k * (o.nodes - 1) / (o.sample + 1) + 1).collect();
    let mut run = Run::default();
    let mut last_cpu: Option<(Instant, u64)> = None;
    let mut next_wave = Instant::now();
    let deadline = Instant::now() + o.limit;
    let mut converged_since: Option<Instant> = None;
    let mut base_converged = o.waves.is_none();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        for n in &mut nodes {
            n.poll_started();
        }
        let cpu: u64 = nodes.iter().filter_map(|n| proc::cpu_ticks(n.pid())).sum();
        let now = Instant::now();
        let cores = last_cpu.map_or(0.0, |(t, c)| {
            cpu.saturating_sub(c) as f64 / ticks / now.duration_since(t).as_secs_f64()
        });
        last_cpu = Some((now, cpu));
        let seed_alive = alive(&nodes[0]).await.unwrap_or(0);
        let mut seen = Vec::new();
        for &i in picks.iter().filter(|&&i| i < nodes.len()) {
            seen.push(alive(&nodes[i]).await.unwrap_or(0));
        }
        let s = Sample {
            at: started_at.elapsed().as_secs_f64(),
            started: nodes.len(),
            seed_alive,
            sample_min: seen.iter().copied().min().unwrap_or(0),
            sample_max: seen.iter().copied().max().unwrap_or(0),
            cores,
        };
        eprintln!(
            "t={:>5.0}s processes={} seed sees {} alive, sampled nodes {}..{}, cores busy {:.2}",
            s.at, s.started, s.seed_alive, s.sample_min, s.sample_max, s.cores
        );
        let all_seen = s.seed_alive == nodes.len() && s.sample_min == nodes.len();
        run.samples.push(s);
        if !base_converged {
            if all_seen {
                base_converged = true;
                eprintln!("base cluster of {} converged; adding waves", nodes.len());
            } else if now > deadline {
                break;
            }
            continue;
        }
        if let Some(w) = o.waves
            && nodes.len() < o.nodes
        {
            if now >= next_wave {
                let upto = (nodes.len() + w.wave).min(o.nodes);
                spawn_more(&mut nodes, upto)?;
                next_wave = now + w.every;
            }
            continue;
        }
        if all_seen {
            let since = *converged_since.get_or_insert(now);
            if run.converged_at.is_none() {
                run.converged_at = Some(started_at.elapsed().as_secs_f64());
                eprintln!("converged; holding for {:.0} s", o.hold.as_secs_f64());
                // CPU per process is read over the hold.
                run.quiet_cpu_pct = nodes
                    .iter()
                    .map(|n| proc::cpu_ticks(n.pid()).unwrap_or(0) as f64)
                    .collect();
            }
            if now.duration_since(since) >= o.hold {
                run.stayed = Some(true);
                let secs = now.duration_since(since).as_secs_f64();
                for (i, n) in nodes.iter().enumerate() {
                    let after = proc::cpu_ticks(n.pid()).unwrap_or(0) as f64;
                    run.quiet_cpu_pct[i] = (after - run.quiet_cpu_pct[i]) / ticks / secs * 100.0;
                }
                break;
            }
        } else if run.converged_at.is_some() {
            run.stayed = Some(false);
            eprintln!("the cluster came apart after converging");
            break;
        } else if now > deadline {
            break;
        }
    }
    if run.stayed != Some(true) {
        run.quiet_cpu_pct.clear();
    }
    run.rss_mib = nodes
        .iter()
        .filter_map(|n| proc::status_kib(n.pid(), "VmRSS"))
        .map(|k| k as f64 / 1024.0)
        .collect();
    for &i in std::iter::once(&0).chain(&picks) {
        let Some(admin) = nodes.get(i).and_then(|n| n.admin.as_ref()) else {
            continue;
        };
        let Ok(text) = admin.metrics().await else { continue };
        run.counted_nodes += 1;
        for name in COUNTERS {
            *run.counters.entry((*name).to_owned()).or_default() += metric(&text, name);
        }
    }
    eprintln!("stopping {} processes", nodes.len());
    // Signal every one first: killing and reaping them one after another
    // lets the rest keep the cores busy for minutes.
    for n in &mut nodes {
        let _ = n.child.kill();
    }
    drop(nodes);
    run.wall = started_at.elapsed();
    Ok(run)
}

const COUNTERS: &[&str] = &[
    "rumor_membership_suspicions",
    "rumor_membership_failures_declared",
    "rumor_membership_refutations",
    "rumor_membership_probe_failures",
    "rumor_membership_push_pulls",
];

/// A counter's value in a Prometheus text exposition (with or without `_total`).
fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| {
            let (k, v) = l.split_once(' ')?;
            (k == name || k.strip_suffix("_total") == Some(name)).then(|| v.trim().parse::<f64>().ok())?
        })
        .map_or(0, |v| v as u64)
}

/// Members a node sees alive (the admin API lists the node itself too).
async fn alive(n: &Node) -> Option<usize> {
    let m = n.admin.as_ref()?.members().await.ok()?;
    Some(m.members.iter().filter(|x| x.status() == MemberStatus::Alive).count())
}

fn render(o: &Options, machine: &Machine, run: &Run) -> String {
    let mut s = String::new();
    let waves = o.waves.map_or(String::new(), |w| {
        format!(
            " --base {} --wave {} --wave-every {}",
            w.base,
            w.wave,
            w.every.as_secs()
        )
    });
    let _ = writeln!(s, "# Overload: {} `rumor node` processes on one host\n", o.nodes);
    let _ = writeln!(
        s,
        "Written by `rumor-bench overload --nodes {}{waves} --hold {}` after `cargo build --release -p rumor -p bench` \
         ({:.0} min).\n",
        o.nodes,
        o.hold.as_secs(),
        run.wall.as_secs_f64() / 60.0
    );
    let _ = writeln!(s, "Machine: {}\n", machine.line());
    let start = match o.waves {
        None => "all started at once".to_owned(),
        Some(w) => format!(
            "{} started at once, then, once those had converged, {} more at each look of the bench at least {} s \
             apart (the timeline shows when)",
            w.base,
            w.wave,
            w.every.as_secs()
        ),
    };
    let _ = writeln!(
        s,
        "Every process is a `rumor node` on 127.0.0.1 (LAN preset: 1 s protocol period, encrypted gossip), \
         {start}; all join through the first. Every 5 s (more while the host is saturated: each look reads \
         every process's CPU time and asks {} nodes) the bench asks the first node and {} others spread over \
         the start order how many members they see alive. Converged: all of them see every process alive; then \
         it must stay so for {} s, over which each process's CPU time is read.\n",
        o.sample + 1,
        o.sample,
        o.hold.as_secs()
    );
    let verdict = match (run.converged_at, run.stayed) {
        (Some(t), Some(true)) => format!("**converged after {t:.0} s and stayed converged**"),
        (Some(t), _) => format!("**converged after {t:.0} s but did not stay so**"),
        (None, _) => format!("**did not converge within {} s**", o.limit.as_secs()),
    };
    let _ = writeln!(s, "Result: {verdict}.\n");
    if !run.quiet_cpu_pct.is_empty() {
        let mut cpu = run.quiet_cpu_pct.clone();
        cpu.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "CPU per process once converged: median {:.2}% of a core, p99 {:.2}%, all together {:.2} cores.\n",
            report::percentile(&cpu, 50.0),
            report::percentile(&cpu, 99.0),
            cpu.iter().sum::<f64>() / 100.0
        );
    }
    if !run.rss_mib.is_empty() {
        let mut rss = run.rss_mib.clone();
        rss.sort_by(f64::total_cmp);
        let _ = writeln!(
            s,
            "Resident memory per process at the end: median {:.1} MiB, max {:.1} MiB.\n",
            report::percentile(&rss, 50.0),
            rss.last().copied().unwrap_or(0.0)
        );
    }
    let _ = writeln!(
        s,
        "Membership counters summed over the {} nodes asked (the first and the sample), at the end:\n",
        run.counted_nodes
    );
    report::table(
        &mut s,
        &["counter", "sum", "per node"],
        run.counters.iter().map(|(k, v)| {
            vec![
                format!("`{k}`"),
                v.to_string(),
                format!("{:.1}", *v as f64 / run.counted_nodes.max(1) as f64),
            ]
        }),
    );
    let _ = writeln!(s, "\nTimeline:\n");
    report::table(
        &mut s,
        &[
            "t (s)",
            "processes",
            "first node sees alive",
            "sampled nodes see alive",
            "cores busy",
        ],
        run.samples.iter().map(|x| {
            vec![
                format!("{:.0}", x.at),
                x.started.to_string(),
                x.seed_alive.to_string(),
                format!("{}..{}", x.sample_min, x.sample_max),
                format!("{:.2}", x.cores),
            ]
        }),
    );
    s
}
