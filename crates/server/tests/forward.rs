//! The forward role on the in-process event log: records the mesh can never
//! take are set aside with their reasons and the ones behind them go on; a
//! record the mesh cannot take yet waits for it instead of being dropped.

use std::sync::Arc;
use std::time::Duration;

use events::{EventLog, MemoryLog, PublisherConfig, Topics, codec};
use node::{NodeConfig, Role, Roles};
use proto::events::ForwardRequest;
use server::{EventsConfig, Server, ServerConfig};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

fn events(log: &MemoryLog) -> EventsConfig {
    EventsConfig {
        log: EventLog::Memory(log.clone()),
        topics: Topics::default(),
        create_topics: true,
        forward_group: "forward".into(),
        forward_stall_timeout: None,
        publisher: PublisherConfig::default(),
    }
}

async fn start(name: &str, roles: &[Role], log: &MemoryLog, seed: Option<&Server>) -> Server {
    let mut c = NodeConfig::new(name);
    c.gossip.membership = membership::Config::for_tests();
    c.gossip.seeds = seed.map(|s| vec![s.node().addrs().gossip]).unwrap_or_default();
    c.roles = Roles::of(roles);
    if roles.contains(&Role::Worker) {
        c.processor = Some(Arc::new(processors::Echo::default()));
    }
    c.mesh = node::mesh::MeshConfig::for_tests();
    let mut s = ServerConfig::new(c);
    s.events = Some(events(log));
    server::start(s).await.unwrap()
}

fn request(key: &str, timeout_ms: u64) -> ForwardRequest {
    ForwardRequest {
        id: node::mesh::new_message_id(),
        key: key.into(),
        payload: "from outside".into(),
        source: "bridge".into(),
        created_unix_ms: 1,
        timeout_ms,
        traceparent: String::new(),
    }
}

async fn until(what: &str, mut done: impl FnMut() -> bool) {
    timeout(LIMIT, async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{what} did not happen within {LIMIT:?}"));
}

#[tokio::test]
async fn records_that_can_never_be_routed_are_set_aside_and_the_ones_behind_them_go_on() {
    let log = MemoryLog::new();
    let s = start("fw", &[Role::Forward, Role::Worker], &log, None).await;
    until("the node sees itself", || !s.node().router().table().ring().is_empty()).await;
    let topic = Topics::default().forward;
    let mut garbage = codec::forward_request(&topic, &request("k", 0));
    garbage.value = "not protobuf at all".into();
    let mut bad_id = request("k", 0);
    bad_id.id = "not-an-id".into();
    for rec in [
        codec::forward_request(&topic, &request("k", 9_223_372_036_854_775_807)),
        codec::forward_request(&topic, &request("a\0b", 0)),
        codec::forward_request(&topic, &bad_id),
        garbage,
        codec::forward_request(&topic, &request("k", 2_000)),
    ] {
        log.append(&rec);
    }
    until("the good record to be answered", || {
        s.forward_stats().unwrap().routed == 1
    })
    .await;
    let stats = s.forward_stats().unwrap();
    assert_eq!((stats.set_aside, stats.restarts), (4, 0), "{stats:?}");
    let reasons: Vec<String> = s
        .node()
        .dead_letters()
        .page(0, 10)
        .into_iter()
        .map(|d| d.error)
        .collect();
    for field in ["`timeout_ms`", "`key`", "`id`", "undecodable"] {
        assert!(reasons.iter().any(|r| r.contains(field)), "{field} in {reasons:?}");
    }
    // Every record is committed past, the set-aside ones included.
    until("every record committed", || {
        log.records(&topic)
            .iter()
            .all(|rec| log.committed("forward", &rec.tp()).is_some_and(|c| c > rec.offset))
    })
    .await;
    s.shutdown().await;
}

#[tokio::test]
async fn a_record_the_mesh_cannot_take_yet_waits_for_a_worker_instead_of_being_dropped() {
    let log = MemoryLog::new();
    let fw = start("fw", &[Role::Forward], &log, None).await;
    log.append(&codec::forward_request(
        &Topics::default().forward,
        &request("k", 2_000),
    ));
    until("a retry", || fw.forward_stats().unwrap().retries > 0).await;
    assert_eq!(fw.forward_stats().unwrap().routed, 0);
    let w = start("w", &[Role::Worker], &log, Some(&fw)).await;
    until("the waiting record to be answered", || {
        fw.forward_stats().unwrap().routed == 1
    })
    .await;
    assert_eq!(fw.forward_stats().unwrap().set_aside, 0);
    w.shutdown().await;
    fw.shutdown().await;
}
