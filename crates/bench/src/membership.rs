//! The membership benchmark: rumor with Lifeguard, rumor without it, and foca,
//! side by side in the same simulated network with the same seeds.
//!
//! Every figure comes from simulated time, so it does not depend on how busy
//! the machine is; only the simulator-speed table measures wall time.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use membership::Config;

use sim::scenario::{self, Scenario};
use sim::{Cluster, NetConfig, NodeSpec, Protocol, Rumor};

use crate::foca::Foca;

/// Which implementation a run uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Impl {
    /// rumor's membership with `Config::lan()`.
    Lifeguard,
    /// rumor's membership with `Config::lan()` and `lifeguard = false`.
    NoLifeguard,
    /// foca 2.0 with `Config::new_lan(N)`.
    Foca,
}

impl Impl {
    /// All three, in report order.
    pub const ALL: [Impl; 3] = [Impl::Lifeguard, Impl::NoLifeguard, Impl::Foca];

    /// Name in the report.
    pub fn label(self) -> &'static str {
        match self {
            Impl::Lifeguard => "rumor (Lifeguard)",
            Impl::NoLifeguard => "rumor (no Lifeguard)",
            Impl::Foca => "foca 2.0",
        }
    }
}

/// Runs `scenario` with implementation `imp` (foca's LAN preset is sized by `n`).
pub fn run_scenario(scenario: &Scenario, seed: u64, imp: Impl, n: usize) -> scenario::Report {
    match imp {
        Impl::Lifeguard | Impl::NoLifeguard => scenario::run_rumor(scenario, seed, rumor_cfg(imp == Impl::Lifeguard)),
        Impl::Foca => {
            let c = Cluster::new(seed, scenario.net.clone(), move |spec: &NodeSpec| Foca::new(spec, n));
            scenario::run(scenario, c)
        }
    }
}

/// How much to measure.
#[derive(Debug, Clone)]
pub struct Options {
    /// Seed of every run (each run derives its own from it and its parameters).
    pub seed: u64,
    /// Cluster sizes.
    pub sizes: Vec<usize>,
    /// Datagram loss rates.
    pub losses: Vec<f64>,
    /// Steady-state time for false-positive and traffic figures, by size.
    pub steady: fn(usize, f64) -> Duration,
    /// Crash-detection samples, by size.
    pub crashes: fn(usize) -> usize,
    /// Join and gossip-message samples, by size.
    pub disseminations: fn(usize) -> usize,
    /// Slow-node runs: (N, slow nodes, delay, duration).
    pub slow: Vec<(usize, usize, Duration, Duration)>,
    /// Also time N = 10,000.
    pub ten_thousand: bool,
    /// Largest N foca is simulated at (see the report for why).
    pub foca_max_n: usize,
}

impl Options {
    /// The full benchmark (about 55 minutes on one core, half of it the N = 10,000 start).
    pub fn full(seed: u64) -> Self {
        Self {
            seed,
            sizes: vec![10, 100, 1000],
            losses: vec![0.0, 0.01, 0.10],
            steady: |n, loss| {
                if n < 1000 || loss >= 0.10 {
                    Duration::from_secs(3600)
                } else {
                    Duration::from_secs(600)
                }
            },
            crashes: |n| if n >= 1000 { 20 } else { 30 },
            disseminations: |n| if n >= 1000 { 10 } else { 20 },
            slow: vec![
                (100, 5, Duration::from_secs(2), Duration::from_secs(3600)),
                (100, 5, Duration::from_secs(5), Duration::from_secs(3600)),
                (1000, 10, Duration::from_secs(5), Duration::from_secs(600)),
            ],
            ten_thousand: true,
            foca_max_n: 100,
        }
    }

    /// A smoke run of a few seconds, for tests.
    pub fn quick(seed: u64) -> Self {
        Self {
            seed,
            sizes: vec![10, 50],
            losses: vec![0.0, 0.10],
            steady: |_, _| Duration::from_secs(120),
            crashes: |_| 2,
            disseminations: |_| 2,
            slow: vec![(30, 2, Duration::from_secs(5), Duration::from_secs(300))],
            ten_thousand: false,
            foca_max_n: 100,
        }
    }
}

/// Figures of one (implementation, N, loss) run.
#[derive(Debug, Clone, Default)]
pub struct Run {
    /// First suspicion of a crashed node, seconds after the crash.
    pub first_suspect: Vec<f64>,
    /// First "down" declaration of a crashed node.
    pub first_down: Vec<f64>,
    /// Every live node has declared it down.
    pub all_down: Vec<f64>,
    /// Every node has seen a joining node.
    pub join: Vec<f64>,
    /// Every node has a gossip message.
    pub message: Vec<f64>,
    /// False-positive episodes during the steady phase.
    pub fp_episodes: u64,
    /// Node-hours of the steady phase.
    pub node_hours: f64,
    /// Bytes sent per node per second in the steady phase.
    pub bytes_per_node_s: f64,
    /// Packets sent per node per second in the steady phase.
    pub packets_per_node_s: f64,
    /// Protocol period in seconds.
    pub period: f64,
    /// Time to first convergence after start.
    pub converge: Option<f64>,
    /// Wall time of the run.
    pub wall: f64,
}

fn percentile(v: &[f64], p: f64) -> Option<f64> {
    crate::report::percentile_of(v, p)
}

