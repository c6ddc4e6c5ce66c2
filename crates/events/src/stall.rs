//! The stall rule shared by the consumers that watch their group: a
//! partition whose records wait while its progress stands still for a
//! timeout is stalled.
//!
//! ```text
//!  per look at a partition: progress (where its consumers got to), low and high watermarks
//!      waiting = high > max(progress, low)
//!          not waiting, or progress moved ──> its clock starts again
//!          waiting, progress still for the timeout ──> stalled
//! ```
//!
//! What progress is belongs to the consumer: the bridge's stored offsets
//! (its database), the forward role's committed ones (the log's group).
//! Either way a stall is seen where the work is, whatever the group
//! coordinator believes. The rule ([`StallWatch`]) does no IO and reads no
//! clock: the caller passes the time of each look. [`watch`] is the loop
//! both consumers run around it: it reads the broker and their progress.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::TopicPartition;
use crate::consumer::WatermarkReader;

/// Where one partition was last seen.
#[derive(Debug, Clone, Copy)]
struct Seen {
    progress: i64,
    since: Instant,
}

/// The stall rule; see the [module docs](self).
#[derive(Debug)]
pub struct StallWatch {
    timeout: Duration,
    parts: BTreeMap<TopicPartition, Seen>,
}

impl StallWatch {
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            parts: BTreeMap::new(),
        }
    }

    /// One look at a partition: `progress` is the next offset its
    /// consumers got to (`None`: none yet), `low` and `high` its
    /// watermarks. True when it has had records waiting, and the same
    /// progress, for the timeout.
    pub fn observe(&mut self, now: Instant, tp: &TopicPartition, progress: Option<i64>, low: i64, high: i64) -> bool {
        // Records deleted from the log before anyone took them are not
        // waiting: only what is still in the log can be taken.
        let progress = progress.map_or(low, |p| p.max(low));
        if high <= progress {
            self.parts.remove(tp);
            return false;
        }
        match self.parts.get_mut(tp) {
            Some(seen) if seen.progress == progress => now.duration_since(seen.since) >= self.timeout,
            _ => {
                self.parts.insert(tp.clone(), Seen { progress, since: now });
                false
            }
        }
    }

    /// Starts every clock again (progress could not be read, or the
    /// consumer rejoined).
    pub fn restart(&mut self) {
        self.parts.clear();
    }

    /// Starts one partition's clock again (its watermarks could not be
    /// read, or this consumer holds it and knows why it waits).
    pub fn forget(&mut self, tp: &TopicPartition) {
        self.parts.remove(tp);
    }
}

/// How often a watch with this timeout looks: four times per timeout, and
/// at least every 15 s.
pub fn look_interval(timeout: Duration) -> Duration {
    (timeout / 4).min(Duration::from_secs(15))
}

/// `d` times a random factor in [0.5, 1.5): consumers that share a group
/// look at different times, so the first one's rejoin usually repairs the
/// group before the others find the stall.
pub fn jittered(d: Duration) -> Duration {
    use std::hash::{BuildHasher, Hasher};
    let r = std::collections::hash_map::RandomState::new().build_hasher().finish();
    d.mul_f64(0.5 + (r % 1_000) as f64 / 1_000.0)
}

/// A partition found stalled, with the progress seen.
pub type Stalled = Vec<(TopicPartition, Option<i64>)>;

