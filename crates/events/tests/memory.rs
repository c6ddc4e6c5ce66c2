//! The in-process log and the publisher, without any broker.

use std::collections::HashSet;
use std::time::Duration;

use events::{
    ConsumerEvent, EventLog, KafkaConfig, MemoryLog, OutRecord, PublishError, Publisher, PublisherConfig, SeekTo,
    TopicPartition, TopicSpec,
};
use proto::bytes::Bytes;
use tokio::time::timeout;

const LIMIT: Duration = Duration::from_secs(10);

fn rec(topic: &str, key: &str, value: &str) -> OutRecord {
    OutRecord {
        topic: topic.into(),
        key: key.into(),
        value: Bytes::copy_from_slice(value.as_bytes()),
        headers: vec![("h".into(), Bytes::from_static(b"v"))],
    }
}

async fn next_record(c: &mut events::Consumer) -> events::Record {
    match timeout(LIMIT, c.recv())
        .await
        .expect("no record in time")
        .expect("recv failed")
    {
        ConsumerEvent::Record(r) => r,
        other => panic!("expected a record, got {other:?}"),
    }
}

#[tokio::test]
async fn appends_get_consecutive_offsets_and_one_key_stays_on_one_partition() {
    let log = MemoryLog::new();
    log.create_topic("t", 3);
    let first = log.append(&rec("t", "conv", "a"));
    let second = log.append(&rec("t", "conv", "b"));
    assert_eq!(first.partition, second.partition);
    assert_eq!(second.offset, first.offset + 1);
    let tp = TopicPartition::new("t", first.partition);
    assert_eq!(log.high_watermark(&tp), Some(2));
    let read = log.read(&tp, 1).unwrap();
    assert_eq!(read.value, Bytes::from_static(b"b"));
    assert_eq!(read.header("h"), Some(&b"v"[..]));
    assert_eq!(read.key.as_deref(), Some(&b"conv"[..]));
}

#[tokio::test]
async fn a_consumer_is_assigned_every_partition_then_reads_each_partition_in_order() {
    let log = MemoryLog::new();
    let el = EventLog::Memory(log.clone());
    el.create_topics(&[TopicSpec {
        name: "t".into(),
        partitions: 4,
        replication: 1,
    }])
    .await
    .unwrap();
    for i in 0..40 {
        log.append(&rec("t", &format!("k{}", i % 7), &i.to_string()));
    }
    let mut c = el.consumer("g", &["t"]).unwrap();
    let ConsumerEvent::Assigned(tps) = c.recv().await.unwrap() else {
        panic!("no assignment first")
    };
    assert_eq!(tps.len(), 4);
    let mut last: std::collections::HashMap<i32, i64> = Default::default();
    let mut seen = HashSet::new();
    for _ in 0..40 {
        let r = next_record(&mut c).await;
        if let Some(prev) = last.insert(r.partition, r.offset) {
            assert_eq!(r.offset, prev + 1, "partition {} out of order", r.partition);
        }
        seen.insert(String::from_utf8(r.value.to_vec()).unwrap());
    }
    assert_eq!(seen.len(), 40);
}

