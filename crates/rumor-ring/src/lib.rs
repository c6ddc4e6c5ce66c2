//! Consistent-hash routing over rumor's live membership.
//!
//! Every node builds a [`Ring`] from its own gossip view (each live worker's
//! name and capacity weight) and asks it which worker owns a conversation
//! key. The crate is pure, like `membership`: no IO, no clock, no randomness,
//! no tokio. A table is an immutable value rebuilt on every membership change.
//!
//! ```
//! use rumor_ring::{Member, Ring, Route};
//!
//! let ring = Ring::new(&[Member::new("w1", 100), Member::new("w2", 200)]);
//! let owner = ring.owner(b"conv-42").unwrap();
//! let fallback = ring.owners(b"conv-42", 2); // [owner, next choice]
//! assert_eq!(fallback[0], owner);
//! // On receipt: process locally, or forward once to the owner in my view.
//! match ring.route(b"conv-42", "w1", 0, 1) {
//!     Route::Local => {}
//!     Route::Forward(to) => assert_eq!(to, owner),
//!     Route::Reject(why) => panic!("{why}"),
//! }
//! ```
//!
//! # Invariants
//!
//! - **A pure function of the member set.** The same members give the same
//!   table in whatever order they were added or removed: the list is brought
//!   into canonical form first (weight-0 members dropped, duplicate names keep
//!   the highest weight, sorted by name bytes), and every algorithm depends
//!   only on that list.
//! - **The same answers everywhere, in every release.** Keys and names are
//!   hashed with XXH3-64 under fixed seeds (see [`hash`]); nothing uses
//!   `RandomState` or `DefaultHasher`. Tests pin hash outputs and owners, so
//!   any change of answers fails the build before it reaches a cluster.
//! - **A comparable checksum.** [`Router::checksum`] is a 64-bit hash of the
//!   algorithm, its parameters and the canonical members. Two nodes with equal
//!   checksums route identically; a receiver can compare the sender's checksum
//!   with its own to know whether they routed with the same table. It is
//!   separate from the membership checksum: metadata that does not affect
//!   routing does not change it.
//! - **Key-consistent forwarding.** [`Router::route`] has the receiver check
//!   ownership in its own view and forward at most `max_hops` times, so views
//!   that disagree during a rolling restart never bounce a message forever.
//! - **Edge cases answer, never panic**: no members (`None`, empty lists,
//!   [`Rejection::NoOwner`]), one member, weight 0 (not an owner) or
//!   `u32::MAX`, duplicate names, `n` larger than the member count.
//!
//! # The default algorithm: weighted rendezvous, chosen by measurement
//!
//! Three algorithms are implemented behind one [`Algorithm`] trait and
//! measured side by side with four crates from crates.io by
//! `cargo bench -p bench --bench routing`, which writes
//! `docs/benchmarks/routing.md`. From that run (2 cores, Intel Xeon, 1,000,000
//! keys):
//!
//! | | [`Rendezvous`] (default) | [`Maglev`] | [`VnodeRing`] (V = 160) |
//! |---|---:|---:|---:|
//! | lookup median, N = 10 / 100 / 1000 | 34 / 104 / 572 ns | 42 / 49 / 63 ns | 17 / 45 / 277 ns |
//! | balance max/avg, N = 100 (noise floor 1.027) | 1.028 | 1.023 | 1.163 |
//! | keys moved on a join or leave, / optimal | 1.00 | up to 6.7 | up to 1.12 |
//! | collateral moves (between unchanged members) | none | about 0.57% of all keys | none |
//! | build, N = 1000 | 59 µs | 3.1 ms | 4.4 ms |
//! | memory, N = 1000 | 84 KiB | 596 KiB | 5.9 MiB |
//!
//! No algorithm meets every routing goal (docs/benchmarks/routing.md), because the goals conflict: an
//! O(1) lookup needs a precomputed table; a table that is perfectly balanced
//! and independent of insertion order (Maglev) reshuffles some slots between
//! unchanged members on every change; and a table with no collateral moves
//! and order independence must give each slot to its highest-ranked present
//! member, a per-slot rendezvous, whose balance is only as good as its slot
//! count. Rendezvous was chosen because rumor uses consistent hashing to keep
//! each conversation on the worker holding its context and prompt cache: it
//! moves the optimal number of keys with none between unchanged members,
//! follows weights exactly, builds in microseconds, and its `owners` order is
//! the failover order (when the owner leaves, every node's new table picks the
//! old second choice). Its cost is an O(N) lookup, which misses the 60 ns goal
//! at N = 1000 but stays far below the cost of a mesh RPC. A router that is
//! lookup-bound and can accept collateral moves can use
//! `Router<Maglev>` instead. The balance goal of 1.02 at N = 100 is below the
//! sampling noise of a million random keys: `hash mod N` itself scores 1.027,
//! and rendezvous and Maglev sit on that floor.
//!
//! Jump hash, AnchorHash and MementoHash were not candidates for the default:
//! Jump hash cannot remove an arbitrary member, and the state of AnchorHash
//! and MementoHash depends on the order of removals, so two nodes that saw the
//! same changes in a different order would route differently.
//!
//! # Bounded loads
//!
//! [`Router::owner_bounded`] implements consistent hashing with bounded loads
//! (HAProxy's `hash-balance-factor`): when the owner already carries
//! `factor` times the average in-flight load seen by this router, the message
//! spills to the next member of [`Router::owners`]. It is off unless called:
//! spilling trades conversation affinity for balance (at factor 125% on a
//! Zipf workload about a quarter of messages leave their owner; see the
//! report).

mod algorithm;
pub mod hash;
mod maglev;
mod member;
mod rendezvous;
mod router;
mod vnode;

pub use algorithm::Algorithm;
pub use maglev::{Maglev, MaglevConfig};
pub use member::Member;
pub use rendezvous::{Rendezvous, RendezvousConfig};
pub use router::{BoundedLoad, Rejection, Route, Router};
pub use vnode::{VnodeConfig, VnodeRing};

/// The default algorithm, chosen by measurement (see the crate docs and
/// `docs/benchmarks/routing.md`).
pub type DefaultAlgorithm = Rendezvous;

/// The router the mesh node uses: [`Router`] over the default algorithm.
pub type Ring = Router<DefaultAlgorithm>;
