//! What an edge runs with: its limits, its credentials, and how long it
//! waits for clients that come back.

use std::time::Duration;

use crate::auth::Auth;

/// Everything an edge needs besides the node it runs on.
#[derive(Debug, Clone)]
pub struct EdgeConfig {
    /// Who may connect; see [`Auth`].
    pub auth: Auth,
    /// The limits every connection and credential runs under.
    pub limits: Limits,
    /// How long a message keeps being processed after the connection that
    /// sent it closed, for the client to come back and watch the rest of
    /// the reply. Then, if nobody watches the conversation, it is cancelled.
    /// Default 10 s.
    pub resume_grace: Duration,
    /// Heartbeats: server-sent events get a comment, WebSocket connections a
    /// ping, this often; a WebSocket that answers no ping for two intervals
    /// is closed. Default 15 s.
    pub heartbeat: Duration,
    /// Time the mesh has to answer a message that does not say. Default 60 s.
    pub default_timeout: Duration,
    /// The bridge's HTTP address (`host:port`), for filling a gap in a
    /// watched conversation from its stored history. Default none.
    pub history: Option<String>,
    /// Events of a watched conversation the gateway keeps, so that clients
    /// resuming on this gateway are served without asking the owner.
    /// Default 256.
    pub watch_buffer: usize,
    /// How long a graceful shutdown waits for messages in flight before it
    /// closes the remaining connections (WebSocket close 1001, "going
    /// away", so clients reconnect elsewhere). Default 5 s.
    pub drain_timeout: Duration,
}

impl Default for EdgeConfig {
    fn default() -> Self {
        Self {
            auth: Auth::default(),
            limits: Limits::default(),
            resume_grace: Duration::from_secs(10),
            heartbeat: Duration::from_secs(15),
            default_timeout: Duration::from_secs(60),
            history: None,
            watch_buffer: 256,
            drain_timeout: Duration::from_secs(5),
        }
    }
}

/// Limits, each with a clear error when reached (docs/protocol.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Largest WebSocket frame or HTTP body, bytes; a larger WebSocket
    /// message closes the connection with 1009. Default 1 MiB.
    pub max_frame_bytes: usize,
    /// Largest message text, bytes (`TOO_LARGE`). Default 256 KiB.
    pub max_text_bytes: usize,
    /// Messages in flight at once on one connection (`TOO_MANY_IN_FLIGHT`).
    /// Default 64.
    pub max_in_flight: usize,
    /// Conversations one connection watches at once. Default 256.
    pub max_watches: usize,
    /// Messages per second per credential, sustained (`RATE_LIMITED`).
    /// Default 50.
    pub messages_per_second: u32,
    /// Messages a credential may send at once above the rate. Default 100.
    pub burst: u32,
    /// Connections (WebSocket and streaming HTTP) held at once by one
    /// credential; more are refused with 429. Default 10,000.
    pub max_connections_per_credential: usize,
    /// Connections held at once in total; more are refused with 503.
    /// Default 100,000.
    pub max_connections: usize,
    /// Bytes queued for one connection that its client has not read yet;
    /// past them the client is closed as a slow reader. Default 1 MiB.
    pub send_queue_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_frame_bytes: 1024 * 1024,
            max_text_bytes: 256 * 1024,
            max_in_flight: 64,
            max_watches: 256,
            messages_per_second: 50,
            burst: 100,
            max_connections_per_credential: 10_000,
            max_connections: 100_000,
            send_queue_bytes: 1024 * 1024,
        }
    }
}
