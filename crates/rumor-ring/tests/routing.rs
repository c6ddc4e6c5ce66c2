//! Scenario tests for the routing API: forwarding with a hop limit, the
//! bounded-load spill, and edge cases that must answer cleanly.

use rumor_ring::{BoundedLoad, Maglev, Member, Rejection, Ring, Route, Router, VnodeRing};

fn members(names: &[&str]) -> Vec<Member> {
    names.iter().map(|n| Member::new(*n, 1)).collect()
}

/// A key that `ring` assigns to `owner`, found by trying keys in order.
fn key_owned_by(ring: &Ring, owner: &str) -> Vec<u8> {
    (0..10_000)
        .map(|i| format!("conv-{i}").into_bytes())
        .find(|k| ring.owner(k) == Some(owner))
        .expect("some key among 10,000 belongs to each of three members")
}

#[test]
fn the_owner_processes_its_own_key_locally() {
    let ring = Ring::new(&members(&["a", "b", "c"]));
    let key = key_owned_by(&ring, "b");
    assert_eq!(ring.route(&key, "b", 0, 1), Route::Local);
    // Even a message that already used its hops is processed by its owner.
    assert_eq!(ring.route(&key, "b", 1, 1), Route::Local);
}

#[test]
fn a_non_owner_forwards_once_and_then_rejects_at_the_hop_limit() {
    let ring = Ring::new(&members(&["a", "b", "c"]));
    let key = key_owned_by(&ring, "b");
    assert_eq!(ring.route(&key, "a", 0, 1), Route::Forward("b"));
    assert_eq!(ring.route(&key, "a", 1, 1), Route::Reject(Rejection::HopLimit));
    assert_eq!(ring.route(&key, "a", 0, 0), Route::Reject(Rejection::HopLimit));
}

#[test]
fn views_that_disagree_forward_once_instead_of_looping() {
    // The gateway's view still has "c"; the receiver's view does not.
    let old = Ring::new(&members(&["a", "b", "c"]));
    let new = Ring::new(&members(&["a", "b"]));
    assert_ne!(old.checksum(), new.checksum());
    let key = key_owned_by(&old, "c");
    // The gateway routed to "c"; suppose "c" is gone and "a" got it by a
    // retry. "a" uses its own view: it forwards to the new owner, once.
    let new_owner = new.owner(&key).unwrap();
    let receiver = if new_owner == "a" { "b" } else { "a" };
    assert_eq!(new.route(&key, receiver, 0, 1), Route::Forward(new_owner));
    assert_eq!(new.route(&key, new_owner, 1, 1), Route::Local);
}

#[test]
fn routing_with_no_members_rejects_with_no_owner() {
    let ring = Ring::new(&[]);
    assert_eq!(ring.route(b"k", "a", 0, 1), Route::Reject(Rejection::NoOwner));
    assert_eq!(Rejection::NoOwner.to_string(), "no member owns any key");
}

#[test]
fn a_skipped_owner_is_routed_around_as_the_view_without_it_would_route() {
    let ring = Ring::new(&members(&["a", "b", "c"]));
    let without_c = Ring::new(&members(&["a", "b"]));
    for i in 0..200 {
        let key = format!("conv-{i}").into_bytes();
        let order = ring.owners(&key, 3);
        let (owner, next) = (order[0], order[1]);
        // The sender failed to reach the owner: the receiver routes as if it
        // were gone, which is where the key goes once the view drops it.
        let gone = Ring::new(&members(
            &["a", "b", "c"].into_iter().filter(|m| *m != owner).collect::<Vec<_>>(),
        ));
        assert_eq!(gone.owner(&key), Some(next));
        assert_eq!(ring.route_skipping(&key, next, 1, 2, &[owner]), Route::Local);
        let third = order[2];
        assert_eq!(ring.route_skipping(&key, third, 1, 2, &[owner]), Route::Forward(next));
        // A receiver never forwards back to a member in the skip list.
        assert_eq!(ring.route_skipping(&key, third, 1, 2, &[owner, next]), Route::Local);
        if owner != "c" {
            assert_eq!(
                ring.route_skipping(&key, "x", 0, 2, &["c"]),
                without_c.route(&key, "x", 0, 2)
            );
        }
    }
}

