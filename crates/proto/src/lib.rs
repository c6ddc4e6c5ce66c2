//! rumor's wire types.
//!
//! The `.proto` files under `proto/` are the source of truth; this crate only
//! compiles them (with `protox`, so no `protoc` is needed) and re-exports the
//! generated types. It is the only crate that knows protobuf.

#![allow(missing_docs, unreachable_pub)]

pub use prost::{DecodeError, EncodeError, Message, bytes, encoding};

/// The gossip protocol between mesh nodes (SWIM + Lifeguard).
pub mod gossip {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rumor.gossip.v1.rs"));
    }
    pub use v1::*;
}

/// The mesh data plane between nodes: `Mesh.Deliver` carries an envelope to
/// the worker that owns its key and streams the reply back (gRPC).
pub mod mesh {
    pub mod v1 {
        include!(concat!(env!("OUT_DIR"), "/rumor.mesh.v1.rs"));
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
