//! Gossip encryption: AES-256-GCM with a keyring.
//!
//! One key is the *primary*: it encrypts everything this node sends. Every key
//! in the ring decrypts. That is what lets an operator rotate keys across a
//! running cluster without a moment where two nodes cannot talk (the scheme of
//! HashiCorp memberlist and serf):
//!
//! 1. install the new key on every node (all nodes now decrypt both keys);
//! 2. make it the primary on every node (nodes still accept the old one from
//!    peers not yet switched);
//! 3. remove the old key from every node.
//!
//! # Wire format
//!
//! The same for UDP datagrams and TCP frame bodies:
//!
//! ```text
//! +---------+-------------------+--------------------------------+
//! | version | nonce (12 bytes)  | ciphertext + GCM tag (16 bytes)|
//! | 1 byte  | random per packet | len(plaintext) + 16 bytes      |
//! +---------+-------------------+--------------------------------+
//! ```
//!
//! The version byte ([`FORMAT_VERSION`]) is also the associated data, so it is
//! authenticated. Nonces are drawn from the thread-local CSPRNG (ChaCha12,
//! seeded and periodically reseeded from the OS). With random 96-bit nonces a
//! key should encrypt well under 2^32 packets (NIST SP 800-38D); at a few
//! hundred packets per second per node that is years, and keys are meant to
//! be rotated long before.

use std::fmt;

use aes_gcm::aead::inout::InOutBuf;
use aes_gcm::aead::{AeadInOut, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;

/// First byte of every encrypted packet.
pub const FORMAT_VERSION: u8 = 1;
/// Length of a key in bytes (AES-256).
pub const KEY_LEN: usize = 32;
/// Length of the random nonce.
pub const NONCE_LEN: usize = 12;
/// Length of the GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes an encrypted packet adds to its plaintext.
pub const OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// A short public identifier of a key, safe to log and to show in an admin
/// API: the first 8 bytes of the GCM tag of an empty message under an all-zero
/// nonce, which is `AES_k(0^96 || 1)` (a key check value). It reveals nothing
/// usable about the key.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct KeyId([u8; 8]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// A 32-byte gossip key.
#[derive(Clone, PartialEq, Eq)]
pub struct Key([u8; KEY_LEN]);

impl Key {
    /// Wraps raw key bytes.
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> Self {
        Self(bytes)
    }

    /// Parses a key given as standard base64 (with padding), as in a config file.
    pub fn from_base64(s: &str) -> Result<Self, KeyringError> {
        let bytes = BASE64.decode(s.trim()).map_err(|_| KeyringError::NotBase64)?;
        let arr: [u8; KEY_LEN] = bytes
            .try_into()
            .map_err(|b: Vec<u8>| KeyringError::WrongLength(b.len()))?;
        Ok(Self(arr))
    }

    /// A fresh random key (for tests and for a `keygen` command).
    pub fn generate() -> Self {
        let mut k = [0u8; KEY_LEN];
        rand::fill(&mut k[..]);
        Self(k)
    }

    /// The key in standard base64, as a config file holds it.
    pub fn to_base64(&self) -> String {
        BASE64.encode(self.0)
    }

    /// This key's public identifier.
    pub fn id(&self) -> KeyId {
        key_id(&Aes256Gcm::new(&self.0.into()))
    }
}

/// Never prints the key itself.
impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key({})", self.id())
    }
}

fn key_id(cipher: &Aes256Gcm) -> KeyId {
    let tag = cipher
        .encrypt_inout_detached(&Nonce::default(), &[], InOutBuf::from(&mut [][..]))
        .unwrap_or_default();
    let mut id = [0u8; 8];
    id.copy_from_slice(&tag[..8]);
    KeyId(id)
}

/// Why a keyring operation was refused. The keyring is unchanged in every case.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyringError {
    /// The key is not valid base64.
    #[error("gossip key is not valid base64")]
    NotBase64,
    /// The key does not decode to 32 bytes.
    #[error("gossip key must be {KEY_LEN} bytes, got {0}")]
    WrongLength(usize),
    /// The key is not in the keyring.
    #[error("gossip key {0} is not in the keyring")]
    UnknownKey(KeyId),
    /// The primary key encrypts this node's traffic; make another key primary first.
    #[error("gossip key {0} is the primary key; make another key primary before removing it")]
    RemovePrimary(KeyId),
    /// This node runs without encryption, and encryption cannot be switched on
    /// while it runs (its peers would stop understanding it).
    #[error("gossip encryption is off on this node; restart it with a key to enable it")]
    Plaintext,
}

