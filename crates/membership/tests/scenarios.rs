//! Scenario tests for the membership protocol, each a short story on a
//! deterministic network (see `harness`).

mod harness;

use std::time::Duration;

use harness::{Net, addr};
use membership::{Config, DecodeError, Event, Meta, Status};
use proto::Message;
use proto::gossip as pb;

fn cfg() -> Config {
    Config::for_tests()
}

#[test]
fn three_nodes_join_through_one_seed_and_see_each_other() {
    let mut net = Net::new(3, cfg());
    net.run_for(net.periods(5));
    assert!(net.all_alive());
    for i in 0..3 {
        assert!(net.saw(i, |e| *e == Event::Joined), "node {i} joined");
    }
}

#[test]
fn a_joining_node_takes_the_seeds_view_without_gossiping_it_again() {
    let mut net = Net::new(6, cfg());
    net.run_for(net.periods(30));
    assert!(net.all_alive());
    net.start(6, addr(6, 0), &[0]);
    while !net.saw(6, |e| *e == Event::Joined) {
        net.run_for(net.periods(1) / 20);
    }
    assert_eq!(net.node(6).members().count(), 6, "the seed's view");
    assert_eq!(net.node(6).pending_broadcasts(), 0, "which the cluster already has");
    net.run_for(net.periods(10));
    assert!(net.all_alive());
}

#[test]
fn a_crashed_member_is_suspected_then_declared_dead_by_all() {
    let mut net = Net::new(5, cfg());
    net.run_for(net.periods(5));
    net.crash(4);
    net.run_for(net.periods(60));
    for i in 0..4 {
        assert_eq!(net.status(i, 4), Some(Status::Dead), "node {i}'s view of node 4");
    }
    assert!((0..4).any(|i| net.saw(
        i,
        |e| matches!(e, Event::MemberSuspect { name, .. } if name == "node-4")
    )));
}

#[test]
fn a_suspected_member_refutes_with_a_higher_incarnation() {
    let mut net = Net::new(5, cfg());
    net.run_for(net.periods(5));
    // Cut node 4 off long enough to be suspected, not long enough to be declared dead.
    net.isolate(4, &[0, 1, 2, 3]);
    let mut suspected = false;
    for _ in 0..40 {
        net.run_for(net.periods(1) / 4);
        if (0..4).any(|i| net.status(i, 4) == Some(Status::Suspect)) {
            suspected = true;
            break;
        }
    }
    assert!(suspected, "node 4 was suspected");
    net.heal();
    net.run_for(net.periods(20));
    assert!(net.node(4).incarnation() > 0, "node 4 raised its incarnation");
    for i in 0..4 {
        let v = net.view(i, 4).unwrap();
        assert_eq!(v.status, Status::Alive, "node {i} sees node 4 alive again");
        assert_eq!(v.incarnation, net.node(4).incarnation());
        assert!(
            !net.saw(i, |e| matches!(e, Event::MemberDown { name, .. } if name == "node-4")),
            "node {i} never declared node 4 dead: the refutation came in time"
        );
    }
    assert!(net.saw(4, |e| matches!(e, Event::Refuted { .. })));
}

#[test]
fn a_graceful_leave_is_seen_as_left_everywhere() {
    let mut net = Net::new(4, cfg());
    net.run_for(net.periods(5));
    let now = net.now;
    net.node_mut(3).leave(now);
    net.flush(3);
    net.run_for(net.periods(5));
    assert_eq!(
        net.node(3).pending_broadcasts(),
        0,
        "the leave notice was sent its share of times"
    );
    net.crash(3);
    net.run_for(net.periods(30));
    for i in 0..3 {
        assert_eq!(net.status(i, 3), Some(Status::Left));
    }
}

#[test]
fn a_restarted_node_with_a_new_address_is_accepted() {
    let mut net = Net::new(4, cfg());
    net.run_for(net.periods(5));
    net.crash(3);
    net.run_for(net.periods(60));
    assert_eq!(net.status(0, 3), Some(Status::Dead));
    net.start(3, addr(3, 1), &[0]);
    net.run_for(net.periods(10));
    assert!(net.all_alive());
    for i in 0..3 {
        let v = net.view(i, 3).unwrap();
        assert_eq!(v.addr, addr(3, 1), "node {i} has the new address");
        assert!(v.incarnation > 0);
    }
}

#[test]
fn a_node_restarted_before_anyone_noticed_takes_over_its_old_record() {
    let mut net = Net::new(4, cfg());
    net.run_for(net.periods(5));
    net.crash(3);
    net.start(3, addr(3, 1), &[0]);
    net.run_for(net.periods(10));
    assert!(net.all_alive());
    for i in 0..3 {
        assert_eq!(net.view(i, 3).unwrap().addr, addr(3, 1));
    }
}

