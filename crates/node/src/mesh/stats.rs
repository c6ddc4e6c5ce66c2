//! The data plane's counters (server and router).

use std::sync::atomic::{AtomicU64, Ordering};

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
    /// Envelopes refused for a field the shared rules refuse (id, key, origin, source).
    malformed,
    /// Envelopes refused because their origin is not a live member, or
    /// because an origin without the forward role set a source.
    unknown_origin,
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
    /// Attempts to deliver a message that entered here to the worker that
    /// held its conversation's records not yet in the event log, whoever
    /// the ring's owner was.
    pinned,
    /// Conversations whose records not yet in the log stopped holding them
    /// to one worker: the pinned worker was gone, failed an attempt or was
    /// quiet for 10 minutes, the pin map was full, or the worker holding
    /// them refused a message (over capacity, leaving). The message went by
    /// the ring, and the stored history may list it before the
    /// conversation's previous message.
    pins_lost,
    /// Attempts this node's worker took, whoever the ring's owner was,
    /// because it held their conversation's records not yet in the log.
    kept_for_records,
}

/// Adds one to a counter.
#[inline]
pub(crate) fn count(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// What tonic's decoder refused.
#[derive(Debug, Clone, Copy)]
pub(crate) enum DecoderRefusal {
    /// Over the decoder's size limit.
    Oversized,
    /// Not a valid protobuf message.
    Undecodable,
}
