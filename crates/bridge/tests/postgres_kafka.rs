//! The bridge against the real services: PostgreSQL at 127.0.0.1:5432 (a
//! fresh database per test, dropped after it) and a Kafka-protocol broker
//! (tansu) at 127.0.0.1:9092 (fresh topics and group per test). Both are
//! started by `scripts/test`; without them these tests fail, naming what is
//! missing.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bridge::{BridgeConfig, Store};
use common::*;
use events::{ConsumerEvent, Producer, TopicPartition, codec};

/// A bridge config on `db` and the broker with its own topics and group.
async fn setup(db: &TestDb) -> (BridgeConfig, Producer) {
    let log = kafka();
    let mut cfg = BridgeConfig::new(&db.url, log.clone());
    cfg.topics.messages = unique("messages");
    cfg.topics.forward = unique("forward");
    cfg.topics.partitions = 3;
    cfg.group_id = unique("bridge");
    cfg.http_bind = "127.0.0.1:0".parse().unwrap();
    cfg.batch.max_wait = Duration::from_millis(20);
    cfg.retry.backoff = Duration::from_millis(20);
    log.create_topics(&cfg.topics.specs()).await.expect("creating topics");
    (cfg, log.producer().unwrap())
}

fn positions(delivered: &[events::Delivered]) -> Vec<(i32, i64)> {
    delivered.iter().map(|d| (d.partition, d.offset)).collect()
}

fn conversation(n: usize, keys: usize) -> Vec<proto::events::MessageRecord> {
    (0..n)
        .map(|i| inbound(&format!("conv-{}", i % keys), &format!("message {i}")))
        .collect()
}

