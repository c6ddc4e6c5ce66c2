//! rumor's wire types.
//!
//! The `.proto` files under `proto/` are the source of truth; this crate only
//! compiles them (with `protox`, so no `protoc` is needed) and re-exports the
//! generated types. It is the only crate that knows protobuf.

#![allow(missing_docs, unreachable_pub)]

pub use prost::{DecodeError, EncodeError, Message, bytes, encoding};

pub mod openapi;
pub mod rules;
pub mod text;

/// The gossip protocol between mesh nodes (SWIM + Lifeguard).
pub mod gossip {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rumor.gossip.v1.rs"));
    }
    pub use v1::*;
}

/// The mesh data plane between nodes: `Mesh.Deliver` carries an envelope to
/// the worker that owns its key and streams the reply back (gRPC; the
/// client and server stubs come with the `grpc` feature).
pub mod mesh {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rumor.mesh.v1.rs"));
    }
    pub use v1::*;
}

/// The bodies of the HTTP APIs (a node's admin API, the bridge's API), with
/// serde implementations that follow the proto3 JSON mapping: field names as
/// in the .proto file, 64-bit integers as strings (numbers are accepted
/// too), enums by name, default values omitted.
pub mod api {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rumor.api.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/rumor.api.v1.serde.rs"));
    }
    pub use v1::*;
}

/// The client edge: the frames applications exchange with a gateway over
/// WebSocket (JSON or protobuf) and the bodies of its HTTP routes, with
/// serde implementations of the proto3 JSON mapping (fields at their
/// default values left out). docs/protocol.md describes the protocol.
pub mod edge {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rumor.edge.v1.rs"));
        include!(concat!(env!("OUT_DIR"), "/rumor.edge.v1.serde.rs"));
    }
    pub use v1::*;
}

/// Records on the event log (Kafka): the messages and replies workers publish
/// for the bridge, and the forward requests the bridge injects into the mesh.
pub mod events {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rumor.events.v1.rs"));
    }
    pub use v1::*;
}

/// A sortable unique message id from a time and 80 random bits: 26
/// characters of Crockford base32, 48 bits of unix milliseconds then the
/// randomness (the ULID layout). Ids sort by time as strings. The format of
/// `rumor.mesh.v1.Envelope.id` and of the event records' ids.
///
/// Pure: the caller passes the clock and the randomness (only the low 80
/// bits of `random` are used), so tests and simulations are reproducible.
pub fn message_id(unix_ms: u64, random: u128) -> String {
    const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
    let value = (u128::from(unix_ms & 0xFFFF_FFFF_FFFF) << 80) | (random & ((1u128 << 80) - 1));
    // 26 digits of 5 bits hold 130 bits; the top digit carries only 3.
    (0..26)
        .rev()
        .map(|i| char::from(ALPHABET[((value >> (i * 5)) & 31) as usize]))
        .collect()
}

impl api::KeyOperation {
    /// The operation's name in the admin API's path: `install`, `use` or `remove`.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Install => "install",
            Self::Use => "use",
            Self::Remove => "remove",
        }
    }

    /// The operation named `name` in a path, if it is one.
    pub fn from_short_name(name: &str) -> Option<Self> {
        [Self::Install, Self::Use, Self::Remove]
            .into_iter()
            .find(|op| op.short_name() == name)
    }
}

impl api::MemberStatus {
    /// The status in lower case, as people read it: `alive`, `suspect`, `dead`, `left`.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Alive => "alive",
            Self::Suspect => "suspect",
            Self::Dead => "dead",
            Self::Left => "left",
        }
    }

    /// The status named `name` (as [`short_name`](Self::short_name) writes
    /// it), if it is one; never `Unspecified`.
    pub fn from_short_name(name: &str) -> Option<Self> {
        [Self::Alive, Self::Suspect, Self::Dead, Self::Left]
            .into_iter()
            .find(|s| s.short_name() == name)
    }

    /// Alive or suspect: still a member that may answer.
    pub fn is_live(self) -> bool {
        matches!(self, Self::Alive | Self::Suspect)
    }
}

impl api::ReplyLine {
    /// True for the line that ends a reply: `last`, or an error.
    pub fn is_terminal(&self) -> bool {
        self.last || self.error.is_some()
    }
}

impl api::MessageKind {
    /// The kind in lower case: `inbound`, `reply`.
    pub fn short_name(self) -> &'static str {
        match self {
            Self::Unspecified => "unspecified",
            Self::Inbound => "inbound",
            Self::Reply => "reply",
        }
    }
}
