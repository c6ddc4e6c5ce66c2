//! Maglev hashing (Eisenbud et al., NSDI 2016), weighted.
//!
//! A lookup table of `M` slots, `M` a prime, is filled from per-member
//! permutations of the slots: member `i` prefers slots
//! `offset_i, offset_i + skip_i, offset_i + 2 skip_i, ... (mod M)`, where
//! offset and skip come from two hashes of the member's name. Members take
//! turns in canonical (name) order, each claiming its most preferred free
//! slot, until the table is full. A key's owner is `table[key_hash -> slot]`.
//!
//! Weights: on each round a member earns `weight` credits and takes a turn
//! whenever it holds at least `max_weight` of them, so slot counts are
//! proportional to weight, using integer arithmetic only.
//!
//! Because the member list is canonical, the table is a pure function of the
//! member set. Lookups are one hash and one memory access, and every member
//! holds `M/N` slots give or take one, so balance is limited only by how keys
//! fall into slots. The price is that a change of membership shifts the turn
//! order, so a few slots move between members that did not change
//! (collateral moves); a larger `M` makes that rarer.
//!
//! `owners(key, n)` beyond the first falls back to weighted rendezvous over
//! the remaining members, which is stable and needs no second table.

use crate::algorithm::Algorithm;
use crate::hash::{member_hash, reduce};
use crate::member::Member;
use crate::rendezvous::{Rendezvous, RendezvousConfig};

/// The ladder stops here (a 4 GiB table) so that absurd member counts or
/// settings cannot overflow; the member count itself is limited to what the
/// table's `u32` entries can name.
const MAX_TABLE_SIZE: usize = 1 << 30;

/// Marks a slot that no member has claimed yet during the build.
const EMPTY: u32 = u32::MAX;

/// How large the Maglev table is.
///
/// The size must not change on every join or leave: a different `M` gives
/// every key a different slot, and so moves almost every key. So sizes come
/// from a fixed ladder, the smallest prime at or above a power of two: the
/// table is the first rung with at least `slots_per_member` slots per member
/// (and at least `min_slots`). It changes only when the member count
/// crosses a power of two boundary scaled by `slots_per_member`, which is
/// rare and is the one time a change of membership moves most keys.
#[derive(Clone, Debug)]
pub struct MaglevConfig {
    /// The least number of slots per member. Larger tables mean fewer
    /// collateral moves and finer weights, at the cost of build time and
    /// memory. The default of 100 follows the Maglev paper.
    pub slots_per_member: usize,
    /// A floor for the table size, so that small clusters still get
    /// fine-grained slots.
    pub min_slots: usize,
}

impl Default for MaglevConfig {
    fn default() -> Self {
        Self {
            slots_per_member: 100,
            min_slots: 1 << 16,
        }
    }
}

impl MaglevConfig {
    /// The table size for `members` members: the smallest prime at or above
    /// the first power of two that is at least `slots_per_member * members`
    /// and `min_slots`.
    pub fn table_size(&self, members: usize) -> usize {
        let want = members
            .saturating_mul(self.slots_per_member.max(1))
            .max(self.min_slots)
            .clamp(2, MAX_TABLE_SIZE);
        next_prime(want.next_power_of_two())
    }
}

/// A built Maglev lookup table.
#[derive(Clone, Debug)]
pub struct Maglev {
    table: Vec<u32>,
    fallback: Rendezvous,
}

impl Maglev {
    /// The number of slots in the lookup table (0 with no members).
    pub fn slots(&self) -> usize {
        self.table.len()
    }
}

/// The smallest prime `>= n` (and at least 2), by trial division; `n` is at
/// most a few hundred million here, so this takes microseconds.
pub(crate) fn next_prime(n: usize) -> usize {
    fn is_prime(n: usize) -> bool {
        if n < 2 {
            return false;
        }
        if n.is_multiple_of(2) {
            return n == 2;
        }
        let mut d = 3;
        while d * d <= n {
            if n.is_multiple_of(d) {
                return false;
            }
            d += 2;
        }
        true
    }
    let mut c = n.max(2);
    while !is_prime(c) {
        c += 1;
    }
    c
}

impl Algorithm for Maglev {
    type Config = MaglevConfig;
    const NAME: &'static str = "maglev";

