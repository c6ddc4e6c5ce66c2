//! The routing API the mesh uses, generic over the algorithm.

use std::fmt;

use crate::algorithm::Algorithm;
use crate::hash::key_hash;
use crate::member::{Member, canonical, checksum};

/// A routing table over one membership view.
///
/// Build a new one on every membership change; it is cheap (see the crate
/// docs) and immutable afterwards, so it can be shared freely between tasks.
#[derive(Clone, Debug)]
pub struct Router<A: Algorithm> {
    table: A,
    checksum: u64,
}

/// What the receiver of a message should do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route<'a> {
    /// This node owns the key in its own view: process the message here.
    Local,
    /// Another member owns the key in this node's view: forward it there,
    /// with the hop count incremented.
    Forward(&'a str),
    /// The message cannot be routed; answer it with an explicit error.
    Reject(Rejection),
}

/// Why a message could not be routed. Returning it changes no state.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejection {
    /// The message was already forwarded `max_hops` times and this node
    /// still does not own it: views disagree for longer than one hop can
    /// fix, and forwarding again risks a loop.
    HopLimit,
    /// The view has no member that can own anything.
    NoOwner,
    /// Every member in the key's preference order is in the skip list: each
    /// was tried for this message and failed. The caller may start the
    /// preference order afresh after a pause (dead members leave the view,
    /// busy ones free up).
    AllSkipped,
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::HopLimit => f.write_str("hop limit reached before the owner was found"),
            Self::NoOwner => f.write_str("no member owns any key"),
            Self::AllSkipped => f.write_str("every owner of the key was tried and skipped"),
        }
    }
}

impl std::error::Error for Rejection {}

/// Consistent hashing with bounded loads (Mirrokni, Thorup and Zadimoghaddam
/// 2018; HAProxy's `hash-balance-factor`).
///
/// A member may take a new message only while its in-flight count is below
/// `ceil(factor/100 * (total + 1) / members)`, where `total` is the in-flight
/// count over all members as seen by this router. When the owner is full the
/// message spills to the next member of [`Router::owners`] that is not.
/// Because the capacities add up to more than `total + 1`, some member always
/// has room, so the spill walk always ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BoundedLoad {
    factor_percent: u32,
}

impl BoundedLoad {
    /// A bound of `factor_percent / 100` times the average load, like
    /// HAProxy's `hash-balance-factor` (125 allows 25% above average).
    /// Returns `None` below 100, which could leave no member with room.
    pub fn new(factor_percent: u32) -> Option<Self> {
        (factor_percent >= 100).then_some(Self { factor_percent })
    }

    /// The factor in percent.
    pub fn factor_percent(self) -> u32 {
        self.factor_percent
    }

    /// The most in-flight messages one of `members` members may hold before
    /// it takes one more, given `total` in flight overall.
    pub fn capacity(self, total: u64, members: usize) -> u64 {
        if members == 0 {
            return 0;
        }
        let num = u128::from(self.factor_percent) * (u128::from(total) + 1);
        let den = 100 * members as u128;
        u64::try_from(num.div_ceil(den)).unwrap_or(u64::MAX)
    }
}

impl<A: Algorithm> Router<A> {
    /// Builds the table for `members` with the algorithm's default settings.
    ///
    /// Any order of `members` gives the same table; see [`Member`] for how
    /// zero weights and duplicate names are treated.
    pub fn new(members: &[Member]) -> Self {
        Self::with_config(members, &A::Config::default())
    }

    /// Builds the table with explicit algorithm settings.
    pub fn with_config(members: &[Member], config: &A::Config) -> Self {
        let table = A::build(canonical(members), config);
        let checksum = checksum(A::NAME, &table.params(), table.members());
        Self { table, checksum }
    }

    /// The member that owns `key`, or `None` when no member has weight.
    #[inline]
    pub fn owner(&self, key: &[u8]) -> Option<&str> {
        self.owner_by_hash(key_hash(key))
    }

    /// [`Router::owner`] for a key already hashed with [`hash::key_hash`](crate::hash::key_hash).
    #[inline]
    pub fn owner_by_hash(&self, key_hash: u64) -> Option<&str> {
        let i = self.table.owner_of(key_hash)?;
        Some(&self.table.members()[i].name)
    }

