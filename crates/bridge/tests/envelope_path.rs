//! The whole path of a message, property-tested: random field values enter
//! at a gateway, go through a worker, the event log (Kafka) and the bridge
//! to PostgreSQL and history. Whatever the fields, a message is either
//! refused at the edge with an error that names the field, and nothing of
//! it is stored; or it is answered and stored, message and reply, exactly
//! once, byte for byte. Needs the broker and PostgreSQL that `scripts/test`
//! starts.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use bridge::BridgeConfig;
use common::{TestDb, kafka, unique};
use events::{PublisherConfig, Topics};
use node::{NodeConfig, Role, Roles};
use proptest::prelude::*;
use proto::api::SendRequest;
use proto::rules;
use server::{EventsConfig, ServerConfig};

/// One message as a client might send it.
#[derive(Debug, Clone)]
struct Input {
    key: String,
    payload: String,
    id: Option<String>,
    timeout_ms: Option<u64>,
}

fn input() -> impl Strategy<Value = Input> {
    let key = prop_oneof![
        "[a-z0-9-]{1,20}",
        ".{0,40}",
        "[\\x00-\\x1f a-z]{1,10}",
        (1000usize..1100).prop_map(|n| "k".repeat(n)),
    ];
    let id = prop_oneof![
        Just(None),
        any::<u128>().prop_map(|r| Some(proto::message_id(1_700_000_000_000 + (r as u64 % 1_000_000), r))),
        ".{0,30}".prop_map(Some),
    ];
    let timeout_ms = prop_oneof![
        Just(None),
        (1u64..60_000).prop_map(Some),
        any::<u64>().prop_map(Some),
        Just(Some(0)),
    ];
    (key, ".{0,200}", id, timeout_ms).prop_map(|(key, payload, id, timeout_ms)| Input {
        key,
        payload,
        id,
        timeout_ms,
    })
}

/// The fields the shared rules refuse.
fn refused_fields(i: &Input) -> Vec<&'static str> {
    let mut fields = Vec::new();
    if i.id.as_ref().is_some_and(|id| rules::message_id("id", id).is_err()) {
        fields.push("id");
    }
    if i.timeout_ms
        .is_some_and(|ms| rules::timeout_ms("timeout_ms", ms).is_err())
    {
        fields.push("timeout_ms");
    }
    if rules::key("key", &i.key).is_err() {
        fields.push("key");
    }
    fields
}

/// A bridge on `db` and a gateway that is its own worker with `processor`,
/// joined by a fresh pair of topics on the broker; returns once the node
/// routes.
async fn path(db: &TestDb, processor: Arc<dyn node::Processor>) -> (server::Server, bridge::Bridge) {
    let topics = Topics {
        messages: unique("path-messages"),
        forward: unique("path-forward"),
        partitions: 2,
        replication: 1,
    };
    let log = kafka();
    let mut bcfg = BridgeConfig::new(db.url.clone(), log.clone());
    bcfg.http_bind = "127.0.0.1:0".parse().unwrap();
    bcfg.topics = topics.clone();
    bcfg.group_id = unique("path-bridge");
    let bridge = bridge::start(bcfg).await.unwrap();
    let mut n = NodeConfig::new("gw");
    n.gossip.membership = membership::Config::for_tests();
    n.roles = Roles::of(&[Role::Gateway, Role::Worker]);
    n.processor = Some(processor);
    n.mesh = node::mesh::MeshConfig::for_tests();
    let mut s = ServerConfig::new(n);
    s.events = Some(EventsConfig {
        log,
        topics,
        create_topics: true,
        forward_group: unique("path-forward-group"),
        forward_stall_timeout: None,
        publisher: PublisherConfig::default(),
    });
    let server = server::start(s).await.unwrap();
    while server.node().router().table().ring().is_empty() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    (server, bridge)
}

/// Echoes and says the answer cost one prompt token per byte of the
/// message and one completion token per byte of the reply.
#[derive(Debug)]
struct Metered;

impl node::Processor for Metered {
    fn models(&self) -> Vec<String> {
        vec!["metered".into()]
    }

    fn process<'a>(&'a self, msg: &'a proto::mesh::Envelope, out: &'a mut node::Replies) -> node::ProcessFuture<'a> {
        Box::pin(async move {
            out.send(msg.payload.clone()).await?;
            let n = msg.payload.len() as u32;
            out.set_usage(proto::mesh::Usage {
                prompt_tokens: n,
                completion_tokens: n,
                cached_tokens: n / 2,
                first_token_ms: 7,
                backend: "meter".into(),
                model: "metered".into(),
            });
            Ok(())
        })
    }
}

