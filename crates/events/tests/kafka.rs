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
