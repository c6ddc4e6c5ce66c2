//! Memory of a simulated cluster of rumor nodes: starts N nodes through node 0
//! (`pace` every 100 ms of simulated time, 10 in the benchmark), waits until
//! every node sees every other, runs a steady state, and prints resident
//! memory per member entry (the cluster holds N x (N - 1) of them) as it goes;
//! if the cluster does not converge, it lists the (observer, member) pairs missing.
//!
//! `cargo run --release -p bench --example memory -- N [steady seconds] [pace]`

use std::time::{Duration, Instant};

use membership::Config;
use sim::{Cluster, NetConfig, Rumor};

fn status_kib(field: &str) -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kib = status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.split_whitespace().next()?.parse().ok());
    kib.unwrap_or(0)
}

fn report(c: &Cluster<Rumor>, n: usize, what: &str, wall: Instant) {
    let (mut members, mut queued) = (0, 0);
    for p in (0..c.len()).filter_map(|i| c.protocol(i)) {
        members += p.inner().members().count();
        queued += p.inner().pending_broadcasts();
    }
    let gib = |kib: u64| kib as f64 / (1u64 << 20) as f64;
    let per_entry = |kib: u64| (kib << 10) as f64 / (n * (n - 1)).max(1) as f64;
    let (rss, peak) = (status_kib("VmRSS:"), status_kib("VmHWM:"));
    println!(
        "{what:>9}: simulated {:>6.1} s, wall {:>6.1} s, {} nodes, {members} entries, {queued} pending updates, \
         resident {:.2} GiB (peak {:.2} GiB, {:.0} bytes per entry of the full cluster)",
        c.now().as_secs_f64(),
        wall.elapsed().as_secs_f64(),
        c.len(),
        gib(rss),
        gib(peak),
        per_entry(peak),
    );
}

/// Prints the (observer, subject) pairs in which the observer does not see the
/// subject as live, with what each of the two holds about the other.
fn print_unseen(c: &Cluster<Rumor>) {
    let held = |o: usize, s: usize| {
        let m = c.protocol(o).and_then(|p| p.inner().member(c.name(s)));
        m.map_or("nothing".to_string(), |m| {
            format!("{:?} inc {} since {:?}", m.status, m.incarnation, m.since)
        })
    };
    for (o, s) in c.unseen_pairs() {
        println!(
            "  node {o} does not see node {s}: it holds {}; node {s} holds {} about node {o}; {s} is seen by {} nodes",
            held(o, s),
            held(s, o),
            c.seen_up_by(s)
        );
    }
}

fn main() {
    let arg = |i: usize, default: u64| std::env::args().nth(i).and_then(|a| a.parse().ok()).unwrap_or(default);
    let (n, steady, pace) = (arg(1, 1000) as usize, arg(2, 60), arg(3, 10).max(1) as usize);
    let wall = Instant::now();
    let cfg = Config::lan();
    let mut c = Cluster::new(1, NetConfig::default(), move |spec| Rumor::new(cfg.clone(), spec));
    for k in 0..n {
        if k > 0 && k % pace == 0 {
            c.run_for(Duration::from_millis(100));
        }
        if k > 0 && k % (n / 10).max(1) == 0 {
            report(&c, n, "starting", wall);
            if status_kib("VmRSS:") << 10 > bench::membership::MEMORY_BUDGET {
                println!("stopped: over the memory budget");
                return;
            }
        }
        c.add_node(&[0]);
    }
    report(&c, n, "started", wall);
    let t = c.run_until_cond(Duration::from_secs(1), Duration::from_secs(1200), |c| c.converged());
    report(&c, n, if t.is_some() { "converged" } else { "NOT converged" }, wall);
    if t.is_none() {
        print_unseen(&c);
    }
    c.run_for(Duration::from_secs(steady));
    report(&c, n, "steady", wall);
}