#[test]
fn a_partition_heals_after_repair() {
    let mut net = Net::new(6, cfg());
    net.run_for(net.periods(5));
    for a in 0..3 {
        net.isolate(a, &[3, 4, 5]);
    }
    net.run_for(net.periods(80));
    assert_eq!(
        net.status(0, 4),
        Some(Status::Dead),
        "the sides declared each other dead"
    );
    assert_eq!(net.status(4, 0), Some(Status::Dead));
    net.heal();
    net.run_for(Duration::from_secs(10));
    assert!(net.all_alive(), "one view again after repair");
}

#[test]
fn a_user_gossip_message_reaches_every_member_exactly_once() {
    let mut net = Net::new(8, cfg());
    net.run_for(net.periods(5));
    let now = net.now;
    let id = net.node_mut(2).broadcast(now, b"hello".to_vec().into()).unwrap();
    net.flush(2);
    net.run_for(net.periods(10));
    for i in (0..8).filter(|&i| i != 2) {
        let got: Vec<_> = net.events[i]
            .iter()
            .filter(|(_, e)| matches!(e, Event::UserMessage { origin, seq, .. } if (origin.clone(), *seq) == id))
            .collect();
        assert_eq!(got.len(), 1, "node {i} got the message once");
    }
}

#[test]
fn metadata_changes_spread_with_a_new_incarnation() {
    let mut net = Net::new(4, cfg());
    net.run_for(net.periods(5));
    let meta = Meta {
        roles: vec!["worker".into()],
        capacity: 64,
        ..Meta::default()
    };
    let now = net.now;
    net.node_mut(1).set_meta(now, meta.clone()).unwrap();
    net.flush(1);
    net.run_for(net.periods(10));
    for i in [0, 2, 3] {
        let v = net.view(i, 1).unwrap();
        assert_eq!(v.meta, meta);
        assert!(v.meta.has_role("worker"));
    }
}

#[test]
fn oversized_metadata_and_messages_are_refused_without_change() {
    let mut net = Net::new(1, cfg());
    let inc = net.node(0).incarnation();
    let meta = Meta {
        tags: [("k".to_owned(), "v".repeat(2000))].into(),
        ..Meta::default()
    };
    let now = net.now;
    assert!(net.node_mut(0).set_meta(now, meta).is_err());
    assert_eq!(net.node(0).incarnation(), inc);
    assert!(net.node_mut(0).broadcast(now, vec![0; 5000].into()).is_err());
    assert_eq!(net.node(0).pending_broadcasts(), 0);
}

#[test]
fn malformed_packets_are_counted_and_dropped() {
    let mut net = Net::new(2, cfg());
    net.run_for(net.periods(3));
    net.inject(0, b"\xff\xff\xff garbage");
    net.inject(0, &vec![0u8; 5000]);
    let wrong_version = pb::Packet {
        version: 99,
        ..Default::default()
    }
    .encode_to_vec();
    net.inject(0, &wrong_version);
    let no_sender = pb::Packet {
        version: 1,
        ..Default::default()
    }
    .encode_to_vec();
    net.inject(0, &no_sender);
    let s = net.node(0).stats();
    assert_eq!(s.malformed, 1);
    assert_eq!(s.oversized, 1);
    assert_eq!(s.version_mismatch, 1);
    assert_eq!(s.invalid, 1);
    assert!(matches!(
        membership::decode_packet(&wrong_version, 1400),
        Err(DecodeError::Version { theirs: 99, ours: 1 })
    ));
    net.run_for(net.periods(5));
    assert!(net.all_alive());
}

#[test]
fn a_ping_for_another_name_is_not_acknowledged() {
    let mut net = Net::new(1, cfg());
    net.inject(0, &ping_from_outside("someone-else", vec![]));
    assert_eq!(net.node(0).stats().misdirected, 1);
    assert!(net.node_mut(0).poll_transmit().is_none());
}

/// A ping for `target` from a sender outside the cluster, carrying `gossip`.
fn ping_from_outside(target: &str, gossip: Vec<pb::Gossip>) -> Vec<u8> {
    pb::Packet {
        version: 1,
        from: Some(pb::NodeRef {
            name: "x".into(),
            addr: "127.0.0.9:1".into(),
        }),
        kind: Some(pb::packet::Kind::Ping(pb::Ping {
            seq: 1,
            target: target.into(),
        })),
        gossip,
        view_digest: 0,
    }
    .encode_to_vec()
}

#[test]
fn join_is_retried_until_a_seed_answers() {
    let mut net = Net::new(1, cfg());
    // Node 1 joins through node 0 while the link is cut.
    net.cut.insert((1, 0));
    net.start(1, addr(1, 0), &[0]);
    net.run_for(net.periods(10));
    assert!(net.node(1).is_joining());
    net.heal();
    net.run_for(Duration::from_secs(3));
    assert!(!net.node(1).is_joining());
    assert!(net.all_alive());
}

