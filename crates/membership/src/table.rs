//! The member table: what this node knows about every other member.
//!
//! Every node keeps an entry for every member, so a simulation of N nodes
//! keeps N² of them (10⁸ at N = 10,000, where each byte of an entry costs
//! 100 MB). An entry is therefore a 48-byte slot (name and IPv4 address
//! inline, status to the second) in chunks of fixed size, found by name
//! through a hash table of slot numbers (4 bytes each); metadata, which
//! simulated nodes do not have, is kept aside.

use std::collections::HashMap;
use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
use std::net::{SocketAddr, SocketAddrV4, SocketAddrV6};
use std::time::Duration;

use hashbrown::HashTable;

use crate::member::{Member, Meta, Status};

/// Where a member's entry is; it stays there until the member is forgotten,
/// after which the slot may be reused for another member.
pub(crate) type Slot = u32;

/// One member as this node stores it, but for its metadata.
#[derive(Debug, Clone)]
pub(crate) struct Entry {
    name: Name,
    addr: Addr,
    pub(crate) incarnation: u64,
    pub(crate) status: Status,
    /// When the status last changed, to the second: 4 bytes instead of 16.
    since_secs: u32,
}

static NO_META: Meta = Meta {
    roles: Vec::new(),
    services: std::collections::BTreeMap::new(),
    capacity: 0,
    tags: std::collections::BTreeMap::new(),
};

impl Entry {
    pub(crate) fn new(name: &str, addr: SocketAddr, incarnation: u64, now: Duration) -> Self {
        let mut e = Self {
            name: Name::new(name),
            addr: Addr::new(addr),
            incarnation,
            status: Status::Alive,
            since_secs: 0,
        };
        e.set_since(now);
        e
    }

    pub(crate) fn name(&self) -> &str {
        self.name.as_str()
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr.get()
    }

    pub(crate) fn set_addr(&mut self, addr: SocketAddr) {
        self.addr = Addr::new(addr);
    }

    pub(crate) fn set_since(&mut self, now: Duration) {
        self.since_secs = u32::try_from(now.as_secs()).unwrap_or(u32::MAX);
    }

    fn to_member(&self, meta: &Meta) -> Member {
        Member {
            name: self.name().to_owned(),
            addr: self.addr(),
            incarnation: self.incarnation,
            status: self.status,
            meta: meta.clone(),
            since: Duration::from_secs(u64::from(self.since_secs)),
        }
    }
}

/// A name in 16 bytes: inline up to 14 bytes (every simulated node's name),
/// behind one pointer when longer.
#[derive(Debug, Clone)]
enum Name {
    Short(u8, [u8; 14]),
    // A `Box<str>` is two words; a boxed `String` keeps `Name` at 16 bytes.
    #[allow(clippy::box_collection)]
    Long(Box<String>),
}

impl Name {
    fn new(name: &str) -> Self {
        let mut bytes = [0; 14];
        match bytes.get_mut(..name.len()) {
            Some(b) => {
                b.copy_from_slice(name.as_bytes());
                Name::Short(name.len() as u8, bytes)
            }
            None => Name::Long(Box::new(name.to_owned())),
        }
    }

    fn is(&self, name: &str) -> bool {
        match self {
            Name::Short(len, bytes) => bytes[..usize::from(*len)] == *name.as_bytes(),
            Name::Long(s) => **s == name,
        }
    }

    fn as_str(&self) -> &str {
        match self {
            Name::Short(len, bytes) => std::str::from_utf8(&bytes[..usize::from(*len)]).expect("copied from a str"),
            Name::Long(s) => s,
        }
    }
}

/// A gossip address in 16 bytes (a `SocketAddr` takes 32): IPv4 inline,
/// IPv6 with its flow and scope behind one pointer.
#[derive(Debug, Clone)]
enum Addr {
    V4(SocketAddrV4),
    V6(Box<SocketAddrV6>),
}

impl Addr {
    fn new(addr: SocketAddr) -> Self {
        match addr {
            SocketAddr::V4(a) => Addr::V4(a),
            SocketAddr::V6(a) => Addr::V6(Box::new(a)),
        }
    }

    fn get(&self) -> SocketAddr {
        match self {
            Addr::V4(a) => SocketAddr::V4(*a),
            Addr::V6(a) => SocketAddr::V6(**a),
        }
    }
}

/// Slots per chunk. A chunk is never moved or resized: a growing vector would
/// double, leaving up to half of itself unused and its old copies to the
/// allocator, on every node.
const CHUNK: usize = 256;

type Chunk = Box<[Option<Entry>]>;

/// Entries in slots, the slots by name, and metadata by slot.
#[derive(Debug, Default)]
pub(crate) struct Table {
    /// Slot `s` is `chunks[s / CHUNK][s % CHUNK]`.
    chunks: Vec<Chunk>,
    /// Slots ever used.
    used: usize,
    /// Emptied slots, reused before a new one.
    free: Vec<Slot>,
    /// Occupied slots, found by the hash of their name. Only looked up, never
    /// iterated: iteration follows the slots, so it depends only on the inputs.
    index: HashTable<Slot>,
    /// Metadata of the members that have some. Only looked up.
    metas: HashMap<Slot, Meta>,
}

fn hash(name: &str) -> u64 {
    BuildHasherDefault::<DefaultHasher>::default().hash_one(name)
}

