//! Gossip over real sockets on 127.0.0.1 with port 0 and the test timings of
//! `membership::Config::for_tests()` (100 ms protocol period). Every scenario
//! is bounded by `LIMIT` and waits for outcomes rather than for fixed times
//! wherever it can.

use std::collections::BTreeSet;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use membership::{Event, Status};
use node::crypto::{Key, KeyringError};
use node::gossip::{self, CommandError, GossipConfig, GossipHandle, TransportStats, View};
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpStream, UdpSocket};
use tokio::time::{sleep, timeout};

const LIMIT: Duration = Duration::from_secs(20);

async fn within<T>(f: impl Future<Output = T>) -> T {
    timeout(LIMIT, f).await.expect("scenario did not finish in time")
}

fn config(name: &str, seeds: &[SocketAddr], keys: &[&Key]) -> GossipConfig {
    let mut c = GossipConfig::new(name, "127.0.0.1:0".parse().unwrap());
    c.membership = membership::Config::for_tests();
    c.seeds = seeds.to_vec();
    c.keys = keys.iter().map(|k| k.to_base64()).collect();
    c.stream_timeout = Duration::from_secs(2);
    c
}

/// Starts `n` nodes named `n0..`, all joining through `n0`, and waits until
/// every node sees every other alive.
async fn cluster(n: usize, keys: &[&Key]) -> Vec<GossipHandle> {
    let first = gossip::spawn(config("n0", &[], keys)).await.unwrap();
    let mut nodes = vec![first.clone()];
    for i in 1..n {
        let seeds = [first.addr()];
        nodes.push(gossip::spawn(config(&format!("n{i}"), &seeds, keys)).await.unwrap());
    }
    let names = names(&nodes);
    for node in &nodes {
        wait_view(node, |v| live_names(v) == names).await;
    }
    nodes
}

fn names(nodes: &[GossipHandle]) -> BTreeSet<String> {
    nodes.iter().map(|n| n.name().to_owned()).collect()
}

fn live_names(v: &View) -> BTreeSet<String> {
    v.live().map(|m| m.name.clone()).collect()
}

fn all_alive(v: &View, names: &BTreeSet<String>) -> bool {
    names
        .iter()
        .all(|n| v.member(n).is_some_and(|m| m.status == Status::Alive))
}

async fn wait_view(node: &GossipHandle, mut pred: impl FnMut(&View) -> bool) {
    node.view().wait_for(|v| pred(v)).await.expect("gossip task stopped");
}

async fn wait_status(node: &GossipHandle, member: &str, status: Status) {
    wait_view(node, |v| v.member(member).is_some_and(|m| m.status == status)).await;
}