    /// Up to `n` distinct members in preference order: the owner first, then
    /// the members to fall back to. Asking for more members than exist
    /// returns them all.
    pub fn owners(&self, key: &[u8], n: usize) -> Vec<&str> {
        let mut idx = Vec::with_capacity(n.min(self.len()));
        self.table.owners_of(key_hash(key), n, &mut idx);
        idx.into_iter().map(|i| self.table.members()[i].name.as_str()).collect()
    }

    /// A short checksum of the routing table, for comparing with a peer's.
    ///
    /// It covers the algorithm, its parameters and the canonical member list
    /// (names and weights), which together determine the table. It is
    /// separate from the membership checksum, because members with weight 0
    /// or other metadata changes may not change routing.
    pub fn checksum(&self) -> u64 {
        self.checksum
    }

    /// The number of members that can own keys.
    pub fn len(&self) -> usize {
        self.table.members().len()
    }

    /// True when no member can own keys.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The canonical member list the table was built from.
    pub fn members(&self) -> &[Member] {
        self.table.members()
    }

    /// The underlying algorithm's table.
    pub fn algorithm(&self) -> &A {
        &self.table
    }

    /// Key-consistent forwarding: what node `me` should do with a message for
    /// `key` that has already been forwarded `hops` times.
    ///
    /// The receiver checks ownership in its *own* view rather than trusting
    /// the sender's: during a rolling restart views differ, and the sender
    /// may have routed with a stale table (compare [`Router::checksum`]s to
    /// tell). A non-owner forwards to the owner it sees, at most `max_hops`
    /// times in total, so two nodes that disagree cannot bounce a message
    /// forever; `max_hops = 1` forwards once, as ringpop does.
    pub fn route(&self, key: &[u8], me: &str, hops: u32, max_hops: u32) -> Route<'_> {
        self.route_skipping(key, me, hops, max_hops, &[] as &[&str])
    }

    /// [`Router::route`] as if the members in `skip` were absent: the
    /// members a message's senders already failed to reach. A receiver
    /// whose view still holds a dead owner then takes the message itself,
    /// or passes it to the next choice, instead of sending it back to the
    /// dead owner; the skipped owner's share goes to the same member it
    /// will go to once the view drops it (rendezvous hashing's next choice).
    pub fn route_skipping<S: AsRef<str>>(
        &self,
        key: &[u8],
        me: &str,
        hops: u32,
        max_hops: u32,
        skip: &[S],
    ) -> Route<'_> {
        if self.is_empty() {
            return Route::Reject(Rejection::NoOwner);
        }
        let owner = if skip.is_empty() {
            self.owner(key)
        } else {
            let skipped = |name: &str| skip.iter().any(|s| s.as_ref() == name);
            // The skip path is taken only on re-routing, so ranking every
            // member here is fine.
            let mut idx = Vec::with_capacity(self.len());
            self.table.owners_of(key_hash(key), self.len(), &mut idx);
            let members = self.table.members();
            idx.into_iter()
                .map(|i| members[i].name.as_str())
                .find(|name| !skipped(name))
        };
        match owner {
            None => Route::Reject(Rejection::AllSkipped),
            Some(owner) if owner == me => Route::Local,
            Some(_) if hops >= max_hops => Route::Reject(Rejection::HopLimit),
            Some(owner) => Route::Forward(owner),
        }
    }

    /// The owner of `key` under a bounded load: the first member of
    /// [`Router::owners`] whose in-flight count is below the bound's
    /// capacity. `total_in_flight` is this router's in-flight count over all
    /// members, and `in_flight` reports one member's; it is called only for
    /// the members the walk visits, usually just the owner.
    pub fn owner_bounded(
        &self,
        key: &[u8],
        bound: BoundedLoad,
        total_in_flight: u64,
        mut in_flight: impl FnMut(&str) -> u64,
    ) -> Option<&str> {
        let hash = key_hash(key);
        let cap = bound.capacity(total_in_flight, self.len());
        let first = self.owner_by_hash(hash)?;
        if in_flight(first) < cap {
            return Some(first);
        }
        // The spill path is rare, so ranking every member here is fine.
        let mut idx = Vec::with_capacity(self.len());
        self.table.owners_of(hash, self.len(), &mut idx);
        let members = self.table.members();
        idx.iter()
            .skip(1)
            .map(|&i| members[i].name.as_str())
            .find(|name| in_flight(name) < cap)
            // Only reachable when the caller's counts exceed its total; the
            // owner is still the best answer then.
            .or(Some(first))
    }
}