#[test]
fn when_every_owner_was_skipped_the_route_says_so() {
    let ring = Ring::new(&members(&["a", "b"]));
    assert_eq!(
        ring.route_skipping(b"k", "gw", 0, 2, &["a", "b"]),
        Route::Reject(Rejection::AllSkipped)
    );
    // Names not in the ring change nothing.
    assert_eq!(
        ring.route_skipping(b"k", "gw", 0, 2, &["zz"]),
        ring.route(b"k", "gw", 0, 2)
    );
    // The hop limit holds after skipping too.
    let key = key_owned_by(&ring, "a");
    assert_eq!(
        ring.route_skipping(&key, "gw", 2, 2, &["a"]),
        Route::Reject(Rejection::HopLimit)
    );
    assert_eq!(ring.route_skipping(&key, "b", 2, 2, &["a"]), Route::Local);
}

#[test]
fn bounded_load_keeps_the_owner_while_it_is_under_capacity() {
    let ring = Ring::new(&members(&["a", "b", "c", "d"]));
    let bound = BoundedLoad::new(125).unwrap();
    let key = b"conv-7";
    let owner = ring.owner(key).unwrap();
    // 40 in flight spread evenly: capacity is ceil(1.25 * 41 / 4) = 13.
    assert_eq!(bound.capacity(40, 4), 13);
    assert_eq!(ring.owner_bounded(key, bound, 40, |_| 10), Some(owner));
}

#[test]
fn bounded_load_spills_to_the_next_preferred_member_when_the_owner_is_full() {
    let ring = Ring::new(&members(&["a", "b", "c", "d"]));
    let bound = BoundedLoad::new(125).unwrap();
    let key = b"conv-7";
    let prefs = ring.owners(key, 4);
    // The owner holds 13 of 40 (at capacity); the second choice too; the
    // third has room, so it gets the message, deterministically.
    let loads = |m: &str| {
        if m == prefs[0] || m == prefs[1] { 13 } else { 7 }
    };
    assert_eq!(ring.owner_bounded(key, bound, 40, loads), Some(prefs[2]));
    assert_eq!(ring.owner_bounded(key, bound, 40, loads), Some(prefs[2]));
}

#[test]
fn bounded_load_with_inconsistent_counts_still_answers_the_owner() {
    let ring = Ring::new(&members(&["a", "b"]));
    let bound = BoundedLoad::new(100).unwrap();
    // Every member reports more than the total allows; nobody has room.
    assert_eq!(ring.owner_bounded(b"k", bound, 0, |_| u64::MAX), ring.owner(b"k"));
}

#[test]
fn bounded_load_rejects_factors_below_one_hundred_percent() {
    assert_eq!(BoundedLoad::new(99), None);
    assert_eq!(BoundedLoad::new(100).map(BoundedLoad::factor_percent), Some(100));
    assert_eq!(BoundedLoad::new(u32::MAX).unwrap().capacity(u64::MAX, 1), u64::MAX);
    assert_eq!(BoundedLoad::new(150).unwrap().capacity(10, 0), 0);
}

#[test]
fn no_members_answer_none_and_empty_without_panicking() {
    let ring = Ring::new(&[]);
    assert!(ring.is_empty());
    assert_eq!(ring.owner(b"k"), None);
    assert!(ring.owners(b"k", 5).is_empty());
    assert_eq!(ring.owner_bounded(b"k", BoundedLoad::new(125).unwrap(), 0, |_| 0), None);
    let maglev = Router::<Maglev>::new(&[]);
    assert_eq!(maglev.owner(b"k"), None);
    assert!(maglev.owners(b"k", 5).is_empty());
    let vnode = Router::<VnodeRing>::new(&[]);
    assert_eq!(vnode.owner(b"k"), None);
    assert!(vnode.owners(b"k", 5).is_empty());
}

#[test]
fn only_zero_weight_members_is_the_same_as_no_members() {
    let ring = Ring::new(&[Member::new("a", 0), Member::new("b", 0)]);
    assert!(ring.is_empty());
    assert_eq!(ring.owner(b"k"), None);
    assert_eq!(ring.checksum(), Ring::new(&[]).checksum());
}

#[test]
fn one_member_owns_every_key() {
    let ring = Ring::new(&members(&["only"]));
    for i in 0..100 {
        assert_eq!(ring.owner(format!("k{i}").as_bytes()), Some("only"));
    }
    assert_eq!(ring.owners(b"k", 10), vec!["only"]);
    assert_eq!(Router::<Maglev>::new(&members(&["only"])).owner(b"k"), Some("only"));
}

