//! `rumor node`, `status`, `send` and `gossip`: one node, and the admin
//! client commands that talk to any node.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use node::client::AdminClient;
use proto::api::{KeyOperation, SendRequest};
use server::ServerConfig;

pub(crate) use server::terminated;

/// `rumor node`: runs one node until Ctrl-C or SIGTERM (or, with
/// `exit_on_eof`, the end of stdin), then leaves and drains. The first stdout
/// line says where it listens (tests read it).
pub(crate) async fn node(config: ServerConfig, exit_on_eof: bool) -> anyhow::Result<()> {
    let roles = config.node.roles;
    let server = server::start(config).await.context("starting the node")?;
    let node = server.node();
    let a = node.addrs();
    let edge = server.edge().map(|e| format!(" edge={}", e.addr())).unwrap_or_default();
    println!(
        "node {} listening gossip={} mesh={} admin={}{edge} roles={roles}",
        node.name(),
        a.gossip,
        a.mesh,
        a.admin
    );
    let _ = std::io::stdout().flush();
    let waited = async {
        if node.wait_joined().await.is_ok() {
            println!("node {} joined", node.name());
            let _ = std::io::stdout().flush();
        }
        tokio::select! {
            () = terminated() => {}
            () = stdin_ends(), if exit_on_eof => {}
        }
    };
    let failure = tokio::select! {
        () = waited => None,
        why = node.failed() => Some(why),
    };
    println!("node {} leaving", node.name());
    let stopped = server.shutdown().await;
    if stopped.unpublished > 0 {
        tracing::error!(unpublished = stopped.unpublished, "records still unpublished at exit");
    }
    println!(
        "node stopped (leave {}, drained {}, abandoned {}, unpublished {})",
        if stopped.node.left { "spread" } else { "not confirmed" },
        stopped.node.drained,
        stopped.node.abandoned,
        stopped.unpublished
    );
    match failure {
        // A non-zero exit, so that the supervisor restarts the process.
        Some(why) => bail!("the node failed: {why}"),
        None => Ok(()),
    }
}

/// Completes when stdin reaches its end (or fails).
async fn stdin_ends() {
    use tokio::io::AsyncReadExt as _;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

/// `rumor status`: the members table and the ring as one node sees them.
pub(crate) async fn status(admin: &str) -> anyhow::Result<()> {
    let c = AdminClient::new(admin);
    let members = c.members().await?;
    let ring = c.ring().await?;
    println!(
        "{} members as seen by {}{}, view checksum {}",
        members.members.len(),
        members.node,
        if members.joined { "" } else { " (not joined yet)" },
        members.checksum
    );
    println!(
        "  {:<14} {:<22} {:<8} {:>5} {:<16} {:>8}  {:<22} admin",
        "name", "gossip", "status", "inc", "roles", "capacity", "mesh"
    );
    for m in &members.members {
        let svc = |k: &str| m.services.get(k).map_or("-", String::as_str).to_owned();
        println!(
            "  {:<14} {:<22} {:<8} {:>5} {:<16} {:>8}  {:<22} {}",
            m.name,
            m.addr,
            m.status().short_name(),
            m.incarnation,
            m.roles.join(","),
            m.capacity,
            svc("mesh"),
            svc("admin")
        );
    }
    println!("ring checksum {} over {} workers", ring.checksum, ring.workers.len());
    for w in &ring.workers {
        println!(
            "  {:<14} {:<22} capacity {:>5}  owns {:>5.1}% of sampled keys",
            w.name,
            w.mesh,
            w.capacity,
            w.share * 100.0
        );
    }
    Ok(())
}

/// `rumor send`: prints the reply as it streams, then who answered.
pub(crate) async fn send(admin: &str, key: String, message: String, timeout: Duration) -> anyhow::Result<()> {
    let c = AdminClient::new(admin).with_timeout(timeout + Duration::from_secs(1));
    let req = SendRequest {
        key,
        payload: message,
        id: None,
        timeout_ms: Some(timeout.as_millis() as u64),
        source: None,
    };
    let started = Instant::now();
    let mut out = std::io::stdout();
    let lines = c
        .send(&req, |l| {
            let _ = out.write_all(l.data.as_bytes());
            let _ = out.flush();
        })
        .await?;
    println!();
    let last = lines.last().expect("send returns at least the terminal line");
    if let Some(e) = &last.error {
        bail!("message {} failed: {} ({}): {}", last.id, e.name, e.code, e.message);
    }
    println!(
        "answered by {} in {:.1} ms: message {}, {} chunks{}",
        last.worker,
        started.elapsed().as_secs_f64() * 1e3,
        last.id,
        lines.len(),
        if last.replayed {
            ", replayed from the de-duplication window"
        } else {
            ""
        }
    );
    Ok(())
}

/// `rumor gossip`: creates a gossip message at one node and prints when each
/// live member received it, polling their admin endpoints.
pub(crate) async fn gossip(admin: &str, message: String, wait: Duration) -> anyhow::Result<()> {
    let c = AdminClient::new(admin);
    let members = c.members().await?;
    let created = c.gossip(&message).await?;
    println!(
        "gossip message {}#{} created by {}",
        created.origin, created.seq, created.origin
    );
    let peers: BTreeMap<String, AdminClient> = members
        .members
        .iter()
        .filter(|m| m.status().is_live())
        .filter_map(|m| Some((m.name.clone(), AdminClient::new(m.services.get("admin")?.clone()))))
        .collect();
    let mut pending: Vec<String> = peers.keys().cloned().collect();
    let deadline = Instant::now() + wait;
    let mut seen: Vec<(u64, String)> = Vec::new();
    while !pending.is_empty() && Instant::now() < deadline {
        let mut still = Vec::new();
        for name in pending {
            match peers[&name].gossip_receipt(&created.origin, created.seq).await {
                Ok(Some(r)) => seen.push((r.received_unix_ms, name)),
                Ok(None) | Err(_) => still.push(name),
            }
        }
        pending = still;
        if !pending.is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    seen.sort();
    for (at, name) in &seen {
        println!(
            "  {:<14} has it  +{} ms",
            name,
            at.saturating_sub(created.created_unix_ms)
        );
    }
    for name in &pending {
        println!("  {name:<14} not received within {} ms", wait.as_millis());
    }
    println!("{}/{} live members have it", seen.len(), peers.len());
    Ok(())
}

/// `rumor keys`: one step of a gossip key rotation, on one node or on every
/// live member (through their advertised admin addresses).
pub(crate) async fn keys(admin: &str, op: Option<(KeyOperation, String)>, all: bool) -> anyhow::Result<()> {
    let c = AdminClient::new(admin);
    let targets: Vec<(String, AdminClient)> = if all {
        c.members()
            .await?
            .members
            .into_iter()
            .filter(|m| m.status().is_live())
            .filter_map(|m| {
                let a = m.services.get("admin")?.clone();
                Some((m.name, AdminClient::new(a)))
            })
            .collect()
    } else {
        vec![(admin.to_owned(), c)]
    };
    let mut failed = 0;
    for (name, t) in &targets {
        let r = match &op {
            Some((op, key)) => t.change_key(*op, key).await,
            None => t.keys().await,
        };
        match r {
            Ok(ids) => println!("  {name:<14} keys {} (primary first)", ids.keys.join(" ")),
            Err(e) => {
                failed += 1;
                println!("  {name:<14} failed: {e}");
            }
        }
    }
    if failed > 0 {
        bail!("{failed} of {} nodes failed", targets.len());
    }
    Ok(())
}
