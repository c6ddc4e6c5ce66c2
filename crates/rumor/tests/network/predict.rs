//! The simulator's prediction for the scenarios network.rs runs on real
//! processes: the same cluster size, the same membership preset,
//! the same fault, over many seeds. The scenarios print both side by side;
//! a difference beyond 25% is a finding about the simulator's model.

use std::collections::BTreeMap;
use std::time::Duration;

use membership::{Config, Meta};
use sim::{Cluster, NetConfig, Rumor};

/// Seeds per prediction for a cluster of `n`; figures are medians over
/// them. 21 for the twelve hosts of CI; fewer for the large runs, whose
/// simulation costs more per seed and varies less between seeds.
pub(crate) fn seeds(n: usize) -> u64 {
    if n <= 20 { 21 } else { 5 }
}

/// What the real node on host `h` advertises (see `Node::start` in the
/// crate root): its role, its mesh and admin addresses, a worker's capacity
/// and model. Packets that carry member entries (push-pull above all) are as
/// large as the real ones only with it.
fn real_meta(h: usize) -> Meta {
    let (_, role) = crate::roles(h);
    let offset = 10 + h;
    let addr = |port: u16| format!("10.213.{}.{}:{port}", 100 + offset / 256, offset % 256);
    let mut meta = Meta {
        roles: vec![role.to_owned()],
        ..Meta::default()
    };
    meta.services.insert("mesh".into(), addr(crate::MESH_PORT));
    meta.services.insert("admin".into(), addr(crate::ADMIN_PORT));
    if role == "worker" {
        meta.capacity = 256;
        meta.tags.insert("models".into(), "echo".into());
    }
    meta
}

/// The membership preset the real nodes run (`rumor node --preset`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Preset {
    /// 100 ms protocol period: the twelve-host scenarios.
    Test,
    /// 1 s protocol period, the production default: the large runs, where
    /// the test preset's tenfold traffic would need more cores than the
    /// machine has.
    Lan,
}

impl Preset {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Preset::Test => "test",
            Preset::Lan => "lan",
        }
    }

    pub(crate) fn config(self) -> Config {
        match self {
            Preset::Test => Config::for_tests(),
            Preset::Lan => Config::lan(),
        }
    }

    /// How long a cluster that has just formed takes to settle: every node
    /// runs its first full state exchange within 1.5 base push-pull
    /// intervals of joining (1.5 x 30 s = 45 s in the `lan` preset), and
    /// only later ones are spaced for the cluster's size. Every simulated
    /// cluster is measured after it, and so is the real cluster's quiet
    /// gossip (the real fault scenarios of the large run come later still).
    /// At 300 members the simulator measured 861 bytes per node per second
    /// in the minute right after forming, 75 once settled.
    pub(crate) fn settle(self) -> Duration {
        self.config().push_pull_interval.mul_f64(1.5)
    }
}

