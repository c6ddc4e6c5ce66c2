//! The mesh data plane: a message travels from the node where it entered to
//! the worker that owns its conversation key, and its reply streams back.
//!
//! | module | what it holds |
//! |---|---|
//! | [`config`] | [`MeshConfig`], shared by the server and the router |
//! | [`envelope`] | message ids, deadlines, and the checks every envelope passes |
//! | [`table`] | the routing [`Table`] of one gossip view: the ring over live workers and their addresses |
//! | `pins` | conversations pinned to the worker that holds their records not yet in the event log |
//! | [`router`] | the [`Router`]: the pure rule of `rumor_ring` applied, forwarding, re-routing, relaying |
//! | [`server`] | the gRPC server of `rumor.mesh.v1.Mesh/Deliver` |
//! | [`stats`] | the counters |
//!
//! Each module uses only those above it in this list (and `stats`), so
//! there is no cycle: the server knows the router, the router knows the
//! table and the envelope rules, and none of them knows the server.
//!
//! A node's [`serve`] accepts envelopes from other nodes, checks them, and
//! hands them to its [`Router`], which processes them on the local
//! [`Worker`](crate::worker::Worker) when this node owns the key in its own
//! view, or forwards them to the owner it sees (key-consistent forwarding).
//! The reply chunks stream back on the same call.
//!
//! # What the server refuses (each counted in [`MeshStats`], none panics)
//!
//! | input | status |
//! |---|---|
//! | `version` other than [`PROTOCOL_VERSION`] | `FAILED_PRECONDITION` naming both versions |
//! | encoded envelope over [`MeshConfig::max_envelope_bytes`] | `INVALID_ARGUMENT` with both sizes |
//! | `hops` over [`MeshConfig::max_hops`] | `INVALID_ARGUMENT` with the count and the limit |
//! | `id`, `key`, `origin` or `source` against the shared rules (`proto::rules`) | `INVALID_ARGUMENT` naming the field |
//! | bytes that are not an envelope | `INVALID_ARGUMENT` |
//! | `origin` not a live member; `source` set by a member without the forward role | `ABORTED`; `PERMISSION_DENIED` |
//! | deadline already passed on arrival | `DEADLINE_EXCEEDED` |
//!
//! `RESOURCE_EXHAUSTED` is kept for "this worker is at capacity, try the next
//! owner", which is why an oversized envelope is `INVALID_ARGUMENT`: retrying
//! it elsewhere cannot help. An envelope more than twice the limit is refused
//! by tonic's decoder before it is buffered, and bytes that do not decode
//! never reach the handler either; a layer over the server answers both
//! `INVALID_ARGUMENT` and counts them (`oversized`, `malformed`).
//!
//! # Deadlines
//!
//! The envelope carries an absolute deadline in unix milliseconds (0: the
//! receiver applies [`MeshConfig::default_timeout`]). Every hop also sets the
//! gRPC `grpc-timeout` header from the time remaining, and the receiver uses
//! the earlier of the two, so a clock that runs ahead on the receiver cannot
//! extend a message's life beyond what the sender allowed.
//!
//! Transport security: plaintext unless [`MeshConfig::tls`] is set; then TLS
//! or mutual TLS with rustls, see [`crate::tls`]. Every member of a cluster
//! must use the same mode: a plaintext router cannot reach a TLS server and
//! the attempt fails over to the next owner, counted in `failed_attempts`.

pub mod config;
pub mod envelope;
mod pins;
pub mod router;
pub mod server;
pub mod stats;
pub mod table;

pub use config::{MeshConfig, MeshConfigError};
pub use envelope::{PROTOCOL_VERSION, deadline_in, message_id, new_message_id, unix_ms};
pub use router::{EventStream, Router, Watching};
pub use server::{MeshService, serve};
pub use stats::MeshStats;
pub use table::Table;
