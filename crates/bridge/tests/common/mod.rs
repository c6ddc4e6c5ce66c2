//! Helpers shared by the bridge's tests: records, a small HTTP client,
//! waiting for the store, and the real PostgreSQL and Kafka services.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::time::Duration;

use bridge::Store;
use events::{Delivered, EventLog, KafkaConfig, OutRecord, Producer, codec};
use http_body_util::{BodyExt, Full};
use hyper::Request;
use hyper_util::rt::TokioIo;
use proto::bytes::Bytes;
use proto::events::{MessageRecord, message_record::Kind};

pub const LIMIT: Duration = Duration::from_secs(30);
pub const BROKER: &str = "127.0.0.1:9092";
pub const POSTGRES: &str = "postgres://postgres@127.0.0.1:5432";

pub fn unique(prefix: &str) -> String {
    format!("{prefix}_{}", events::new_message_id().to_lowercase())
}

/// An inbound message record.
pub fn inbound(key: &str, payload: &str) -> MessageRecord {
    MessageRecord {
        id: events::new_message_id(),
        key: key.into(),
        kind: Kind::Inbound as i32,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        worker: "worker-1".into(),
        origin: "gateway-1".into(),
        source: "client".into(),
        created_unix_ms: events::unix_ms(),
        ..Default::default()
    }
}

/// The reply to `msg`.
pub fn reply(msg: &MessageRecord, payload: &str) -> MessageRecord {
    MessageRecord {
        kind: Kind::Reply as i32,
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        chunks: 1,
        ..msg.clone()
    }
}

/// Sends `recs` one after another, waiting for each.
pub async fn send_all(producer: &Producer, topic: &str, recs: &[MessageRecord]) -> Vec<Delivered> {
    let mut out = Vec::new();
    for r in recs {
        out.push(
            producer
                .send(&codec::message_record(topic, r), LIMIT)
                .await
                .expect("send"),
        );
    }
    out
}

/// A record that is not a MessageRecord at all.
pub fn garbage(topic: &str, key: &str) -> OutRecord {
    OutRecord {
        topic: topic.into(),
        key: key.into(),
        value: Bytes::from_static(b"\xff\xfe not protobuf"),
        headers: vec![],
    }
}

/// Waits until the store holds `n` messages and returns their sources.
pub async fn wait_for_rows(store: &Store, n: usize) -> Vec<(String, i32, i64, String, i32)> {
    let deadline = tokio::time::Instant::now() + LIMIT;
    loop {
        let rows = store.message_sources().await.expect("reading messages");
        if rows.len() >= n || tokio::time::Instant::now() > deadline {
            assert_eq!(rows.len(), n, "stored messages");
            return rows;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Asserts that `rows` hold each delivered record exactly once.
pub fn assert_exactly(rows: &[(String, i32, i64, String, i32)], delivered: &[(i32, i64)]) {
    let stored: Vec<(i32, i64)> = rows.iter().map(|r| (r.1, r.2)).collect();
    let unique: BTreeSet<(i32, i64)> = stored.iter().copied().collect();
    assert_eq!(unique.len(), stored.len(), "duplicates stored: {stored:?}");
    let want: BTreeSet<(i32, i64)> = delivered.iter().copied().collect();
    assert_eq!(unique, want, "stored rows differ from the topic contents");
}

/// One HTTP/1 request; returns the status and the body.
pub async fn http(addr: SocketAddr, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    let stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .expect("handshake");
    tokio::spawn(conn);
    let req = Request::builder()
        .method(method)
        .uri(path)
        .header("host", "bridge")
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.unwrap_or("").to_owned())))
        .unwrap();
    let resp = send.send_request(req).await.expect("request");
    let status = resp.status().as_u16();
    let body = resp.into_body().collect().await.expect("body").to_bytes();
    (status, String::from_utf8_lossy(&body).into_owned())
}

/// The Kafka-protocol broker at 127.0.0.1:9092, or a clear failure.
pub fn kafka() -> EventLog {
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

/// A fresh PostgreSQL database, dropped when this is dropped.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn create() -> Self {
        let admin = format!("{POSTGRES}/test");
        let mut conn = match <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
            Ok(c) => c,
            Err(e) => {
                panic!("no PostgreSQL at {admin} (user postgres, trust auth, database `test`): run scripts/test: {e}")
            }
        };
        let name = unique("rumor_test");
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .expect("create database");
        Self {
            url: format!("{POSTGRES}/{name}"),
            name,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside async; a small runtime on its own thread drops
        // the database even when the test panicked.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&format!("{POSTGRES}/test")).await
                {
                    let _ = sqlx::Executor::execute(
                        &mut c,
                        format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)").as_str(),
                    )
                    .await;
                }
            });
        })
        .join();
    }
}