/// Looks at `topic`'s partitions about every [`look_interval`] (jittered)
/// and sends `stalled_tx` those whose records waited, with the same
/// progress, for `timeout`; every clock then starts again. Returns when
/// the receiver is gone.
///
/// `progress` reads the next offsets the consumers got to for the
/// partitions it is given (a partition left out has none yet); `None`
/// (it could not be read, or the consumer knows it is retrying) starts
/// every clock again, as does a broker that does not answer: neither holds
/// up anything a rejoin could free. A partition `skip` names (this
/// consumer holds it and knows why it waits) is not counted against.
pub async fn watch<F>(
    reader: WatermarkReader,
    topic: String,
    timeout: Duration,
    progress: impl Fn(Vec<TopicPartition>) -> F,
    skip: impl Fn(&TopicPartition) -> bool,
    stalled_tx: mpsc::Sender<Stalled>,
) where
    F: Future<Output = Option<BTreeMap<TopicPartition, i64>>>,
{
    let every = look_interval(timeout);
    let mut w = StallWatch::new(timeout);
    loop {
        tokio::time::sleep(jittered(every)).await;
        let Ok(parts) = reader.partitions(&topic).await else {
            w.restart();
            continue;
        };
        let Some(seen) = progress(parts.clone()).await else {
            w.restart();
            continue;
        };
        let mut stalled = Vec::new();
        for tp in parts {
            if skip(&tp) {
                w.forget(&tp);
                continue;
            }
            let Ok((low, high)) = reader.watermarks(&tp).await else {
                w.forget(&tp);
                continue;
            };
            let seen = seen.get(&tp).copied();
            if w.observe(Instant::now(), &tp, seen, low, high) {
                stalled.push((tp, seen));
            }
        }
        if !stalled.is_empty() {
            w.restart();
            match stalled_tx.try_send(stalled) {
                // Full: the consumer, busy, has not taken the last signal yet.
                Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                Err(mpsc::error::TrySendError::Closed(_)) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T: Duration = Duration::from_secs(60);

    fn tp() -> TopicPartition {
        TopicPartition::new("m", 0)
    }

    #[test]
    fn records_waiting_with_progress_still_for_the_timeout_are_a_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(10), 0, 15));
        assert!(!w.observe(t0 + T / 2, &tp(), Some(10), 0, 20));
        assert!(w.observe(t0 + T, &tp(), Some(10), 0, 20));
    }

    #[test]
    fn progress_that_moves_however_slowly_is_no_stall() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        for i in 0..10u32 {
            let now = t0 + T / 2 * i;
            assert!(!w.observe(now, &tp(), Some(10 + i64::from(i)), 0, 1_000), "look {i}");
        }
    }

    #[test]
    fn nothing_waiting_is_no_stall_however_long() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(20), 0, 20));
        assert!(!w.observe(t0 + T * 10, &tp(), Some(20), 0, 20));
        // No progress and nothing in the log, or only deleted records.
        assert!(!w.observe(t0, &tp(), None, 0, 0));
        assert!(!w.observe(t0 + T * 10, &tp(), Some(5), 30, 30));
    }

    #[test]
    fn a_partition_without_progress_stalls_from_its_low_watermark() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), None, 3, 9));
        assert!(w.observe(t0 + T, &tp(), None, 3, 9));
    }

    #[test]
    fn records_that_stop_waiting_start_the_clock_again() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(10), 0, 15));
        assert!(!w.observe(t0 + T / 2, &tp(), Some(15), 0, 15));
        assert!(!w.observe(t0 + T, &tp(), Some(15), 0, 16));
        assert!(!w.observe(t0 + T + T / 2, &tp(), Some(15), 0, 16));
        assert!(w.observe(t0 + T * 2, &tp(), Some(15), 0, 16));
    }

    #[test]
    fn a_restart_or_a_forget_starts_the_clock_again() {
        let t0 = Instant::now();
        let mut w = StallWatch::new(T);
        assert!(!w.observe(t0, &tp(), Some(10), 0, 15));
        w.restart();
        assert!(!w.observe(t0 + T, &tp(), Some(10), 0, 15));
        w.forget(&tp());
        assert!(!w.observe(t0 + T * 2, &tp(), Some(10), 0, 15));
        assert!(w.observe(t0 + T * 3, &tp(), Some(10), 0, 15));
    }

    #[test]
    fn looks_are_jittered_around_the_interval() {
        let d = Duration::from_secs(10);
        let looks: Vec<Duration> = (0..200).map(|_| jittered(d)).collect();
        assert!(looks.iter().all(|l| *l >= d / 2 && *l < d * 3 / 2));
        assert!(looks.iter().any(|l| *l < d) && looks.iter().any(|l| *l > d));
        assert_eq!(look_interval(Duration::from_secs(10)), Duration::from_millis(2_500));
        assert_eq!(look_interval(Duration::from_secs(600)), Duration::from_secs(15));
    }
}