/// Why a packet could not be decrypted. It is dropped and counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum OpenError {
    /// Shorter than the version byte, nonce and tag.
    #[error("encrypted packet of {0} bytes is too short")]
    Truncated(usize),
    /// A format version this node does not know.
    #[error("unknown encryption format version {0}")]
    Version(u8),
    /// No key in the ring authenticates it: a wrong key, corruption, or a
    /// peer sending plaintext.
    #[error("no gossip key decrypts the packet")]
    NoKey,
}

/// Why a packet could not be encrypted: only a plaintext over AES-GCM's
/// 64 GiB limit, which the callers never produce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("plaintext too long to encrypt")]
pub struct SealError;

#[derive(Clone)]
struct Entry {
    key: Key,
    id: KeyId,
    cipher: Aes256Gcm,
}

/// The keys of one node: the first is the primary, which encrypts; all decrypt.
#[derive(Clone)]
pub struct Keyring {
    /// `entries[0]` is the primary. Never empty.
    entries: Vec<Entry>,
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Keyring")
            .field("primary", &self.primary())
            .field("keys", &self.key_ids())
            .finish()
    }
}

impl Keyring {
    /// A keyring holding only `primary`.
    pub fn new(primary: Key) -> Self {
        Self {
            entries: vec![entry(primary)],
        }
    }

    /// Builds a keyring from base64 keys as given in config: the first is the
    /// primary. `Ok(None)` when the list is empty (plaintext mode).
    pub fn from_base64<S: AsRef<str>>(keys: &[S]) -> Result<Option<Self>, KeyringError> {
        let mut ring: Option<Self> = None;
        for k in keys {
            let key = Key::from_base64(k.as_ref())?;
            match &mut ring {
                None => ring = Some(Self::new(key)),
                Some(r) => r.install(key),
            }
        }
        Ok(ring)
    }

    /// The id of the key that encrypts.
    pub fn primary(&self) -> KeyId {
        self.entries[0].id
    }

    /// Ids of every key, the primary first.
    pub fn key_ids(&self) -> Vec<KeyId> {
        self.entries.iter().map(|e| e.id).collect()
    }

    /// Adds a key for decryption. Installing a key already present does nothing.
    pub fn install(&mut self, key: Key) {
        if self.position(&key).is_none() {
            self.entries.push(entry(key));
        }
    }

    /// Makes an installed key the primary; the old primary stays installed
    /// for decryption.
    pub fn use_key(&mut self, key: &Key) -> Result<(), KeyringError> {
        let i = self.position(key).ok_or_else(|| KeyringError::UnknownKey(key.id()))?;
        let e = self.entries.remove(i);
        self.entries.insert(0, e);
        Ok(())
    }

    /// Removes a key. The primary cannot be removed.
    pub fn remove(&mut self, key: &Key) -> Result<(), KeyringError> {
        match self.position(key) {
            None => Err(KeyringError::UnknownKey(key.id())),
            Some(0) => Err(KeyringError::RemovePrimary(key.id())),
            Some(i) => {
                self.entries.remove(i);
                Ok(())
            }
        }
    }

    fn position(&self, key: &Key) -> Option<usize> {
        self.entries.iter().position(|e| e.key == *key)
    }

    /// Appends the encrypted form of `plaintext` to `out`, under the primary key
    /// and a fresh random nonce.
    pub fn seal_into(&self, plaintext: &[u8], out: &mut Vec<u8>) -> Result<(), SealError> {
        let mut nonce = Nonce::default();
        rand::fill(&mut nonce[..]);
        out.reserve(plaintext.len() + OVERHEAD);
        out.push(FORMAT_VERSION);
        out.extend_from_slice(&nonce);
        let start = out.len();
        out.extend_from_slice(plaintext);
        let tag = self.entries[0]
            .cipher
            .encrypt_inout_detached(&nonce, &[FORMAT_VERSION], InOutBuf::from(&mut out[start..]))
            .map_err(|_| SealError)?;
        out.extend_from_slice(&tag);
        Ok(())
    }

