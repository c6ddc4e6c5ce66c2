//! The simulator's prediction for the scenarios network.rs runs on real
//! processes: the same cluster size, the same membership preset (`test`),
//! the same fault, over many seeds. The scenarios print both side by side;
//! a difference beyond 25% is a finding about the simulator's model.

use std::time::Duration;

use membership::{Config, Meta};
use sim::{Cluster, NetConfig, Rumor};

/// Seeds per prediction; figures are medians over them.
const SEEDS: u64 = 21;

/// What the real node on host `h` advertises (see `Node::start` in the
/// crate root): its role, its mesh and admin addresses, a worker's capacity
/// and model. Packets that carry member entries (push-pull above all) are as
/// large as the real ones only with it.
fn real_meta(h: usize) -> Meta {
    let (_, role) = crate::roles(h);
    let addr = |port: u16| format!("10.213.100.{}:{port}", 10 + h);
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

fn cluster(n: usize, seed: u64, loss: f64) -> Cluster<Rumor> {
    // Loopback-like veths: a tenth of a millisecond each way.
    let net = NetConfig {
        latency: Duration::from_micros(100),
        jitter: Duration::from_micros(100),
        loss,
    };
    let mut c = Cluster::new(seed, net, |spec| {
        Rumor::with_meta(Config::for_tests(), spec, real_meta(spec.index))
    });
    for _ in 0..n {
        c.add_node(&[0]);
    }
    let t = c.run_until_cond(Duration::from_millis(10), Duration::from_secs(30), |c| c.converged());
    assert!(t.is_some(), "the simulated cluster of {n} converges (seed {seed})");
    c.run_for(Duration::from_secs(2));
    c
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Crash of one member: (first suspicion, dead everywhere), medians.
pub(crate) fn crash(n: usize) -> (Duration, Duration) {
    let (mut first, mut all) = (Vec::new(), Vec::new());
    for seed in 1..=SEEDS {
        let mut c = cluster(n, seed, 0.0);
        let victim = n / 2;
        c.crash(victim);
        c.watch(victim);
        let t0 = c.now();
        c.run_until_cond(Duration::from_millis(10), Duration::from_secs(30), |c| {
            c.watch_status(victim).is_some_and(|w| w.all_down.is_some())
        });
        let w = c.watch_status(victim).expect("watched");
        first.push(w.first_suspect.expect("suspected") - t0);
        all.push(w.all_down.expect("dead everywhere") - t0);
    }
    (median(first), median(all))
}

/// A two-way partition into halves `a` and `b` (node indices), then repair:
/// (each side sees all of the other dead, one view after repair), medians.
pub(crate) fn partition(a: &[usize], b: &[usize]) -> (Duration, Duration) {
    cut(a, b, true)
}

/// Packets from `a` to `b` dropped (`b` no longer hears `a`), then repair:
/// (every node of `b` sees every node of `a` dead, one view after repair), medians.
pub(crate) fn one_way(a: &[usize], b: &[usize]) -> (Duration, Duration) {
    cut(a, b, false)
}

fn cut(a: &[usize], b: &[usize], two_way: bool) -> (Duration, Duration) {
    let n = a.len() + b.len();
    let (mut split, mut healed) = (Vec::new(), Vec::new());
    for seed in 1..=SEEDS {
        let mut c = cluster(n, seed, 0.0);
        c.partition(a, b, two_way);
        let t0 = c.now();
        let cut_off = |&&(observer, subject): &&(usize, usize)| {
            (b.contains(&observer) && a.contains(&subject))
                || (two_way && a.contains(&observer) && b.contains(&subject))
        };
        let pairs = if two_way { 2 } else { 1 } * a.len() * b.len();
        let t = c.run_until_cond(Duration::from_millis(10), Duration::from_secs(60), |c| {
            c.unseen_pairs().iter().filter(cut_off).count() == pairs
        });
        split.push(t.expect("the side cut off is declared dead") - t0);
        c.run_for(Duration::from_secs(2));
        c.repair();
        let t1 = c.now();
        let t = c.run_until_cond(Duration::from_millis(10), Duration::from_secs(60), |c| c.converged());
        healed.push(t.expect("one view after repair") - t1);
    }
    (median(split), median(healed))
}

/// Uniform datagram loss `loss` on every link for `d`: healthy members
/// declared dead (declarations summed over the seeds) and seeds simulated.
/// Also the gossip bytes each node sent per second meanwhile (the
/// membership payload, before encryption), median over the seeds.
pub(crate) fn loss(n: usize, loss: f64, d: Duration) -> (u64, u64, f64) {
    let mut declared = 0;
    let mut rates = Vec::new();
    for seed in 1..=SEEDS {
        let mut c = cluster(n, seed, 0.0);
        c.net_mut().loss = loss;
        c.reset_traffic();
        let before = c.obs.false_positive_declarations;
        c.run_for(d);
        declared += c.obs.false_positive_declarations - before;
        let bytes: u64 = c.traffic().iter().map(|(b, _)| b).sum();
        rates.push(bytes as f64 / n as f64 / d.as_secs_f64());
    }
    rates.sort_by(f64::total_cmp);
    (declared, SEEDS, rates[rates.len() / 2])
}

/// The links between `x` and `y` cut both ways for `d`, everything else
/// healthy: healthy members declared dead (summed over the seeds) and seeds.
pub(crate) fn cut_link(n: usize, x: usize, y: usize, d: Duration) -> (u64, u64) {
    let mut declared = 0;
    for seed in 1..=SEEDS {
        let mut c = cluster(n, seed, 0.0);
        c.partition(&[x], &[y], true);
        let before = c.obs.false_positive_declarations;
        c.run_for(d);
        declared += c.obs.false_positive_declarations - before;
    }
    (declared, SEEDS)
}
