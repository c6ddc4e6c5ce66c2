//! The mesh data plane's gRPC server: `rumor.mesh.v1.Mesh/Deliver`.
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
//! | empty `id` or `key` | `INVALID_ARGUMENT` |
//! | deadline already passed on arrival | `DEADLINE_EXCEEDED` |
//!
//! `RESOURCE_EXHAUSTED` is kept for "this worker is at capacity, try the next
//! owner", which is why an oversized envelope is `INVALID_ARGUMENT`: retrying
//! it elsewhere cannot help. An envelope more than twice the limit is refused
//! by tonic's decoder before it reaches the handler (`OUT_OF_RANGE`), so the
//! server never buffers more than that.
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

use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use proto::Message as _;
use proto::mesh::mesh_server::{Mesh, MeshServer};
use proto::mesh::{Envelope, ReplyChunk};
use tokio::net::TcpListener;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::server::TcpIncoming;
use tonic::{Request, Response, Status};

use crate::router::Router;
use crate::tls::MeshTls;
use crate::worker::ReplyStream;

/// The mesh protocol version this build speaks (`Envelope.version`).
pub const PROTOCOL_VERSION: u32 = 1;

/// Data-plane settings shared by the server and the router. A plain struct:
/// the binary fills it from the config file. See [`MeshConfig::check`].
#[derive(Debug, Clone)]
pub struct MeshConfig {
    /// Largest encoded envelope accepted or sent. Default 1 MiB.
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
            max_envelope_bytes: 1024 * 1024,
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

// Relaxed atomics: each counter stands alone, and every request task counts without coordination.
stats::counters! {
    /// The data plane's counters (server and router), for metrics. Monotonic since start.
    MeshStats;
    /// Envelopes received from peers that passed every check.
    accepted,
    /// Envelopes refused for their protocol version.
    bad_version,
    /// Envelopes refused for their size.
    oversized,
    /// Envelopes refused because their hop count is over the limit.
    hops_over_limit,
    /// Envelopes refused for an empty id or key.
    malformed,
    /// Envelopes whose deadline had passed on arrival.
    expired_on_arrival,
    /// Envelopes routed by a sender whose ring checksum differs from ours.
    checksum_mismatch,
    /// Messages handed to the local worker.
    local,
    /// Messages forwarded to another node that answered.
    forwarded,
    /// Messages that reached an owner only after another attempt failed.
    rerouted,
    /// Attempts on an owner that failed before its first reply chunk.
    failed_attempts,
    /// Messages refused because this node does not own the key and the
    /// hop limit was reached (views disagree).
    hop_limit_reached,
    /// Messages refused because no live worker was in the view.
    no_owner,
    /// Messages whose deadline passed before any owner took them.
    deadline_exceeded,
    /// Replies cut off because their owner failed or was declared dead
    /// after sending some chunks (answered with an error chunk).
    replies_cut,
}

#[inline]
pub(crate) fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

pub use proto::message_id;

/// A fresh [`message_id`] from the system clock and the OS-seeded RNG.
pub fn new_message_id() -> String {
    message_id(unix_ms(SystemTime::now()), rand::random())
}

/// Milliseconds since the unix epoch (0 before it).
pub fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The `deadline_unix_ms` for a message that must be answered within `timeout`.
pub fn deadline_in(timeout: Duration) -> u64 {
    unix_ms(SystemTime::now() + timeout)
}

/// The local instant of an envelope's deadline: the earliest of its absolute
/// deadline, `now + grpc_timeout`, and (when it has none) `now + default`.
pub(crate) fn deadline_of(env: &Envelope, grpc_timeout: Option<Duration>, default: Duration) -> Instant {
    let now = Instant::now();
    let mut deadline = if env.deadline_unix_ms == 0 {
        now + default
    } else {
        let left = env.deadline_unix_ms.saturating_sub(unix_ms(SystemTime::now()));
        now + Duration::from_millis(left)
    };
    if let Some(t) = grpc_timeout {
        deadline = deadline.min(now + t);
    }
    deadline
}

/// Parses a `grpc-timeout` header (`1234m`: up to 8 digits and a unit of
/// H, M, S, m, u or n). Absent or malformed headers give `None`.
pub(crate) fn grpc_timeout(metadata: &MetadataMap) -> Option<Duration> {
    let value = metadata.get("grpc-timeout")?.to_str().ok()?;
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Checks an envelope received from a peer. Counts and describes each refusal.
pub(crate) fn check_envelope(env: &Envelope, config: &MeshConfig, counters: &Counters) -> Result<(), Status> {
    if env.version != PROTOCOL_VERSION {
        count(&counters.bad_version);
        return Err(Status::failed_precondition(format!(
            "mesh protocol version {} is not supported: this node speaks version {PROTOCOL_VERSION}",
            env.version
        )));
    }
    check_size(env, config, counters)?;
    if env.hops > config.max_hops {
        count(&counters.hops_over_limit);
        return Err(Status::invalid_argument(format!(
            "message {}: hop count {} is over the limit of {}",
            env.id, env.hops, config.max_hops
        )));
    }
    check_fields(env, counters)
}

pub(crate) fn check_size(env: &Envelope, config: &MeshConfig, counters: &Counters) -> Result<(), Status> {
    let len = env.encoded_len();
    if len > config.max_envelope_bytes {
        count(&counters.oversized);
        return Err(Status::invalid_argument(format!(
            "envelope of {len} bytes is over the limit of {} bytes",
            config.max_envelope_bytes
        )));
    }
    Ok(())
}

pub(crate) fn check_fields(env: &Envelope, counters: &Counters) -> Result<(), Status> {
    if env.id.is_empty() || env.key.is_empty() {
        count(&counters.malformed);
        return Err(Status::invalid_argument("envelope needs a non-empty id and key"));
    }
    Ok(())
}

/// The `Mesh` gRPC service over a [`Router`].
#[derive(Debug, Clone)]
pub struct MeshService {
    router: Router,
}

impl MeshService {
    /// Serves `Deliver` by routing through `router`.
    pub fn new(router: Router) -> Self {
        Self { router }
    }

    /// The tonic service, with the decoder limit set from the config.
    pub fn into_server(self) -> MeshServer<Self> {
        let limit = self.router.config().max_envelope_bytes.saturating_mul(2);
        MeshServer::new(self).max_decoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl Mesh for MeshService {
    type DeliverStream = ReplyStream;

    async fn deliver(&self, request: Request<Envelope>) -> Result<Response<ReplyStream>, Status> {
        let timeout = grpc_timeout(request.metadata());
        let envelope = request.into_inner();
        self.router.accept(envelope, timeout).await.map(Response::new)
    }
}

/// Serves the mesh on `listener` until `shutdown` completes, then stops
/// accepting and lets in-flight replies finish.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    // Small reply chunks must not wait for Nagle's algorithm; the builder's
    // `tcp_nodelay` only covers listeners tonic binds itself.
    let incoming = TcpIncoming::from(listener).with_nodelay(Some(true));
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = &router.config().tls {
        builder = builder.tls_config(tls.server_config())?;
    }
    // The mesh is the only service on its port, so it is served without
    // tonic's (axum-based) router.
    builder
        .serve_with_incoming_shutdown(MeshService::new(router).into_server(), incoming, shutdown)
        .await
}

/// A reply chunk that ends a stream with an explicit error.
pub(crate) fn error_chunk(id: &str, seq: u64, code: tonic::Code, message: String) -> ReplyChunk {
    ReplyChunk {
        id: id.to_owned(),
        seq,
        error: Some(proto::mesh::Error {
            code: code as u32,
            message,
        }),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_ids_sort_by_time_and_have_26_characters() {
        let a = message_id(1_700_000_000_000, u128::MAX);
        let b = message_id(1_700_000_000_001, 0);
        assert_eq!(a.len(), 26);
        assert!(a < b, "{a} < {b}");
        assert_eq!(message_id(0, 0), "0".repeat(26));
        assert_ne!(new_message_id(), new_message_id());
    }

    #[test]
    fn grpc_timeout_headers_parse_and_bad_ones_are_ignored() {
        let mut m = MetadataMap::new();
        m.insert("grpc-timeout", "250m".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_millis(250)));
        m.insert("grpc-timeout", "3S".parse().unwrap());
        assert_eq!(grpc_timeout(&m), Some(Duration::from_secs(3)));
        for bad in ["", "m", "123456789m", "12x", "-1m"] {
            m.insert("grpc-timeout", bad.parse().unwrap());
            assert_eq!(grpc_timeout(&m), None, "{bad:?}");
        }
    }
}
