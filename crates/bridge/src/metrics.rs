//! The bridge's counters and histograms; `GET /metrics` (crate::api) writes
//! them in the Prometheus text format.
//!
//! ```text
//!  consume loop ──count / observe──> counters (relaxed atomics), histograms <──read── GET /metrics
//! ```

use std::sync::atomic::{AtomicU64, Ordering};

pub(crate) use stats::prom::Histogram;

stats::counters! {
    /// What the bridge did since it started.
    BridgeStats;
    /// Records read from the messages topic and accepted into a batch.
    records,
    /// Message rows inserted.
    rows_inserted,
    /// Message rows already stored (a record delivered twice).
    duplicates,
    /// Records written to the dead-letter table (undecodable, or refused by the database).
    dead_letters,
    /// Batches committed.
    batches,
    /// Batches rolled back because another consumer had advanced a partition's stored offset.
    fence_conflicts,
    /// Failed attempts to write a batch (database errors), each retried.
    db_errors,
    /// Records skipped because their offset was already stored (re-read after a seek or a rebalance).
    stale_records,
    /// Records of partitions not assigned to this bridge (after a revoke), skipped.
    unassigned_records,
    /// Jumps in a partition's offsets accepted after a re-seek (records deleted from the log before they were stored).
    offset_gaps,
    /// Seeks to stored offsets (on assignment, fence conflicts and unexpected offsets).
    seeks,
    /// Seeks the log refused even after retries (the offset checks keep the data right; reading is slower).
    seek_errors,
    /// Times the stall watch had this bridge leave the consumer group and join it again.
    group_rejoins,
    /// Times this bridge, its group rejoined without result, left the group to read every partition alone.
    reads_alone,
    /// Failed offset commits to the log's consumer group (used only for lag reporting).
    log_commit_errors,
    /// Forward requests produced by POST /v1/forward.
    forwarded,
    /// Forward requests the log did not take.
    forward_errors,
}

pub(crate) fn count(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// The batch size histogram (records).
pub(crate) fn batch_records() -> Histogram {
    Histogram::new([1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0])
}

/// The batch write time histogram (seconds).
pub(crate) fn batch_seconds() -> Histogram {
    Histogram::new([0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0])
}
