//! The edge's counters.

stats::counters! {
    /// The client edge's counters, for metrics. Monotonic since start.
    EdgeStats;
    /// WebSocket connections accepted (authenticated and within the limits).
    connections,
    /// Connections refused at the door: over the total or per-credential limit.
    connections_refused,
    /// Requests and connections without a valid credential.
    auth_failures,
    /// Frames received on WebSocket connections.
    frames_in,
    /// Frames sent on WebSocket connections.
    frames_out,
    /// Frames refused as not a client frame (BAD_FRAME).
    bad_frames,
    /// Messages routed into the mesh (every way in).
    messages,
    /// Replies that ended well.
    replies_done,
    /// Replies that ended with an error, and messages refused.
    replies_failed,
    /// Messages refused for the credential's rate.
    rate_limited,
    /// Messages or frames refused for their size.
    too_large,
    /// Messages refused for the connection's in-flight limit.
    too_many_in_flight,
    /// Connections closed because their client did not read.
    slow_readers,
    /// Explicit cancels received.
    cancels,
    /// Replies whose client went away before they ended; their owner goes
    /// on for the resume grace, then cancels them unless watched.
    orphaned,
    /// Watches started.
    watches,
    /// Watchers that fell behind their hub and resubscribed.
    watch_lagged,
    /// Requests to the OpenAI-compatible API.
    openai_requests,
    /// Requests to the HTTP messages route.
    http_requests,
}

/// The edge's latency histograms, shared by every way in.
#[derive(Debug, Clone)]
pub(crate) struct Latency {
    /// From routing a message into the mesh to its first reply chunk.
    pub(crate) first_chunk: ::stats::prom::Histogram,
    /// From routing a message into the mesh to the end of a reply that ended well.
    pub(crate) reply: ::stats::prom::Histogram,
}

impl Default for Latency {
    fn default() -> Self {
        Self {
            first_chunk: ::stats::prom::seconds(),
            reply: ::stats::prom::seconds(),
        }
    }
}

impl Latency {
    /// For `/metrics` (`rumor_edge_{name}`).
    pub(crate) fn all(&self) -> ::stats::prom::Latencies {
        vec![
            (
                "first_chunk_seconds",
                "Time from routing a message into the mesh to its first reply chunk at the edge.",
                self.first_chunk.clone(),
            ),
            (
                "reply_seconds",
                "Time from routing a message into the mesh to the end of its reply, for replies that ended well.",
                self.reply.clone(),
            ),
        ]
    }
}
