//! What the state machine knows about each member.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

/// A member's state as seen by this node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Answering probes, or not yet suspected.
    Alive,
    /// Missed a probe; declared dead when the suspicion timeout expires unless it refutes.
    Suspect,
    /// Declared failed.
    Dead,
    /// Left the cluster gracefully.
    Left,
}

impl Status {
    /// Every status, in this order.
    pub const ALL: [Status; 4] = [Status::Alive, Status::Suspect, Status::Dead, Status::Left];

    /// Alive or suspect: still a member that may receive traffic.
    pub fn is_live(self) -> bool {
        matches!(self, Status::Alive | Status::Suspect)
    }
}

/// Node metadata carried in gossip: roles, service addresses, capacity and tags.
/// It is versioned by the member's incarnation: changing it bumps the incarnation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Roles this node holds, e.g. `gateway`, `forward`, `worker`.
    pub roles: Vec<String>,
    /// Service name to `host:port`, e.g. `mesh` -> `127.0.0.1:7001`.
    pub services: BTreeMap<String, String>,
    /// Concurrent messages this node accepts; 0 when it is not a worker.
    pub capacity: u32,
    /// Free-form labels.
    pub tags: BTreeMap<String, String>,
}

impl Meta {
    /// True when the node holds `role`.
    pub fn has_role(&self, role: &str) -> bool {
        self.roles.iter().any(|r| r == role)
    }
}

/// One member of the cluster as this node sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    /// Unique node name; the identity of a member across restarts.
    pub name: String,
    /// Gossip address.
    pub addr: SocketAddr,
    /// Incarnation number: only the member itself raises it, to refute
    /// suspicion or to announce new metadata or a new address.
    pub incarnation: u64,
    /// Current status.
    pub status: Status,
    /// Metadata at this incarnation.
    pub meta: Meta,
    /// When the status last changed, on the caller's clock; to the second for
    /// other members, whose table entries keep it in 4 bytes.
    pub since: Duration,
}
