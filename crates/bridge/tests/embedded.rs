//! The bridge on its embedded defaults (the in-process log and SQLite), as
//! `rumor up` runs it: storing, history, forward, dead letters, restarts.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bridge::{BridgeConfig, Store};
use common::*;
use events::{ConsumerEvent, EventLog, MemoryLog, codec};

struct Embedded {
    log: MemoryLog,
    dir: std::path::PathBuf,
}

impl Embedded {
    fn new() -> Self {
        let dir = std::env::temp_dir().join(unique("rumor-bridge-test"));
        std::fs::create_dir_all(&dir).unwrap();
        Self {
            log: MemoryLog::new(),
            dir,
        }
    }

    fn config(&self) -> BridgeConfig {
        let mut cfg = BridgeConfig::embedded(&self.dir.join("bridge.db"), self.log.clone());
        cfg.http_bind = "127.0.0.1:0".parse().unwrap();
        cfg.batch.max_wait = Duration::from_millis(20);
        cfg.topics.partitions = 3;
        cfg
    }

    fn producer(&self) -> events::Producer {
        EventLog::Memory(self.log.clone()).producer().unwrap()
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn published_records_are_stored_once_and_served_in_conversation_order() {
    let env = Embedded::new();
    let b = bridge::start(env.config()).await.unwrap();
    let topic = env.config().topics.messages;
    let mut recs = Vec::new();
    for i in 0..5 {
        let m = inbound("conv-a", &format!("question {i}"));
        recs.push(reply(&m, &format!("answer {i}")));
        recs.insert(recs.len() - 1, m);
    }
    recs[9].error = Some(proto::events::Error {
        code: 13,
        message: "backend failed".into(),
    });
    recs[9].truncated = true;
    recs.push(inbound("conv-b", "other"));
    // At-least-once delivery: the same record twice is stored once.
    recs.push(recs[0].clone());
    let delivered = send_all(&env.producer(), &topic, &recs).await;
    let rows = wait_for_rows(b.store(), 11).await;
    let unique: Vec<(i32, i64)> = delivered[..11].iter().map(|d| (d.partition, d.offset)).collect();
    assert_exactly(&rows, &unique);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(b.stats().duplicates, 1, "{:?}", b.stats());

    let (status, body) = http(b.addr(), "GET", "/v1/conversations/conv-a/messages", None).await;
    assert_eq!(status, 200, "{body}");
    let h: bridge::api::History = serde_json::from_str(&body).unwrap();
    let got: Vec<(String, String)> = h
        .messages
        .iter()
        .map(|m| (m.kind().short_name().to_owned(), m.payload.clone()))
        .collect();
    let want: Vec<(String, String)> = (0..5)
        .flat_map(|i| {
            [
                ("inbound".into(), format!("question {i}")),
                ("reply".into(), format!("answer {i}")),
            ]
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(h.next, None);
    assert_eq!(h.messages[0].worker, "worker-1");
    let failed = &h.messages[9];
    assert_eq!(
        (failed.error.as_ref().map(|e| e.code), failed.truncated),
        (Some(13), true)
    );
    assert!(h.messages[..9].iter().all(|m| m.error.is_none() && !m.truncated));
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn history_pages_walk_every_message_once_and_bad_parameters_get_a_clear_400() {
    let env = Embedded::new();
    let b = bridge::start(env.config()).await.unwrap();
    let topic = env.config().topics.messages;
    let recs: Vec<_> = (0..7).map(|i| inbound("conv/with spaces", &i.to_string())).collect();
    send_all(&env.producer(), &topic, &recs).await;
    wait_for_rows(b.store(), 7).await;

    let mut after = String::new();
    let mut seen = Vec::new();
    loop {
        let path = format!("/v1/conversations/conv%2Fwith%20spaces/messages?limit=3&after={after}");
        let (status, body) = http(b.addr(), "GET", &path, None).await;
        assert_eq!(status, 200, "{body}");
        let h: bridge::api::History = serde_json::from_str(&body).unwrap();
        assert_eq!(h.key, "conv/with spaces");
        seen.extend(h.messages.iter().map(|m| m.payload.clone()));
        match h.next {
            Some(n) => after = n,
            None => break,
        }
    }
    assert_eq!(seen, (0..7).map(|i| i.to_string()).collect::<Vec<_>>());

    for (query, names) in [
        ("limit=0", "`limit`"),
        ("limit=abc", "`limit`"),
        ("limit=1001", "`limit`"),
        ("after=-4", "`after`"),
        ("after=xyz", "`after`"),
    ] {
        let (status, body) = http(b.addr(), "GET", &format!("/v1/conversations/c/messages?{query}"), None).await;
        assert_eq!(status, 400, "{query}: {body}");
        assert!(body.contains(names), "{query}: {body}");
    }
    let (status, body) = http(b.addr(), "GET", "/v1/conversations/nobody/messages", None).await;
    assert_eq!((status, body.contains("\"messages\":[]")), (200, true), "{body}");
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_forward_api_puts_a_forward_request_on_the_forward_topic() {
    let env = Embedded::new();
    let cfg = env.config();
    let b = bridge::start(cfg.clone()).await.unwrap();
    let (status, body) = http(
        b.addr(),
        "POST",
        "/v1/forward",
        Some(r#"{"key":"conv-f","payload":"from outside","source":"crm"}"#),
    )
    .await;
    assert_eq!(status, 202, "{body}");
    let fwd: bridge::api::Forwarded = serde_json::from_str(&body).unwrap();
    assert!(events::is_message_id(&fwd.id));
    let mut c = EventLog::Memory(env.log.clone())
        .consumer("forward-nodes", &[&cfg.topics.forward])
        .unwrap();
    let rec = loop {
        if let ConsumerEvent::Record(r) = c.recv().await.unwrap() {
            break r;
        }
    };
    let req = codec::decode_forward(&rec).unwrap();
    assert_eq!(
        (req.id.as_str(), req.key.as_str(), &req.payload[..], req.source.as_str()),
        (fwd.id.as_str(), "conv-f", &b"from outside"[..], "bridge:crm")
    );
    assert_eq!((rec.partition, rec.offset), (fwd.partition, fwd.offset));

    for (body, what) in [
        (r#"{"key":"","payload":"x"}"#, "`key`"),
        (r#"{"key":"k","payload":"x","id":"not-an-id"}"#, "`id`"),
        (r#"{"payload":"x"}"#, "key"),
        (r#"{"key":"a\u0000b","payload":"x"}"#, "`key`"),
        (
            r#"{"key":"k","payload":"x","timeout_ms":9223372036854775807}"#,
            "`timeout_ms`",
        ),
        (r#"{"key":"k","payload":"x","timeout_ms":0}"#, "`timeout_ms`"),
        (r#"{"key":"k","payload":"x","source":"two words"}"#, "`source`"),
        ("not json", "invalid forward request"),
    ] {
        let (status, text) = http(b.addr(), "POST", "/v1/forward", Some(body)).await;
        assert_eq!(status, 400, "{body}: {text}");
        assert!(text.contains(what), "{body}: {text}");
    }
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn the_same_message_id_in_two_conversations_is_stored_in_both() {
    let env = Embedded::new();
    let b = bridge::start(env.config()).await.unwrap();
    let topic = env.config().topics.messages;
    let a = inbound("conv-a", "for a");
    let other = proto::events::MessageRecord {
        key: "conv-b".into(),
        payload: "for b".into(),
        ..a.clone()
    };
    // A redelivery of the first is still stored once.
    send_all(&env.producer(), &topic, &[a.clone(), other, a]).await;
    let rows = wait_for_rows(b.store(), 2).await;
    for key in ["conv-a", "conv-b"] {
        let (status, body) = http(b.addr(), "GET", &format!("/v1/conversations/{key}/messages"), None).await;
        assert_eq!(status, 200, "{body}");
        let h: bridge::api::History = serde_json::from_str(&body).unwrap();
        assert_eq!(h.messages.len(), 1, "{key}: {h:?} (rows {rows:?})");
    }
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn undecodable_records_become_dead_letters_and_the_bridge_keeps_going() {
    let env = Embedded::new();
    let b = bridge::start(env.config()).await.unwrap();
    let topic = env.config().topics.messages;
    let producer = env.producer();
    send_all(&producer, &topic, &[inbound("k", "before")]).await;
    let bad = producer.send(&garbage(&topic, "k"), LIMIT).await.unwrap();
    let mut wrong_version = codec::message_record(&topic, &inbound("k", "v2"));
    wrong_version.headers[2].1 = "2".into();
    producer.send(&wrong_version, LIMIT).await.unwrap();
    send_all(&producer, &topic, &[inbound("k", "after")]).await;
    wait_for_rows(b.store(), 2).await;
    let dead = b.store().dead_letters().await.unwrap();
    assert_eq!(dead.len(), 2, "{dead:?}");
    assert_eq!((dead[0].partition, dead[0].offset), (bad.partition, bad.offset));
    assert_eq!(dead[0].raw, b"\xff\xfe not protobuf");
    assert!(dead[0].error.contains("decoding"), "{}", dead[0].error);
    assert!(dead[1].error.contains("schema-version"), "{}", dead[1].error);
    let (_, metrics) = http(b.addr(), "GET", "/metrics", None).await;
    assert!(metrics.contains("rumor_bridge_dead_letters_total 2"), "{metrics}");
    assert!(metrics.contains("rumor_bridge_consumer_lag{topic="), "{metrics}");
    assert_eq!(http(b.addr(), "GET", "/readyz", None).await.0, 200);

    // The same dead letters over HTTP, a page of one at a time.
    let (status, body) = http(b.addr(), "GET", "/v1/dead-letters?limit=1", None).await;
    assert_eq!(status, 200, "{body}");
    let page: bridge::api::DeadLetters = serde_json::from_str(&body).unwrap();
    assert_eq!(page.dead_letters.len(), 1);
    let first = &page.dead_letters[0];
    assert_eq!((first.partition, first.offset), (bad.partition, bad.offset));
    assert_eq!(
        first.raw_base64, "//4gbm90IHByb3RvYnVm",
        "the exact bytes: \\xff\\xfe not protobuf"
    );
    assert!(first.error.contains("decoding"), "{}", first.error);
    let next = page.next.expect("a second page");
    let (_, body) = http(b.addr(), "GET", &format!("/v1/dead-letters?limit=1&after={next}"), None).await;
    let page: bridge::api::DeadLetters = serde_json::from_str(&body).unwrap();
    assert!(page.dead_letters[0].error.contains("schema-version"));
    let (_, body) = http(
        b.addr(),
        "GET",
        &format!("/v1/dead-letters?after={}", page.dead_letters[0].cursor),
        None,
    )
    .await;
    let page: bridge::api::DeadLetters = serde_json::from_str(&body).unwrap();
    assert!(page.dead_letters.is_empty() && page.next.is_none(), "{page:?}");
    let (status, body) = http(b.addr(), "GET", "/v1/dead-letters?limit=0", None).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("`limit`"), "{body}");
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_crash_right_after_a_commit_and_a_restart_give_no_duplicates_and_no_gaps() {
    let env = Embedded::new();
    let topic = env.config().topics.messages;
    let producer = env.producer();
    let recs: Vec<_> = (0..60)
        .map(|i| inbound(&format!("c{}", i % 5), &i.to_string()))
        .collect();
    let delivered = send_all(&producer, &topic, &recs).await;
    let crashed = Arc::new(AtomicBool::new(false));
    let mut cfg = env.config();
    cfg.batch.max_records = 10;
    // Batches end by count, not by time: batch 2 is records 10 to 19.
    cfg.batch.max_wait = Duration::from_secs(5);
    let flag = crashed.clone();
    cfg.after_commit = Some(Arc::new(move |info| {
        // Dies after the second batch, before telling the log.
        info.batch == 2 && !flag.swap(true, Ordering::SeqCst)
    }));
    let b = bridge::start(cfg).await.unwrap();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while !b.consumer_stopped() {
        assert!(tokio::time::Instant::now() < deadline, "the crash hook never fired");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http(b.addr(), "GET", "/healthz", None).await.0, 503);
    let err = b.shutdown().await.unwrap_err();
    assert!(matches!(err, bridge::BridgeError::Crashed(2)), "{err}");
    let partial = Store::open(&env.config().database_url, 1).await.unwrap();
    assert_eq!(partial.message_sources().await.unwrap().len(), 20);
    partial.close().await;

    let b = bridge::start(env.config()).await.unwrap();
    let rows = wait_for_rows(b.store(), 60).await;
    assert_exactly(
        &rows,
        &delivered.iter().map(|d| (d.partition, d.offset)).collect::<Vec<_>>(),
    );
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn two_bridges_reading_every_partition_store_each_record_once() {
    // The memory log gives every consumer every partition: the stored
    // offsets alone keep the two bridges from storing a record twice.
    let env = Embedded::new();
    let topic = env.config().topics.messages;
    let mut cfg = env.config();
    cfg.batch.max_records = 7;
    let a = bridge::start(cfg.clone()).await.unwrap();
    let b = bridge::start(cfg).await.unwrap();
    let recs: Vec<_> = (0..200)
        .map(|i| inbound(&format!("c{}", i % 9), &i.to_string()))
        .collect();
    let delivered = send_all(&env.producer(), &topic, &recs).await;
    let rows = wait_for_rows(a.store(), 200).await;
    assert_exactly(
        &rows,
        &delivered.iter().map(|d| (d.partition, d.offset)).collect::<Vec<_>>(),
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(a.store().message_sources().await.unwrap().len(), 200);
    let (sa, sb) = (a.stats(), b.stats());
    assert_eq!(sa.duplicates + sb.duplicates, 0, "{sa:?} {sb:?}");
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_group_that_never_hands_out_its_partitions_is_read_alone_after_two_rejoins() {
    // The coordinator never forms the group, as a broker overloaded for
    // minutes once did: rejoining does not help, reading alone does.
    let env = Embedded::new();
    let mut cfg = env.config();
    cfg.stall_timeout = Some(bridge::MIN_STALL_TIMEOUT);
    env.log.set_group_stuck(&cfg.group_id, true);
    let topic = cfg.topics.messages.clone();
    let b = bridge::start(cfg).await.unwrap();
    let recs: Vec<_> = (0..30)
        .map(|i| inbound(&format!("c{}", i % 5), &i.to_string()))
        .collect();
    let delivered = send_all(&env.producer(), &topic, &recs).await;

    // Two rejoins a stall timeout apart, then reading alone: about three
    // and a half timeouts.
    let deadline = tokio::time::Instant::now() + bridge::MIN_STALL_TIMEOUT * 8;
    while b.store().message_sources().await.unwrap().len() < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not stored in time: {:?}",
            b.stats()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let rows = wait_for_rows(b.store(), 30).await;
    assert_exactly(
        &rows,
        &delivered.iter().map(|d| (d.partition, d.offset)).collect::<Vec<_>>(),
    );
    let stats = b.stats();
    assert_eq!((stats.group_rejoins, stats.reads_alone), (2, 1), "{stats:?}");
    let (status, metrics) = http(b.addr(), "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    assert!(metrics.contains("rumor_bridge_reading_alone 1"), "{metrics}");
    assert!(metrics.contains("rumor_bridge_reads_alone_total 1"), "{metrics}");
    b.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_database_schema_newer_than_the_binary_is_refused_naming_both_versions() {
    let env = Embedded::new();
    let url = env.config().database_url;
    let store = Store::open(&url, 1).await.unwrap();
    let binary = store.binary_schema_version();
    store.close().await;
    let pool = sqlx::SqlitePool::connect(&url).await.unwrap();
    sqlx::query(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99990101000000, 'from the future', TRUE, x'00', 0)",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;
    let err = bridge::start(env.config()).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains("99990101000000") && msg.contains(&binary.to_string()),
        "{msg}"
    );
    assert!(msg.contains("newer"), "{msg}");
}
