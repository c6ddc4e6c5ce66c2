//! Members and the canonical form every table is built from.

use std::fmt;

use crate::hash::CHECKSUM_SEED;

/// A routing target: a worker's name from gossip and its capacity weight.
///
/// The weight comes from the member's gossip metadata. It is relative: a
/// member of weight 200 receives about twice the keys of one of weight 100.
/// Weight 0 means "alive but not an owner" (for example a draining worker),
/// and such a member is left out of the table.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Member {
    /// The member's unique name in the cluster (its gossip identity).
    pub name: String,
    /// Relative capacity; 0 excludes the member from ownership.
    pub weight: u32,
}

impl Member {
    /// A member with the given name and weight.
    pub fn new(name: impl Into<String>, weight: u32) -> Self {
        Self {
            name: name.into(),
            weight,
        }
    }
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}*{}", self.name, self.weight)
    }
}

/// Brings a member list into the one form every algorithm builds from, so
/// that the table is a pure function of the *set* of members.
///
/// The rules, in order:
/// 1. Members of weight 0 are dropped: they own nothing.
/// 2. Duplicate names keep one entry, the one with the highest weight. Two
///    gossip views can briefly carry the same name twice (a restart under the
///    same name with new metadata); taking the maximum is order independent.
/// 3. The result is sorted by name, byte-wise.
pub(crate) fn canonical(members: &[Member]) -> Vec<Member> {
    let mut out: Vec<Member> = members.iter().filter(|m| m.weight > 0).cloned().collect();
    // Sorting by name and then by descending weight puts the winner of each
    // duplicate group first, where `dedup_by` keeps it.
    out.sort_unstable_by(|a, b| a.name.as_bytes().cmp(b.name.as_bytes()).then(b.weight.cmp(&a.weight)));
    out.dedup_by(|later, first| later.name == first.name);
    out
}

/// The routing-table checksum: XXH3-64 (seed [`CHECKSUM_SEED`]) over the
/// algorithm's identity and parameters followed by the canonical member list.
///
/// Since each table is a pure function of exactly these inputs, equal
/// checksums mean equal tables (up to a 64-bit collision), and it costs O(N)
/// rather than a pass over the whole table. The encoding is length-prefixed
/// so that no two different lists serialise to the same bytes.
pub(crate) fn checksum(algorithm: &str, params: &[u64], members: &[Member]) -> u64 {
    let mut bytes = Vec::with_capacity(64 + members.len() * 24);
    bytes.extend_from_slice(&(algorithm.len() as u64).to_le_bytes());
    bytes.extend_from_slice(algorithm.as_bytes());
    bytes.extend_from_slice(&(params.len() as u64).to_le_bytes());
    for p in params {
        bytes.extend_from_slice(&p.to_le_bytes());
    }
    bytes.extend_from_slice(&(members.len() as u64).to_le_bytes());
    for m in members {
        bytes.extend_from_slice(&(m.name.len() as u64).to_le_bytes());
        bytes.extend_from_slice(m.name.as_bytes());
        bytes.extend_from_slice(&m.weight.to_le_bytes());
    }
    xxhash_rust::xxh3::xxh3_64_with_seed(&bytes, CHECKSUM_SEED)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_weights_are_dropped_and_duplicates_keep_the_highest_weight() {
        let got = canonical(&[
            Member::new("b", 1),
            Member::new("a", 0),
            Member::new("b", 7),
            Member::new("c", 3),
            Member::new("b", 2),
        ]);
        assert_eq!(got, vec![Member::new("b", 7), Member::new("c", 3)]);
    }

    #[test]
    fn names_that_differ_only_in_length_prefix_do_not_collide_in_the_checksum() {
        let a = checksum("x", &[], &[Member::new("ab", 1), Member::new("c", 1)]);
        let b = checksum("x", &[], &[Member::new("a", 1), Member::new("bc", 1)]);
        assert_ne!(a, b);
    }
}