fn run_seed(base: u64, n: usize, loss: f64, salt: u64) -> u64 {
    base ^ (n as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ ((loss * 1e4) as u64).wrapping_mul(0xbf58_476d) ^ salt
}

fn rumor_cfg(lifeguard: bool) -> Config {
    Config {
        lifeguard,
        ..Config::lan()
    }
}

/// Builds the cluster for `imp` and runs `f` on it; the generic part is the same for all.
fn with_cluster<R>(imp: Impl, seed: u64, n: usize, net: NetConfig, f: &mut dyn FnMut(&mut dyn Driver) -> R) -> R {
    match imp {
        Impl::Lifeguard | Impl::NoLifeguard => {
            let cfg = rumor_cfg(imp == Impl::Lifeguard);
            let mut c = Cluster::new(seed, net, move |spec: &NodeSpec| Rumor::new(cfg.clone(), spec));
            f(&mut c)
        }
        Impl::Foca => {
            // foca's LAN preset takes the expected cluster size.
            let mut c = Cluster::new(seed, net, move |spec: &NodeSpec| Foca::new(spec, n));
            f(&mut c)
        }
    }
}

/// The operations the benchmark needs, object-safe so one body serves every protocol.
trait Driver {
    fn cluster_add(&mut self, n: usize);
    fn add_through_first(&mut self);
    fn unseen(&self) -> usize;
    fn converge(&mut self, limit: Duration, step: Duration) -> Option<Duration>;
    fn run_for(&mut self, d: Duration);
    fn reset(&mut self);
    fn traffic_total(&self) -> (u64, u64);
    fn up(&self) -> Vec<usize>;
    fn fp(&self) -> u64;
    fn crash_and_time(&mut self, i: usize, limit: Duration) -> (Option<f64>, Option<f64>, Option<f64>);
    fn restart(&mut self, i: usize);
    fn join_and_time(&mut self, limit: Duration) -> Option<f64>;
    fn broadcast_and_time(&mut self, from: usize, id: u64, limit: Duration) -> Option<f64>;
    fn set_slow(&mut self, i: usize, d: Option<Duration>);
    fn split(&mut self);
    fn repair(&mut self);
    fn period(&self) -> Duration;
    fn events(&self) -> u64;
    fn fp_of(&self) -> (u64, u64);
    fn fp_of_nodes(&self, nodes: &[usize]) -> u64;
}

impl<P: Protocol> Driver for Cluster<P> {
    fn cluster_add(&mut self, n: usize) {
        for k in 0..n {
            if k > 0 && k % 10 == 0 {
                Cluster::run_for(self, Duration::from_millis(100));
            }
            self.add_node(&[0]);
        }
    }
    fn add_through_first(&mut self) {
        self.add_node(&[0]);
    }
    fn unseen(&self) -> usize {
        Cluster::unseen(self)
    }
    fn converge(&mut self, limit: Duration, step: Duration) -> Option<Duration> {
        let t0 = Cluster::now(self);
        self.run_until_cond(step, limit, |c| c.converged()).map(|t| t - t0)
    }
    fn run_for(&mut self, d: Duration) {
        Cluster::run_for(self, d);
    }
    fn reset(&mut self) {
        self.reset_traffic();
    }
    fn traffic_total(&self) -> (u64, u64) {
        self.traffic().iter().fold((0, 0), |(b, p), (x, y)| (b + x, p + y))
    }
    fn up(&self) -> Vec<usize> {
        self.up_nodes()
    }
    fn fp(&self) -> u64 {
        self.obs.false_positive_episodes
    }
    fn fp_of(&self) -> (u64, u64) {
        (self.obs.false_positive_episodes, self.obs.false_positive_declarations)
    }
    fn fp_of_nodes(&self, nodes: &[usize]) -> u64 {
        nodes.iter().map(|&i| self.obs.false_positives_of[i]).sum()
    }
    fn crash_and_time(&mut self, i: usize, limit: Duration) -> (Option<f64>, Option<f64>, Option<f64>) {
        self.crash(i);
        self.watch(i);
        self.run_until_cond(Duration::from_millis(100), limit, |c| {
            c.watch_status(i).is_some_and(|w| w.all_down.is_some())
        });
        let w = self.watch_status(i).expect("watched");
        let rel = |t: Option<Duration>| t.map(|t| (t - w.since).as_secs_f64());
        (rel(w.first_suspect), rel(w.first_down), rel(w.all_down))
    }
    fn restart(&mut self, i: usize) {
        Cluster::restart(self, i, false, &[0]);
    }
    fn join_and_time(&mut self, limit: Duration) -> Option<f64> {
        let t0 = Cluster::now(self);
        let i = self.add_node(&[0]);
        self.watch(i);
        self.run_until_cond(Duration::from_millis(50), limit, |c| {
            c.watch_status(i).is_some_and(|w| w.all_up.is_some())
        });
        let t = self
            .watch_status(i)
            .and_then(|w| w.all_up)
            .map(|t| (t - t0).as_secs_f64());
        // The joiner leaves again, so that every sample, and the crash
        // detection after them, runs at the N of its row (20 joins would
        // otherwise make the N = 10 rows a cluster of 30, whose suspicion
        // timeout is longer).
        Cluster::leave(self, i);
        self.run_until_cond(Duration::from_millis(50), limit, |c| c.converged());
        t
    }
    fn broadcast_and_time(&mut self, from: usize, id: u64, limit: Duration) -> Option<f64> {
        let t0 = Cluster::now(self);
        if !self.broadcast(from, id, 64) {
            return None;
        }
        self.run_until_cond(Duration::from_millis(50), limit, |c| {
            c.obs.message_complete.contains_key(&id)
        });
        self.obs.message_complete.get(&id).map(|t| (*t - t0).as_secs_f64())
    }
    fn set_slow(&mut self, i: usize, d: Option<Duration>) {
        Cluster::set_slow(self, i, d);
    }
    fn split(&mut self) {
        let up = self.up_nodes();
        let (a, b) = up.split_at(up.len() / 2);
        let (a, b) = (a.to_vec(), b.to_vec());
        self.partition(&a, &b, true);
    }
    fn repair(&mut self) {
        Cluster::repair(self);
    }
    fn period(&self) -> Duration {
        self.up_nodes()
            .first()
            .and_then(|&i| self.protocol(i))
            .map(|p| p.protocol_period())
            .unwrap_or_default()
    }
    fn events(&self) -> u64 {
        self.events_processed
    }
}

fn step_for(n: usize) -> Duration {
    if n >= 1000 {
        Duration::from_millis(500)
    } else {
        Duration::from_millis(100)
    }
}

/// Detection, false positives under loss, dissemination and traffic for one combination.
pub fn measure(imp: Impl, n: usize, loss: f64, opts: &Options) -> Run {
    let wall = Instant::now();
    let seed = run_seed(opts.seed, n, loss, 1);
    let net = NetConfig {
        loss,
        ..NetConfig::default()
    };
    let mut run = with_cluster(imp, seed, n, net, &mut |c| {
        c.cluster_add(n);
        let mut run = Run {
            period: c.period().as_secs_f64(),
            ..Run::default()
        };
        run.converge = c
            .converge(Duration::from_secs(600), step_for(n))
            .map(|d| d.as_secs_f64());
        c.run_for(Duration::from_secs(30));
        // Steady state: traffic and false positives.
        c.reset();
        let fp0 = c.fp();
        let steady = (opts.steady)(n, loss);
        c.run_for(steady);
        let (bytes, packets) = c.traffic_total();
        let secs = steady.as_secs_f64() * c.up().len() as f64;
        run.bytes_per_node_s = bytes as f64 / secs;
        run.packets_per_node_s = packets as f64 / secs;
        run.fp_episodes = c.fp() - fp0;
        run.node_hours = secs / 3600.0;
        // Dissemination of joins and gossip messages.
        let mut pick = seed;
        for k in 0..(opts.disseminations)(n) {
            if let Some(t) = c.join_and_time(Duration::from_secs(120)) {
                run.join.push(t);
            }
            c.run_for(Duration::from_secs(5));
            let up = c.up();
            pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let from = up[(pick >> 33) as usize % up.len()];
            if let Some(t) = c.broadcast_and_time(from, 1 + k as u64, Duration::from_secs(120)) {
                run.message.push(t);
            }
            c.run_for(Duration::from_secs(5));
        }
        // Crash detection, one crash at a time; the node is restarted and the
        // cluster reconverges before the next.
        for _ in 0..(opts.crashes)(n) {
            let up = c.up();
            pick = pick.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            let victim = up[1 + (pick >> 33) as usize % (up.len() - 1)];
            let (s, d, a) = c.crash_and_time(victim, Duration::from_secs(300));
            run.first_suspect.extend(s);
            run.first_down.extend(d);
            run.all_down.extend(a);
            c.restart(victim);
            c.converge(Duration::from_secs(300), step_for(n));
            c.run_for(Duration::from_secs(10));
        }
        run
    });
    run.wall = wall.elapsed().as_secs_f64();
    run
}

/// False positives with slow nodes.
#[derive(Debug, Clone, Copy)]
pub struct SlowRun {
    /// Episodes whose victim was a healthy (not slow) node.
    pub healthy: u64,
    /// Episodes whose victim was one of the slow nodes.
    pub slow: u64,
    /// Node-hours of healthy nodes.
    pub healthy_node_hours: f64,
}

/// False positives with `slow` nodes handling packets `delay` late.
pub fn measure_slow(imp: Impl, n: usize, slow: usize, delay: Duration, dur: Duration, seed: u64) -> SlowRun {
    let seed = run_seed(seed, n, delay.as_secs_f64(), 2);
    with_cluster(imp, seed, n, NetConfig::default(), &mut |c| {
        c.cluster_add(n);
        c.converge(Duration::from_secs(600), step_for(n));
        c.run_for(Duration::from_secs(30));
        // The slow nodes are spread over the index range.
        let slow_nodes: Vec<usize> = (0..slow).map(|k| 1 + k * (n - 1) / slow).collect();
        let (s0, e0) = (c.fp_of_nodes(&slow_nodes), c.fp_of().0);
        for &i in &slow_nodes {
            c.set_slow(i, Some(delay));
        }
        c.run_for(dur);
        let on_slow = c.fp_of_nodes(&slow_nodes) - s0;
        let all = c.fp_of().0 - e0;
        SlowRun {
            healthy: all - on_slow,
            slow: on_slow,
            healthy_node_hours: dur.as_secs_f64() * (n - slow) as f64 / 3600.0,
        }
    })
}

/// Seconds from repairing a 50/50 two-way partition to one view.
pub fn measure_partition(imp: Impl, n: usize, seed: u64) -> (Option<f64>, bool) {
    let seed = run_seed(seed, n, 0.0, 3);
    with_cluster(imp, seed, n, NetConfig::default(), &mut |c| {
        c.cluster_add(n);
        c.converge(Duration::from_secs(600), step_for(n));
        c.run_for(Duration::from_secs(30));
        c.split();
        c.run_for(Duration::from_secs(180));
        // Did both sides notice the split (one view per side)?
        let split_seen = c.converge(Duration::ZERO, Duration::from_secs(1)).is_none();
        c.repair();
        (
            c.converge(Duration::from_secs(900), step_for(n).min(Duration::from_millis(250)))
                .map(|d| d.as_secs_f64()),
            split_seen,
        )
    })
}

/// Resident memory of the simulator may not grow past this: every simulated
/// node keeps the full membership, so memory grows with N² (10⁸ member
/// entries at N = 10,000; the speed table gives the bytes each took), and the
/// machine has 24 GiB, shared.
pub const MEMORY_BUDGET: u64 = 8 << 30;

/// A field of `/proc/self/status` in bytes (Linux; 0 where unknown).
fn proc_status_bytes(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status.lines().find_map(|l| {
        l.strip_prefix(field)?
            .trim()
            .strip_suffix("kB")?
            .trim()
            .parse::<u64>()
            .ok()
    });
    kib.unwrap_or(0) * 1024
}

/// Nodes the speed runs start every 100 ms, by N.
pub fn start_pace(n: usize) -> usize {
    // Once N is a few thousand, joins at the benchmark's usual 10 per 100 ms
    // come faster than gossip spreads them (every node sends each one
    // 4 x log10(N) times), and the updates waiting on every node pile up:
    // see the `memory` example.
    if n > 2000 { 2 } else { 10 }
}

/// What [`measure_speed`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct Speed {
    /// Wall seconds to start every node and converge, if reached.
    pub start: Option<f64>,
    /// Wall seconds for start-up and the steady state, if reached.
    pub total: Option<f64>,
    /// Simulator events processed.
    pub events: u64,
    /// Every node saw every other alive within [`CONVERGE_LIMIT`].
    pub converged: bool,
    /// At the end: (observer, subject) pairs of nodes where the observer
    /// does not see the subject as alive, out of N x (N - 1).
    pub unseen: usize,
    /// Why the run stopped early (wall-time cap or memory budget).
    pub gave_up: Option<String>,
    /// Nodes started every 100 ms of simulated time.
    pub pace: usize,
    /// Peak resident memory of the process during the run, in bytes (0 where unknown).
    pub peak_rss: u64,
}