fn cluster(preset: Preset, n: usize, seed: u64, loss: f64) -> Cluster<Rumor> {
    // Loopback-like veths: a tenth of a millisecond each way.
    let net = NetConfig {
        latency: Duration::from_micros(100),
        jitter: Duration::from_micros(100),
        loss,
        // The harness's faults drop packets of every kind, TCP's too.
        stream_loss: true,
    };
    let mut c = Cluster::new(seed, net, move |spec| {
        Rumor::with_meta(preset.config(), spec, real_meta(spec.index))
    });
    for _ in 0..n {
        c.add_node(&[0]);
    }
    let t = c.run_until_cond(Duration::from_millis(10), Duration::from_secs(300), |c| c.converged());
    assert!(t.is_some(), "the simulated cluster of {n} converges (seed {seed})");
    c.run_for(preset.settle());
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Crash of one member: (first suspicion, dead everywhere).
pub(crate) fn crash(preset: Preset, n: usize) -> Prediction {
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for seed in 1..=seeds(n) {
        let mut c = cluster(preset, n, seed, 0.0);
        let victim = n / 2;
        c.crash(victim);
        c.watch(victim);
        let t0 = c.now();
        c.run_until_cond(Duration::from_millis(10), Duration::from_secs(120), |c| {
            c.watch_status(victim).is_some_and(|w| w.all_down.is_some())
        });
        let w = c.watch_status(victim).expect("watched");
        first.push(w.first_suspect.expect("suspected") - t0);
        all.push(w.all_down.expect("dead everywhere") - t0);
    }
    (median(first), median(all), seeds(n))
}

/// Two medians over the seeds, and how many seeds.
pub(crate) type Prediction = (Duration, Duration, u64);

/// A two-way partition into halves `a` and `b` (node indices), then repair:
/// (each side sees all of the other dead, one view after repair).
pub(crate) fn partition(preset: Preset, a: &[usize], b: &[usize]) -> Prediction {
    cut(preset, a, b, true)
}

/// Packets from `a` to `b` dropped (`b` no longer hears `a`), then repair:
/// (every node of `b` sees every node of `a` dead, one view after repair).
pub(crate) fn one_way(preset: Preset, a: &[usize], b: &[usize]) -> Prediction {
    cut(preset, a, b, false)
}

fn cut(preset: Preset, a: &[usize], b: &[usize], two_way: bool) -> Prediction {
    const STEP: Duration = Duration::from_millis(10);
    let n = a.len() + b.len();
    let side = |of: &[usize]| -> Vec<bool> { (0..n).map(|i| of.contains(&i)).collect() };
    let (in_a, in_b) = (side(a), side(b));
    let (mut split, mut healed) = (Vec::new(), Vec::new());
    for seed in 1..=seeds(n) {
        let mut c = cluster(preset, n, seed, 0.0);
        let mut shown = Published::new(&c);
        c.partition(a, b, two_way);
        let t0 = c.now();
        let cut_off = |observer: usize, subject: usize| {
            (in_b[observer] && in_a[subject]) || (two_way && in_a[observer] && in_b[subject])
        };
        let pairs = if two_way { 2 } else { 1 } * a.len() * b.len();
        let step = |c: &mut Cluster<Rumor>, shown: &mut Published| {
            c.run_for(STEP);
            shown.update(c);
            assert!(
                c.now() < t0 + Duration::from_secs(300),
                "seed {seed}: no end within 300 s"
            );
        };
        while shown.unseen().filter(|&(o, s)| cut_off(o, s)).count() < pairs {
            step(&mut c, &mut shown);
        }
        split.push(c.now() - t0);
        let apart = c.now() + Duration::from_secs(2);
        while c.now() < apart {
            step(&mut c, &mut shown);
        }
        c.repair();
        let t1 = c.now();
        while shown.unseen().next().is_some() {
            step(&mut c, &mut shown);
        }
        healed.push(c.now() - t1);
    }
    (median(split), median(healed), seeds(n))
}

/// What each node's admin API shows, which is what the real test reads: a
/// node publishes its view when it changes, but during a burst of changes at
/// most once per interval (1 ms per live member, at least 100 ms and at most
/// 2 s; `Driver::view_interval` in crates/node/src/gossip.rs), so that a
/// thousand joins do not cost every node a thousand rebuilds.
struct Published {
    /// By observer: the members it does not show as live.
    shown: Vec<Vec<usize>>,
    /// By observer: when it last published.
    at: Vec<Option<Duration>>,
}

impl Published {
    fn new(c: &Cluster<Rumor>) -> Self {
        let mut p = Published {
            shown: vec![Vec::new(); c.len()],
            at: vec![None; c.len()],
        };
        p.update(c);
        p
    }

    /// Publishes each observer's changed view when its interval allows.
    fn update(&mut self, c: &Cluster<Rumor>) {
        let now = c.now();
        let mut unseen = vec![Vec::new(); c.len()];
        for (o, s) in c.unseen_pairs() {
            unseen[o].push(s);
        }
        for (o, current) in unseen.into_iter().enumerate() {
            if current == self.shown[o] {
                continue;
            }
            let live = u32::try_from(c.len() - current.len()).unwrap_or(u32::MAX);
            let interval = (Duration::from_millis(1) * live).clamp(Duration::from_millis(100), Duration::from_secs(2));
            if self.at[o].is_none_or(|t| now >= t + interval) {
                self.shown[o] = current;
                self.at[o] = Some(now);
            }
        }
    }

    /// (observer, subject) pairs in which the observer shows the subject not live.
    fn unseen(&self) -> impl Iterator<Item = (usize, usize)> + '_ {
        self.shown
            .iter()
            .enumerate()
            .flat_map(|(o, v)| v.iter().map(move |&s| (o, s)))
    }
}

/// The simulator's figures for a period of loss.
pub(crate) struct LossPrediction {
    /// Healthy members declared dead, summed over the seeds.
    pub(crate) declared: u64,
    pub(crate) seeds: u64,
    /// Gossip bytes each node sent per second (the membership payload,
    /// before encryption), median over the seeds.
    pub(crate) bytes: f64,
    /// Each membership counter (as `membership::Stats` names it) per node
    /// and hour, mean over the seeds.
    pub(crate) per_node_hour: BTreeMap<&'static str, f64>,
}

/// Uniform datagram loss `loss` on every link for `d`.
pub(crate) fn loss(preset: Preset, n: usize, loss: f64, d: Duration) -> LossPrediction {
    let mut declared = 0;
    let mut rates = Vec::new();
    let mut totals: BTreeMap<&'static str, u64> = BTreeMap::new();
    let counters = |c: &Cluster<Rumor>| -> BTreeMap<&'static str, u64> {
        let mut sum = BTreeMap::new();
        for i in 0..c.len() {
            let stats = c.protocol(i).expect("every node runs").inner().stats();
            for (name, _, value) in stats.fields() {
                *sum.entry(name).or_default() += value;
            }
        }
        sum
    };
    for seed in 1..=seeds(n) {
        let mut c = cluster(preset, n, seed, 0.0);
        c.net_mut().loss = loss;
        c.reset_traffic();
        let before = c.obs.false_positive_declarations;
        let before_counters = counters(&c);
        c.run_for(d);
        declared += c.obs.false_positive_declarations - before;
        for (name, v) in counters(&c) {
            *totals.entry(name).or_default() += v - before_counters[name];
        }
        let bytes: u64 = c.traffic().iter().map(|(b, _)| b).sum();
        rates.push(bytes as f64 / n as f64 / d.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    let node_hours = n as f64 * d.as_secs_f64() / 3600.0 * seeds(n) as f64;
    LossPrediction {
        declared,
        seeds: seeds(n),
        bytes: rates[rates.len() / 2],
        per_node_hour: totals.into_iter().map(|(k, v)| (k, v as f64 / node_hours)).collect(),
    }
}

/// The links between `x` and `y` cut both ways for `d`, everything else
/// healthy: healthy members declared dead (summed over the seeds) and seeds.
pub(crate) fn cut_link(preset: Preset, n: usize, x: usize, y: usize, d: Duration) -> (u64, u64) {
    let mut declared = 0;
    for seed in 1..=seeds(n) {
        let mut c = cluster(preset, n, seed, 0.0);
        c.partition(&[x], &[y], true);
        let before = c.obs.false_positive_declarations;
        c.run_for(d);
        declared += c.obs.false_positive_declarations - before;
    }
    (declared, seeds(n))
}