    fn build(members: Vec<Member>, config: &Self::Config) -> Self {
        let n = members.len();
        let fallback = Rendezvous::build(members, &RendezvousConfig);
        if n == 0 {
            return Self {
                table: Vec::new(),
                fallback,
            };
        }
        let members = fallback.members();
        let m = config.table_size(n);
        let mut pos = Vec::with_capacity(n);
        let mut skip = Vec::with_capacity(n);
        for member in members {
            let name = member.name.as_bytes();
            pos.push(reduce(member_hash(name, 1), m));
            skip.push(reduce(member_hash(name, 2), m - 1) + 1);
        }
        let max_weight = members.iter().map(|m| u64::from(m.weight)).max().unwrap_or(1);
        let mut credit = vec![0u64; n];
        let mut table = vec![EMPTY; m];
        // The probe loop tests this bitmap rather than the table: at 1/32 of
        // the size it stays in L1 cache, which makes the build several times
        // faster than probing the table itself.
        let mut taken = vec![0u64; m.div_ceil(64)];
        let mut filled = 0;
        'fill: loop {
            for i in 0..n {
                credit[i] += u64::from(members[i].weight);
                if credit[i] < max_weight {
                    continue;
                }
                credit[i] -= max_weight;
                // M is prime and 1 <= skip < M, so the walk visits every slot
                // and always finds a free one while the table is not full.
                let (mut p, s) = (pos[i], skip[i]);
                while taken[p >> 6] & (1 << (p & 63)) != 0 {
                    p += s;
                    if p >= m {
                        p -= m;
                    }
                }
                taken[p >> 6] |= 1 << (p & 63);
                table[p] = i as u32;
                pos[i] = p;
                filled += 1;
                if filled == m {
                    break 'fill;
                }
            }
        }
        Self { table, fallback }
    }

    fn members(&self) -> &[Member] {
        self.fallback.members()
    }

    #[inline]
    fn owner_of(&self, key_hash: u64) -> Option<usize> {
        if self.table.is_empty() {
            return None;
        }
        Some(self.table[reduce(key_hash, self.table.len())] as usize)
    }

    fn owners_of(&self, key_hash: u64, n: usize, out: &mut Vec<usize>) {
        if n == 0 {
            return;
        }
        let Some(first) = self.owner_of(key_hash) else {
            return;
        };
        let start = out.len();
        out.push(first);
        let mut rest = vec![first];
        self.fallback.rank(key_hash, n - 1, &mut rest);
        out.extend_from_slice(&rest[1..]);
        debug_assert!(out.len() - start <= n);
    }

    fn params(&self) -> Vec<u64> {
        vec![self.table.len() as u64]
    }

    fn table_digest(&self) -> u64 {
        let bytes: Vec<u8> = self.table.iter().flat_map(|e| e.to_le_bytes()).collect();
        crate::hash::key_hash(&bytes)
    }

    fn heap_bytes(&self) -> usize {
        self.table.capacity() * 4 + self.fallback.heap_bytes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_prime_finds_the_next_prime() {
        assert_eq!(next_prime(0), 2);
        assert_eq!(next_prime(100), 101);
        assert_eq!(next_prime(65_537), 65_537);
        assert_eq!(next_prime(100_000), 100_003);
    }

    #[test]
    fn table_size_comes_from_a_ladder_that_ignores_small_changes() {
        let c = MaglevConfig::default();
        assert_eq!(c.table_size(0), 65_537);
        assert_eq!(c.table_size(10), 65_537);
        assert_eq!(c.table_size(655), 65_537);
        assert_eq!(c.table_size(656), c.table_size(1000));
        assert!(c.table_size(1000) >= 100_000);
        // A huge member count or setting stops at the top of the ladder.
        assert_eq!(c.table_size(usize::MAX), next_prime(1 << 30));
    }

    #[test]
    fn every_member_holds_its_weighted_share_of_slots() {
        let members = vec![Member::new("a", 1), Member::new("b", 2), Member::new("c", 1)];
        let t = Maglev::build(members, &MaglevConfig::default());
        let mut counts = [0usize; 3];
        for &e in &t.table {
            counts[e as usize] += 1;
        }
        let m = t.table.len();
        assert!(counts[0].abs_diff(m / 4) <= 2, "{counts:?}");
        assert!(counts[1].abs_diff(m / 2) <= 2, "{counts:?}");
        assert!(counts[2].abs_diff(m / 4) <= 2, "{counts:?}");
    }
}