#[tokio::test]
async fn a_waiting_consumer_wakes_up_on_append() {
    let log = MemoryLog::new();
    let mut c = EventLog::Memory(log.clone()).consumer("g", &["t"]).unwrap();
    assert!(matches!(c.recv().await.unwrap(), ConsumerEvent::Assigned(_)));
    let waiter = tokio::spawn(async move { next_record(&mut c).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    log.append(&rec("t", "k", "late"));
    let r = timeout(LIMIT, waiter).await.unwrap().unwrap();
    assert_eq!(r.value, Bytes::from_static(b"late"));
}

#[tokio::test]
async fn seek_rereads_and_a_new_consumer_starts_at_the_committed_offset() {
    let log = MemoryLog::new();
    log.create_topic("t", 1);
    for i in 0..5 {
        log.append(&rec("t", "k", &i.to_string()));
    }
    let el = EventLog::Memory(log.clone());
    let tp = TopicPartition::new("t", 0);
    let mut c = el.consumer("g", &["t"]).unwrap();
    c.recv().await.unwrap();
    for want in 0..5 {
        assert_eq!(next_record(&mut c).await.offset, want);
    }
    c.seek(&tp, SeekTo::Offset(2)).await.unwrap();
    assert_eq!(next_record(&mut c).await.offset, 2);
    c.commit(&[(tp.clone(), 3)]).unwrap();
    assert_eq!(log.committed("g", &tp), Some(3));
    assert_eq!(c.watermarks(&tp).await.unwrap(), (0, 5));
    let mut again = el.consumer("g", &["t"]).unwrap();
    again.recv().await.unwrap();
    assert_eq!(next_record(&mut again).await.offset, 3);
    let unknown = TopicPartition::new("nope", 0);
    assert!(c.seek(&unknown, SeekTo::Beginning).await.is_err());
}

#[tokio::test]
async fn a_consumer_that_rejoins_is_assigned_again_from_the_committed_offsets() {
    let log = MemoryLog::new();
    log.create_topic("t", 2);
    for i in 0..6 {
        log.append(&rec("t", &format!("k{i}"), &i.to_string()));
    }
    let el = EventLog::Memory(log.clone());
    let mut c = el.consumer("g", &["t"]).unwrap();
    assert!(matches!(c.recv().await.unwrap(), ConsumerEvent::Assigned(_)));
    let first = next_record(&mut c).await;
    c.commit(&[(first.tp(), first.offset + 1)]).unwrap();
    c.rejoin().await.unwrap();
    let ConsumerEvent::Assigned(tps) = c.recv().await.unwrap() else {
        panic!("no assignment after the rejoin")
    };
    let parts = c.watermark_reader().partitions("t").await.unwrap();
    assert_eq!(tps, parts);
    assert_eq!(parts.len(), 2);
    // Every record but the committed one is read again.
    let mut again = HashSet::new();
    for _ in 0..5 {
        again.insert(next_record(&mut c).await.value);
    }
    assert!(!again.contains(&first.value));
    assert_eq!(again.len(), 5);
}

#[tokio::test]
async fn the_publisher_delivers_every_record_in_order_and_counts_them() {
    let log = MemoryLog::new();
    log.create_topic("t", 1);
    let p = Publisher::spawn(
        EventLog::Memory(log.clone()).producer().unwrap(),
        PublisherConfig::default(),
    );
    for i in 0..100 {
        p.publish(rec("t", "k", &i.to_string())).unwrap();
    }
    assert!(p.flush(LIMIT).await);
    assert_eq!(p.buffered(), 0);
    assert_eq!(p.stats().published, 100);
    assert!(p.healthy());
    let values: Vec<String> = log
        .records("t")
        .iter()
        .map(|r| String::from_utf8(r.value.to_vec()).unwrap())
        .collect();
    assert_eq!(values, (0..100).map(|i| i.to_string()).collect::<Vec<_>>());
}

/// A publisher to a Kafka broker that never answers (nothing listens on
/// port 1): librdkafka takes the records and fails each after 300 ms
/// (`message.timeout.ms`).
fn unreachable(cfg: PublisherConfig) -> Publisher {
    let mut kc = KafkaConfig::new("127.0.0.1:1");
    kc.message_timeout = Some(Duration::from_millis(300));
    Publisher::spawn(EventLog::Kafka(kc).producer().unwrap(), cfg)
}

/// A producer whose broker never answers: librdkafka takes the records and
/// fails them after `message.timeout.ms`, so they stay buffered.
#[tokio::test]
async fn an_unreachable_log_fills_the_buffer_then_records_are_refused_counted_and_reported() {
    let p = unreachable(PublisherConfig {
        max_buffered: 5,
        stall_after: Duration::from_millis(100),
        retry_backoff: Duration::from_millis(50),
        ..Default::default()
    });
    for i in 0..5 {
        p.publish(rec("t", "k", &i.to_string())).unwrap();
    }
    let refused = p.publish(rec("t", "k", "one too many")).unwrap_err();
    assert!(matches!(refused, PublishError::Full { records: 5, .. }), "{refused}");
    assert!(refused.to_string().contains("buffer full"), "{refused}");
    assert_eq!(p.stats().refused, 1);
    assert_eq!(p.buffered(), 5);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let why = p.health().unwrap_err();
    assert!(why.contains("5 records buffered"), "{why}");
    // librdkafka times records out on a scan about once a second.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.stats().retried == 0 {
        assert!(tokio::time::Instant::now() < deadline, "no failed delivery reported");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let why = p.health().unwrap_err();
    assert!(why.contains("deliveries failing"), "{why}");
    assert_eq!(p.stats().published, 0);
    assert!(!p.flush(Duration::from_millis(100)).await);
}

/// Records that fail together wait out one back-off together: after an
/// outage with many records in flight, delivery resumes within one back-off,
/// not after one back-off per record (with 5 s pauses, minutes for a few
/// dozen records).
#[tokio::test]
async fn records_that_fail_together_are_retried_together_after_one_back_off() {
    let p = unreachable(PublisherConfig {
        retry_backoff: Duration::from_secs(1),
        max_backoff: Duration::from_secs(5),
        ..Default::default()
    });
    for i in 0..50 {
        p.publish(rec("t", "k", &i.to_string())).unwrap();
    }
    // librdkafka times records out on a scan about once a second, all 50
    // in the same scan; each is retried once after a 1 s back-off and
    // fails again a second or two later.
    let deadline = tokio::time::Instant::now() + LIMIT;
    while p.stats().retried < 100 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "50 records did not fail twice within {LIMIT:?}: {:?}",
            p.stats()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        p.stats().producers_renewed,
        0,
        "a timeout does not call for a new producer"
    );
}