/// What a model answer cost travels with the reply's record and lands in
/// PostgreSQL, where plain SQL sums it per conversation; the history API
/// shows it on the reply and on nothing else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tokens_a_reply_cost_are_stored_and_sum_per_conversation_in_sql() {
    let db = TestDb::create().await;
    let (server, bridge) = path(&db, Arc::new(Metered)).await;
    let admin =
        node::client::AdminClient::new(server.node().addrs().admin.to_string()).with_timeout(Duration::from_secs(20));
    let sent = [("tokens-a", "hello"), ("tokens-a", "twelve bytes"), ("tokens-b", "abc")];
    for (key, payload) in sent {
        let req = SendRequest {
            key: key.into(),
            payload: payload.into(),
            id: None,
            timeout_ms: None,
            source: None,
        };
        let lines = admin.send(&req, |_| {}).await.unwrap();
        assert!(lines.last().unwrap().last, "{lines:?}");
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let pool = sqlx::PgPool::connect(&db.url).await.unwrap();
    let sums: Vec<(String, i64, i64, i64)> = loop {
        let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM messages")
            .fetch_one(&pool)
            .await
            .unwrap();
        if stored == 6 || tokio::time::Instant::now() > deadline {
            break sqlx::query_as(
                "SELECT conversation_key, sum(prompt_tokens)::int8, sum(completion_tokens)::int8, \
                 sum(cached_tokens)::int8 FROM messages WHERE kind = 2 GROUP BY conversation_key ORDER BY 1",
            )
            .fetch_all(&pool)
            .await
            .unwrap();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(
        sums,
        vec![("tokens-a".into(), 17, 17, 2 + 6), ("tokens-b".into(), 3, 3, 1)]
    );
    let (unmetered,): (i64,) =
        sqlx::query_as("SELECT count(*) FROM messages WHERE kind = 1 AND prompt_tokens IS NOT NULL")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert_eq!(unmetered, 0, "inbound messages carry no usage");
    let history = bridge.store().history("tokens-b", 0, 10).await.unwrap();
    let reply = history.iter().find(|r| r.kind == 2).unwrap();
    let usage = reply.usage.as_ref().expect("the reply's usage");
    assert_eq!(
        (usage.first_token_ms, usage.backend.as_str(), usage.model.as_str()),
        (7, "meter", "metered")
    );
    pool.close().await;
    server.shutdown().await;
    bridge.shutdown().await.unwrap();
}

#[test]
fn any_message_is_refused_naming_a_field_or_answered_and_stored_exactly_once() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(TestDb::create());
    let (server, bridge) = rt.block_on(path(&db, Arc::new(processors::Echo::default())));
    let admin =
        node::client::AdminClient::new(server.node().addrs().admin.to_string()).with_timeout(Duration::from_secs(20));

    // Accepted messages, by key: (id, payload). Refused ones with a valid key.
    // The runner's closure is `Fn`: the tallies live in cells.
    let accepted: std::cell::RefCell<BTreeMap<String, Vec<(String, String)>>> = Default::default();
    let refused: std::cell::RefCell<Vec<(String, String)>> = Default::default();
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
        cases: 48,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    runner
        .run(&input(), |i| {
            let req = SendRequest {
                key: i.key.clone(),
                payload: i.payload.clone(),
                id: i.id.clone(),
                timeout_ms: i.timeout_ms,
                source: None,
            };
            let lines = rt.block_on(admin.send(&req, |_| {})).expect("an answer");
            let last = lines.last().unwrap();
            let fields = refused_fields(&i);
            match fields.is_empty() {
                false => {
                    let e = last.error.as_ref().expect("refused");
                    prop_assert_eq!(e.code, tonic::Code::InvalidArgument as u32, "{:?}", e);
                    prop_assert!(
                        fields.iter().any(|f| e.message.contains(&format!("`{f}`"))),
                        "{fields:?}: {:?}",
                        e
                    );
                    prop_assert_eq!(lines.len(), 1);
                    if rules::key("key", &i.key).is_ok() {
                        refused.borrow_mut().push((i.key.clone(), last.id.clone()));
                    }
                }
                true => {
                    prop_assert!(last.last && last.error.is_none(), "{:?}", last);
                    let data: String = lines.iter().map(|l| l.data.as_str()).collect();
                    prop_assert_eq!(&data, &i.payload);
                    if let Some(id) = &i.id {
                        prop_assert_eq!(&last.id, id);
                    }
                    let mut accepted = accepted.borrow_mut();
                    let mine = accepted.entry(i.key.clone()).or_default();
                    // An id reused in the same conversation is a duplicate:
                    // answered from the window, stored once.
                    if !mine.iter().any(|(id, _)| *id == last.id) {
                        mine.push((last.id.clone(), i.payload.clone()));
                    }
                }
            }
            Ok(())
        })
        .unwrap();
    let (accepted, refused) = (accepted.into_inner(), refused.into_inner());

    let expected: usize = accepted.values().map(|v| 2 * v.len()).sum();
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let mut stored = 0;
            for key in accepted.keys() {
                stored += bridge.store().history(key, 0, 1000).await.unwrap().len();
            }
            if stored >= expected || tokio::time::Instant::now() > deadline {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for (key, messages) in &accepted {
            let history = bridge.store().history(key, 0, 1000).await.unwrap();
            for (id, payload) in messages {
                let rows: Vec<_> = history.iter().filter(|r| r.message_id == *id).collect();
                assert_eq!(
                    rows.len(),
                    2,
                    "{key:?} {id}: the message and its reply, once each: {rows:?}"
                );
                for r in rows {
                    assert_eq!(r.payload, payload.as_bytes(), "{key:?} {id} kind {}", r.kind);
                }
            }
            assert_eq!(history.len(), 2 * messages.len(), "{key:?}: nothing else stored");
        }
        for (key, id) in &refused {
            let history = bridge.store().history(key, 0, 1000).await.unwrap();
            assert!(history.iter().all(|r| r.message_id != *id), "refused {id} was stored");
        }
        server.shutdown().await;
        bridge.shutdown().await.unwrap();
    });
    drop(db);
}
