//! rumor's mesh node runtime: the IO shell around the pure protocol crates.
//!
//! - [`gossip`] drives [`membership::Membership`] over UDP and TCP from one
//!   tokio task, with [`crypto`] encrypting every packet under a rotatable
//!   AES-256-GCM keyring.
//! - The data plane (gRPC, `rumor.mesh.v1.Mesh`), in [`mesh`]: the router
//!   keeps a [`rumor_ring::Ring`] over the live workers of the gossip view
//!   and delivers each message to the owner of its conversation key,
//!   re-routing when the owner fails; the server receives envelopes from
//!   peers; [`worker`] processes them in per-conversation order with
//!   de-duplication and a capacity limit, calling a [`Processor`].
//! - [`node`] assembles all of that into one running node from a
//!   [`NodeConfig`], with the [`admin`] HTTP endpoint (members, ring,
//!   metrics, health, send, gossip) and a graceful shutdown; [`client`] talks
//!   to that endpoint.
//!
//! Wiring a worker node (gossip advertises the mesh address and capacity):
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use node::{mesh::{self, Router}, worker::{Worker, WorkerConfig}};
//! use processors::Echo;
//!
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let mut cfg = node::GossipConfig::new("worker-1", "127.0.0.1:0".parse()?);
//! cfg.meta.roles = vec!["worker".into()];
//! cfg.meta.capacity = 256;
//! cfg.meta.services.insert("mesh".into(), listener.local_addr()?.to_string());
//! let gossip = node::spawn(cfg).await?;
//! let worker = Worker::new("worker-1", WorkerConfig::default(), Arc::new(Echo::default()));
//! let router = Router::new("worker-1", mesh::MeshConfig::default(), gossip.view(), Some(worker));
//! tokio::spawn(mesh::serve(listener, router.clone(), std::future::pending()));
//! let reply = router
//!     .send(proto::mesh::Envelope { id: mesh::new_message_id(), key: "conv-1".into(), ..Default::default() })
//!     .await?;
//! # drop(reply); Ok(()) }
//! ```
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use node::gossip::{self, GossipConfig};
//!
//! let mut cfg = GossipConfig::new("worker-1", "127.0.0.1:7946".parse()?);
//! cfg.seeds = vec!["127.0.0.1:7947".parse()?];
//! cfg.keys = vec![node::crypto::Key::generate().to_base64()];
//! let handle = gossip::spawn(cfg).await?;
//! handle.wait_joined().await?;
//! for m in handle.view().borrow().live() {
//!     println!("{} {} {:?}", m.name, m.addr, m.status);
//! }
//! # Ok(()) }
//! ```

pub mod admin;
pub mod client;
pub mod conversation;
pub mod crypto;
pub mod dead_letters;
pub mod frame;
pub mod gossip;
pub mod mesh;
pub mod node;
pub mod processor;
pub mod role;
pub mod tls;
pub mod worker;

pub use dead_letters::DeadLetters;
pub use gossip::{GossipConfig, GossipHandle, spawn};
pub use node::{Node, NodeConfig};
pub use processor::{Cancelled, ProcessError, ProcessFuture, Processor, Replies};
pub use role::{Role, Roles};
