//! The routing table of one gossip view.

use std::collections::BTreeMap;

use rumor_ring::{Member as RingMember, Ring, Route};

use super::config::MeshConfig;
use crate::gossip::View;
use crate::role::Role;

/// The routing table of one gossip view: a [`Ring`] over the live members
/// with the worker role, weighted by their advertised capacity, one more
/// ring per model over the workers that serve it (their `models` tag), and
/// where to reach each of them.
///
/// A message that names no model is routed on the ring of all workers; one
/// that names a model, on that model's ring, so adding a worker that serves
/// it moves only that worker's share of the model's conversations. In a
/// cluster where every worker serves the same models the rings agree.
#[derive(Debug, Clone)]
pub struct Table {
    ring: Ring,
    models: BTreeMap<String, Ring>,
    addrs: BTreeMap<String, String>,
    checksum: u64,
}

impl Table {
    /// Builds the table from a view: live members holding the worker role
    /// with capacity above 0 and a `config.service` address.
    pub fn from_view(view: &View, config: &MeshConfig) -> Self {
        let mut members = Vec::new();
        let mut by_model: BTreeMap<String, Vec<RingMember>> = BTreeMap::new();
        let mut addrs = BTreeMap::new();
        for m in view.live() {
            let Some(addr) = m.meta.services.get(&config.service) else {
                continue;
            };
            if m.meta.has_role(Role::Worker.as_str()) && m.meta.capacity > 0 {
                members.push(RingMember::new(m.name.clone(), m.meta.capacity));
                addrs.insert(m.name.clone(), addr.clone());
                let models = m.meta.tags.get("models").map(String::as_str).unwrap_or("");
                for model in models.split(',').filter(|s| !s.is_empty()) {
                    by_model
                        .entry(model.to_owned())
                        .or_default()
                        .push(RingMember::new(m.name.clone(), m.meta.capacity));
                }
            }
        }
        let ring = Ring::new(&members);
        let models: BTreeMap<String, Ring> = by_model
            .into_iter()
            .map(|(model, members)| (model, Ring::new(&members)))
            .collect();
        // One number for all rings: envelopes carry it, and a receiver
        // whose number differs counts a disagreement.
        let checksum = models.iter().fold(ring.checksum(), |acc, (model, r)| {
            let h = rumor_ring::hash::key_hash(model.as_bytes()) ^ r.checksum();
            acc.rotate_left(7) ^ h
        });
        Self {
            ring,
            models,
            addrs,
            checksum,
        }
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The ring of the workers serving `model` (all workers for `""`);
    /// `None` when no live worker serves it.
    pub fn ring_for(&self, model: &str) -> Option<&Ring> {
        if model.is_empty() {
            Some(&self.ring)
        } else {
            self.models.get(model)
        }
    }

    /// The models live workers serve.
    pub fn models(&self) -> impl Iterator<Item = &str> {
        self.models.keys().map(String::as_str)
    }

    /// The rings' checksum, carried in every envelope this node sends.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// The owner of `key` (on the ring of all workers).
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.ring.owner(key.as_bytes())
    }

    /// The owner of `key` for `model`.
    pub fn owner_for(&self, key: &str, model: &str) -> Option<&str> {
        self.ring_for(model)?.owner(key.as_bytes())
    }

    /// True when worker `name` is on the ring of `model` (of all workers
    /// for `""`).
    pub fn serves(&self, name: &str, model: &str) -> bool {
        self.ring_for(model)
            .is_some_and(|ring| ring.members().iter().any(|m| m.name == name))
    }

    /// A member's mesh address.
    pub fn addr(&self, name: &str) -> Option<&str> {
        self.addrs.get(name).map(String::as_str)
    }

    /// What node `me` does with a message for `key` that has been sent
    /// `hops` times and that its senders failed to deliver to the members
    /// in `skip`: the pure rule of [`rumor_ring::Router::route_skipping`]
    /// on the ring of all workers.
    pub fn route<'a>(&'a self, key: &str, me: &str, hops: u32, max_hops: u32, skip: &[String]) -> Route<'a> {
        self.ring.route_skipping(key.as_bytes(), me, hops, max_hops, skip)
    }

    /// As [`Table::route`], on the ring of `model`; `None` when no live
    /// worker serves it.
    pub fn route_model<'a>(
        &'a self,
        key: &str,
        model: &str,
        me: &str,
        hops: u32,
        max_hops: u32,
        skip: &[String],
    ) -> Option<Route<'a>> {
        Some(
            self.ring_for(model)?
                .route_skipping(key.as_bytes(), me, hops, max_hops, skip),
        )
    }
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.checksum() == other.checksum() && self.addrs == other.addrs
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use membership::{Member, Meta, Status};

    use super::*;

    fn worker(name: &str, models: &str) -> Member {
        let mut meta = Meta {
            roles: vec!["worker".into()],
            capacity: 16,
            ..Meta::default()
        };
        meta.services.insert("mesh".into(), format!("{name}:7000"));
        meta.tags.insert("models".into(), models.into());
        Member {
            name: name.into(),
            addr: "127.0.0.1:1".parse().unwrap(),
            incarnation: 1,
            status: Status::Alive,
            meta,
            since: Duration::ZERO,
        }
    }

    fn table(workers: &[Member]) -> Table {
        let view = View {
            local: worker("gateway", ""),
            members: workers.to_vec(),
            joined: true,
        };
        let mut config = MeshConfig::for_tests();
        config.service = "mesh".into();
        Table::from_view(&view, &config)
    }

    #[test]
    fn a_model_routes_only_to_the_workers_that_serve_it() {
        let t = table(&[worker("w1", "small,big"), worker("w2", "small"), worker("w3", "big")]);
        assert_eq!(t.models().collect::<Vec<_>>(), ["big", "small"]);
        for i in 0..500 {
            let key = format!("conversation-{i}");
            assert!(matches!(t.owner_for(&key, "small"), Some("w1" | "w2")));
            assert!(matches!(t.owner_for(&key, "big"), Some("w1" | "w3")));
            assert!(t.owner_for(&key, "").is_some());
        }
        assert!(t.owner_for("k", "huge").is_none(), "nobody serves it");
        assert!(t.route_model("k", "huge", "gateway", 0, 2, &[]).is_none());
    }

    #[test]
    fn a_worker_joining_a_model_moves_only_its_share_of_that_models_conversations() {
        let before = table(&[worker("w1", "m"), worker("w2", "m"), worker("w3", "other")]);
        let after = table(&[
            worker("w1", "m"),
            worker("w2", "m"),
            worker("w3", "other"),
            worker("w4", "m"),
        ]);
        assert_ne!(before.checksum(), after.checksum());
        let (mut moved, total) = (0, 3000);
        for i in 0..total {
            let key = format!("conversation-{i}");
            let (was, is) = (
                before.owner_for(&key, "m").unwrap(),
                after.owner_for(&key, "m").unwrap(),
            );
            if was != is {
                assert_eq!(is, "w4", "{key} moved from {was} to {is}, not to the new worker");
                moved += 1;
            }
            assert_eq!(before.owner_for(&key, "other"), after.owner_for(&key, "other"));
        }
        // About a third moves to the third worker of the model.
        assert!((700..1300).contains(&moved), "{moved} of {total} moved");
    }
}
