//! Weighted rendezvous (highest random weight) hashing.
//!
//! Every member scores every key; the highest score owns it. With weight `w`
//! and a uniform `u` in (0, 1) derived from the key and the member, the score
//! is `w / -ln(u)` (the logarithmic method of Schindelhauer and Schomaker),
//! which gives each member a share of keys exactly proportional to its weight.
//! When all weights are equal the logarithm is monotonic, so the raw hash is
//! compared instead and the answers are identical, only faster.
//!
//! Properties: no table, O(N) per lookup, optimal movement and no collateral
//! moves by construction (a key moves only to a joining member, or away from
//! a leaving one). Its `owners` order is exactly the fallback order: when the
//! owner leaves, every key moves to its second choice.

use crate::algorithm::Algorithm;
use crate::hash::{combine, member_hash};
use crate::member::Member;

/// A weighted rendezvous table: just the members and their name hashes.
#[derive(Clone, Debug)]
pub struct Rendezvous {
    members: Vec<Member>,
    hashes: Vec<u64>,
    uniform: bool,
}

/// Rendezvous hashing has nothing to tune.
#[derive(Clone, Copy, Debug, Default)]
pub struct RendezvousConfig;

impl Rendezvous {
    /// The score of member `i` for `key_hash`, comparable across members.
    #[inline]
    fn score(&self, key_hash: u64, i: usize) -> f64 {
        let h = combine(key_hash, self.hashes[i]);
        // 53 random bits, centred in their interval so that u is never 0 or 1.
        let u = ((h >> 11) as f64 + 0.5) * (1.0 / (1u64 << 53) as f64);
        f64::from(self.members[i].weight) / -u.ln()
    }
}

impl Rendezvous {
    /// Appends the best `n` members for `key_hash` to `out`, skipping indices
    /// already in `out`. Ties, which need a 64-bit collision, go to the lower
    /// index, so the order is total and deterministic.
    pub(crate) fn rank(&self, key_hash: u64, n: usize, out: &mut Vec<usize>) {
        let already = out.len();
        let want = n.min(self.members.len().saturating_sub(already));
        if want == 0 {
            return;
        }
        let mut scored: Vec<(f64, u64, usize)> = (0..self.members.len())
            .filter(|i| !out[..already].contains(i))
            .map(|i| {
                if self.uniform {
                    (0.0, combine(key_hash, self.hashes[i]), i)
                } else {
                    (self.score(key_hash, i), 0, i)
                }
            })
            .collect();
        // Highest score first; among equal scores the lower index first.
        let order =
            |a: &(f64, u64, usize), b: &(f64, u64, usize)| b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(a.2.cmp(&b.2));
        if want < scored.len() {
            scored.select_nth_unstable_by(want - 1, order);
            scored.truncate(want);
        }
        scored.sort_unstable_by(order);
        out.extend(scored.into_iter().map(|(_, _, i)| i));
    }
}

impl Algorithm for Rendezvous {
    type Config = RendezvousConfig;
    const NAME: &'static str = "rendezvous";

    fn build(members: Vec<Member>, _config: &Self::Config) -> Self {
        let hashes = members.iter().map(|m| member_hash(m.name.as_bytes(), 0)).collect();
        let uniform = members.windows(2).all(|w| w[0].weight == w[1].weight);
        Self {
            members,
            hashes,
            uniform,
        }
    }

    fn members(&self) -> &[Member] {
        &self.members
    }

    #[inline]
    fn owner_of(&self, key_hash: u64) -> Option<usize> {
        if self.uniform {
            // Strictly greater keeps the lower index on a tie.
            let mut best: Option<(u64, usize)> = None;
            for (i, &mh) in self.hashes.iter().enumerate() {
                let s = combine(key_hash, mh);
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, i));
                }
            }
            best.map(|(_, i)| i)
        } else {
            let mut best: Option<(f64, usize)> = None;
            for i in 0..self.members.len() {
                let s = self.score(key_hash, i);
                if best.is_none_or(|(b, _)| s > b) {
                    best = Some((s, i));
                }
            }
            best.map(|(_, i)| i)
        }
    }

    fn owners_of(&self, key_hash: u64, n: usize, out: &mut Vec<usize>) {
        let mut ranked = Vec::new();
        self.rank(key_hash, n, &mut ranked);
        out.extend(ranked);
    }

    fn params(&self) -> Vec<u64> {
        Vec::new()
    }

    fn table_digest(&self) -> u64 {
        let bytes: Vec<u8> = self
            .hashes
            .iter()
            .zip(&self.members)
            .flat_map(|(h, m)| h.to_le_bytes().into_iter().chain(m.weight.to_le_bytes()))
            .collect();
        crate::hash::key_hash(&bytes)
    }

    fn heap_bytes(&self) -> usize {
        self.hashes.capacity() * 8
            + self.members.capacity() * size_of::<Member>()
            + self.members.iter().map(|m| m.name.capacity()).sum::<usize>()
    }
}
