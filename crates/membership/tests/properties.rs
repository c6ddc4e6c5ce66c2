//! Property tests: whatever arrives, the state machine neither panics nor
//! lets an incarnation go down.

use std::collections::HashMap;
use std::time::Duration;

use membership::{Config, Membership, Meta};
use proptest::prelude::*;
use proto::Message;
use proto::gossip as pb;

fn node() -> Membership {
    let mut m = Membership::new(
        Config::for_tests(),
        "me",
        "127.0.0.1:7946".parse().unwrap(),
        Meta::default(),
        7,
        Duration::ZERO,
    )
    .unwrap();
    m.join(Duration::ZERO, &["127.0.0.2:7946".parse().unwrap()]);
    m
}

const NAMES: &[&str] = &["me", "a", "b", "c", ""];

fn node_ref() -> impl Strategy<Value = Option<pb::NodeRef>> {
    prop::option::weighted(
        0.95,
        (
            prop::sample::select(NAMES),
            prop::sample::select(&["127.0.0.1:7946", "127.0.0.3:1", "bogus", ""][..]),
        )
            .prop_map(|(n, a)| pb::NodeRef {
                name: n.to_owned(),
                addr: a.to_owned(),
            }),
    )
}

fn gossip() -> impl Strategy<Value = pb::Gossip> {
    use pb::gossip::Kind;
    let name = prop::sample::select(NAMES).prop_map(str::to_owned);
    let inc = 0u64..6;
    prop_oneof![
        (node_ref(), inc.clone()).prop_map(|(node, incarnation)| Kind::Alive(pb::Alive {
            node,
            incarnation,
            meta: None
        })),
        (name.clone(), inc.clone(), name.clone()).prop_map(|(node, incarnation, from)| Kind::Suspect(pb::Suspect {
            node,
            incarnation,
            from
        })),
        (name.clone(), inc, name.clone(), any::<bool>()).prop_map(|(node, incarnation, from, left)| Kind::Dead(
            pb::Dead {
                node,
                incarnation,
                from,
                left
            }
        )),
        (name, 0u64..4, prop::collection::vec(any::<u8>(), 0..64)).prop_map(|(origin, seq, p)| Kind::User(
            pb::UserMessage {
                origin,
                seq,
                payload: p.into()
            }
        )),
    ]
    .prop_map(|k| pb::Gossip { kind: Some(k) })
}

fn member_state() -> impl Strategy<Value = pb::MemberState> {
    (node_ref(), 0u64..6, 0i32..6).prop_map(|(node, incarnation, status)| pb::MemberState {
        node,
        incarnation,
        status,
        meta: None,
    })
}

fn packet() -> impl Strategy<Value = (pb::Packet, bool)> {
    use pb::packet::Kind;
    let kind = prop_oneof![
        (any::<u64>(), prop::sample::select(NAMES)).prop_map(|(seq, t)| Kind::Ping(pb::Ping { seq, target: t.into() })),
        (0u64..8, node_ref(), any::<bool>()).prop_map(|(seq, target, want_nack)| Kind::PingReq(pb::PingReq {
            seq,
            target,
            want_nack
        })),
        (0u64..8).prop_map(|seq| Kind::Ack(pb::Ack { seq })),
        (0u64..8).prop_map(|seq| Kind::Nack(pb::Nack { seq })),
        (
            any::<bool>(),
            any::<bool>(),
            prop::collection::vec(member_state(), 0..6)
        )
            .prop_map(|(request, join, members)| Kind::PushPull(pb::PushPull { request, join, members })),
        Just(Kind::GossipOnly(pb::Empty {})),
    ];
    (
        prop::sample::select(&[1u32, 1, 1, 2][..]),
        node_ref(),
        prop::option::weighted(0.95, kind),
        prop::collection::vec(gossip(), 0..6),
        any::<bool>(),
        prop::option::of(any::<u32>()),
    )
        .prop_map(|(version, from, kind, gossip, stream, digest)| {
            (
                pb::Packet {
                    version,
                    from,
                    kind,
                    gossip,
                    view_digest: digest.unwrap_or(0),
                },
                stream,
            )
        })
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_bytes_never_panic_and_are_counted(datagrams in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..2000), 1..20)) {
        let mut m = node();
        let mut now = Duration::ZERO;
        for d in &datagrams {
            now += Duration::from_millis(7);
            m.handle_datagram(now, d);
            m.handle_stream(now, d);
            m.handle_timeout(now);
        }
        prop_assert_eq!(m.stats().packets_in, 2 * datagrams.len() as u64);
        while m.poll_transmit().is_some() {}
    }

    #[test]
    fn random_packet_sequences_never_lower_an_incarnation(packets in prop::collection::vec(packet(), 1..60)) {
        let mut m = node();
        let mut now = Duration::ZERO;
        let mut seen: HashMap<String, u64> = HashMap::new();
        let mut mine = m.incarnation();
        for (p, stream) in &packets {
            now += Duration::from_millis(13);
            let bytes = p.encode_to_vec();
            if *stream { m.handle_stream(now, &bytes) } else { m.handle_datagram(now, &bytes) }
            m.handle_timeout(now);
            prop_assert!(m.incarnation() >= mine, "local incarnation went down");
            mine = m.incarnation();
            for mem in m.members() {
                if let Some(&old) = seen.get(&mem.name) {
                    prop_assert!(mem.incarnation >= old, "incarnation of {} went down", mem.name);
                }
                seen.insert(mem.name.clone(), mem.incarnation);
            }
            prop_assert!(m.member("me").is_none(), "this node never lists itself");
            prop_assert!(m.member("").is_none(), "empty names are rejected");
            while let Some(t) = m.poll_transmit() {
                prop_assert!(t.reliable || t.payload.len() <= m.config().max_packet_size);
            }
        }
    }
}