#[test]
fn failed_members_are_reaped_after_their_retention() {
    let cfg = Config {
        dead_retention: Duration::from_secs(5),
        ..cfg()
    };
    let mut net = Net::new(3, cfg);
    net.run_for(net.periods(5));
    net.crash(2);
    net.run_for(net.periods(40));
    assert_eq!(net.status(0, 2), Some(Status::Dead));
    net.run_for(Duration::from_secs(6));
    assert_eq!(net.status(0, 2), None, "forgotten");
    assert!(net.saw(0, |e| matches!(e, Event::MemberReaped { name } if name == "node-2")));
}

#[test]
fn a_node_that_misses_acks_raises_its_health_multiplier() {
    let mut net = Net::new(4, cfg());
    net.run_for(net.periods(5));
    // Everything node 0 receives is lost: its probes all fail.
    for j in 1..4 {
        net.cut.insert((j, 0));
    }
    net.run_for(net.periods(6));
    assert!(net.node(0).health_score() > 0);
    net.heal();
    net.run_for(net.periods(60));
    assert_eq!(net.node(0).health_score(), 0, "recovers once acks return");
}

#[test]
fn news_after_a_quiet_spell_is_not_mistaken_for_a_late_wake_up() {
    // LAN timings: the gossip tick is not kept current while nothing is
    // queued, so news after a quiet second makes an old deadline due.
    let mut net = Net::new(3, Config::lan());
    net.run_for(net.periods(20));
    assert!(net.all_alive());
    for k in 0..20 {
        net.run_for(Duration::from_millis(900));
        net.broadcast(k % 3, format!("news {k}").as_bytes());
    }
    net.run_for(net.periods(5));
    for i in 0..3 {
        let s = net.node(i).stats();
        assert_eq!(s.late_wakeups, 0, "node {i}: timers fired on time are never late");
        assert_eq!(net.node(i).health_score(), 0, "node {i} is healthy");
    }
}

#[test]
fn a_node_whose_timers_fire_late_backs_off_and_suspects_nobody_meanwhile() {
    let mut net = Net::new(3, Config::lan());
    net.run_for(net.periods(20));
    assert!(net.all_alive());
    // Node 0 does not run for 3 s (its host is busy): its next call comes late.
    net.stall(0, Duration::from_secs(3));
    net.run_for(net.periods(10));
    let s = net.node(0).stats();
    assert!(s.late_wakeups >= 1, "{s:?}");
    assert_eq!(s.suspicions, 0, "a late node accuses nobody: {s:?}");
    assert!(net.all_alive());
}

#[test]
fn a_failure_found_in_a_quiet_cluster_is_not_mistaken_for_a_late_wake_up() {
    // A failure brings news, a suspicion deadline and reconnection attempts
    // to a quiet cluster; none of it may look like a late call. Reconnection
    // is not kept current while nobody is down, so the first member declared
    // dead must start it again from now. Crashed at 100 points of the
    // survivors' periods; most survivors learn of it from gossip, in a packet.
    for k in 0..100u32 {
        let mut net = Net::new(8, Config::lan());
        net.run_for(net.periods(20) + Duration::from_millis(137) * k);
        assert!(net.all_alive());
        net.crash(7);
        net.run_for(net.periods(40));
        for i in 0..7 {
            assert_eq!(
                net.status(i, 7),
                Some(Status::Dead),
                "offset {k}: node {i} found the crash"
            );
            let s = net.node(i).stats();
            assert_eq!(
                s.late_wakeups, 0,
                "offset {k}: node {i} was never kept from running: {s:?}"
            );
        }
    }
}

#[test]
fn a_confirmation_after_the_shortened_timeout_ran_out_is_not_mistaken_for_a_late_wake_up() {
    // Six members: a suspicion times out after 24 s unconfirmed, 4 s with
    // three confirmations. Node 5 crashes; the other four are kept from
    // running, so node 0 suspects alone and the confirmations come 5 s
    // after its suspicion began.
    let mut net = Net::new(6, Config::lan());
    net.run_for(net.periods(20));
    assert!(net.all_alive());
    let inc = net.view(0, 5).unwrap().incarnation;
    net.crash(5);
    for i in 1..5 {
        net.stall(i, Duration::from_secs(60));
    }
    for _ in 0..200 {
        if net.status(0, 5) == Some(Status::Suspect) {
            break;
        }
        net.run_for(Duration::from_millis(100));
    }
    assert_eq!(net.status(0, 5), Some(Status::Suspect));
    net.run_for(Duration::from_secs(5));
    assert_eq!(net.status(0, 5), Some(Status::Suspect), "unconfirmed, still suspected");
    for from in ["node-1", "node-2", "node-3"] {
        let suspect = pb::Gossip {
            kind: Some(pb::gossip::Kind::Suspect(pb::Suspect {
                node: Net::name(5),
                incarnation: inc,
                from: from.into(),
            })),
        };
        net.inject(0, &ping_from_outside(&Net::name(0), vec![suspect]));
    }
    net.run_for(Duration::from_millis(100));
    assert_eq!(
        net.status(0, 5),
        Some(Status::Dead),
        "confirmed three times: dead at once"
    );
    let s = net.node(0).stats();
    assert_eq!(s.late_wakeups, 0, "node 0 was never kept from running: {s:?}");
}
