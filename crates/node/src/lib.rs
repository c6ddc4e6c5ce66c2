//! rumor's mesh node runtime: the IO shell around the pure protocol crates.
//!
//! So far it holds the gossip part (issue 4): [`gossip`] drives
//! [`membership::Membership`] over UDP and TCP from one tokio task, with
//! [`crypto`] encrypting every packet under a rotatable AES-256-GCM keyring.
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

pub mod crypto;
pub mod frame;
pub mod gossip;

pub use gossip::{GossipConfig, GossipHandle, spawn};
