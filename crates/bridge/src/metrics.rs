//! The bridge's counters and histograms, and their Prometheus text form.
//!
//! ```text
//!  consume loop ──count / observe──> Metrics (relaxed atomics) <──read── GET /metrics
//! ```

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

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

/// A Prometheus histogram with fixed buckets.
#[derive(Debug)]
pub(crate) struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    count: AtomicU64,
    /// The sum in millionths, to stay an atomic integer.
    sum_micros: AtomicU64,
}

impl Histogram {
    pub(crate) fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            count: AtomicU64::new(0),
            sum_micros: AtomicU64::new(0),
        }
    }

    pub(crate) fn observe(&self, v: f64) {
        if let Some(i) = self.bounds.iter().position(|b| v <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add((v * 1e6) as u64, Ordering::Relaxed);
    }

    pub(crate) fn render(&self, out: &mut Prom, name: &str, help: &str) {
        out.header(name, help, "histogram");
        let mut cumulative = 0;
        for (b, n) in self.bounds.iter().zip(&self.buckets) {
            cumulative += n.load(Ordering::Relaxed);
            let _ = writeln!(out.0, "{name}_bucket{{le=\"{b}\"}} {cumulative}");
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out.0, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let sum = self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6;
        let _ = writeln!(out.0, "{name}_sum {sum}\n{name}_count {count}");
    }
}

/// Bucket bounds of the batch size histogram (records).
pub(crate) const BATCH_RECORDS: &[f64] = &[1.0, 5.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 5000.0];
/// Bucket bounds of the batch write time histogram (seconds).
pub(crate) const BATCH_SECONDS: &[f64] = &[0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0];

/// Prometheus text exposition, written by hand like the node's.
#[derive(Debug, Default)]
pub(crate) struct Prom(pub(crate) String);

impl Prom {
    pub(crate) fn header(&mut self, name: &str, help: &str, kind: &str) {
        let _ = writeln!(self.0, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    pub(crate) fn gauge(&mut self, name: &str, help: &str, value: impl std::fmt::Display) {
        self.header(name, help, "gauge");
        let _ = writeln!(self.0, "{name} {value}");
    }

    pub(crate) fn counters(&mut self, prefix: &str, fields: Vec<(&'static str, &'static str, u64)>) {
        for (name, help, value) in fields {
            let name = format!("{prefix}{name}_total");
            self.header(&name, help, "counter");
            let _ = writeln!(self.0, "{name} {value}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histograms_render_cumulative_buckets() {
        let h = Histogram::new(&[1.0, 10.0]);
        h.observe(0.5);
        h.observe(5.0);
        h.observe(50.0);
        let mut p = Prom::default();
        h.render(&mut p, "x", "help");
        assert!(p.0.contains("x_bucket{le=\"1\"} 1\nx_bucket{le=\"10\"} 2\nx_bucket{le=\"+Inf\"} 3\n"));
        assert!(p.0.contains("x_count 3"));
    }
}
