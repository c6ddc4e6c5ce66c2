//! The small common interface every routing algorithm implements, so the
//! router and the benchmark treat them uniformly.

use std::fmt;

use crate::Member;

/// A consistent-hashing algorithm: a table built from a canonical member
/// list that maps 64-bit key hashes to members.
///
/// Implementations must be pure functions of `(members, config)`: no
/// randomness, no clock, no dependence on the order in which members were
/// added. [`crate::Router`] canonicalises the member list (see
/// [`Member`]) before calling [`Algorithm::build`], so an implementation
/// receives members de-duplicated, with weight above 0, sorted by name.
pub trait Algorithm: Sized + Clone + fmt::Debug + Send + Sync {
    /// Tunable parameters, with defaults that are the measured choice.
    type Config: Clone + fmt::Debug + Default + Send + Sync;

    /// Short name used in reports and mixed into the checksum.
    const NAME: &'static str;

    /// Builds the table. `members` is canonical (see the trait docs).
    fn build(members: Vec<Member>, config: &Self::Config) -> Self;

    /// The canonical members this table was built from; indices returned by
    /// the lookup methods point into this slice.
    fn members(&self) -> &[Member];

    /// The index of the member that owns `key_hash`, or `None` when there
    /// are no members.
    fn owner_of(&self, key_hash: u64) -> Option<usize>;

    /// Appends up to `n` distinct members in preference order to `out`; the
    /// first is always [`Algorithm::owner_of`].
    fn owners_of(&self, key_hash: u64, n: usize, out: &mut Vec<usize>);

    /// The parameters that, with the members, determine the table; they are
    /// part of the checksum so that nodes with different settings notice.
    fn params(&self) -> Vec<u64>;

    /// A hash of the built lookup structure itself (not of its inputs). The
    /// tests and the benchmark use it to prove that insertion order never
    /// changes the table.
    fn table_digest(&self) -> u64;

    /// Heap bytes held by the table, for the memory figures.
    fn heap_bytes(&self) -> usize;
}