/// Polls the transport counters until `pred` holds.
async fn wait_counters(node: &GossipHandle, pred: impl Fn(&TransportStats) -> bool) -> TransportStats {
    loop {
        let s = node.transport_stats();
        if pred(&s) {
            return s;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn three_nodes_form_a_cluster_and_all_see_the_same_members() {
    within(async {
        let nodes = cluster(3, &[&Key::generate()]).await;
        let views: Vec<BTreeSet<(String, SocketAddr)>> = nodes
            .iter()
            .map(|n| n.view().borrow().live().map(|m| (m.name.clone(), m.addr)).collect())
            .collect();
        assert_eq!(views[0].len(), 3);
        assert!(views.iter().all(|v| *v == views[0]), "{views:?}");
        // Each node is known under the address it advertises.
        for n in &nodes {
            assert!(views[0].contains(&(n.name().to_owned(), n.addr())));
            let snap = n.snapshot().await.unwrap();
            assert!(snap.view.joined && !snap.joining);
            assert_eq!(snap.transport.decrypt_failures, 0);
        }
    })
    .await;
}

#[tokio::test]
async fn a_node_bound_to_port_zero_advertises_the_port_it_got_for_udp_and_tcp() {
    within(async {
        let node = gossip::spawn(config("solo", &[], &[])).await.unwrap();
        let addr = node.addr();
        assert_ne!(addr.port(), 0);
        assert_eq!(node.view().borrow().local.addr, addr);
        // The TCP listener shares the port number.
        TcpStream::connect(addr).await.unwrap();
        node.wait_joined().await.unwrap();
        node.shutdown().await.unwrap();
        assert!(node.snapshot().await.is_err());
    })
    .await;
}

#[tokio::test]
async fn a_node_stopped_without_leaving_is_marked_dead_by_the_others() {
    within(async {
        let nodes = cluster(3, &[&Key::generate()]).await;
        let mut events = nodes[0].events();
        nodes[2].shutdown().await.unwrap();
        wait_status(&nodes[0], "n2", Status::Dead).await;
        wait_status(&nodes[1], "n2", Status::Dead).await;
        loop {
            if let Event::MemberDown { name, left } = events.recv().await.unwrap() {
                assert_eq!((name.as_str(), left), ("n2", false));
                break;
            }
        }
        // The survivors still see each other.
        let pair: BTreeSet<String> = ["n0", "n1"].map(String::from).into();
        assert!(all_alive(&nodes[0].view().borrow(), &pair));
    })
    .await;
}

#[tokio::test]
async fn a_graceful_leave_is_seen_as_left_by_the_others() {
    within(async {
        let nodes = cluster(3, &[&Key::generate()]).await;
        let outcome = nodes[2].leave(Duration::from_secs(3)).await.unwrap();
        assert!(outcome.drained, "{outcome:?}");
        assert_eq!(nodes[2].view().borrow().local.status, Status::Left);
        wait_status(&nodes[0], "n2", Status::Left).await;
        wait_status(&nodes[1], "n2", Status::Left).await;
        // A node that left refuses new gossip messages.
        assert!(matches!(
            nodes[2].broadcast(&b"late"[..]).await,
            Err(CommandError::Rejected(membership::BroadcastError::Left))
        ));
        nodes[2].shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn a_node_with_the_wrong_key_cannot_join_and_the_others_count_decrypt_failures() {
    within(async {
        let key = Key::generate();
        let nodes = cluster(2, &[&key]).await;
        let intruder = gossip::spawn(config("intruder", &[nodes[0].addr()], &[&Key::generate()]))
            .await
            .unwrap();
        // The join request (a push-pull frame) is dropped undecrypted; the
        // intruder retries, so failures keep coming.
        wait_counters(&nodes[0], |s| s.decrypt_failures >= 2).await;
        let snap = intruder.snapshot().await.unwrap();
        assert!(snap.joining && !snap.view.joined);
        assert!(snap.view.members.is_empty());
        for n in &nodes {
            let v = n.view().borrow().clone();
            assert!(v.member("intruder").is_none(), "{v:?}");
            assert!(all_alive(&v, &names(&nodes)));
            assert_eq!(n.snapshot().await.unwrap().stats.malformed, 0);
        }
        intruder.shutdown().await.unwrap();
    })
    .await;
}

#[tokio::test]
async fn rotating_the_key_across_a_running_cluster_keeps_it_alive_and_converged() {
    within(async {
        let old = Key::generate();
        let new = Key::generate();
        let nodes = cluster(3, &[&old]).await;
        let all = names(&nodes);
        let mut events: Vec<_> = nodes.iter().map(|n| n.events()).collect();
        let settle = || sleep(Duration::from_millis(300));

        for n in &nodes {
            assert_eq!(n.install_key(&new.to_base64()).await.unwrap(), vec![old.id(), new.id()]);
        }
        settle().await;
        for n in &nodes {
            assert_eq!(n.use_key(&new.to_base64()).await.unwrap(), vec![new.id(), old.id()]);
        }
        settle().await;
        for n in &nodes {
            assert_eq!(n.remove_key(&old.to_base64()).await.unwrap(), vec![new.id()]);
        }
        // Several protocol periods under the new key alone.
        sleep(Duration::from_secs(1)).await;

        for (n, ev) in nodes.iter().zip(&mut events) {
            wait_view(n, |v| all_alive(v, &all)).await;
            assert_eq!(n.transport_stats().decrypt_failures, 0, "{}", n.name());
            while let Ok(e) = ev.try_recv() {
                assert!(!matches!(e, Event::MemberDown { .. }), "{}: {e:?}", n.name());
            }
        }
        // A newcomer with only the new key joins (over TCP push-pull) and is
        // seen by all.
        let late = gossip::spawn(config("late", &[nodes[1].addr()], &[&new]))
            .await
            .unwrap();
        late.wait_joined().await.unwrap();
        let mut all = all;
        all.insert("late".into());
        for n in nodes.iter().chain([&late]) {
            wait_view(n, |v| all_alive(v, &all)).await;
        }
    })
    .await;
}

#[tokio::test]
async fn the_handle_refuses_to_remove_the_primary_key_or_to_rotate_without_encryption() {
    within(async {
        let key = Key::generate();
        let node = gossip::spawn(config("n0", &[], &[&key])).await.unwrap();
        assert_eq!(
            node.remove_key(&key.to_base64()).await,
            Err(CommandError::Rejected(KeyringError::RemovePrimary(key.id())))
        );
        let stranger = Key::generate();
        assert_eq!(
            node.use_key(&stranger.to_base64()).await,
            Err(CommandError::Rejected(KeyringError::UnknownKey(stranger.id())))
        );
        assert_eq!(
            node.install_key("short").await,
            Err(CommandError::Rejected(KeyringError::NotBase64))
        );
        assert_eq!(node.keys().await.unwrap(), vec![key.id()]);

        let plain = gossip::spawn(config("p0", &[], &[])).await.unwrap();
        assert_eq!(
            plain.install_key(&key.to_base64()).await,
            Err(CommandError::Rejected(KeyringError::Plaintext))
        );
        assert!(plain.snapshot().await.unwrap().keys.is_none());
    })
    .await;
}

#[tokio::test]
async fn garbage_datagrams_and_bad_frames_are_counted_and_do_not_crash_the_node() {
    within(async {
        let key = Key::generate();
        let mut cfg = config("n0", &[], &[&key]);
        cfg.stream_timeout = Duration::from_millis(300);
        cfg.first_frame_timeout = Duration::from_millis(300);
        cfg.max_streams_per_peer = 1;
        let target = gossip::spawn(cfg).await.unwrap();
        let peer = gossip::spawn(config("n1", &[target.addr()], &[&key])).await.unwrap();
        let pair = names(&[target.clone(), peer.clone()]);
        wait_view(&target, |v| all_alive(v, &pair)).await;
        let addr = target.addr();

        // Datagrams: garbage of many sizes (the empty one included), then one
        // over the size limit.
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for len in 0..20usize {
            let junk: Vec<u8> = (0..len * 13).map(|i| (i * 31 + len) as u8).collect();
            sock.send_to(&junk, addr).await.unwrap();
        }
        wait_counters(&target, |s| s.decrypt_failures >= 20).await;
        sock.send_to(&[1u8; 5000], addr).await.unwrap();
        wait_counters(&target, |s| s.oversized_datagrams == 1).await;

        // A frame announcing 4 GiB: refused before any body is read.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        wait_counters(&target, |s| s.oversized_frames == 1).await;
        // A frame cut short.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&1000u32.to_be_bytes()).await.unwrap();
        s.write_all(b"0123456789").await.unwrap();
        drop(s);
        wait_counters(&target, |s| s.stream_errors == 1).await;
        // A whole frame whose body is not an encrypted packet.
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&node::frame::encode(&[7u8; 100]).unwrap()).await.unwrap();
        drop(s);
        wait_counters(&target, |s| s.decrypt_failures >= 21).await;
        // An idle connection holds its source's only slot until it times
        // out; a second one from the same source meanwhile is refused.
        let idle = TcpStream::connect(addr).await.unwrap();
        let _second = TcpStream::connect(addr).await.unwrap();
        wait_counters(&target, |s| s.streams_rejected >= 1).await;
        wait_counters(&target, |s| s.stream_timeouts == 1).await;
        drop(idle);

        // Nothing reached the state machine, and the cluster is intact.
        let snap = target.snapshot().await.unwrap();
        assert_eq!(snap.stats.malformed, 0, "{:?}", snap.stats);
        wait_view(&target, |v| all_alive(v, &pair)).await;
        wait_view(&peer, |v| all_alive(v, &pair)).await;
        let snap = peer.snapshot().await.unwrap();
        assert_eq!(snap.transport.decrypt_failures, 0);
    })
    .await;
}

/// A TCP connection to `to` from source address `from` (another loopback
/// address stands for another host).
async fn connect_from(from: &str, to: std::net::SocketAddr) -> TcpStream {
    let sock = tokio::net::TcpSocket::new_v4().unwrap();
    sock.bind(format!("{from}:0").parse().unwrap()).unwrap();
    sock.connect(to).await.unwrap()
}

#[tokio::test]
async fn idle_connections_from_outside_cannot_keep_a_new_node_from_joining() {
    within(async {
        let key = Key::generate();
        let seed = gossip::spawn(config("seed", &[], &[&key])).await.unwrap();
        let addr = seed.addr();
        // Someone without the key opens 80 connections and sends nothing,
        // and keeps opening new ones as they are closed.
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flood = tokio::spawn({
            let stop = stop.clone();
            async move {
                let mut held = Vec::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    while held.len() < 80 {
                        held.push(connect_from("127.0.0.2", addr).await);
                    }
                    sleep(Duration::from_millis(50)).await;
                    // Keep the ones still open; replace the closed ones.
                    held.retain(|s: &TcpStream| s.peer_addr().is_ok() && !peer_closed(s));
                }
            }
        });
        sleep(Duration::from_millis(200)).await;
        // A new node joins through the seed's push-pull, from another address.
        let joiner = gossip::spawn(config("joiner", &[addr], &[&key])).await.unwrap();
        let pair = names(&[seed.clone(), joiner.clone()]);
        wait_view(&joiner, |v| all_alive(v, &pair)).await;
        wait_view(&seed, |v| all_alive(v, &pair)).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        flood.await.unwrap();
        let t = seed.transport_stats();
        assert!(
            t.streams_rejected > 0,
            "the flood was refused beyond its source's limit: {t:?}"
        );
    })
    .await;
}

/// True when the peer has closed `s` (a read would return end of file).
fn peer_closed(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1];
    matches!(s.try_read(&mut buf), Ok(0))
}

#[tokio::test]
async fn a_plaintext_node_counts_garbage_as_malformed_packets() {
    within(async {
        let node = gossip::spawn(config("plain", &[], &[])).await.unwrap();
        let sock = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        for len in 1..=10usize {
            sock.send_to(&vec![0xff; len * 7], node.addr()).await.unwrap();
        }
        loop {
            let s = node.snapshot().await.unwrap().stats;
            if s.malformed + s.invalid + s.version_mismatch >= 10 {
                break;
            }
            sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(node.transport_stats().decrypt_failures, 0);
    })
    .await;
}

#[tokio::test]
async fn a_user_gossip_message_reaches_every_node() {
    within(async {
        let nodes = cluster(3, &[&Key::generate()]).await;
        let mut subscribers: Vec<_> = nodes[1..].iter().map(|n| n.events()).collect();
        let (origin, seq) = nodes[0].broadcast(&b"hello, mesh"[..]).await.unwrap();
        assert_eq!(origin, "n0");
        for events in &mut subscribers {
            loop {
                if let Event::UserMessage {
                    origin: o,
                    seq: s,
                    payload,
                } = events.recv().await.unwrap()
                {
                    assert_eq!((o.as_str(), s, &payload[..]), ("n0", seq, &b"hello, mesh"[..]));
                    break;
                }
            }
        }
        for n in &nodes[1..] {
            assert_eq!(n.snapshot().await.unwrap().stats.user_delivered, 1);
        }
    })
    .await;
}

#[tokio::test]
async fn a_node_whose_link_is_slowed_is_suspected_and_alive_again_once_it_is_restored() {
    within(async {
        let nodes = cluster(3, &[]).await;
        // Fault injection: its datagrams and frames (acks included) leave
        // 400 ms late, past the probe timeout of the test timings.
        let mut events = nodes[0].events();
        nodes[2].set_delay(Duration::from_millis(400));
        assert_eq!(nodes[2].delay(), Duration::from_millis(400));
        // The suspicion may be refuted within one view interval, so it is
        // looked for among the events rather than in the view.
        loop {
            match events.recv().await {
                Ok(Event::MemberSuspect { name, .. }) if name == "n2" => break,
                Ok(Event::MemberDown { name, .. }) if name == "n2" => break,
                Ok(_) | Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {}
                Err(e) => panic!("events ended: {e}"),
            }
        }
        nodes[2].set_delay(Duration::ZERO);
        wait_status(&nodes[0], "n2", Status::Alive).await;
        wait_status(&nodes[1], "n2", Status::Alive).await;
    })
    .await
}
