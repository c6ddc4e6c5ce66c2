//! The Kafka implementation against a real Kafka-protocol broker (tansu) at
//! 127.0.0.1:9092, which `scripts/test` starts. Each test uses its own topic.
//! Without a broker these tests fail, naming what is missing.

use std::time::Duration;

use events::{ConsumerEvent, EventLog, KafkaConfig, OutRecord, Record, SeekTo, TopicPartition, TopicSpec};
use proto::bytes::Bytes;
use tokio::time::timeout;

const BROKER: &str = "127.0.0.1:9092";
const LIMIT: Duration = Duration::from_secs(30);

fn kafka() -> EventLog {
    if std::net::TcpStream::connect_timeout(&BROKER.parse().unwrap(), Duration::from_secs(2)).is_err() {
        panic!(
            "no Kafka-protocol broker at {BROKER}: run scripts/test, or start one with \
             `tansu broker --storage-engine memory://tansu/ --listener-url tcp://{BROKER} \
             --advertised-listener-url tcp://{BROKER}`"
        );
    }
    let mut cfg = KafkaConfig::new(BROKER);
    cfg.session_timeout = Duration::from_secs(6);
    EventLog::Kafka(cfg)
}

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", events::new_message_id().to_lowercase())
}

async fn next_record(c: &mut events::Consumer) -> Record {
    loop {
        match timeout(LIMIT, c.recv())
            .await
            .expect("no record in time")
            .expect("recv failed")
        {
            ConsumerEvent::Record(r) => return r,
            ConsumerEvent::Assigned(_) | ConsumerEvent::Revoked(_) => {}
        }
    }
}

#[tokio::test]
async fn records_round_trip_with_keys_headers_and_consecutive_offsets_then_seek_rereads() {
    let log = kafka();
    let topic = unique("events-roundtrip");
    log.create_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 2,
        replication: 1,
    }])
    .await
    .unwrap();
    // Creating again is not an error.
    log.create_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 2,
        replication: 1,
    }])
    .await
    .unwrap();
    let producer = log.producer().unwrap();
    let mut sent = Vec::new();
    for i in 0..10 {
        let out = OutRecord {
            topic: topic.clone(),
            key: "conv-1".into(),
            value: Bytes::from(format!("value-{i}")),
            headers: vec![("content-type".into(), Bytes::from_static(b"text/plain"))],
        };
        sent.push(producer.send(&out, LIMIT).await.unwrap());
    }
    let partition = sent[0].partition;
    for (i, d) in sent.iter().enumerate() {
        assert_eq!(d.partition, partition, "one key, one partition");
        assert_eq!(d.offset, sent[0].offset + i as i64, "consecutive offsets");
    }

    let mut c = log.consumer(&unique("g"), &[&topic]).unwrap();
    let first = loop {
        match timeout(LIMIT, c.recv()).await.expect("no assignment in time").unwrap() {
            ConsumerEvent::Assigned(tps) => {
                assert!(tps.contains(&TopicPartition::new(&topic, partition)), "{tps:?}");
            }
            ConsumerEvent::Revoked(_) => {}
            ConsumerEvent::Record(r) => break r,
        }
    };
    assert_eq!(first.offset, sent[0].offset);
    assert_eq!(first.key.as_deref(), Some(&b"conv-1"[..]));
    assert_eq!(first.header("content-type"), Some(&b"text/plain"[..]));
    for i in 1..10 {
        let r = next_record(&mut c).await;
        assert_eq!(r.value, Bytes::from(format!("value-{i}")));
    }
    let tp = TopicPartition::new(&topic, partition);
    c.seek(&tp, SeekTo::Offset(sent[3].offset)).await.unwrap();
    let again = next_record(&mut c).await;
    assert_eq!(
        (again.offset, again.value.clone()),
        (sent[3].offset, Bytes::from("value-3"))
    );
    let (_, high) = c.watermarks(&tp).await.unwrap();
    assert_eq!(high, sent[9].offset + 1);
    c.commit(&[(tp, high)]).unwrap();
}

#[tokio::test]
async fn the_publisher_delivers_through_kafka_and_stays_healthy() {
    let log = kafka();
    let topic = unique("events-publisher");
    log.create_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 1,
        replication: 1,
    }])
    .await
    .unwrap();
    let p = events::Publisher::spawn(log.producer().unwrap(), events::PublisherConfig::default());
    for i in 0..50 {
        p.publish(OutRecord {
            topic: topic.clone(),
            key: format!("k{}", i % 3),
            value: Bytes::from(format!("{i}")),
            headers: vec![],
        })
        .unwrap();
    }
    assert!(p.flush(LIMIT).await, "not delivered in time: {:?}", p.stats());
    assert_eq!(p.stats().published, 50);
    assert!(p.healthy());
    let mut c = log.consumer(&unique("g"), &[&topic]).unwrap();
    let mut got = Vec::new();
    while got.len() < 50 {
        got.push(next_record(&mut c).await.value);
    }
    let want: Vec<Bytes> = (0..50).map(|i| Bytes::from(format!("{i}"))).collect();
    assert_eq!(got, want, "one partition: publish order");
}

#[tokio::test]
async fn a_record_the_broker_refuses_for_good_is_set_aside_and_the_records_behind_it_are_delivered() {
    use std::sync::{Arc, Mutex};

    use events::{Publisher, PublisherConfig};

    let log = kafka();
    let topic = unique("events-poison");
    log.create_topics(&[TopicSpec {
        name: topic.clone(),
        partitions: 1,
        replication: 1,
    }])
    .await
    .unwrap();
    let set_aside: Arc<Mutex<Vec<String>>> = Arc::default();
    let hook = set_aside.clone();
    let publisher = Publisher::spawn_with(
        log.producer().unwrap(),
        PublisherConfig::default(),
        Arc::new(move |rec: &OutRecord, why: &str| hook.lock().unwrap().push(format!("{} {why}", rec.key))),
    );
    let record = |key: &str, bytes: usize| OutRecord {
        topic: topic.clone(),
        key: key.into(),
        value: Bytes::from(vec![b'x'; bytes]),
        headers: Vec::new(),
    };
    // Over Kafka's default record limit (1,000,000 bytes), as a reply of
    // 1,040,000 bytes once was: never deliverable.
    let big = publisher.publish(record("big", 1_040_000)).unwrap();
    let small: Vec<_> = (0..10)
        .map(|i| publisher.publish(record(&format!("small-{i}"), 100)).unwrap())
        .collect();
    let refused = timeout(LIMIT, big).await.expect("an answer for the big record");
    assert!(refused.unwrap_err().contains("refused it for good"));
    for d in small {
        timeout(LIMIT, d).await.expect("delivered in time").expect("delivered");
    }
    assert!(publisher.flush(LIMIT).await, "nothing left behind");
    assert!(publisher.healthy(), "{:?}", publisher.health());
    let stats = publisher.stats();
    assert_eq!(
        (stats.published, stats.set_aside, stats.retried),
        (10, 1, 0),
        "{stats:?}"
    );
    let set_aside = set_aside.lock().unwrap();
    assert_eq!(set_aside.len(), 1);
    assert!(set_aside[0].starts_with("big "), "{set_aside:?}");
}