    /// Encrypts `plaintext` into a new packet.
    pub fn seal(&self, plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        self.seal_into(plaintext, &mut out)?;
        Ok(out)
    }

    /// Decrypts `packet` into `out` (cleared first), trying the primary key
    /// first and then the others. On error `out` holds no plaintext.
    pub fn open_into(&self, packet: &[u8], out: &mut Vec<u8>) -> Result<(), OpenError> {
        out.clear();
        if packet.len() < OVERHEAD {
            return Err(OpenError::Truncated(packet.len()));
        }
        if packet[0] != FORMAT_VERSION {
            return Err(OpenError::Version(packet[0]));
        }
        let nonce = Nonce::try_from(&packet[1..1 + NONCE_LEN]).map_err(|_| OpenError::Truncated(packet.len()))?;
        let (ciphertext, tag) = packet[1 + NONCE_LEN..].split_at(packet.len() - OVERHEAD);
        let tag = Tag::try_from(tag).map_err(|_| OpenError::Truncated(packet.len()))?;
        out.resize(ciphertext.len(), 0);
        for e in &self.entries {
            // Decrypt from the packet into `out`, so a failed attempt leaves the
            // input intact for the next key without a copy.
            let buf = InOutBuf::new(ciphertext, &mut out[..]).map_err(|_| OpenError::NoKey)?;
            if e.cipher
                .decrypt_inout_detached(&nonce, &[FORMAT_VERSION], buf, &tag)
                .is_ok()
            {
                return Ok(());
            }
        }
        out.clear();
        Err(OpenError::NoKey)
    }

    /// Decrypts `packet` into a new buffer.
    pub fn open(&self, packet: &[u8]) -> Result<Vec<u8>, OpenError> {
        let mut out = Vec::new();
        self.open_into(packet, &mut out)?;
        Ok(out)
    }
}

