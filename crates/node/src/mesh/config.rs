//! The data plane's settings, shared by the server and the router.

use std::time::Duration;

use crate::tls::MeshTls;

/// Data-plane settings shared by the server and the router. A plain struct:
/// the binary fills it from the config file. See [`MeshConfig::check`].
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Largest encoded envelope accepted or sent. Default 960 KiB, so that
    /// a message and its record fit in a Kafka record of Kafka's default
    /// size limit (1,000,000 bytes).
    pub max_envelope_bytes: usize,
    /// Most node-to-node sends one envelope may take, the origin's included:
    /// 2 lets a receiver whose view disagrees with the sender's forward once
    /// more. Default 2.
    pub max_hops: u32,
    /// Deadline of a message whose envelope has none. Default 30 s.
    pub default_timeout: Duration,
    /// Time to open a connection to a peer before trying the next owner.
    /// Default 1 s.
    pub connect_timeout: Duration,
    /// First pause before retrying on another owner; doubles per retry up to
    /// `max_retry_backoff`. Default 10 ms.
    pub retry_backoff: Duration,
    /// Longest pause between retries. Default 200 ms.
    pub max_retry_backoff: Duration,
    /// The key in the gossip metadata's `services` holding a member's mesh
    /// address (`host:port`). Default `mesh`.
    pub service: String,
    /// TLS for the server and for connections to peers; plaintext when
    /// `None`. Default `None`.
    pub tls: Option<MeshTls>,
}

impl Default for MeshConfig {
    fn default() -> Self {
        Self {
            max_envelope_bytes: 960 * 1024,
            max_hops: 2,
            default_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(1),
            retry_backoff: Duration::from_millis(10),
            max_retry_backoff: Duration::from_millis(200),
            service: "mesh".to_owned(),
            tls: None,
        }
    }
}

/// A [`MeshConfig`] constraint that does not hold.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MeshConfigError {
    /// `max_hops` is 0: no envelope could ever leave its origin.
    #[error("mesh.max_hops must be at least 1")]
    NoHops,
    /// `max_envelope_bytes` is 0.
    #[error("mesh.max_envelope_bytes must be at least 1")]
    NoEnvelope,
    /// `default_timeout` is zero.
    #[error("mesh.default_timeout must be positive")]
    NoTimeout,
    /// The TLS certificate, key or CA cannot be used.
    #[error("{0}")]
    Tls(String),
}

impl MeshConfig {
    /// Checks the constraints the binary cannot express in types.
    pub fn check(&self) -> Result<(), MeshConfigError> {
        if self.max_hops == 0 {
            return Err(MeshConfigError::NoHops);
        }
        if self.max_envelope_bytes == 0 {
            return Err(MeshConfigError::NoEnvelope);
        }
        if self.default_timeout.is_zero() {
            return Err(MeshConfigError::NoTimeout);
        }
        if let Some(tls) = &self.tls {
            tls.check().map_err(|e| MeshConfigError::Tls(e.to_string()))?;
        }
        Ok(())
    }

    /// Short timeouts for tests on loopback.
    pub fn for_tests() -> Self {
        Self {
            default_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_millis(300),
            ..Self::default()
        }
    }
}