#[test]
fn a_huge_weight_takes_nearly_everything_and_nothing_panics() {
    let ms = [Member::new("big", u32::MAX), Member::new("small", 1)];
    let ring = Ring::new(&ms);
    let big = (0..1000)
        .filter(|i| ring.owner(format!("k{i}").as_bytes()) == Some("big"))
        .count();
    assert_eq!(big, 1000);
    assert_eq!(ring.owners(b"k", 2), vec!["big", "small"]);
    // The other algorithms build and answer too.
    assert_eq!(Router::<VnodeRing>::new(&ms).owners(b"k", 3).len(), 2);
    let maglev = Router::<Maglev>::with_config(
        &ms,
        &rumor_ring::MaglevConfig {
            slots_per_member: 100,
            min_slots: 1024,
        },
    );
    assert_eq!(maglev.owners(b"k", 3).len(), 2);
}

#[test]
fn duplicate_names_keep_the_highest_weight_in_any_order() {
    let a = Ring::new(&[Member::new("x", 1), Member::new("x", 5), Member::new("y", 2)]);
    let b = Ring::new(&[Member::new("y", 2), Member::new("x", 5), Member::new("x", 1)]);
    assert_eq!(a.members(), &[Member::new("x", 5), Member::new("y", 2)]);
    assert_eq!(a.checksum(), b.checksum());
    assert_eq!(a.len(), 2);
}

#[test]
fn asking_for_more_owners_than_members_returns_them_all() {
    let ring = Ring::new(&members(&["a", "b", "c"]));
    let mut all = ring.owners(b"k", usize::MAX);
    all.sort_unstable();
    assert_eq!(all, vec!["a", "b", "c"]);
    assert!(ring.owners(b"k", 0).is_empty());
}

#[test]
fn a_weight_change_changes_the_checksum() {
    let a = Ring::new(&[Member::new("x", 1), Member::new("y", 1)]);
    let b = Ring::new(&[Member::new("x", 1), Member::new("y", 2)]);
    assert_ne!(a.checksum(), b.checksum());
}

#[test]
fn the_algorithms_checksums_differ_for_the_same_members() {
    let ms = members(&["a", "b"]);
    let r = Ring::new(&ms).checksum();
    let m = Router::<Maglev>::new(&ms).checksum();
    let v = Router::<VnodeRing>::new(&ms).checksum();
    assert!(r != m && m != v && r != v);
}

/// Pinned answers: the contract between releases. If the hash, the seeds, the
/// canonical order or the algorithm change, conversations would move in a
/// mixed-version cluster, and this test says so first.
#[test]
fn the_default_ring_gives_the_pinned_answers() {
    let ms: Vec<Member> = ["worker-a", "worker-b", "worker-c", "worker-d", "worker-e"]
        .iter()
        .enumerate()
        .map(|(i, n)| Member::new(*n, 1 + (i as u32 % 2)))
        .collect();
    let ring = Ring::new(&ms);
    assert_eq!(ring.checksum(), 0x3a93_3f0f_fd2d_0b5e);
    let want: [[&str; 3]; 8] = [
        ["worker-b", "worker-e", "worker-d"],
        ["worker-b", "worker-c", "worker-d"],
        ["worker-c", "worker-e", "worker-b"],
        ["worker-d", "worker-b", "worker-c"],
        ["worker-d", "worker-a", "worker-b"],
        ["worker-d", "worker-b", "worker-e"],
        ["worker-a", "worker-b", "worker-d"],
        ["worker-d", "worker-a", "worker-e"],
    ];
    for (i, w) in want.iter().enumerate() {
        assert_eq!(ring.owners(format!("conv-{i}").as_bytes(), 3), w, "conv-{i}");
    }
    let maglev = Router::<Maglev>::new(&ms);
    let vnode = Router::<VnodeRing>::new(&ms);
    for (i, (m, v)) in [
        ("worker-d", "worker-b"),
        ("worker-b", "worker-d"),
        ("worker-c", "worker-b"),
        ("worker-d", "worker-d"),
    ]
    .iter()
    .enumerate()
    {
        let key = format!("conv-{i}");
        assert_eq!(maglev.owner(key.as_bytes()), Some(*m), "maglev {key}");
        assert_eq!(vnode.owner(key.as_bytes()), Some(*v), "vnode {key}");
    }
}
