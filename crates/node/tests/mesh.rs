//! The mesh data plane on real sockets: nodes on 127.0.0.1 with port 0 form a
//! cluster through the gossip layer (`membership::Config::for_tests()`, 100 ms
//! protocol period), advertise their mesh address and capacity in gossip
//! metadata, and route messages to the owners of their keys over gRPC.
//! Every scenario is bounded by `LIMIT`.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use node::gossip::{self, GossipConfig, GossipHandle};
use node::mesh::Router;
use node::mesh::{self, MeshConfig, PROTOCOL_VERSION};
use node::worker::{Worker, WorkerConfig};
use node::{ProcessFuture, Processor, Replies};
use processors::Echo;
use proto::bytes::Bytes;
use proto::mesh::mesh_client::MeshClient;
use proto::mesh::{Envelope, Position};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::time::{Instant, sleep, timeout};
use tokio_stream::StreamExt;
use tonic::transport::Channel;
use tonic::{Code, Status};

const LIMIT: Duration = Duration::from_secs(30);

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(LIMIT, f).await.expect("scenario did not finish in time")
}

/// One node: gossip, a router, the mesh server, and a worker unless it is a
/// gateway.
struct TestNode {
    name: String,
    gossip: GossipHandle,
    router: Router,
    mesh_addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
}

impl TestNode {
    async fn start(name: &str, seeds: &[SocketAddr], processor: Option<Arc<dyn Processor>>) -> Self {
        Self::start_with(name, seeds, processor, None, MeshConfig::for_tests()).await
    }

    /// As [`TestNode::start`], the worker reporting to `sink`, the router
    /// configured with `mesh`.
    async fn start_with(
        name: &str,
        seeds: &[SocketAddr],
        processor: Option<Arc<dyn Processor>>,
        sink: Option<Arc<dyn node::worker::RecordSink>>,
        mesh: MeshConfig,
    ) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mesh_addr = listener.local_addr().unwrap();
        let mut cfg = GossipConfig::new(name, "127.0.0.1:0".parse().unwrap());
        cfg.membership = membership::Config::for_tests();
        cfg.seeds = seeds.to_vec();
        cfg.stream_timeout = Duration::from_secs(2);
        cfg.meta.services.insert("mesh".into(), mesh_addr.to_string());
        let worker = processor.map(|p| {
            let mut w = Worker::new(name, WorkerConfig::default(), p);
            if let Some(sink) = sink {
                w = w.with_sink(sink);
            }
            cfg.meta.roles = vec!["worker".into()];
            cfg.meta.capacity = w.capacity() as u32;
            w
        });
        if worker.is_none() {
            cfg.meta.roles = vec!["gateway".into()];
        }
        let gossip = gossip::spawn(cfg).await.unwrap();
        let router = Router::new(name, mesh, gossip.view(), worker);
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(mesh::serve(listener, router.clone(), async {
            let _ = stopped.await;
        }));
        Self {
            name: name.to_owned(),
            gossip,
            router,
            mesh_addr,
            stop: Some(stop),
        }
    }

    async fn client(&self) -> MeshClient<Channel> {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", self.mesh_addr))
            .unwrap()
            .connect()
            .await
            .unwrap();
        MeshClient::new(channel)
    }
}

/// A gateway `gw` and workers `w0..wn` running `processor`, all joined, with
/// every router seeing every worker and the same ring checksum.
async fn cluster(workers: usize, processor: Arc<dyn Processor>) -> (TestNode, Vec<TestNode>) {
    let gw = TestNode::start("gw", &[], None).await;
    let mut ws = Vec::new();
    for i in 0..workers {
        ws.push(TestNode::start(&format!("w{i}"), &[gw.gossip.addr()], Some(processor.clone())).await);
    }
    let all: Vec<&TestNode> = std::iter::once(&gw).chain(&ws).collect();
    wait_rings(&all, workers).await;
    (gw, ws)
}