#[tokio::test]
async fn stored_rows_and_offsets_match_the_topic_contents() {
    let db = TestDb::create().await;
    let (cfg, producer) = setup(&db).await;
    let b = bridge::start(cfg.clone()).await.unwrap();
    let mut recs = Vec::new();
    for m in conversation(40, 7) {
        recs.push(reply(&m, "ok"));
        recs.insert(recs.len() - 1, m);
    }
    let delivered = send_all(&producer, &cfg.topics.messages, &recs).await;
    let rows = wait_for_rows(b.store(), 80).await;
    assert_exactly(&rows, &positions(&delivered));

    let mut high: BTreeMap<TopicPartition, i64> = BTreeMap::new();
    for d in &delivered {
        let e = high
            .entry(TopicPartition::new(&cfg.topics.messages, d.partition))
            .or_default();
        *e = (*e).max(d.offset + 1);
    }
    assert_eq!(b.store().offsets(&cfg.group_id).await.unwrap(), high);

    let (status, body) = http(b.addr(), "GET", "/v1/conversations/conv-3/messages?limit=1000", None).await;
    assert_eq!(status, 200, "{body}");
    let h: bridge::api::History = serde_json::from_str(&body).unwrap();
    let kinds: Vec<&str> = h.messages.iter().map(|m| m.kind().short_name()).collect();
    assert_eq!(kinds.len(), 12, "{body}");
    assert!(kinds.chunks(2).all(|p| p == ["inbound", "reply"]), "{kinds:?}");
    let (_, metrics) = http(b.addr(), "GET", "/metrics", None).await;
    assert!(metrics.contains("rumor_bridge_rows_inserted_total 80"), "{metrics}");
    assert!(metrics.contains("rumor_bridge_consumer_lag{topic="), "{metrics}");
    assert_eq!(http(b.addr(), "GET", "/readyz", None).await.0, 200);
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_crash_right_after_a_commit_and_a_restart_give_no_duplicates_and_no_gaps() {
    let db = TestDb::create().await;
    let (mut cfg, producer) = setup(&db).await;
    let delivered = send_all(&producer, &cfg.topics.messages, &conversation(60, 5)).await;
    let crashed = Arc::new(AtomicBool::new(false));
    let flag = crashed.clone();
    let mut first = cfg.clone();
    first.batch.max_records = 10;
    first.batch.max_wait = Duration::from_secs(5);
    first.after_commit = Some(Arc::new(move |info| {
        info.batch == 2 && !flag.swap(true, Ordering::SeqCst)
    }));
    let b = bridge::start(first).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !b.consumer_stopped() {
        assert!(tokio::time::Instant::now() < deadline, "the crash hook never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let err = b.shutdown().await.unwrap_err();
    assert!(matches!(err, bridge::BridgeError::Crashed(2)), "{err}");
    let partial = Store::open(&db.url, 1).await.unwrap();
    assert_eq!(partial.message_sources().await.unwrap().len(), 20);
    partial.close().await;

    cfg.batch.max_records = 7;
    let b = bridge::start(cfg).await.unwrap();
    let rows = wait_for_rows(b.store(), 60).await;
    assert_exactly(&rows, &positions(&delivered));
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn poison_records_land_in_dead_letters_and_the_bridge_keeps_going() {
    let db = TestDb::create().await;
    let (cfg, producer) = setup(&db).await;
    let topic = cfg.topics.messages.clone();
    let b = bridge::start(cfg).await.unwrap();
    let key = "poisoned";
    let mut good = send_all(&producer, &topic, &[inbound(key, "before")]).await;
    // Undecodable: straight to the dead-letter table.
    let garbage_at = producer.send(&garbage(&topic, key), LIMIT).await.unwrap();
    // Decodes, but PostgreSQL refuses a NUL in text: after the retries it is
    // stored row by row and this row becomes a dead letter.
    let unstorable = inbound(key, "nul in the worker name");
    let unstorable = proto::events::MessageRecord {
        worker: "bad\0worker".into(),
        ..unstorable
    };
    let unstorable_at = producer
        .send(&codec::message_record(&topic, &unstorable), LIMIT)
        .await
        .unwrap();
    good.extend(send_all(&producer, &topic, &[inbound(key, "after")]).await);
    let rows = wait_for_rows(b.store(), 2).await;
    assert_exactly(&rows, &positions(&good));
    let deadline = tokio::time::Instant::now() + LIMIT;
    let dead = loop {
        let dead = b.store().dead_letters().await.unwrap();
        if dead.len() >= 2 || tokio::time::Instant::now() > deadline {
            break dead;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let at: Vec<(i32, i64)> = dead.iter().map(|d| (d.partition, d.offset)).collect();
    assert_eq!(at, positions(&[garbage_at, unstorable_at]), "{dead:#?}");
    assert_eq!(dead[0].raw, b"\xff\xfe not protobuf");
    assert!(dead[0].error.contains("decoding"), "{}", dead[0].error);
    assert!(dead[1].error.contains(&unstorable.id), "{}", dead[1].error);
    assert_eq!(dead[1].raw, codec::message_record(&topic, &unstorable).value.to_vec());
    assert!(b.stats().db_errors >= 1, "{:?}", b.stats());
    // Still consuming.
    let more = send_all(&producer, &topic, &[inbound(key, "later")]).await;
    wait_for_rows(b.store(), 3).await;
    let _ = more;
    assert_eq!(http(b.addr(), "GET", "/readyz", None).await.0, 200);
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_bridges_in_one_consumer_group_store_every_record_once() {
    let db = TestDb::create().await;
    let (mut cfg, producer) = setup(&db).await;
    cfg.batch.max_records = 9;
    let a = bridge::start(cfg.clone()).await.unwrap();
    let mut delivered = send_all(&producer, &cfg.topics.messages, &conversation(100, 11)).await;
    let b = bridge::start(cfg.clone()).await.unwrap();
    // Wait for the rebalance that gives B its share (about a second on tansu).
    let deadline = tokio::time::Instant::now() + LIMIT;
    while b.assigned_partitions().is_empty() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the second bridge never got a partition"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    delivered.extend(send_all(&producer, &cfg.topics.messages, &conversation(100, 11)).await);
    let rows = wait_for_rows(a.store(), 200).await;
    assert_exactly(&rows, &positions(&delivered));
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.duplicates + sb.duplicates, 0, "{sa:?} {sb:?}");
    assert!(sb.records > 0, "the second bridge stored nothing: {sb:?}");
    eprintln!(
        "one group: a read {} with {:?}, b read {} with {:?}",
        sa.records,
        a.assigned_partitions(),
        sb.records,
        b.assigned_partitions()
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// tansu 0.6.0's group coordinator can hand one partition to two members;
/// here two bridges in different log consumer groups but one offsets group
/// both read every partition, which is that situation made certain.
#[tokio::test]
async fn two_bridges_forced_onto_the_same_partitions_store_every_record_once() {
    let db = TestDb::create().await;
    let (mut cfg, producer) = setup(&db).await;
    cfg.batch.max_records = 5;
    let mut a_cfg = cfg.clone();
    a_cfg.consumer_group = Some(unique("log-group-a"));
    let mut b_cfg = cfg.clone();
    b_cfg.consumer_group = Some(unique("log-group-b"));
    let a = bridge::start(a_cfg).await.unwrap();
    let b = bridge::start(b_cfg).await.unwrap();
    let delivered = send_all(&producer, &cfg.topics.messages, &conversation(150, 13)).await;
    let rows = wait_for_rows(a.store(), 150).await;
    assert_exactly(&rows, &positions(&delivered));
    // Both are still consuming: more records are stored once too.
    let more = send_all(&producer, &cfg.topics.messages, &conversation(30, 13)).await;
    let rows = wait_for_rows(a.store(), 180).await;
    assert_exactly(&rows, &positions(&[delivered, more].concat()));
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.duplicates + sb.duplicates, 0, "{sa:?} {sb:?}");
    eprintln!(
        "fence conflicts: a {} b {}; records read: a {} b {}",
        sa.fence_conflicts, sb.fence_conflicts, sa.records, sb.records
    );
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_forward_api_produces_to_the_forward_topic() {
    let db = TestDb::create().await;
    let (cfg, _) = setup(&db).await;
    let b = bridge::start(cfg.clone()).await.unwrap();
    let id = events::new_message_id();
    let body = format!(r#"{{"key":"conv-x","payload":"injected","id":"{id}","timeout_ms":2500}}"#);
    let (status, text) = http(b.addr(), "POST", "/v1/forward", Some(&body)).await;
    assert_eq!(status, 202, "{text}");
    let fwd: bridge::api::Forwarded = serde_json::from_str(&text).unwrap();
    assert_eq!(
        (fwd.id.as_str(), fwd.topic.as_str()),
        (id.as_str(), cfg.topics.forward.as_str())
    );

    let mut c = kafka()
        .consumer(&unique("forward-nodes"), &[&cfg.topics.forward])
        .unwrap();
    let rec = loop {
        match tokio::time::timeout(LIMIT, c.recv())
            .await
            .expect("no forward record")
            .unwrap()
        {
            ConsumerEvent::Record(r) => break r,
            _ => continue,
        }
    };
    assert_eq!((rec.partition, rec.offset), (fwd.partition, fwd.offset));
    assert_eq!(
        rec.header(codec::HEADER_SCHEMA),
        Some(codec::FORWARD_REQUEST.as_bytes())
    );
    let req = codec::decode_forward(&rec).unwrap();
    assert_eq!(
        (req.id, req.key, req.payload.to_vec(), req.source, req.timeout_ms),
        (id, "conv-x".into(), b"injected".to_vec(), "bridge".into(), 2500)
    );
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_postgres_schema_newer_than_the_binary_is_refused_naming_both_versions() {
    let db = TestDb::create().await;
    let store = Store::open(&db.url, 1).await.unwrap();
    let binary = store.binary_schema_version();
    store.close().await;
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', TRUE, $1, 0)",
    )
    .bind(vec![0u8])
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = Store::open(&db.url, 1).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("99990101000000") && msg.contains(&binary.to_string()),
        "{msg}"
    );
}
