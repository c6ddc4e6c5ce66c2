//! `rumor up`: a whole local cluster in one process, on loopback.
//!
//! Today that is the gossip layer: a gateway, a forward node and workers form
//! an encrypted gossip cluster on 127.0.0.1, print their membership, pass a
//! gossip message from the forward node to the workers, and then report every
//! membership change until Ctrl-C, when they leave gracefully.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::Context;
use membership::{Event, Meta};
use node::crypto::Key;
use node::gossip::{self, GossipConfig, GossipHandle};

/// What `rumor up` starts.
#[derive(Debug, Clone)]
pub(crate) struct UpOptions {
    pub(crate) workers: usize,
    pub(crate) base_port: u16,
    pub(crate) exit_after: Option<Duration>,
}

fn roles_of(name: &str) -> Meta {
    let role = name.split('-').next().unwrap_or(name).to_owned();
    let capacity = if role == "worker" { 64 } else { 0 };
    Meta { roles: vec![role], capacity, ..Meta::default() }
}

pub(crate) async fn run(opts: UpOptions) -> anyhow::Result<()> {
    let mut names = vec!["gateway-1".to_owned(), "forward-1".to_owned()];
    names.extend((1..=opts.workers).map(|i| format!("worker-{i}")));
    // One generated key for the whole local cluster: gossip is encrypted even on a laptop.
    let key = Key::generate().to_base64();
    let mut nodes: Vec<GossipHandle> = Vec::new();
    let started = Instant::now();
    for (i, name) in names.iter().enumerate() {
        let port = if opts.base_port == 0 { 0 } else { opts.base_port + i as u16 };
        let mut cfg = GossipConfig::new(name.clone(), SocketAddr::from(([127, 0, 0, 1], port)));
        cfg.keys = vec![key.clone()];
        cfg.meta = roles_of(name);
        cfg.seeds = nodes.first().map(|n| vec![n.addr()]).unwrap_or_default();
        let handle = gossip::spawn(cfg).await.with_context(|| format!("starting {name}"))?;
        nodes.push(handle);
    }
    for n in &nodes {
        n.wait_joined().await.context("joining")?;
    }
    let total = nodes.len();
    let deadline = Instant::now() + Duration::from_secs(10);
    while nodes.iter().any(|n| n.view().borrow().live().count() < total) {
        anyhow::ensure!(Instant::now() < deadline, "the local cluster did not converge within 10 s");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("rumor: {total} nodes formed one gossip cluster in {} ms (AES-256-GCM, generated key)", started.elapsed().as_millis());
    println!();
    println!("  {:<12} {:<22} {:<10} {:<9} capacity", "node", "gossip (udp+tcp)", "role", "status");
    let view = nodes[0].view().borrow().clone();
    for m in view.live() {
        println!("  {:<12} {:<22} {:<10} {:<9} {}", m.name, m.addr, m.meta.roles.join(","), format!("{:?}", m.status), m.meta.capacity);
    }
    println!();

    // The origin notes' first test: a gossip message from the forward node to the workers.
    let mut receivers: Vec<_> = nodes.iter().map(|n| n.events()).collect();
    let sent = Instant::now();
    let (origin, seq) = nodes[1].broadcast(membership::Bytes::from_static(b"hello from forward-1")).await.context("broadcast")?;
    let mut arrived: BTreeMap<String, Duration> = BTreeMap::new();
    for (n, rx) in nodes.iter().zip(receivers.iter_mut()).skip(2) {
        let wait = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Ok(Event::UserMessage { origin: o, seq: s, .. }) if o == origin && s == seq => return true,
                    Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
                    Err(_) => return false,
                }
            }
        });
        if wait.await.unwrap_or(false) {
            arrived.insert(n.name().to_owned(), sent.elapsed());
        }
    }
    println!("gossip message {origin}#{seq} from forward-1:");
    for (name, t) in &arrived {
        println!("  reached {name:<10} within {:.1} ms", t.as_secs_f64() * 1e3);
    }
    println!();
    println!("running; membership changes follow. Ctrl-C leaves the cluster gracefully.");

    let mut events = nodes[0].events();
    let watch = async {
        loop {
            match events.recv().await {
                Ok(Event::MemberUp(m)) => println!("up: {} at {}", m.name, m.addr),
                Ok(Event::MemberDown { name, left }) => println!("{}: {name}", if left { "left" } else { "failed" }),
                Ok(Event::MemberSuspect { name, .. }) => println!("suspect: {name}"),
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(_) => break,
            }
        }
    };
    let stop = async {
        match opts.exit_after {
            Some(d) => tokio::time::sleep(d).await,
            None => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    };
    tokio::select! {
        () = watch => {}
        () = stop => {}
    }
    println!("leaving...");
    for n in nodes.iter().rev() {
        let out = n.leave(Duration::from_secs(2)).await.context("leave")?;
        let _ = out;
        n.shutdown().await.ok();
    }
    println!("stopped");
    Ok(())
}