fn entry(chunks: &[Chunk], s: Slot) -> Option<&Entry> {
    chunks.get(s as usize / CHUNK)?[s as usize % CHUNK].as_ref()
}

impl Table {
    /// The slot of `name`.
    pub(crate) fn slot(&self, name: &str) -> Option<Slot> {
        let named = |s: &Slot| entry(&self.chunks, *s).is_some_and(|e| e.name.is(name));
        self.index.find(hash(name), named).copied()
    }

    pub(crate) fn get(&self, name: &str) -> Option<&Entry> {
        self.slot(name).and_then(|s| self.at(s))
    }

    /// The entry in slot `s`, if occupied.
    pub(crate) fn at(&self, s: Slot) -> Option<&Entry> {
        entry(&self.chunks, s)
    }

    pub(crate) fn at_mut(&mut self, s: Slot) -> Option<&mut Entry> {
        self.chunks.get_mut(s as usize / CHUNK)?[s as usize % CHUNK].as_mut()
    }

    pub(crate) fn meta(&self, s: Slot) -> &Meta {
        self.metas.get(&s).unwrap_or(&NO_META)
    }

    pub(crate) fn set_meta(&mut self, s: Slot, meta: Meta) {
        if meta == NO_META {
            self.metas.remove(&s);
        } else {
            self.metas.insert(s, meta);
        }
    }

    /// Slot `s` as a [`Member`].
    pub(crate) fn member(&self, s: Slot) -> Option<Member> {
        Some(self.at(s)?.to_member(self.meta(s)))
    }

    /// Adds an entry for a name not in the table.
    pub(crate) fn insert(&mut self, e: Entry, meta: Meta) -> Slot {
        debug_assert!(self.slot(e.name()).is_none(), "{} is already in the table", e.name());
        let h = hash(e.name());
        let s = self.free.pop().unwrap_or_else(|| {
            if self.used.is_multiple_of(CHUNK) {
                self.chunks.push((0..CHUNK).map(|_| None).collect());
            }
            self.used += 1;
            Slot::try_from(self.used - 1).expect("fewer than 2^32 members")
        });
        self.chunks[s as usize / CHUNK][s as usize % CHUNK] = Some(e);
        let chunks = &self.chunks;
        self.index
            .insert_unique(h, s, |t| hash(entry(chunks, *t).map_or("", Entry::name)));
        self.set_meta(s, meta);
        s
    }

    /// Empties slot `s`.
    pub(crate) fn remove(&mut self, s: Slot) -> Option<Entry> {
        let e = self.chunks.get_mut(s as usize / CHUNK)?[s as usize % CHUNK].take()?;
        if let Ok(found) = self.index.find_entry(hash(e.name()), |t| *t == s) {
            found.remove();
        }
        self.metas.remove(&s);
        self.free.push(s);
        Some(e)
    }

    /// Occupied slots in slot order.
    pub(crate) fn iter(&self) -> impl Iterator<Item = (Slot, &Entry)> {
        let slots = self.chunks.iter().flat_map(|c| c.iter());
        slots.enumerate().filter_map(|(s, e)| Some((s as Slot, e.as_ref()?)))
    }

    pub(crate) fn len(&self) -> usize {
        self.index.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, port: u16) -> Entry {
        Entry::new(name, ([127, 0, 0, 1], port).into(), 0, Duration::ZERO)
    }

    #[test]
    fn an_entry_is_48_bytes() {
        assert_eq!(std::mem::size_of::<Option<Entry>>(), 48);
    }

    #[test]
    fn names_addresses_and_metadata_round_trip() {
        let long = "a-name-longer-than-fourteen-bytes";
        let v6: SocketAddr = "[fe80::1%2]:7946".parse().unwrap();
        let meta = Meta {
            capacity: 3,
            ..Meta::default()
        };
        let mut t = Table::default();
        let s = t.insert(Entry::new(long, v6, 4, Duration::from_millis(2500)), meta.clone());
        let m = t.member(s).unwrap();
        assert_eq!((m.name.as_str(), m.addr, m.incarnation), (long, v6, 4));
        assert_eq!((m.meta, m.since), (meta, Duration::from_secs(2)));
        t.set_meta(s, Meta::default());
        assert!(t.metas.is_empty(), "empty metadata takes no room");
        assert_eq!(entry("", 1).name(), "");
        assert_eq!(entry("fourteen-bytes", 1).name(), "fourteen-bytes");
    }

    #[test]
    fn slots_are_found_by_name_and_reused() {
        let mut t = Table::default();
        let meta = Meta {
            capacity: 1,
            ..Meta::default()
        };
        let a = t.insert(entry("a", 1), meta);
        let b = t.insert(entry("b", 2), Meta::default());
        assert_eq!((t.slot("a"), t.slot("b"), t.slot("c")), (Some(a), Some(b), None));
        assert_eq!(t.remove(a).map(|e| e.addr().port()), Some(1));
        assert_eq!((t.slot("a"), t.len()), (None, 1));
        let c = t.insert(entry("c", 3), Meta::default());
        assert_eq!(c, a, "an emptied slot is reused");
        assert_eq!(*t.meta(c), Meta::default(), "with none of the old metadata");
        assert_eq!(t.iter().map(|(_, e)| e.name()).collect::<Vec<_>>(), ["c", "b"]);
    }
}