/// How long a speed run waits for every node to see every other.
pub const CONVERGE_LIMIT: Duration = Duration::from_secs(1200);

/// Wall time to start N nodes (through node 0, [`start_pace`] every 100 ms),
/// converge (or wait [`CONVERGE_LIMIT`] of simulated time) and run `minutes`
/// of steady state; gives up (leaving `None` for the parts not reached) after
/// `cap` of wall time or when resident memory passes [`MEMORY_BUDGET`].
pub fn measure_speed(n: usize, minutes: u64, seed: u64, cap: Duration) -> Speed {
    let wall = Instant::now();
    // Linux: reset the process's peak resident memory, so that VmHWM is this run's.
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let over = || -> Option<String> {
        if wall.elapsed() >= cap {
            return Some(format!("wall-time cap of {} s", cap.as_secs()));
        }
        let rss = proc_status_bytes("VmRSS:");
        (rss > MEMORY_BUDGET).then(|| format!("memory budget ({:.1} GiB resident)", rss as f64 / (1u64 << 30) as f64))
    };
    let pace = start_pace(n);
    let mut speed = with_cluster(Impl::Lifeguard, seed, n, NetConfig::default(), &mut |c| {
        let mut speed = Speed {
            start: None,
            total: None,
            events: 0,
            converged: false,
            unseen: 0,
            gave_up: None,
            pace,
            peak_rss: 0,
        };
        for added in (0..n).step_by(pace) {
            if let Some(why) = over() {
                speed.gave_up = Some(format!("{why} while starting {added} of {n} nodes"));
                speed.events = c.events();
                return speed;
            }
            if added > 0 {
                c.run_for(Duration::from_millis(100));
            }
            for _ in added..(added + pace).min(n) {
                c.add_through_first();
            }
        }
        let mut waited = Duration::ZERO;
        while !speed.converged && waited < CONVERGE_LIMIT {
            if let Some(why) = over() {
                speed.gave_up = Some(format!("{why} after {} simulated s of convergence", waited.as_secs()));
                speed.events = c.events();
                return speed;
            }
            speed.converged = c.converge(Duration::from_secs(10), Duration::from_secs(1)).is_some();
            waited += Duration::from_secs(10);
        }
        // The steady state runs either way; what is still unseen is counted at the end.
        speed.start = Some(wall.elapsed().as_secs_f64());
        for i in 0..(6 * minutes) {
            if let Some(why) = over() {
                speed.gave_up = Some(format!("{why} after {} simulated s of steady state", i * 10));
                speed.events = c.events();
                return speed;
            }
            c.run_for(Duration::from_secs(10));
        }
        speed.total = Some(wall.elapsed().as_secs_f64());
        speed.events = c.events();
        speed.unseen = c.unseen();
        speed
    });
    speed.peak_rss = proc_status_bytes("VmHWM:");
    speed
}