/// Waits until every node's ring has `n` workers and all checksums agree.
async fn wait_rings(nodes: &[&TestNode], n: usize) {
    loop {
        let sums: BTreeSet<u64> = nodes.iter().map(|x| x.router.table().checksum()).collect();
        if sums.len() == 1 && nodes.iter().all(|x| x.router.table().ring().len() == n) {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

fn envelope(id: &str, key: &str, payload: &str) -> Envelope {
    Envelope {
        id: id.to_owned(),
        key: key.to_owned(),
        payload: Bytes::copy_from_slice(payload.as_bytes()),
        ..Default::default()
    }
}

/// An envelope as a peer would send it.
fn wire(label: &str, key: &str, payload: &str, hops: u32) -> Envelope {
    Envelope {
        version: PROTOCOL_VERSION,
        hops,
        origin: "gw".into(),
        deadline_unix_ms: mesh::deadline_in(Duration::from_secs(5)),
        ..envelope(&mid(label), key, payload)
    }
}

/// A valid message id named by a label, the same for the same label, for
/// the messages that enter through a router (which checks ids).
fn mid(label: &str) -> String {
    let h = label.bytes().fold(0xcbf2_9ce4_8422_2325u128, |h, b| {
        (h ^ u128::from(b)).wrapping_mul(0x100_0000_01b3)
    });
    mesh::message_id(1_700_000_000_000, h)
}

/// A reply read to its end.
#[derive(Debug)]
struct Answer {
    worker: String,
    data: Vec<u8>,
    replayed: bool,
    /// The error chunk that ended the reply, if any.
    error: Option<(u32, String)>,
    /// The final chunk said the reply's records were not yet in the log.
    records_pending: bool,
}

/// Reads a reply to its end, checking that chunks are numbered 0, 1, 2, ...
/// and that exactly one terminal chunk ends the stream.
async fn collect(
    mut stream: impl tokio_stream::Stream<Item = Result<proto::mesh::ReplyChunk, Status>> + Unpin,
) -> Result<Answer, Status> {
    let mut answer = Answer {
        worker: String::new(),
        data: Vec::new(),
        replayed: false,
        error: None,
        records_pending: false,
    };
    let mut seq = 0;
    let mut ended = false;
    while let Some(item) = stream.next().await {
        let chunk = item?;
        assert!(!ended, "a chunk after the terminal chunk: {chunk:?}");
        assert_eq!(chunk.seq, seq, "chunks out of sequence");
        seq += 1;
        answer.data.extend_from_slice(&chunk.data);
        answer.replayed |= chunk.replayed;
        answer.records_pending |= chunk.records_pending;
        if !chunk.worker.is_empty() {
            answer.worker = chunk.worker.clone();
        }
        if let Some(e) = chunk.error {
            answer.error = Some((e.code, e.message));
            ended = true;
        }
        ended |= chunk.last;
    }
    assert!(ended, "reply ended without a terminal chunk");
    Ok(answer)
}

async fn send(router: &Router, env: Envelope) -> Result<Answer, Status> {
    collect(router.send(env).await?).await
}

/// Counts processed messages per id and records each key's processing order.
#[derive(Default, Debug)]
struct Recorder {
    processed: Mutex<HashMap<String, usize>>,
    order: Mutex<BTreeMap<String, Vec<u32>>>,
    running: AtomicUsize,
    max_running: AtomicUsize,
    delay: Duration,
}

impl Processor for Recorder {
    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(async move {
            let now = self.running.fetch_add(1, Ordering::SeqCst) + 1;
            self.max_running.fetch_max(now, Ordering::SeqCst);
            *self.processed.lock().unwrap().entry(msg.id.clone()).or_default() += 1;
            if let Ok(n) = std::str::from_utf8(&msg.payload).unwrap_or("").parse::<u32>() {
                self.order.lock().unwrap().entry(msg.key.clone()).or_default().push(n);
            }
            sleep(self.delay).await;
            out.send(msg.payload.clone()).await?;
            self.running.fetch_sub(1, Ordering::SeqCst);
            Ok(())
        })
    }
}

#[tokio::test]
async fn a_message_sent_to_a_non_owner_node_is_answered_by_the_owner() {
    within(async {
        let (gw, ws) = cluster(3, Arc::new(Echo::default())).await;
        let table = gw.router.table();
        let key = "conversation-7";
        let owner = table.owner(key).unwrap().to_owned();

        // Through the gateway, which owns nothing.
        let a = send(&gw.router, envelope(&mesh::new_message_id(), key, "hello mesh"))
            .await
            .unwrap();
        assert_eq!(a.worker, owner);
        assert_eq!(a.data, b"hello mesh");
        assert_eq!(a.error, None);

        // Straight to a worker that does not own the key: it forwards once.
        let other = ws.iter().find(|w| w.name != owner).unwrap();
        let mut client = other.client().await;
        let reply = client
            .deliver(wire(&mesh::new_message_id(), key, "via a non-owner", 1))
            .await
            .unwrap();
        let a = collect(reply.into_inner()).await.unwrap();
        assert_eq!(a.worker, owner);
        assert_eq!(a.data, b"via a non-owner");
        assert_eq!(other.router.stats().forwarded, 1);
        assert!(gw.router.pooled_peers().contains(&owner));
    })
    .await;
}

#[tokio::test]
async fn three_workers_share_keys_roughly_per_the_ring() {
    within(async {
        let (gw, _ws) = cluster(3, Arc::new(Echo::default())).await;
        let table = gw.router.table();
        let mut share: BTreeMap<String, usize> = BTreeMap::new();
        let keys = 300;
        for i in 0..keys {
            let key = format!("conv-{i}");
            let a = send(&gw.router, envelope(&mesh::new_message_id(), &key, "x"))
                .await
                .unwrap();
            assert_eq!(Some(a.worker.as_str()), table.owner(&key), "key {key}");
            *share.entry(a.worker).or_default() += 1;
        }
        assert_eq!(share.len(), 3, "{share:?}");
        for (w, n) in &share {
            assert!(*n > keys / 5, "{w} got only {n} of {keys} keys: {share:?}");
        }
    })
    .await;
}

#[tokio::test]
async fn per_conversation_order_is_kept_under_concurrent_sends() {
    within(async {
        let recorder = Arc::new(Recorder {
            delay: Duration::from_millis(2),
            ..Default::default()
        });
        let worker = Worker::new("w", WorkerConfig::default(), recorder.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        // Eight conversations submitted from eight tasks at once, 25 messages
        // each, without waiting for replies in between.
        let mut tasks = Vec::new();
        for k in 0..8 {
            let worker = worker.clone();
            tasks.push(tokio::spawn(async move {
                let mut streams = Vec::new();
                for n in 0..25u32 {
                    let id = format!("k{k}-{n}");
                    streams.push(
                        worker
                            .submit(envelope(&id, &format!("key-{k}"), &n.to_string()), deadline)
                            .unwrap(),
                    );
                    tokio::task::yield_now().await;
                }
                for s in streams {
                    collect(s).await.unwrap();
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let order = recorder.order.lock().unwrap();
        for (key, seen) in order.iter() {
            assert_eq!(*seen, (0..25).collect::<Vec<u32>>(), "order of {key}");
        }
        assert_eq!(order.len(), 8);
        assert!(
            recorder.max_running.load(Ordering::SeqCst) > 1,
            "different conversations should be processed concurrently"
        );
        assert_eq!(worker.in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn the_same_id_in_two_conversations_is_two_messages() {
    within(async {
        let recorder = Arc::new(Recorder::default());
        let worker = Worker::new("w", WorkerConfig::default(), recorder.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        let id = mesh::new_message_id();
        let a = collect(worker.submit(envelope(&id, "conv-a", "for a"), deadline).unwrap())
            .await
            .unwrap();
        let b = collect(worker.submit(envelope(&id, "conv-b", "for b"), deadline).unwrap())
            .await
            .unwrap();
        assert!(!a.replayed && !b.replayed, "neither is a duplicate of the other");
        assert_eq!((a.data.as_slice(), b.data.as_slice()), (&b"for a"[..], &b"for b"[..]));
        assert_eq!(recorder.processed.lock().unwrap()[&id], 2);
        // Within one conversation the id still names one message.
        let again = collect(worker.submit(envelope(&id, "conv-b", "for b"), deadline).unwrap())
            .await
            .unwrap();
        assert!(again.replayed);
    })
    .await;
}

/// A worker remembers replies (to replay to duplicates) and events (for
/// watchers) long after a message is answered. A payload decoded from a
/// gRPC frame is a slice of the frame's buffer, and a slice keeps its whole
/// buffer alive: what is remembered must be copies of their own, or a
/// few-byte reply pins a receive buffer of many kilobytes per message.
#[tokio::test]
async fn what_a_worker_remembers_holds_its_own_bytes_not_the_buffers_they_were_sliced_from() {
    within(async {
        let worker = Worker::new("w", WorkerConfig::default(), Arc::new(Echo::default()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let frame = Bytes::from(vec![b'x'; 16 * 1024]);
        let inside = |b: &Bytes| {
            let start = frame.as_ptr() as usize;
            (start..start + frame.len()).contains(&(b.as_ptr() as usize))
        };
        let mut env = envelope("m1", "conv", "");
        env.payload = frame.slice(100..112);
        assert!(inside(&env.payload));
        let first = collect(worker.submit(env.clone(), deadline).unwrap()).await.unwrap();
        assert_eq!(first.data, vec![b'x'; 12]);
        // The reply the window keeps, replayed to a duplicate.
        let mut replay = worker.submit(env, deadline).unwrap();
        let mut chunks = 0;
        while let Some(chunk) = replay.next().await {
            let chunk = chunk.unwrap();
            assert!(chunk.replayed);
            assert!(!inside(&chunk.data), "a remembered reply chunk points into the frame");
            chunks += 1;
        }
        assert!(chunks > 1, "echo answers in several chunks");
        // The events the log keeps for watchers.
        // (An empty epoch asks for everything the log holds.)
        let events = worker.watch("conv", Some(&Position::default())).replay;
        assert!(events.len() > 2, "{events:?}");
        for e in &events {
            use proto::mesh::conversation_event::Event as Kind;
            let data = match &e.event {
                Some(Kind::Message(m)) => &m.payload,
                Some(Kind::Chunk(c)) => &c.data,
                _ => continue,
            };
            assert!(!inside(data), "a remembered event points into the frame: {e:?}");
        }
        let r = worker.remembered();
        assert_eq!((r.messages, r.reply_bytes, r.conversations), (1, 12, 1));
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_id_is_not_processed_twice() {
    within(async {
        let recorder = Arc::new(Recorder::default());
        let (gw, ws) = cluster(2, recorder.clone()).await;
        let id = mesh::new_message_id();
        let first = send(&gw.router, envelope(&id, "dup-key", "once")).await.unwrap();
        let again = send(&gw.router, envelope(&id, "dup-key", "once")).await.unwrap();
        assert!(!first.replayed);
        assert!(again.replayed, "the duplicate should be answered from the window");
        assert_eq!(again.data, first.data);
        assert_eq!(again.worker, first.worker);
        assert_eq!(recorder.processed.lock().unwrap()[&id], 1);
        let owner = ws.iter().find(|w| w.name == first.worker).unwrap();
        assert_eq!(owner.router.worker().unwrap().stats().duplicates_replayed, 1);

        // A duplicate of a message still in flight is refused, not queued.
        let slow = Worker::new(
            "slow",
            WorkerConfig::default(),
            Arc::new(Echo {
                chunks: 2,
                delay: Duration::from_millis(200),
            }),
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        let running = slow.submit(envelope("m1", "k", "ab"), deadline).unwrap();
        let err = slow.submit(envelope("m1", "k", "ab"), deadline).unwrap_err();
        assert_eq!(err.code(), Code::AlreadyExists);
        assert!(err.message().contains("m1"), "{err}");
        collect(running).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_worker_over_its_capacity_refuses_with_resource_exhausted() {
    within(async {
        let config = WorkerConfig {
            capacity: 2,
            ..Default::default()
        };
        let slow = Arc::new(Echo {
            chunks: 1,
            delay: Duration::from_millis(100),
        });
        let worker = Worker::new("w", config, slow);
        let deadline = Instant::now() + Duration::from_secs(5);
        let a = worker.submit(envelope("a", "k1", "a"), deadline).unwrap();
        let b = worker.submit(envelope("b", "k2", "b"), deadline).unwrap();
        let err = worker.submit(envelope("c", "k3", "c"), deadline).unwrap_err();
        assert_eq!(err.code(), Code::ResourceExhausted);
        collect(a).await.unwrap();
        collect(b).await.unwrap();
        // Capacity is free again, and the refused id was not remembered.
        collect(worker.submit(envelope("c", "k3", "c"), deadline).unwrap())
            .await
            .unwrap();
        assert_eq!(worker.stats().over_capacity, 1);
    })
    .await;
}

#[tokio::test]
async fn a_hop_count_over_the_limit_gets_a_clear_error() {
    within(async {
        let (_gw, ws) = cluster(2, Arc::new(Echo::default())).await;
        let mut client = ws[0].client().await;
        let err = client.deliver(wire("m-hops", "k", "x", 5)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(err.message().contains("hop count 5 is over the limit of 2"), "{err}");
        assert_eq!(ws[0].router.stats().hops_over_limit, 1);

        // At the limit, a node that does not own the key refuses to forward.
        let table = ws[0].router.table();
        let key = (0..)
            .map(|i| format!("k{i}"))
            .find(|k| table.owner(k) != Some(ws[0].name.as_str()))
            .unwrap();
        let err = client.deliver(wire("m-limit", &key, "x", 2)).await.unwrap_err();
        assert_eq!(err.code(), Code::Aborted);
        assert!(err.message().contains("hop limit of 2"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_peer_speaking_another_protocol_version_gets_a_status_naming_both_versions() {
    within(async {
        let (_gw, ws) = cluster(1, Arc::new(Echo::default())).await;
        let mut client = ws[0].client().await;
        let mut env = wire("m-v", "k", "x", 1);
        env.version = 7;
        let err = client.deliver(env).await.unwrap_err();
        assert_eq!(err.code(), Code::FailedPrecondition);
        assert!(err.message().contains("version 7"), "{err}");
        assert!(err.message().contains(&format!("version {PROTOCOL_VERSION}")), "{err}");
        assert_eq!(ws[0].router.stats().bad_version, 1);
    })
    .await;
}

#[tokio::test]
async fn an_oversized_envelope_is_rejected() {
    within(async {
        let (gw, ws) = cluster(1, Arc::new(Echo::default())).await;
        let limit = MeshConfig::for_tests().max_envelope_bytes;
        let big = "x".repeat(limit + 1);
        let mut client = ws[0].client().await;
        let err = client.deliver(wire("m-big", "k", &big, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        assert!(
            err.message().contains(&format!("over the limit of {limit} bytes")),
            "{err}"
        );
        assert_eq!(ws[0].router.stats().oversized, 1);
        // Far over it, tonic's decoder refuses it before it is buffered; it
        // is answered and counted the same way.
        let huge = "x".repeat(8 * 1024 * 1024);
        let err = client.deliver(wire("m-huge", "k", &huge, 1)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument, "{err}");
        assert!(err.message().contains("over the size limit"), "{err}");
        assert_eq!(ws[0].router.stats().oversized, 2);

        // The origin refuses it too, before it touches the network.
        let err = gw.router.send(envelope(&mid("m-big2"), "k", &big)).await.unwrap_err();
        assert_eq!(err.code(), Code::InvalidArgument);
        // And the node still serves normal messages.
        send(&gw.router, envelope(&mid("m-ok"), "k", "fine")).await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_message_that_no_owner_takes_before_its_deadline_gets_an_explicit_error() {
    within(async {
        let (gw, ws) = cluster(1, Arc::new(Echo::default())).await;
        // The only worker stops serving the mesh but stays alive in gossip.
        let mut w = ws.into_iter().next().unwrap();
        w.stop.take().unwrap().send(()).unwrap();
        sleep(Duration::from_millis(100)).await;
        let mut env = envelope(&mid("m-late"), "k", "x");
        env.deadline_unix_ms = mesh::deadline_in(Duration::from_millis(400));
        let started = Instant::now();
        let err = gw.router.send(env).await.unwrap_err();
        assert_eq!(err.code(), Code::DeadlineExceeded, "{err}");
        assert!(err.message().contains("w0"), "the error names what was tried: {err}");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert!(gw.router.stats().failed_attempts >= 1);
    })
    .await;
}

/// A worker node on its own runtime and thread, so that the test can kill it
/// abruptly: shutting the runtime down drops its sockets and tasks at once,
/// like `kill -9` (no gossip leave, no graceful end of gRPC streams).
struct Victim {
    name: String,
    kill: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

fn start_victim(name: &str, seed: SocketAddr, processor: Arc<dyn Processor>) -> Victim {
    let (kill, killed) = std::sync::mpsc::channel::<()>();
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<()>();
    let owned = name.to_owned();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let node = rt.block_on(TestNode::start(&owned, &[seed], Some(processor)));
        ready_tx.send(()).unwrap();
        let _ = killed.recv();
        rt.shutdown_background();
        drop(node);
    });
    ready_rx.recv().unwrap();
    Victim {
        name: name.to_owned(),
        kill,
        thread,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_the_owner_is_killed_mid_stream_every_message_is_answered_once_or_gets_an_explicit_error() {
    within(async {
        let echo: Arc<dyn Processor> = Arc::new(Echo {
            chunks: 3,
            delay: Duration::from_millis(5),
        });
        let gw = TestNode::start("gw", &[], None).await;
        let w0 = TestNode::start("w0", &[gw.gossip.addr()], Some(echo.clone())).await;
        let w1 = TestNode::start("w1", &[gw.gossip.addr()], Some(echo.clone())).await;
        let victim = start_victim("w2", gw.gossip.addr(), echo.clone());
        wait_rings(&[&gw, &w0, &w1], 3).await;

        // 20 conversations, each sending messages back to back for 1.5 s;
        // the victim is killed after 400 ms.
        let stop_at = Instant::now() + Duration::from_millis(1500);
        let mut tasks = Vec::new();
        for k in 0..20 {
            let router = gw.router.clone();
            tasks.push(tokio::spawn(async move {
                let mut outcomes = Vec::new();
                let mut n = 0;
                while Instant::now() < stop_at {
                    let payload = format!("conv-{k} message {n}");
                    let mut env = envelope(&mesh::new_message_id(), &format!("conv-{k}"), &payload);
                    env.deadline_unix_ms = mesh::deadline_in(Duration::from_secs(5));
                    let outcome = send(&router, env).await;
                    outcomes.push((payload, outcome));
                    n += 1;
                }
                outcomes
            }));
        }
        sleep(Duration::from_millis(400)).await;
        let killed_at = Instant::now();
        victim.kill.send(()).unwrap();

        let mut answered = 0;
        let mut errors = Vec::new();
        let mut after_kill_by = BTreeMap::<String, usize>::new();
        for t in tasks {
            for (payload, outcome) in t.await.unwrap() {
                match outcome {
                    Ok(a) if a.error.is_none() => {
                        // Answered exactly once: one complete reply, in order.
                        assert_eq!(a.data, payload.as_bytes(), "reply of {payload:?} was {a:?}");
                        assert!(!a.replayed);
                        answered += 1;
                        *after_kill_by.entry(a.worker).or_default() += 1;
                    }
                    Ok(a) => errors.push(format!("{payload}: error chunk {:?}", a.error)),
                    Err(s) => errors.push(format!("{payload}: status {s}")),
                }
            }
        }
        let total = answered + errors.len();
        println!(
            "{total} messages: {answered} answered ({after_kill_by:?}), {} explicit errors; stats {:?}",
            errors.len(),
            gw.router.stats()
        );
        for e in &errors {
            println!("  {e}");
        }
        // Every send returned (the `within` bound) with a full reply or an
        // explicit error; most were answered; the messages the victim would
        // have taken after its death were re-routed to the survivors.
        assert!(answered > 0 && answered * 10 >= total * 9, "{answered} of {total}");
        assert!(gw.router.stats().rerouted > 0 || gw.router.stats().replies_cut > 0);

        // Every live node declares the victim dead and drops it from the ring.
        wait_rings(&[&gw, &w0, &w1], 2).await;
        println!("victim left every ring {:?} after the kill", killed_at.elapsed());
        assert!(!gw.router.pooled_peers().contains(&victim.name));
        // After the ring has settled, messages for any key are answered.
        for k in 0..20 {
            let a = send(
                &gw.router,
                envelope(&mesh::new_message_id(), &format!("conv-{k}"), "after"),
            )
            .await
            .unwrap();
            assert!(a.worker == "w0" || a.worker == "w1");
        }
        victim.thread.join().unwrap();
    })
    .await;
}

/// Never finishes: sends one chunk first when the payload is `partial`.
#[derive(Debug)]
struct Hang;

impl Processor for Hang {
    fn process<'a>(&'a self, msg: &'a Envelope, out: &'a mut Replies) -> ProcessFuture<'a> {
        Box::pin(async move {
            if msg.payload == "partial" {
                out.send(Bytes::from_static(b"part")).await?;
            }
            std::future::pending().await
        })
    }
}

#[tokio::test]
async fn an_owner_declared_dead_mid_call_is_given_up_and_the_message_rerouted_or_explicitly_cut() {
    within(async {
        let gw = TestNode::start("gw", &[], None).await;
        let w0 = TestNode::start("w0", &[gw.gossip.addr()], Some(Arc::new(Echo::default()))).await;
        let w1 = TestNode::start("w1", &[gw.gossip.addr()], Some(Arc::new(Hang))).await;
        wait_rings(&[&gw, &w0, &w1], 2).await;
        let table = gw.router.table();
        let mut owned_by_w1 = (0..).map(|i| format!("k{i}")).filter(|k| table.owner(k) == Some("w1"));
        let (key_a, key_b) = (owned_by_w1.next().unwrap(), owned_by_w1.next().unwrap());

        // w1 takes both messages and hangs: one before its first chunk, one after.
        let router = gw.router.clone();
        let silent = tokio::spawn(async move { send(&router, envelope(&mid("m-silent"), &key_a, "whole")).await });
        let router = gw.router.clone();
        let partial = tokio::spawn(async move { send(&router, envelope(&mid("m-partial"), &key_b, "partial")).await });
        sleep(Duration::from_millis(300)).await;
        // Its gossip stops (its mesh server keeps the calls open), so the
        // others declare it dead after the failure detector's timeouts.
        w1.gossip.shutdown().await.unwrap();

        let a = silent.await.unwrap().unwrap();
        assert_eq!(
            (a.worker.as_str(), a.data.as_slice(), &a.error),
            ("w0", &b"whole"[..], &None)
        );
        let b = partial.await.unwrap().unwrap();
        assert_eq!(b.data, b"part");
        let (code, message) = b.error.expect("the cut reply ends with an error chunk");
        assert_eq!(code, Code::Unavailable as u32);
        assert!(message.contains("w1") && message.contains("incomplete"), "{message}");
        let stats = gw.router.stats();
        assert_eq!((stats.rerouted, stats.replies_cut), (1, 1), "{stats:?}");
    })
    .await;
}

#[tokio::test]
async fn a_caller_that_goes_away_stops_the_remote_processor() {
    within(async {
        let gw = TestNode::start("gw", &[], None).await;
        let w1 = TestNode::start("w1", &[gw.gossip.addr()], Some(Arc::new(Hang))).await;
        wait_rings(&[&gw, &w1], 1).await;
        let mut reply = gw
            .router
            .send(envelope(&mid("m-cancel"), "k", "partial"))
            .await
            .expect("w1 takes it");
        let first = reply.next().await.unwrap().unwrap();
        assert_eq!(first.data, "part");
        let worker = w1.router.worker().unwrap();
        assert_eq!(worker.in_flight(), 1);
        // The caller goes: the relay drops the gRPC call, the worker's
        // server side sees the stream reset and drops the processor.
        let left = Instant::now();
        drop(reply);
        while worker.in_flight() > 0 {
            sleep(Duration::from_millis(1)).await;
        }
        println!(
            "the remote processor stopped {:?} after its caller left",
            left.elapsed()
        );
        assert_eq!(worker.stats().cancelled, 1);
    })
    .await;
}

/// Remembers what a worker reported, in order.
#[derive(Debug, Default)]
struct Sink {
    seen: Mutex<Vec<String>>,
    replies: Mutex<Vec<node::processor::FinalReply>>,
}

impl node::worker::RecordSink for Sink {
    fn inbound(&self, worker: &str, msg: &Envelope) -> node::worker::Recorded {
        self.seen
            .lock()
            .unwrap()
            .push(format!("in {} {} at {worker}", msg.id, msg.key));
        node::worker::recorded()
    }
    fn reply(&self, worker: &str, msg: &Envelope, reply: &node::processor::FinalReply) -> node::worker::Recorded {
        self.seen.lock().unwrap().push(format!("reply {} at {worker}", msg.id));
        self.replies.lock().unwrap().push(reply.clone());
        node::worker::recorded()
    }
}

/// A sink whose reply records become durable only when the test says so,
/// and that can report the log as down.
#[derive(Debug, Default)]
struct SlowLog {
    durable: Mutex<Vec<oneshot::Sender<Result<(), String>>>>,
    down: std::sync::atomic::AtomicBool,
}

impl node::worker::RecordSink for SlowLog {
    fn inbound(&self, _: &str, _: &Envelope) -> node::worker::Recorded {
        node::worker::recorded()
    }
    fn reply(&self, _: &str, _: &Envelope, _: &node::processor::FinalReply) -> node::worker::Recorded {
        let (tx, rx) = oneshot::channel();
        self.durable.lock().unwrap().push(tx);
        Box::pin(async move { rx.await.unwrap_or_else(|_| Err("dropped".into())) })
    }
    fn health(&self) -> Result<(), String> {
        if self.down.load(Ordering::SeqCst) {
            Err("down".into())
        } else {
            Ok(())
        }
    }
}

#[tokio::test]
async fn the_final_chunk_waits_until_the_records_are_in_the_log_while_the_log_is_up() {
    within(async {
        let log = Arc::new(SlowLog::default());
        let worker = Worker::new("w", WorkerConfig::default(), Arc::new(Echo::default())).with_sink(log.clone());
        let deadline = Instant::now() + Duration::from_secs(5);
        let mut reply = worker.submit(envelope("m1", "k", "abc"), deadline).unwrap();
        let mut data = Vec::new();
        loop {
            // Every data chunk arrives; the final one waits for the log.
            match timeout(Duration::from_millis(300), reply.next()).await {
                Ok(Some(Ok(c))) => {
                    assert!(!c.last, "the final chunk came before the record was durable");
                    data.extend_from_slice(&c.data);
                }
                Err(_) => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(data, b"abc");
        log.recover();
        let last = reply.next().await.unwrap().unwrap();
        assert!(last.last && !last.records_pending);
        assert_eq!(worker.stats().replies_recorded_first, 1);
        assert!(!worker.holds_records_of("k"));

        // With the log down, nobody waits: the reply goes out at once.
        log.down.store(true, Ordering::SeqCst);
        let answer = collect(worker.submit(envelope("m2", "k", "abc"), deadline).unwrap())
            .await
            .unwrap();
        assert_eq!(answer.data, b"abc");
        assert_eq!(worker.stats().replies_unrecorded, 1);
        // ... saying so, and the conversation is held here until its
        // records are in the log.
        assert!(answer.records_pending);
        assert!(worker.holds_records_of("k") && !worker.holds_records_of("other"));
        assert_eq!(worker.conversations_unrecorded(), 1);
        log.recover();
        while worker.holds_records_of("k") {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_worker_reports_each_processed_message_and_its_whole_reply_once_in_order() {
    within(async {
        let sink = Arc::new(Sink::default());
        let config = WorkerConfig {
            max_recorded_reply_bytes: 8,
            ..WorkerConfig::default()
        };
        let worker = Worker::new("w", config, Arc::new(Echo::default())).with_sink(sink.clone());
        let deadline = Instant::now() + Duration::from_secs(10);
        collect(worker.submit(envelope("m1", "k", "hello"), deadline).unwrap())
            .await
            .unwrap();
        collect(worker.submit(envelope("m2", "k", "a longer reply"), deadline).unwrap())
            .await
            .unwrap();
        // A duplicate is replayed from the window, not processed or reported again.
        let again = collect(worker.submit(envelope("m1", "k", "hello"), deadline).unwrap())
            .await
            .unwrap();
        assert!(again.replayed);
        assert_eq!(
            *sink.seen.lock().unwrap(),
            ["in m1 k at w", "reply m1 at w", "in m2 k at w", "reply m2 at w"]
        );
        let replies = sink.replies.lock().unwrap();
        assert_eq!(replies[0].data, b"hello");
        assert!(!replies[0].truncated && replies[0].error.is_none());
        assert_eq!(replies[0].chunks, 3);
        assert_eq!(replies[1].data, b"a longer", "cut at max_recorded_reply_bytes");
        assert!(replies[1].truncated);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_forwarded_replies_on_one_pooled_connection_all_arrive_without_a_retry() {
    // Regression: relayed calls were dropped before their trailers arrived,
    // h2 counted each as a reset stream, and after ~1000 of them it closed the
    // pooled connection (GOAWAY ENHANCE_YOUR_CALM), failing calls in flight.
    within(async {
        let gw = TestNode::start("gw", &[], None).await;
        let w = TestNode::start("w", &[gw.gossip.addr()], Some(Arc::new(Echo::default()))).await;
        wait_rings(&[&gw, &w], 1).await;
        let mut tasks = Vec::new();
        for c in 0..32 {
            let router = gw.router.clone();
            tasks.push(tokio::spawn(async move {
                for n in 0..80 {
                    let env = envelope(&mesh::new_message_id(), &format!("conv-{c}"), &format!("m{n}"));
                    let answer = collect(router.send(env).await.unwrap()).await.unwrap();
                    assert_eq!(answer.error, None);
                }
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        let stats = gw.router.stats();
        assert_eq!(stats.forwarded, 32 * 80);
        assert_eq!(stats.failed_attempts, 0, "no call failed on the pooled connection");
        assert_eq!(stats.rerouted, 0);
        assert_eq!(stats.replies_cut, 0);
    })
    .await;
}

/// A sink that panics on its first report: a bug outside the processor.
#[derive(Debug, Default)]
struct FaultySink {
    panicked: std::sync::atomic::AtomicBool,
}

impl node::worker::RecordSink for FaultySink {
    fn inbound(&self, _: &str, _: &Envelope) -> node::worker::Recorded {
        if !self.panicked.swap(true, Ordering::SeqCst) {
            panic!("a bug in the sink");
        }
        node::worker::recorded()
    }
    fn reply(&self, _: &str, _: &Envelope, _: &node::processor::FinalReply) -> node::worker::Recorded {
        node::worker::recorded()
    }
}

#[tokio::test]
async fn a_lane_that_fails_fails_its_queued_messages_and_the_conversation_goes_on() {
    within(async {
        let worker = Worker::new(
            "w",
            WorkerConfig::default(),
            Arc::new(Echo {
                chunks: 1,
                delay: Duration::from_millis(50),
            }),
        )
        .with_sink(Arc::new(FaultySink::default()));
        let deadline = Instant::now() + Duration::from_secs(5);
        let first = worker.submit(envelope("m1", "k", "one"), deadline).unwrap();
        let queued = worker.submit(envelope("m2", "k", "two"), deadline).unwrap();
        // Both end with an explicit error.
        for reply in [first, queued] {
            let err = collect(reply).await.unwrap_err();
            assert_eq!(err.code(), Code::Internal, "{err}");
        }
        assert_eq!(worker.stats().lane_failures, 1);
        assert_eq!(worker.in_flight(), 0, "their capacity is free again");
        // The conversation's next message starts a fresh lane.
        let next = collect(worker.submit(envelope("m3", "k", "three"), deadline).unwrap())
            .await
            .unwrap();
        assert_eq!(next.data, b"three");
    })
    .await;
}

impl SlowLog {
    /// The log is back: every record on its way is durable now.
    fn recover(&self) {
        self.down.store(false, Ordering::SeqCst);
        for tx in self.durable.lock().unwrap().drain(..) {
            let _ = tx.send(Ok(()));
        }
    }
}

#[tokio::test]
async fn a_conversation_stays_with_the_worker_holding_its_records_until_they_are_in_the_log() {
    stays_with_its_records(MeshConfig::for_tests()).await;
}

/// With one hop, a pinned worker whose records are in cannot pass a message
/// on: it refuses, and the entry routes by the ring at once.
#[tokio::test]
async fn with_one_hop_a_pinned_worker_that_holds_nothing_sends_the_message_back_to_the_ring() {
    stays_with_its_records(MeshConfig {
        max_hops: 1,
        ..MeshConfig::for_tests()
    })
    .await;
}

/// Workers `w0` and `w1` (routers configured with `mesh`) answer while their
/// log is down; `w2` joins and owns some of their conversations.
async fn stays_with_its_records(mesh: MeshConfig) {
    within(async {
        // Two workers whose log is down: replies go out with their records
        // still on the way.
        let logs = [Arc::new(SlowLog::default()), Arc::new(SlowLog::default())];
        for log in &logs {
            log.down.store(true, Ordering::SeqCst);
        }
        let gw = TestNode::start("gw", &[], None).await;
        let echo: Arc<dyn Processor> = Arc::new(Echo::default());
        let mut ws = Vec::new();
        for (i, log) in logs.iter().enumerate() {
            let sink: Arc<dyn node::worker::RecordSink> = log.clone();
            ws.push(
                TestNode::start_with(
                    &format!("w{i}"),
                    &[gw.gossip.addr()],
                    Some(echo.clone()),
                    Some(sink),
                    mesh.clone(),
                )
                .await,
            );
        }
        wait_rings(&[&gw, &ws[0], &ws[1]], 2).await;
        let keys: Vec<String> = (0..40).map(|i| format!("c{i}")).collect();
        let mut answered_by = HashMap::new();
        for k in &keys {
            let a = send(&gw.router, envelope(&mid(&format!("{k}/1")), k, "one"))
                .await
                .unwrap();
            assert!(
                a.records_pending,
                "{k}: the log is down, yet the reply says its records are in"
            );
            answered_by.insert(k.clone(), a.worker);
        }
        assert_eq!(gw.router.pinned(), keys.len());

        // A third worker joins and owns about a third of the conversations
        // now; their next messages still go where their records wait.
        let w2 = TestNode::start("w2", &[gw.gossip.addr()], Some(echo.clone())).await;
        wait_rings(&[&gw, &ws[0], &ws[1], &w2], 3).await;
        let moved: Vec<&String> = keys
            .iter()
            .filter(|k| gw.router.owner(k).as_deref() == Some("w2"))
            .collect();
        assert!(moved.len() >= 5, "{} of {} moved", moved.len(), keys.len());
        for k in &moved {
            let b = send(&gw.router, envelope(&mid(&format!("{k}/2")), k, "two"))
                .await
                .unwrap();
            assert_eq!(b.worker, answered_by[*k], "{k}: answered away from its records");
        }
        assert_eq!(gw.router.stats().pinned, moved.len() as u64);

        // The log is back: once the records are in, the conversations go to
        // their owner, and a reply whose records are in unpins them.
        for log in &logs {
            log.recover();
        }
        for w in &ws {
            let worker = w.router.worker().unwrap().clone();
            while worker.conversations_unrecorded() > 0 {
                sleep(Duration::from_millis(5)).await;
            }
        }
        for k in &moved {
            let c = send(&gw.router, envelope(&mid(&format!("{k}/3")), k, "three"))
                .await
                .unwrap();
            assert_eq!((c.worker.as_str(), c.records_pending), ("w2", false), "{k}");
        }
        assert_eq!(gw.router.pinned(), keys.len() - moved.len());

        // A pinned worker that is gone: the message goes by the ring, and
        // the lost pin is counted.
        let (dying, survivor) = (&ws[0], &ws[1]);
        let pinned_there = keys
            .iter()
            .find(|k| !moved.contains(k) && answered_by[*k] == dying.name)
            .expect("a conversation still pinned to w0");
        dying.gossip.shutdown().await.unwrap();
        wait_rings(&[&gw, survivor, &w2], 2).await;
        let d = send(
            &gw.router,
            envelope(&mid(&format!("{pinned_there}/2")), pinned_there, "four"),
        )
        .await
        .unwrap();
        assert_ne!(d.worker, dying.name);
        assert_eq!(gw.router.stats().pins_lost, 1);
    })
    .await;
}