fn entry(key: Key) -> Entry {
    let cipher = Aes256Gcm::new(&key.0.into());
    Entry {
        id: key_id(&cipher),
        key,
        cipher,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ring(k: &Key) -> Keyring {
        Keyring::new(k.clone())
    }

    #[test]
    fn sealed_packet_opens_to_the_same_plaintext() {
        let k = Key::generate();
        let r = ring(&k);
        for len in [0, 1, 100, 1400, 70_000] {
            let msg: Vec<u8> = (0..len).map(|i| i as u8).collect();
            let sealed = r.seal(&msg).unwrap();
            assert_eq!(sealed.len(), msg.len() + OVERHEAD);
            assert_eq!(sealed[0], FORMAT_VERSION);
            assert_eq!(r.open(&sealed).unwrap(), msg);
        }
    }

    #[test]
    fn two_seals_of_one_message_differ_by_nonce() {
        let r = ring(&Key::generate());
        let a = r.seal(b"ping").unwrap();
        let b = r.seal(b"ping").unwrap();
        assert_ne!(a[1..1 + NONCE_LEN], b[1..1 + NONCE_LEN]);
        assert_ne!(a, b);
    }

    #[test]
    fn packet_under_another_key_is_refused() {
        let sealed = ring(&Key::generate()).seal(b"hello").unwrap();
        assert_eq!(ring(&Key::generate()).open(&sealed), Err(OpenError::NoKey));
    }

    #[test]
    fn truncated_or_tampered_packets_are_refused_without_panic() {
        let r = ring(&Key::generate());
        let sealed = r.seal(b"some gossip").unwrap();
        for cut in 0..sealed.len() {
            assert!(r.open(&sealed[..cut]).is_err(), "prefix of {cut} bytes accepted");
        }
        assert_eq!(r.open(&[]), Err(OpenError::Truncated(0)));
        for i in 0..sealed.len() {
            let mut bad = sealed.clone();
            bad[i] ^= 0x40;
            assert!(r.open(&bad).is_err(), "flipped byte {i} accepted");
        }
        let mut v2 = sealed.clone();
        v2[0] = 2;
        assert_eq!(r.open(&v2), Err(OpenError::Version(2)));
    }

    #[test]
    fn rotation_keeps_old_and_new_nodes_talking_at_every_step() {
        let old = Key::generate();
        let new = Key::generate();
        let mut a = ring(&old);
        let mut b = ring(&old);
        let talk =
            |x: &Keyring, y: &Keyring| y.open(&x.seal(b"x").unwrap()).is_ok() && x.open(&y.seal(b"y").unwrap()).is_ok();
        // Step 1: install the new key, one node at a time.
        a.install(new.clone());
        assert!(talk(&a, &b));
        b.install(new.clone());
        assert!(talk(&a, &b));
        // Step 2: switch the primary, one node at a time.
        a.use_key(&new).unwrap();
        assert_eq!(a.primary(), new.id());
        assert!(talk(&a, &b));
        b.use_key(&new).unwrap();
        assert!(talk(&a, &b));
        // Step 3: remove the old key.
        a.remove(&old).unwrap();
        assert!(talk(&a, &b));
        b.remove(&old).unwrap();
        assert!(talk(&a, &b));
        assert_eq!(a.key_ids(), vec![new.id()]);
        // A node still on the old key alone is now shut out.
        assert!(!talk(&a, &ring(&old)));
    }

    #[test]
    fn switching_primary_before_peers_have_the_key_breaks_the_link() {
        let old = Key::generate();
        let new = Key::generate();
        let mut a = ring(&old);
        let b = ring(&old);
        a.install(new.clone());
        a.use_key(&new).unwrap();
        // `a` encrypts under a key `b` does not have: the order of steps matters.
        assert_eq!(b.open(&a.seal(b"x").unwrap()), Err(OpenError::NoKey));
        assert!(a.open(&b.seal(b"y").unwrap()).is_ok());
    }

    #[test]
    fn removing_the_primary_key_is_refused() {
        let k = Key::generate();
        let other = Key::generate();
        let mut r = ring(&k);
        assert_eq!(r.remove(&k), Err(KeyringError::RemovePrimary(k.id())));
        r.install(other.clone());
        assert_eq!(r.remove(&k), Err(KeyringError::RemovePrimary(k.id())));
        assert_eq!(r.key_ids(), vec![k.id(), other.id()]);
        r.use_key(&other).unwrap();
        r.remove(&k).unwrap();
        assert_eq!(r.key_ids(), vec![other.id()]);
    }

    #[test]
    fn unknown_keys_are_refused_and_installing_twice_is_harmless() {
        let k = Key::generate();
        let stranger = Key::generate();
        let mut r = ring(&k);
        assert_eq!(r.use_key(&stranger), Err(KeyringError::UnknownKey(stranger.id())));
        assert_eq!(r.remove(&stranger), Err(KeyringError::UnknownKey(stranger.id())));
        r.install(k.clone());
        r.install(stranger.clone());
        r.install(stranger.clone());
        assert_eq!(r.key_ids(), vec![k.id(), stranger.id()]);
    }

    #[test]
    fn keys_parse_from_base64_and_bad_ones_are_named() {
        let k = Key::generate();
        assert_eq!(Key::from_base64(&k.to_base64()).unwrap(), k);
        assert_eq!(Key::from_base64("not base64!"), Err(KeyringError::NotBase64));
        assert_eq!(Key::from_base64("AAAA"), Err(KeyringError::WrongLength(3)));
        let ring = Keyring::from_base64(&[k.to_base64(), Key::generate().to_base64()])
            .unwrap()
            .unwrap();
        assert_eq!(ring.primary(), k.id());
        assert_eq!(ring.key_ids().len(), 2);
        assert!(Keyring::from_base64::<&str>(&[]).unwrap().is_none());
    }

    #[test]
    fn debug_output_never_contains_the_key() {
        let k = Key::from_bytes([7; KEY_LEN]);
        let dbg = format!("{:?} {:?}", k, ring(&k));
        assert!(!dbg.contains(&k.to_base64()));
        assert!(!dbg.contains("7, 7"));
        assert_ne!(k.id(), Key::from_bytes([8; KEY_LEN]).id());
    }
}
