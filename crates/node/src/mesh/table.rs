//! The routing table of one gossip view.

use std::collections::BTreeMap;

use rumor_ring::{Member as RingMember, Ring, Route};

use super::config::MeshConfig;
use crate::gossip::View;
use crate::role::Role;

/// The routing table of one gossip view: a [`Ring`] over the live members
/// with the worker role, weighted by their advertised capacity, and where to
/// reach each of them.
#[derive(Debug, Clone)]
pub struct Table {
    ring: Ring,
    addrs: BTreeMap<String, String>,
}

impl Table {
    /// Builds the table from a view: live members holding the worker role
    /// with capacity above 0 and a `config.service` address.
    pub fn from_view(view: &View, config: &MeshConfig) -> Self {
        let mut members = Vec::new();
        let mut addrs = BTreeMap::new();
        for m in view.live() {
            let Some(addr) = m.meta.services.get(&config.service) else {
                continue;
            };
            if m.meta.has_role(Role::Worker.as_str()) && m.meta.capacity > 0 {
                members.push(RingMember::new(m.name.clone(), m.meta.capacity));
                addrs.insert(m.name.clone(), addr.clone());
            }
        }
        Self {
            ring: Ring::new(&members),
            addrs,
        }
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// The ring's checksum, carried in every envelope this node sends.
    pub fn checksum(&self) -> u64 {
        self.ring.checksum()
    }

    /// The owner of `key`.
    pub fn owner(&self, key: &str) -> Option<&str> {
        self.ring.owner(key.as_bytes())
    }

    /// A member's mesh address.
    pub fn addr(&self, name: &str) -> Option<&str> {
        self.addrs.get(name).map(String::as_str)
    }

    /// What node `me` does with a message for `key` that has been sent
    /// `hops` times and that its senders failed to deliver to the members
    /// in `skip`: the pure rule of [`rumor_ring::Router::route_skipping`].
    pub fn route<'a>(&'a self, key: &str, me: &str, hops: u32, max_hops: u32, skip: &[String]) -> Route<'a> {
        self.ring.route_skipping(key.as_bytes(), me, hops, max_hops, skip)
    }
}

impl PartialEq for Table {
    fn eq(&self, other: &Self) -> bool {
        self.checksum() == other.checksum() && self.addrs == other.addrs
    }
}
