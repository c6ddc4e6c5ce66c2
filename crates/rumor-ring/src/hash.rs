//! The fixed hash every routing decision is made from.
//!
//! Every node must compute the same owner for the same key and member set, in
//! every process, on every machine and in every release. So nothing here uses
//! `RandomState`, `DefaultHasher` (whose algorithm std may change) or a
//! randomly keyed hasher. The algorithm is **XXH3-64** (`xxhash-rust`'s
//! `xxh3_64_with_seed`, the stable XXH3 specification) with the fixed seeds
//! below, followed where two hashes are combined by the **murmur3 `fmix64`
//! finalizer**. The test vectors at the bottom of this file pin the outputs:
//! if a dependency upgrade ever changes them, the tests fail before a mixed
//! cluster can disagree about ownership.

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Seed for hashing message keys: the ASCII bytes of `"rumor/k1"`.
pub const KEY_SEED: u64 = u64::from_be_bytes(*b"rumor/k1");

/// Seed for hashing member names: the ASCII bytes of `"rumor/m1"`.
///
/// Keys and members use different seeds so that a member named like a key is
/// not correlated with that key's placement.
pub const MEMBER_SEED: u64 = u64::from_be_bytes(*b"rumor/m1");

/// Seed for the routing-table checksum: the ASCII bytes of `"rumor/c1"`.
pub const CHECKSUM_SEED: u64 = u64::from_be_bytes(*b"rumor/c1");

/// Hashes a message key (a conversation key) to the 64-bit value every
/// algorithm in this crate routes on.
#[inline]
#[must_use]
pub fn key_hash(key: &[u8]) -> u64 {
    xxh3_64_with_seed(key, KEY_SEED)
}

/// Hashes a member name; `salt` derives independent hashes of the same name
/// (Maglev needs two, the classic ring one per virtual node).
#[inline]
pub(crate) fn member_hash(name: &[u8], salt: u64) -> u64 {
    xxh3_64_with_seed(name, MEMBER_SEED.wrapping_add(salt))
}

/// The murmur3 64-bit finalizer: a bijection whose every output bit depends
/// on every input bit, so combining two hashes with it gives an independent
/// looking third.
#[inline]
pub(crate) fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^= x >> 33;
    x
}

/// Combines a key hash with a member hash into a rendezvous score: the
/// "folded multiply" of wyhash and rapidhash, the 128-bit product of the two
/// (each xored with a constant) with its halves xored together.
///
/// It is one multiplication, which matters because rendezvous computes it
/// once per member on every lookup; both inputs are already XXH3 outputs, so
/// one strong mixing step is enough.
#[inline]
pub(crate) fn combine(key: u64, member: u64) -> u64 {
    let p = u128::from(key ^ 0x2d35_8dcc_aa6c_78a5) * u128::from(member ^ 0x8bb8_4b93_962e_acc9);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Maps a 64-bit hash uniformly onto `0..n` with a multiply and a shift
/// (Lemire's reduction), which is faster than `%` and as uniform for `n`
/// far below 2^64.
#[inline]
pub(crate) fn reduce(hash: u64, n: usize) -> usize {
    ((u128::from(hash) * n as u128) >> 64) as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    // These vectors are the contract with every other node in the cluster.
    // Changing them changes which worker owns every conversation.
    #[test]
    fn key_hash_matches_the_pinned_test_vectors() {
        assert_eq!(KEY_SEED, 0x7275_6d6f_722f_6b31);
        assert_eq!(key_hash(b""), 0x6287_ea84_5e3d_fe94);
        assert_eq!(key_hash(b"conv-1"), 0x579a_4ede_94bf_25e0);
        assert_eq!(key_hash(b"rumor"), 0x50d8_5b69_4ac7_6e30);
    }

    #[test]
    fn reduce_stays_in_range() {
        for h in [0, 1, u64::MAX / 2, u64::MAX] {
            assert!(reduce(h, 7) < 7);
        }
        assert_eq!(reduce(u64::MAX, 1), 0);
    }
}
