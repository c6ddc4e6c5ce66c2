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

/// Creates a topic named after `prefix` with `partitions` partitions on
/// `log`; returns its name.
async fn new_topic(log: &EventLog, prefix: &str, partitions: i32) -> String {
    let topic = unique(prefix);
    log.create_topics(&[TopicSpec {
        name: topic.clone(),
        partitions,
        replication: 1,
    }])
    .await
    .unwrap();
    topic
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
    let topic = new_topic(&log, "events-roundtrip", 2).await;
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

/// Sends record `i` of `range` as key `conv-{i}`, value `value-{i}`.
async fn send_numbered(producer: &events::Producer, topic: &str, range: std::ops::Range<usize>) {
    for i in range {
        let out = OutRecord {
            topic: topic.to_owned(),
            key: format!("conv-{i}"),
            value: Bytes::from(format!("value-{i}")),
            headers: Vec::new(),
        };
        producer.send(&out, LIMIT).await.unwrap();
    }
}

/// Reads until `partitions` are assigned and `records` distinct values were
/// read; returns the assignment.
async fn read_all(c: &mut events::Consumer, partitions: usize, records: usize) -> Vec<TopicPartition> {
    let (mut assigned, mut values) = (std::collections::BTreeSet::new(), std::collections::BTreeSet::new());
    while assigned.len() < partitions || values.len() < records {
        match timeout(LIMIT, c.recv())
            .await
            .expect("not every partition and record in time")
            .unwrap()
        {
            ConsumerEvent::Assigned(tps) => assigned.extend(tps),
            ConsumerEvent::Revoked(tps) => assigned.retain(|tp| !tps.contains(tp)),
            ConsumerEvent::Record(r) => {
                values.insert(r.value);
            }
        }
    }
    assigned.into_iter().collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_that_rejoins_is_a_new_member_assigned_every_partition_again() {
    let log = kafka();
    let topic = new_topic(&log, "events-rejoin", 3).await;
    let producer = log.producer().unwrap();
    send_numbered(&producer, &topic, 0..9).await;
    let group = unique("rejoin");
    let mut c = log.consumer(&group, &[&topic]).unwrap();
    let reader = c.watermark_reader();
    let parts = reader.partitions(&topic).await.unwrap();
    assert_eq!(parts.len(), 3);
    let missing = reader.partitions("no-such-topic-here").await;
    assert!(
        missing.is_err() || missing.as_ref().is_ok_and(Vec::is_empty),
        "{missing:?}"
    );

    assert_eq!(read_all(&mut c, 3, 9).await, parts);
    // The new member gets every partition and reads from the group's
    // committed offsets (none: the beginning); the reader still works.
    c.rejoin().await.unwrap();
    assert_eq!(read_all(&mut c, 3, 9).await, parts);
    let high: i64 = {
        let mut sum = 0;
        for tp in &parts {
            sum += reader.watermarks(tp).await.unwrap().1;
        }
        sum
    };
    assert_eq!(high, 9);

    // The reader sees the group's committed offsets, none before a commit.
    assert!(reader.committed(&parts).await.unwrap().is_empty());
    let mut offsets = Vec::new();
    for tp in &parts {
        offsets.push((tp.clone(), reader.watermarks(tp).await.unwrap().1));
    }
    c.commit(&offsets).unwrap();
    let want: std::collections::BTreeMap<_, _> = offsets.into_iter().collect();
    let deadline = std::time::Instant::now() + LIMIT;
    loop {
        let got = reader.committed(&parts).await.unwrap();
        if got == want {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "committed {got:?}, want {want:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_reading_alone_reads_from_the_committed_offsets_outside_the_group() {
    let log = kafka();
    let topic = new_topic(&log, "events-alone", 3).await;
    let producer = log.producer().unwrap();
    send_numbered(&producer, &topic, 0..6).await;
    let group = unique("alone");
    let mut c = log.consumer(&group, &[&topic]).unwrap();
    let parts = read_all(&mut c, 3, 6).await;
    let reader = c.watermark_reader();
    let mut offsets = Vec::new();
    for tp in &parts {
        offsets.push((tp.clone(), reader.watermarks(tp).await.unwrap().1));
    }
    c.commit(&offsets).unwrap();
    let deadline = std::time::Instant::now() + LIMIT;
    while reader.committed(&parts).await.unwrap().len() < 3 {
        assert!(std::time::Instant::now() < deadline, "the commit did not land");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    send_numbered(&producer, &topic, 6..9).await;

    // Alone: the partitions named, announced, from the committed offsets.
    c.read_alone(&parts).await.unwrap();
    let (mut assigned, mut values) = (Vec::new(), std::collections::BTreeSet::new());
    while assigned.len() < 3 || values.len() < 3 {
        match timeout(LIMIT, c.recv()).await.expect("reading alone in time").unwrap() {
            ConsumerEvent::Assigned(tps) => assigned.extend(tps),
            ConsumerEvent::Revoked(tps) => panic!("revoked while alone: {tps:?}"),
            ConsumerEvent::Record(r) => {
                values.insert(r.value);
            }
        }
    }
    assigned.sort();
    assert_eq!(assigned, parts);
    let want: std::collections::BTreeSet<Bytes> = (6..9).map(|i| Bytes::from(format!("value-{i}"))).collect();
    assert_eq!(values, want, "only the records after the committed offsets");

    // It is no member: a consumer that joins the group is handed every
    // partition, and reads what the group committed onwards.
    let mut member = log.consumer(&group, &[&topic]).unwrap();
    assert_eq!(read_all(&mut member, 3, 3).await, parts);
    drop(member);
    // And it goes back to the group by rejoining.
    c.rejoin().await.unwrap();
    assert_eq!(read_all(&mut c, 3, 3).await, parts);
}

#[tokio::test]
async fn the_publisher_delivers_through_kafka_and_stays_healthy() {
    let log = kafka();
    let topic = new_topic(&log, "events-publisher", 1).await;
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
    let topic = new_topic(&log, "events-poison", 1).await;
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

/// A tansu broker of the test's own (RUMOR_TEST_TANSU, which scripts/test
/// sets), on a free port of 127.0.0.1; killed when dropped.
struct PrivateTansu {
    child: std::process::Child,
    addr: String,
}

impl PrivateTansu {
    async fn start() -> PrivateTansu {
        let tansu = std::env::var("RUMOR_TEST_TANSU").unwrap_or_else(|_| "tansu".into());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let addr = format!("127.0.0.1:{port}");
        let child = std::process::Command::new(&tansu)
            .args(["broker", "--storage-engine", "memory://tansu/"])
            .arg("--listener-url")
            .arg(format!("tcp://{addr}"))
            .arg("--advertised-listener-url")
            .arg(format!("tcp://{addr}"))
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("starting {tansu} (scripts/test installs it and sets RUMOR_TEST_TANSU): {e}"));
        let broker = PrivateTansu { child, addr };
        let deadline = tokio::time::Instant::now() + LIMIT;
        let sock: std::net::SocketAddr = broker.addr.parse().unwrap();
        while std::net::TcpStream::connect_timeout(&sock, Duration::from_millis(200)).is_err() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the private tansu did not listen"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        broker
    }

    /// Sends `sig` (`-STOP`, `-CONT`) to the broker; false when it could not.
    fn signal(&self, sig: &str) -> bool {
        std::process::Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .is_ok_and(|s| s.success())
    }
}

impl Drop for PrivateTansu {
    fn drop(&mut self) {
        self.signal("-CONT");
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A publisher to `broker` for a new topic named after `prefix`, made for
/// outages: requests time out after 1 s (so they are retried many times
/// while the broker is stopped), retries back off at most 1 s, and records
/// time out after `message_timeout` (`None`: never, the default).
async fn outage_publisher(
    broker: &PrivateTansu,
    message_timeout: Option<Duration>,
    prefix: &str,
    partitions: i32,
) -> (EventLog, String, events::Publisher) {
    let mut cfg = KafkaConfig::new(broker.addr.clone());
    cfg.session_timeout = Duration::from_secs(6);
    cfg.message_timeout = message_timeout;
    cfg.producer.insert("request.timeout.ms".into(), "1000".into());
    let log = EventLog::Kafka(cfg);
    let topic = new_topic(&log, prefix, partitions).await;
    let publisher = events::Publisher::spawn(
        log.producer().unwrap(),
        events::PublisherConfig {
            max_backoff: Duration::from_secs(1),
            ..Default::default()
        },
    );
    (log, topic, publisher)
}

/// Records that time out while the broker is stopped (with a message
/// timeout set; by default there is none) make librdkafka move its
/// idempotent producer to the next epoch on its own. tansu fences every
/// later request of that producer, and librdkafka answers each fencing with
/// yet another epoch: without a new producer nothing is delivered again.
/// The publisher replaces the producer, and every record gets in once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_the_broker_fences_after_an_outage_is_replaced_and_every_record_gets_in() {
    let broker = PrivateTansu::start().await;
    let (log, topic, publisher) = outage_publisher(&broker, Some(Duration::from_secs(2)), "events-fenced", 1).await;
    let record = |i: usize| OutRecord {
        topic: topic.clone(),
        key: format!("k{}", i % 4),
        value: Bytes::from(i.to_string()),
        headers: vec![],
    };
    // Delivered while the broker runs: the producer has its id, epoch 0.
    for i in 0..20 {
        publisher.publish(record(i)).unwrap();
    }
    assert!(
        publisher.flush(LIMIT).await,
        "delivered before the outage: {:?}",
        publisher.stats()
    );

    // The broker stops answering for longer than `message.timeout.ms`:
    // the records published meanwhile time out in librdkafka.
    assert!(broker.signal("-STOP"), "the broker stopped");
    let during: Vec<_> = (20..220).map(|i| publisher.publish(record(i)).unwrap()).collect();
    let deadline = tokio::time::Instant::now() + LIMIT;
    while publisher.stats().retried == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery failed while the broker was stopped"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(broker.signal("-CONT"), "the broker continued");

    for d in during {
        timeout(LIMIT, d)
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "a record was not delivered within {LIMIT:?}: {:?}, {:?}",
                    publisher.stats(),
                    publisher.health()
                )
            })
            .expect("delivered");
    }
    let stats = publisher.stats();
    assert_eq!(stats.published, 220, "{stats:?}");
    assert!(
        stats.producers_renewed >= 1,
        "the fenced producer was replaced: {stats:?}"
    );
    assert!(publisher.healthy(), "{:?}", publisher.health());

    // Each record is in the topic; a record the old producer got in before
    // its answer was lost may be there twice (at least once), none is
    // missing.
    let mut c = log.consumer(&unique("g"), &[&topic]).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    while seen.len() < 220 {
        let r = next_record(&mut c).await;
        seen.insert(String::from_utf8(r.value.to_vec()).unwrap().parse::<usize>().unwrap());
    }
    assert_eq!(seen, (0..220).collect());
}

/// A conversation's records must reach the log in the order they were
/// published, also when the broker stops answering for a while: the bridge
/// stores them in log order, and that is the order a history shows. Records
/// published before, during and after an outage of the broker are read back
/// in publish order per key (a record may be there twice, as delivery is at
/// least once; its first copy is where it counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_published_across_a_broker_outage_keep_their_order_per_key() {
    let broker = PrivateTansu::start().await;
    let (log, topic, publisher) = outage_publisher(&broker, None, "events-order", 2).await;
    const KEYS: usize = 4;
    let record = |i: usize| OutRecord {
        topic: topic.clone(),
        key: format!("k{}", i % KEYS),
        value: Bytes::from(i.to_string()),
        headers: vec![],
    };
    let mut deliveries = Vec::new();
    for i in 0..20 {
        deliveries.push(publisher.publish(record(i)).unwrap());
    }
    assert!(
        publisher.flush(LIMIT).await,
        "before the outage: {:?}",
        publisher.stats()
    );

    // Published while the broker is stopped, a few at a time for 8 s.
    assert!(broker.signal("-STOP"), "the broker stopped");
    let mut i = 20;
    for _ in 0..80 {
        deliveries.push(publisher.publish(record(i)).unwrap());
        i += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(broker.signal("-CONT"), "the broker continued");
    // And right after it answers again, while earlier records still wait.
    for _ in 0..100 {
        deliveries.push(publisher.publish(record(i)).unwrap());
        i += 1;
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let total = i;
    for d in deliveries {
        timeout(LIMIT * 2, d)
            .await
            .unwrap_or_else(|_| panic!("a record was not delivered in time: {:?}", publisher.stats()))
            .expect("delivered");
    }

    let mut c = log.consumer(&unique("g"), &[&topic]).unwrap();
    let mut seen = std::collections::BTreeSet::new();
    let mut order: Vec<Vec<usize>> = vec![Vec::new(); KEYS];
    while seen.len() < total {
        let r = next_record(&mut c).await;
        let n: usize = String::from_utf8(r.value.to_vec()).unwrap().parse().unwrap();
        if seen.insert(n) {
            order[n % KEYS].push(n);
        }
    }
    for (key, got) in order.iter().enumerate() {
        let late: Vec<_> = got.windows(2).filter(|w| w[0] > w[1]).collect();
        assert!(
            late.is_empty(),
            "key k{key}: records stored after later ones ({} places, first {:?}); {:?}",
            late.len(),
            late.first(),
            publisher.stats()
        );
    }
}
