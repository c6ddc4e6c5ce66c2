//! The classic hash ring with virtual nodes (Karger et al. 1997; Dynamo,
//! ketama).
//!
//! Each member places `vnodes` points on a 64-bit circle, at hashes of its
//! name and the point's index; a key belongs to the first point at or after
//! its hash, wrapping around. Weighted members get points in proportion to
//! their weight relative to the mean weight.
//!
//! Properties: O(log(N·V)) lookup by binary search; no collateral moves with
//! equal weights (a joining member only takes arcs, a leaving one only gives
//! its arcs to the next points); the `owners` walk clockwise is exactly the
//! fallback order. Balance depends on the number of points per member: the
//! share of a member has a relative spread of about `1/sqrt(V)`.
//!
//! With unequal weights the point counts depend on the mean weight, which a
//! join or leave changes, so weighted rings do have some collateral moves.

use crate::algorithm::Algorithm;
use crate::hash::{fmix64, member_hash};
use crate::member::Member;

/// How many points each member places on the circle.
#[derive(Clone, Debug)]
pub struct VnodeConfig {
    /// Points for a member of mean weight; 160 is ketama's figure.
    pub vnodes: u32,
}

impl Default for VnodeConfig {
    fn default() -> Self {
        Self { vnodes: 160 }
    }
}

/// A built ring: sorted points and, in a parallel array, their members.
#[derive(Clone, Debug)]
pub struct VnodeRing {
    members: Vec<Member>,
    points: Vec<u64>,
    owners: Vec<u32>,
    vnodes: u32,
}

/// Caps the points any single member may place, so that a huge weight next
/// to small ones cannot make the build allocate without bound.
const MAX_POINTS_PER_MEMBER: u64 = 1 << 16;

impl Algorithm for VnodeRing {
    type Config = VnodeConfig;
    const NAME: &'static str = "vnode-ring";

    fn build(members: Vec<Member>, config: &Self::Config) -> Self {
        let n = members.len() as u64;
        let total: u64 = members.iter().map(|m| u64::from(m.weight)).sum();
        let v = u64::from(config.vnodes.max(1));
        let mut pairs: Vec<(u64, u32)> = Vec::new();
        for (i, m) in members.iter().enumerate() {
            // points = round(V * weight / mean weight), at least 1.
            let count = (u128::from(v) * u128::from(m.weight) * u128::from(n) + u128::from(total) / 2)
                / u128::from(total.max(1));
            let count = (count as u64).clamp(1, MAX_POINTS_PER_MEMBER);
            let base = member_hash(m.name.as_bytes(), 0);
            for j in 0..count {
                pairs.push((
                    fmix64(base.wrapping_add(j.wrapping_mul(0x9e37_79b9_7f4a_7c15))),
                    i as u32,
                ));
            }
        }
        // Sorting by (point, member) makes even colliding points order
        // independent.
        pairs.sort_unstable();
        let (points, owners) = pairs.into_iter().unzip();
        Self {
            members,
            points,
            owners,
            vnodes: config.vnodes,
        }
    }

    fn members(&self) -> &[Member] {
        &self.members
    }

    #[inline]
    fn owner_of(&self, key_hash: u64) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let i = self.points.partition_point(|&p| p < key_hash);
        let i = if i == self.points.len() { 0 } else { i };
        Some(self.owners[i] as usize)
    }

    fn owners_of(&self, key_hash: u64, n: usize, out: &mut Vec<usize>) {
        let want = n.min(self.members.len());
        if want == 0 {
            return;
        }
        let start = self.points.partition_point(|&p| p < key_hash);
        let mut seen = vec![false; self.members.len()];
        let mut found = 0;
        for k in 0..self.points.len() {
            let idx = self.owners[(start + k) % self.points.len()] as usize;
            if !seen[idx] {
                seen[idx] = true;
                out.push(idx);
                found += 1;
                if found == want {
                    break;
                }
            }
        }
    }

    fn params(&self) -> Vec<u64> {
        vec![u64::from(self.vnodes)]
    }

    fn table_digest(&self) -> u64 {
        let bytes: Vec<u8> = self
            .points
            .iter()
            .zip(&self.owners)
            .flat_map(|(p, o)| p.to_le_bytes().into_iter().chain(o.to_le_bytes()))
            .collect();
        crate::hash::key_hash(&bytes)
    }

    fn heap_bytes(&self) -> usize {
        self.points.capacity() * 8
            + self.owners.capacity() * 4
            + self.members.capacity() * size_of::<Member>()
            + self.members.iter().map(|m| m.name.capacity()).sum::<usize>()
    }
}
