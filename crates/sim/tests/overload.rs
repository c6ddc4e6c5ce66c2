//! Many nodes sharing a small CPU, as 1,000 `rumor node` processes on one
//! 2-core host do. With the event loop rumor had (timers before the socket,
//! the view rebuilt after every change) such a cluster never converged on
//! real processes, and the simulator reproduces that; with the event loop it
//! has now, the cluster converges and stays converged.

use std::time::Duration;

use membership::Config;
use sim::{Cluster, Cpu, NetConfig, Order, Rumor};

const SEED: u64 = 7;
const NODES: usize = 1000;

/// Sums of every node's counters.
#[derive(Debug, Default, Clone, Copy)]
struct Totals {
    suspicions: u64,
    failures: u64,
}

fn totals(c: &Cluster<Rumor>) -> Totals {
    let mut t = Totals::default();
    for i in 0..c.len() {
        if let Some(p) = c.protocol(i) {
            t.suspicions += p.inner().stats().suspicions;
            t.failures += p.inner().stats().failures_declared;
        }
    }
    t
}

/// `NODES` nodes started ten every 100 ms, all joining through node 0.
fn start(cpu: Cpu) -> Cluster<Rumor> {
    println!("seed {SEED}");
    let cfg = Config::lan();
    let mut c = Cluster::new(SEED, NetConfig::default(), move |spec| Rumor::new(cfg.clone(), spec));
    c.set_cpu(Some(cpu));
    for k in 0..NODES {
        if k > 0 && k % 10 == 0 {
            c.run_for(Duration::from_millis(100));
        }
        c.add_node(&[0]);
    }
    c
}

/// Cores the nodes kept busy over the next `d`.
fn cores_over(c: &mut Cluster<Rumor>, d: Duration) -> f64 {
    let before = c.cpu_used();
    c.run_for(d);
    (c.cpu_used() - before).as_secs_f64() / d.as_secs_f64()
}

#[test]
fn the_old_event_loop_never_converges_with_a_thousand_nodes_on_two_cores() {
    let old = Cpu {
        order: Order::TimersFirst,
        view_every: None,
        ..Cpu::shared_host(2.0, NODES)
    };
    let mut c = start(old);
    c.run_for(Duration::from_secs(60));
    let before = totals(&c);
    let cores = cores_over(&mut c, Duration::from_secs(30));
    let after = totals(&c);
    println!(
        "after 90 s: {} pairs unseen, {:.2} cores busy, {} suspicions and {} failures declared in the last 30 s",
        c.unseen(),
        cores,
        after.suspicions - before.suspicions,
        after.failures - before.failures
    );
    assert!(!c.converged(), "the collapse is reproduced");
    assert!(cores > 1.5, "the CPU stays saturated: {cores:.2} cores");
    assert!(
        after.failures - before.failures > 10_000,
        "members keep being declared failed"
    );
}

/// Runs until the cluster has been converged for `hold` without a break, or
/// `limit` passes; returns when that run of convergence began.
fn converged_for(c: &mut Cluster<Rumor>, hold: Duration, limit: Duration) -> Option<Duration> {
    let end = c.now() + limit;
    let mut since = None;
    while c.now() < end {
        c.run_for(Duration::from_secs(1));
        since = if c.converged() { since.or(Some(c.now())) } else { None };
        if since.is_some_and(|t| c.now() - t >= hold) {
            return since;
        }
    }
    None
}

#[test]
fn a_thousand_nodes_on_two_cores_converge_and_stay_converged() {
    let mut c = start(Cpu::shared_host(2.0, NODES));
    let first = c.run_until_cond(Duration::from_secs(1), Duration::from_secs(180), |c| c.converged());
    let settling = totals(&c);
    let Some(t) = converged_for(&mut c, Duration::from_secs(30), Duration::from_secs(240)) else {
        panic!(
            "not converged for 30 s in a row by {:.0} s: {} pairs unseen",
            c.now().as_secs_f64(),
            c.unseen()
        );
    };
    println!(
        "first converged at {:.1} s, for good from {:.1} s; {} failures declared in between",
        first.unwrap_or_default().as_secs_f64(),
        t.as_secs_f64(),
        totals(&c).failures - settling.failures
    );
    let before = totals(&c);
    for _ in 0..90 {
        c.run_for(Duration::from_secs(1));
        assert!(
            c.converged(),
            "came apart at {:.0} s: {} pairs unseen",
            c.now().as_secs_f64(),
            c.unseen()
        );
    }
    let cores = cores_over(&mut c, Duration::from_secs(30));
    let after = totals(&c);
    println!(
        "{cores:.2} cores busy once converged; {} suspicions, {} failures declared in the last two minutes",
        after.suspicions - before.suspicions,
        after.failures - before.failures
    );
    assert_eq!(
        after.failures, before.failures,
        "no member declared failed once converged"
    );
    assert!(cores < 0.5, "quiet once converged: {cores:.2} cores");

    // Backing off under slowness still finds a real failure.
    let victim = NODES / 2;
    c.crash(victim);
    c.watch(victim);
    let t0 = c.now();
    c.run_until_cond(Duration::from_secs(1), Duration::from_secs(120), |c| {
        c.watch_status(victim).is_some_and(|w| w.all_down.is_some())
    });
    let all_down = c.watch_status(victim).and_then(|w| w.all_down).map(|t| t - t0);
    println!("a crashed node is dead everywhere after {all_down:?}");
    assert!(
        all_down.is_some(),
        "a crashed node is declared dead everywhere within 120 s"
    );
}

#[test]
fn fifty_nodes_every_five_seconds_join_a_converged_cluster_of_three_hundred_on_two_cores() {
    println!("seed {SEED}");
    let cfg = Config::lan();
    let mut c = Cluster::new(SEED, NetConfig::default(), move |spec| Rumor::new(cfg.clone(), spec));
    c.set_cpu(Some(Cpu::shared_host(2.0, NODES)));
    for _ in 0..300 {
        c.add_node(&[0]);
    }
    let converged = c.run_until_cond(Duration::from_secs(1), Duration::from_secs(120), |c| c.converged());
    assert!(converged.is_some(), "the first 300 converge");
    while c.len() < NODES {
        for _ in 0..50 {
            c.add_node(&[0]);
        }
        c.run_for(Duration::from_secs(5));
    }
    let t = c.run_until_cond(Duration::from_secs(1), Duration::from_secs(180), |c| c.converged());
    assert!(
        t.is_some(),
        "not converged 180 s after the last wave: {} pairs unseen",
        c.unseen()
    );
    for _ in 0..60 {
        c.run_for(Duration::from_secs(1));
        assert!(c.converged(), "came apart: {} pairs unseen", c.unseen());
    }
}
