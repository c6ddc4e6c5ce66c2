//! The Prometheus text exposition (format 0.0.4) of rumor's metrics,
//! through `prometheus-client`.
//!
//! An [`Exposition`] is built for each scrape from the current values (the
//! counters of [`counters!`](crate::counters) snapshots, gauges read at that
//! moment) and the long-lived metrics that keep state between scrapes
//! (histograms), then encoded. Counter names get their `_total` suffix from
//! the encoder; names carry their unit (`_seconds`, `_bytes`).

use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::registry::{Metric, Registry};

pub use prometheus_client::metrics::histogram::{Histogram, exponential_buckets, linear_buckets};

/// A latency histogram in seconds with the buckets rumor uses everywhere:
/// 1 ms to about 65 s, doubling (17 buckets), so one dashboard query fits
/// every latency it exposes.
pub fn seconds() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Latency histograms that are exposed together, each as (name after the
/// exposition's prefix, description, histogram).
pub type Latencies = Vec<(&'static str, &'static str, Histogram)>;

/// The `Content-Type` of the exposition.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

/// The metrics of one scrape; see the [module docs](self).
#[derive(Debug, Default)]
pub struct Exposition {
    registry: Registry,
}

/// A description as the exposition wants it: one line, and no final period
/// (the encoder adds one).
fn help(text: &str) -> String {
    let one_line = text.split_whitespace().collect::<Vec<_>>().join(" ");
    one_line.trim_end_matches('.').to_owned()
}

impl Exposition {
    /// An empty exposition.
    pub fn new() -> Self {
        Self::default()
    }

    /// A counter `name` (without `_total`) with `value`.
    pub fn counter(&mut self, name: &str, description: &str, value: u64) {
        self.registry
            .register(name, help(description), ConstCounter::new(value));
    }

    /// Every field of a counters snapshot (`fields()` of [`snapshot!`](crate::snapshot)),
    /// each named `<prefix><field>`.
    pub fn counters(&mut self, prefix: &str, fields: Vec<(&'static str, &'static str, u64)>) {
        for (name, description, value) in fields {
            self.counter(&format!("{prefix}{name}"), description, value);
        }
    }

    /// A gauge `name` with a whole-number `value` (a count, bytes).
    pub fn gauge(&mut self, name: &str, description: &str, value: i64) {
        self.registry.register(name, help(description), ConstGauge::new(value));
    }

    /// A gauge `name` with a fractional `value` (seconds, ratios).
    pub fn gauge_f64(&mut self, name: &str, description: &str, value: f64) {
        self.registry.register(name, help(description), ConstGauge::new(value));
    }

    /// A whole-number gauge `name` with one sample per set of labels.
    pub fn gauges<L, V>(&mut self, name: &str, description: &str, samples: impl IntoIterator<Item = (L, i64)>)
    where
        L: IntoIterator<Item = (&'static str, V)>,
        V: Into<String>,
    {
        let family = Family::<Vec<(String, String)>, Gauge<i64, std::sync::atomic::AtomicI64>>::default();
        for (labels, value) in samples {
            let labels: Vec<(String, String)> = labels.into_iter().map(|(k, v)| (k.to_owned(), v.into())).collect();
            family.get_or_create(&labels).set(value);
        }
        self.registry.register(name, help(description), family);
    }

    /// A metric that keeps its own state between scrapes (a histogram);
    /// clones of `prometheus-client` metrics share that state.
    pub fn metric(&mut self, name: &str, description: &str, metric: impl Metric) {
        self.registry.register(name, help(description), metric);
    }

    /// Every histogram of `latencies`, each named `<prefix><name>`.
    pub fn histograms(&mut self, prefix: &str, latencies: Latencies) {
        for (name, description, h) in latencies {
            self.metric(&format!("{prefix}{name}"), description, h);
        }
    }

    /// The text to serve with [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut out = String::with_capacity(8192);
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::prometheus_text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
#[allow(unreachable_pub)]
mod tests {
    use super::*;

    crate::counters! {
        /// Test counters.
        TestStats;
        /// Things done,
        /// over two lines.
        done,
    }

    #[test]
    fn counters_gauges_and_histograms_encode_with_units_and_help_from_the_docs() {
        let c = Counters::default();
        c.done.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        let mut e = Exposition::new();
        e.counters("rumor_test_", c.read().fields());
        e.gauge("rumor_test_ready", "1 when ready.", 1);
        e.gauge_f64("rumor_test_uptime_seconds", "Uptime.", 1.5);
        e.gauges(
            "rumor_test_members",
            "Members by status.",
            [([("status", "alive")], 3), ([("status", "dead")], 0)],
        );
        let h = Histogram::new(exponential_buckets(0.001, 10.0, 3));
        h.observe(0.05);
        e.metric("rumor_test_batch_seconds", "Batch time.", h.clone());
        let text = e.encode();
        assert!(
            text.contains("# HELP rumor_test_done_total Things done, over two lines.\n"),
            "{text}"
        );
        assert!(text.contains("rumor_test_done_total 3\n"), "{text}");
        assert!(text.contains("rumor_test_ready 1\n"), "{text}");
        assert!(text.contains("rumor_test_uptime_seconds 1.5\n"), "{text}");
        assert!(text.contains("rumor_test_members{status=\"alive\"} 3\n"), "{text}");
        assert!(
            text.contains("rumor_test_batch_seconds_bucket{le=\"0.1\"} 1\n"),
            "{text}"
        );
        assert!(text.contains("rumor_test_batch_seconds_count 1\n"), "{text}");
    }
}
