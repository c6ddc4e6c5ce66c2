//! Limits agree end to end: a node refuses to start when it would accept
//! messages its event log cannot store, and a record the log still refuses
//! for good is set aside without holding up the ones behind it.

use std::sync::Arc;
use std::time::Duration;

use events::{EventLog, MemoryLog, PublisherConfig, Topics};
use node::{NodeConfig, Role, Roles};
use proto::api::SendRequest;
use server::{EventsConfig, ServerConfig, StartError};
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(30);

fn config(log: &MemoryLog) -> ServerConfig {
    let mut c = NodeConfig::new("solo");
    c.gossip.membership = membership::Config::for_tests();
    c.roles = Roles::of(&[Role::Gateway, Role::Worker]);
    c.processor = Some(Arc::new(processors::Echo::default()));
    c.mesh = node::mesh::MeshConfig::for_tests();
    let mut s = ServerConfig::new(c);
    s.events = Some(EventsConfig {
        log: EventLog::Memory(log.clone()),
        topics: Topics::default(),
        create_topics: true,
        forward_group: "forward".into(),
        forward_stall_timeout: None,
        publisher: PublisherConfig::default(),
    });
    s
}

#[tokio::test]
async fn a_node_that_would_accept_messages_too_large_to_record_refuses_to_start() {
    let log = MemoryLog::new();
    let mut cfg = config(&log);
    cfg.node.mesh.max_envelope_bytes = 1024 * 1024;
    let err = server::start(cfg).await.expect_err("refused");
    assert!(
        matches!(
            err,
            StartError::Limits {
                setting: "mesh.max_envelope_bytes",
                ..
            }
        ),
        "{err}"
    );
    let text = err.to_string();
    assert!(
        text.contains("events.max_record_bytes") && text.contains("1048576"),
        "{text}"
    );
    // The defaults fit Kafka's default record size.
    server::start(config(&log))
        .await
        .expect("the defaults fit")
        .shutdown()
        .await;
}

#[tokio::test]
async fn records_the_log_refuses_for_good_are_set_aside_and_the_next_ones_are_published() {
    let log = MemoryLog::new();
    let s = server::start(config(&log)).await.unwrap();
    let node = s.node();
    timeout(LIMIT, async {
        while node.router().table().ring().is_empty() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .unwrap();
    // The broker turns out to take less than the node was told.
    log.set_max_record_bytes(10_000);
    let admin = node::client::AdminClient::new(node.addrs().admin.to_string());
    for (key, bytes) in [("big", 20_000), ("small", 10)] {
        let req = SendRequest {
            key: key.into(),
            payload: "x".repeat(bytes),
            ..Default::default()
        };
        let lines = admin.send(&req, |_| {}).await.unwrap();
        assert!(lines.last().unwrap().last, "{key} answered");
    }
    let messages = Topics::default().messages;
    timeout(LIMIT, async {
        while log.records(&messages).len() < 2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("the small message and its reply reach the log");
    let kept: Vec<String> = log
        .records(&messages)
        .iter()
        .map(|r| String::from_utf8_lossy(r.key.as_deref().unwrap()).into_owned())
        .collect();
    assert_eq!(kept, ["small", "small"]);
    let dead = node.dead_letters().page(0, 10);
    assert_eq!(dead.len(), 2, "the big message's inbound and reply records: {dead:?}");
    assert!(
        dead.iter().all(|d| d.error.contains("over the log's limit")),
        "{dead:?}"
    );
    assert!(
        admin.ready().await.unwrap(),
        "a set-aside record does not make the node unready"
    );
    let stopped = s.shutdown().await;
    assert_eq!(stopped.unpublished, 0);
}