fn fmt_s(v: Option<f64>) -> String {
    v.map_or("–".to_owned(), |v| format!("{v:.2}"))
}

fn fmt_p(v: Option<f64>, period: f64) -> String {
    v.map_or("–".to_owned(), |v| format!("{:.1}", v / period))
}

/// Runs everything in `opts` and renders the report; `progress` gets a line per finished run.
pub fn report(opts: &Options, command: &str, mut progress: impl FnMut(&str)) -> String {
    let started = Instant::now();
    let mut out = String::new();
    let w = &mut out;
    let _ = writeln!(
        w,
        "# Membership benchmark: rumor with and without Lifeguard, and foca\n"
    );
    let _ = writeln!(
        w,
        "Written by `{command}` (seed {}). Every figure except wall times is measured in",
        opts.seed
    );
    let _ = writeln!(
        w,
        "simulated time by `crates/sim`, so it is exact for its seed and does not depend on the load of"
    );
    let _ = writeln!(w, "the machine; rerunning the command gives the same figures.\n");
    let _ = writeln!(
        w,
        "Setup: one simulated LAN (0.5 ms latency + up to 0.5 ms jitter per packet), uniform datagram"
    );
    let _ = writeln!(
        w,
        "loss as given (push-pull streams are not lost), nodes started ten every 100 ms, each joining"
    );
    let _ = writeln!(
        w,
        "through node 0. The same seed for every implementation at a given N and loss.\n"
    );
    let _ = writeln!(
        w,
        "- rumor (Lifeguard): `membership::Config::lan()`: 1 s period, 500 ms probe timeout, k = 3,"
    );
    let _ = writeln!(
        w,
        "  suspicion 4 x log10(N) periods (x6 at most, shrinking with 3 confirmations), 200 ms gossip fan-out to 3,"
    );
    let _ = writeln!(
        w,
        "  push-pull every 30 s x N / 16 on average, and one as soon as every view digest a node hears on pings and"
    );
    let _ = writeln!(
        w,
        "  acks has differed from its own for 10 s (a member that dissemination missed)."
    );
    let _ = writeln!(
        w,
        "- rumor (no Lifeguard): the same with `lifeguard = false` (fixed timeouts and suspicion, no nacks, no buddy rule)."
    );
    let _ = writeln!(
        w,
        "- foca 2.0: `foca::Config::new_lan(N)`: 1 s period, 500 ms probe RTT, 3 indirect probes, suspect-to-down"
    );
    let _ = writeln!(
        w,
        "  4 x log10(N) s, 200 ms periodic gossip to 3; driven by `crates/sim/src/foca.rs`, which also re-announces"
    );
    let _ = writeln!(
        w,
        "  to the seeds while foca reports itself idle (what an embedding application would do)."
    );
    let _ = writeln!(
        w,
        "  foca runs only up to N = {}: its member list is a vector scanned on every update (`Members::apply` took",
        opts.foca_max_n
    );
    let _ = writeln!(
        w,
        "  86% of the CPU in a profile), so a 1,000-node foca simulation had not even converged after 90 s of"
    );
    let _ = writeln!(
        w,
        "  wall time, and N = 1,000 rows for foca would not finish in a useful time on this machine.\n"
    );
    let _ = writeln!(
        w,
        "Detection: a random node (never node 0) is killed; \"first suspect\" is the first node to suspect it"
    );
    let _ = writeln!(
        w,
        "(foca: first suspicion seen in its member states), \"all down\" the time until every live node"
    );
    let _ = writeln!(
        w,
        "declared it down. It is then restarted and the cluster reconverges before the next sample."
    );
    let _ = writeln!(
        w,
        "Percentiles over few samples are order statistics (p99 of 5 samples is the maximum).\n"
    );

    let mut runs = Vec::new();
    for &n in &opts.sizes {
        for &loss in &opts.losses {
            for imp in Impl::ALL {
                if imp == Impl::Foca && n > opts.foca_max_n {
                    continue;
                }
                let r = measure(imp, n, loss, opts);
                progress(&format!(
                    "N={n} loss={:.0}% {}: {:.1}s wall, fp {}, first suspect p50 {}",
                    loss * 100.0,
                    imp.label(),
                    r.wall,
                    r.fp_episodes,
                    fmt_s(percentile(&r.first_suspect, 0.5))
                ));
                runs.push((n, loss, imp, r));
            }
        }
    }

    let _ = writeln!(w, "## Failure detection\n");
    let _ = writeln!(w, "Seconds after the crash (and protocol periods in brackets).\n");
    let _ = writeln!(
        w,
        "| N | loss | implementation | samples | first suspect p50 | p99 | first down p50 | p99 | all down p50 | p99 |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|---|");
    for (n, loss, imp, r) in &runs {
        let p = r.period;
        let cell = |v: &[f64], q| format!("{} ({})", fmt_s(percentile(v, q)), fmt_p(percentile(v, q), p));
        let _ = writeln!(
            w,
            "| {n} | {:.0}% | {} | {} | {} | {} | {} | {} | {} | {} |",
            loss * 100.0,
            imp.label(),
            r.first_suspect.len().max(r.all_down.len()),
            cell(&r.first_suspect, 0.5),
            cell(&r.first_suspect, 0.99),
            cell(&r.first_down, 0.5),
            cell(&r.first_down, 0.99),
            cell(&r.all_down, 0.5),
            cell(&r.all_down, 0.99)
        );
    }

    let _ = writeln!(w, "\n## False positives under loss\n");
    let _ = writeln!(
        w,
        "Healthy members declared dead by at least one member (an episode ends when every member sees it"
    );
    let _ = writeln!(w, "alive again), during the steady phase, per node-hour.\n");
    let _ = writeln!(
        w,
        "| N | loss | implementation | node-hours | episodes | per node-hour |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|");
    for (n, loss, imp, r) in &runs {
        let _ = writeln!(
            w,
            "| {n} | {:.0}% | {} | {:.0} | {} | {:.4} |",
            loss * 100.0,
            imp.label(),
            r.node_hours,
            r.fp_episodes,
            r.fp_episodes as f64 / r.node_hours.max(1e-9)
        );
    }

    let _ = writeln!(w, "\n## False positives with slow nodes\n");
    let _ = writeln!(
        w,
        "Some nodes handle every packet late (uniformly 0.5x to 1.5x the delay given), no loss; the"
    );
    let _ = writeln!(
        w,
        "Lifeguard paper's scenario. A slow node that answers seconds late may fairly be declared dead;"
    );
    let _ = writeln!(
        w,
        "what Lifeguard should prevent is healthy members declared dead because of the slow ones' accusations.\n"
    );
    let _ = writeln!(
        w,
        "| N | slow nodes | delay | duration | implementation | healthy nodes declared dead | per healthy node-hour | slow nodes declared dead |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
    let mut slow_results = Vec::new();
    for &(n, slow, delay, dur) in &opts.slow {
        for imp in Impl::ALL {
            if imp == Impl::Foca && n > opts.foca_max_n {
                continue;
            }
            let t = Instant::now();
            let r = measure_slow(imp, n, slow, delay, dur, opts.seed);
            progress(&format!(
                "slow N={n} {}: {:.1}s wall, {} healthy, {} slow",
                imp.label(),
                t.elapsed().as_secs_f64(),
                r.healthy,
                r.slow
            ));
            let _ = writeln!(
                w,
                "| {n} | {slow} | {:.1} s | {} min | {} | {} | {:.3} | {} |",
                delay.as_secs_f64(),
                dur.as_secs() / 60,
                imp.label(),
                r.healthy,
                r.healthy as f64 / r.healthy_node_hours,
                r.slow
            );
            slow_results.push((n, delay, imp, r.healthy));
        }
    }

    let _ = writeln!(w, "\n## Dissemination\n");
    let _ = writeln!(
        w,
        "Time until every live member knows of a join (seen up) and has a gossip message, in seconds and"
    );
    let _ = writeln!(
        w,
        "in protocol periods (rounds), next to log2(N), the rounds a doubling epidemic needs.\n"
    );
    let _ = writeln!(
        w,
        "| N | loss | implementation | log2 N | join p50 | p99 | message p50 | p99 |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|");
    for (n, loss, imp, r) in &runs {
        let p = r.period;
        let cell = |v: &[f64], q| format!("{} ({})", fmt_s(percentile(v, q)), fmt_p(percentile(v, q), p));
        let _ = writeln!(
            w,
            "| {n} | {:.0}% | {} | {:.1} | {} | {} | {} | {} |",
            loss * 100.0,
            imp.label(),
            (*n as f64).log2(),
            cell(&r.join, 0.5),
            cell(&r.join, 0.99),
            cell(&r.message, 0.5),
            cell(&r.message, 0.99)
        );
    }

    let _ = writeln!(w, "\n## Steady-state traffic\n");
    let _ = writeln!(
        w,
        "Bytes and packets each node sends per second, all traffic included (probes, acks, gossip, push-pull).\n"
    );
    let _ = writeln!(w, "| N | loss | implementation | bytes/node/s | packets/node/s |");
    let _ = writeln!(w, "|---|---|---|---|---|");
    for (n, loss, imp, r) in &runs {
        let _ = writeln!(
            w,
            "| {n} | {:.0}% | {} | {:.0} | {:.2} |",
            loss * 100.0,
            imp.label(),
            r.bytes_per_node_s,
            r.packets_per_node_s
        );
    }

    let _ = writeln!(w, "\n## Partition healing\n");
    let _ = writeln!(
        w,
        "A 50/50 two-way partition held for 180 s, then repaired: seconds until every node sees every node.\n"
    );
    let _ = writeln!(w, "| N | implementation | both sides split | healed after (s) |");
    let _ = writeln!(w, "|---|---|---|---|");
    for &n in &opts.sizes {
        for imp in Impl::ALL {
            if imp == Impl::Foca && n > opts.foca_max_n {
                continue;
            }
            let (healed, split) = measure_partition(imp, n, opts.seed);
            progress(&format!("partition N={n} {}: {}", imp.label(), fmt_s(healed)));
            let _ = writeln!(
                w,
                "| {n} | {} | {split} | {} |",
                imp.label(),
                healed.map_or("not within 900 s".into(), |v| format!("{v:.1}"))
            );
        }
    }

    let _ = writeln!(w, "\n## Simulator speed\n");
    for line in [
        "Wall time and memory on this machine (the only machine-dependent figures here), rumor with Lifeguard.",
        "Nodes join through node 0, a few every 100 ms of simulated time (the start pace); the run waits up to",
        "1,200 simulated seconds for every node to see every other, then runs the steady state either way.",
        "Every node keeps the full membership, so the process holds N x (N - 1) member entries; \"bytes per",
        "entry\" is the peak resident memory of the process during the run (what earlier runs left allocated",
        "included) divided by that.",
        "",
        "N = 10,000 starts at 2 nodes per 100 ms. At 10, joins come faster than gossip spreads them (every node",
        "sends each one 4 x log10(N) times) and updates pile up on every node: measured with the `memory` example",
        "of `crates/sim`, a 4,000-node start at 10 per 100 ms ends with 7.7 million updates pending and a 3.4 GiB",
        "peak (231 bytes per entry), a 2,000-node start with 1.9 million (34,000 at 2 per 100 ms).",
        "",
    ] {
        let _ = writeln!(w, "{line}");
    }
    let _ = writeln!(
        w,
        "| N | start pace | simulated | start + converge (wall s) | total (wall s) | events | converged | peak resident | bytes per entry |"
    );
    let _ = writeln!(w, "|---|---|---|---|---|---|---|---|---|");
    let mut speeds = vec![(1000usize, 10u64)];
    if opts.ten_thousand {
        speeds.push((10_000, 1));
    }
    if !opts.sizes.contains(&1000) {
        speeds = vec![(opts.sizes[opts.sizes.len() - 1], 1)];
    }
    let mut speed_results = Vec::new();
    for (n, minutes) in speeds {
        // N = 10,000 takes tens of minutes to start at its pace.
        let cap = Duration::from_secs(if n > 2000 { 3600 } else { 600 });
        let sp = measure_speed(n, minutes, opts.seed, cap);
        let why = sp.gave_up.clone().unwrap_or_default();
        let cell = |v: Option<f64>| v.map_or(format!("stopped: {why}"), |v| format!("{v:.1}"));
        progress(&format!("speed N={n}: {}", cell(sp.total)));
        let pairs = n * n.saturating_sub(1);
        let start = match sp.start {
            Some(v) if !sp.converged => format!("{v:.1} (gave up waiting at {} s simulated)", CONVERGE_LIMIT.as_secs()),
            v => cell(v),
        };
        let converged = if sp.converged || sp.total.is_none() {
            sp.converged.to_string()
        } else {
            format!("false: {} of {pairs} views missing at the end", sp.unseen)
        };
        let _ = writeln!(
            w,
            "| {n} | {} per 100 ms | start + {minutes} min | {start} | {} | {} | {converged} | {:.2} GiB | {:.0} |",
            sp.pace,
            cell(sp.total),
            sp.events,
            sp.peak_rss as f64 / (1u64 << 30) as f64,
            sp.peak_rss as f64 / pairs.max(1) as f64
        );
        speed_results.push((n, minutes, sp));
    }

    if speed_results
        .iter()
        .any(|(_, _, sp)| sp.total.is_some() && !sp.converged)
    {
        for line in [
            "",
            "Where a run did not converge, a few nodes never heard of a few others: every node sends each update",
            "4 x log10(N) times to members picked at random, so now and then a node gets none of the copies, and only",
            "push-pull repairs that; its interval grows with N to keep bytes per node flat (30 s x N / 16 on average,",
            "about 5 hours per node at N = 10,000).",
        ] {
            let _ = writeln!(w, "{line}");
        }
    }

    let _ = writeln!(w, "\n## Goals\n");
    goals(w, &runs, &slow_results, &speed_results);
    let _ = writeln!(
        w,
        "\nTotal wall time of this report: {:.0} s.",
        started.elapsed().as_secs_f64()
    );
    out
}

fn goals(
    w: &mut String,
    runs: &[(usize, f64, Impl, Run)],
    slow: &[(usize, Duration, Impl, u64)],
    speeds: &[(usize, u64, Speed)],
) {
    let find = |n: usize, loss: f64, imp: Impl| {
        runs.iter()
            .find(|(a, b, c, _)| *a == n && *b == loss && *c == imp)
            .map(|r| &r.3)
    };
    let mark = |ok: bool| if ok { "met" } else { "MISSED" };
    let max_n = runs.iter().map(|r| r.0).max().unwrap_or(0);
    if let Some(r) = find(max_n, 0.10, Impl::Lifeguard) {
        let _ = writeln!(
            w,
            "- Zero false positives at 10% loss for N = {max_n} over {:.0} node-hours: {} episodes, {}.",
            r.node_hours,
            r.fp_episodes,
            mark(r.fp_episodes == 0)
        );
    }
    for &(n, delay, imp, ep) in slow.iter().filter(|s| s.2 == Impl::Lifeguard) {
        let _ = imp;
        if let Some(&(_, _, _, off)) = slow
            .iter()
            .find(|s| s.0 == n && s.1 == delay && s.2 == Impl::NoLifeguard)
        {
            let ratio = if ep == 0 { f64::INFINITY } else { off as f64 / ep as f64 };
            let _ = writeln!(
                w,
                "- At least 20x fewer healthy members declared dead than Lifeguard off with slow nodes (N = {n}, {:.0} s): {ep} vs {off} ({}), {}.",
                delay.as_secs_f64(),
                if ratio.is_finite() {
                    format!("{ratio:.1}x")
                } else if off == 0 {
                    "both zero".into()
                } else {
                    "none with Lifeguard".into()
                },
                mark(off == 0 && ep == 0 || ratio >= 20.0)
            );
        }
    }
    for &(n, loss, imp, ref r) in runs.iter().filter(|r| r.2 == Impl::Lifeguard && r.1 == 0.0) {
        let _ = imp;
        let _ = loss;
        if let Some(p50) = percentile(&r.first_suspect, 0.5) {
            let periods = p50 / r.period;
            let _ = writeln!(
                w,
                "- Median first detection within 2 periods (N = {n}, no loss): {periods:.2} periods, {}.",
                mark(periods <= 2.0)
            );
        }
        if let Some(p99) = percentile(&r.message, 0.99) {
            let bound = (n as f64).log2();
            let rounds = p99 / r.period;
            let _ = writeln!(
                w,
                "- Gossip message to all within 2x log2(N) rounds (N = {n}, p99): {rounds:.1} rounds vs {:.1}, {}.",
                2.0 * bound,
                mark(rounds <= 2.0 * bound)
            );
        }
        if let Some(p99) = percentile(&r.join, 0.99) {
            let bound = (n as f64).log2();
            let rounds = p99 / r.period;
            let _ = writeln!(
                w,
                "- Join known to all within 2x log2(N) rounds (N = {n}, p99): {rounds:.1} rounds vs {:.1}, {}.",
                2.0 * bound,
                mark(rounds <= 2.0 * bound)
            );
        }
    }
    let bytes: Vec<(usize, f64)> = runs
        .iter()
        .filter(|r| r.2 == Impl::Lifeguard && r.1 == 0.0)
        .map(|r| (r.0, r.3.bytes_per_node_s))
        .collect();
    if let (Some(first), Some(last)) = (bytes.first(), bytes.last()) {
        let ratio = last.1 / first.1;
        let _ = writeln!(
            w,
            "- Steady-state bytes per node per second flat in N: {:.0} at N = {} and {:.0} at N = {} ({ratio:.2}x), {}.",
            first.1,
            first.0,
            last.1,
            last.0,
            mark(ratio <= 1.5)
        );
    }
    for (n, minutes, sp) in speeds {
        let done = |v: Option<f64>| {
            v.map_or_else(
                || format!("stopped ({})", sp.gave_up.as_deref().unwrap_or_default()),
                |v| format!("{v:.1} s"),
            )
        };
        if *n == 1000 {
            let _ = writeln!(
                w,
                "- N = 1,000 for {minutes} simulated minutes in under a minute of wall time: {}, {}.",
                done(sp.total),
                mark(sp.total.is_some_and(|t| t < 60.0))
            );
        } else if *n == 10_000 {
            let _ = writeln!(
                w,
                "- N = 10,000 at all (every node started, {minutes} simulated minute of steady state): {} of wall time, peak {:.1} GiB resident, {}.",
                done(sp.total),
                sp.peak_rss as f64 / (1u64 << 30) as f64,
                mark(sp.total.is_some())
            );
            if sp.total.is_some() {
                let pairs = n * (n - 1);
                let _ = writeln!(
                    w,
                    "- ... and every node seeing every other within {} simulated s of the last start: {}.",
                    CONVERGE_LIMIT.as_secs(),
                    if sp.converged {
                        "met".to_owned()
                    } else {
                        format!(
                            "MISSED ({} of {pairs} views still missing at the end; see the speed table)",
                            sp.unseen
                        )
                    }
                );
            }
        }
    }
    for &(n, loss, _, ref r) in runs.iter().filter(|r| r.2 == Impl::Lifeguard) {
        if let Some(f) = find(n, loss, Impl::Foca) {
            let p = |v: &[f64], q: f64| percentile(v, q).unwrap_or(f64::NAN);
            let (ours50, theirs50) = (p(&r.all_down, 0.5), p(&f.all_down, 0.5));
            let (ours99, theirs99) = (p(&r.all_down, 0.99), p(&f.all_down, 0.99));
            // Within 5% counts as a tie, not a loss.
            let mut worse = Vec::new();
            if ours50 > theirs50 * 1.05 {
                worse.push(format!("all-down p50 {:.0}% slower", (ours50 / theirs50 - 1.0) * 100.0));
            }
            if ours99 > theirs99 * 1.05 {
                worse.push(format!("all-down p99 {:.0}% slower", (ours99 / theirs99 - 1.0) * 100.0));
            }
            if r.fp_episodes > f.fp_episodes {
                worse.push("more false positives".to_owned());
            }
            let bytes = r.bytes_per_node_s / f.bytes_per_node_s;
            let verdict = if worse.is_empty() {
                format!("met (at {bytes:.2}x foca's bytes)")
            } else {
                format!("MISSED: {} (at {bytes:.2}x foca's bytes)", worse.join(", "))
            };
            let _ = writeln!(
                w,
                "- Better than foca, N = {n}, loss {:.0}%: all-down p50 {ours50:.2} s vs {theirs50:.2} s, p99 {ours99:.2} s vs {theirs99:.2} s; first suspect p50 {} s vs {} s; false positives {} vs {}; bytes/node/s {:.0} vs {:.0}; {verdict}.",
                loss * 100.0,
                fmt_s(percentile(&r.first_suspect, 0.5)),
                fmt_s(percentile(&f.first_suspect, 0.5)),
                r.fp_episodes,
                f.fp_episodes,
                r.bytes_per_node_s,
                f.bytes_per_node_s
            );
        }
    }
}
